"""PostgreSQL projections of the usage log: migrations and the schema contract.

The pure fold, the store and the read models arrive with the pipeline-core issue.
"""

from .database import connect, quote_schema
from .expected_schema import EXPECTED_COLUMNS, schema_drift
from .migrator import Migration, MigrationError, apply_migrations, load_migrations

__all__ = [
    "EXPECTED_COLUMNS",
    "Migration",
    "MigrationError",
    "apply_migrations",
    "connect",
    "load_migrations",
    "quote_schema",
    "schema_drift",
]
