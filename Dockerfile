# The Pilothouse image: the API and the worker run from it with different commands.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY cli.py settings.py stack.py telegram_bot.py temporal_client.py worker.py ./
COPY api ./api
COPY store ./store
COPY workflows ./workflows
COPY activities ./activities
RUN pip install --no-cache-dir . && useradd --create-home pilothouse
USER pilothouse
ENV PILOTHOUSE_API_HOST=0.0.0.0 PILOTHOUSE_DATA_DIR=/home/pilothouse/data
EXPOSE 8000
CMD ["pilothouse", "api"]
