"""Persistence: SQLModel tables, the engine, Alembic migrations and the queries on them."""
