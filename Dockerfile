# The Pilothouse image: the API and the worker run from it with different commands.
FROM python:3.11-slim
WORKDIR /app
# Tasks work in git clones: the worker needs git (an agent CLI such as `claude` goes in an
# image built on this one).
RUN apt-get update && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY cli.py operator_file.py settings.py stack.py strict.py telegram_bot.py temporal_client.py \
    worker.py workflow_runner.py ./
COPY api ./api
COPY store ./store
COPY workflows ./workflows
COPY activities ./activities
RUN pip install --no-cache-dir . && useradd --create-home pilothouse
USER pilothouse
ENV PILOTHOUSE_API_HOST=0.0.0.0 PILOTHOUSE_DATA_DIR=/home/pilothouse/data
EXPOSE 8000
CMD ["pilothouse", "api"]
