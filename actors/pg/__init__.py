"""The PostgreSQL home of the engine: many nodes, one database (`DATABASE_URL`)."""

from .runtime import PgRuntime, open_database, open_pg_runtime

__all__ = ["PgRuntime", "open_database", "open_pg_runtime"]
