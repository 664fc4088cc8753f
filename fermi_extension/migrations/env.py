"""Alembic's environment for the platform database: ``fermi_extension.db`` hands it an open
connection (under the schema lock); ``alembic -c`` with a URL works too, for authoring."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from fermi_extension.db import Base

config = context.config
options = dict(
    target_metadata=Base.metadata,
    # each revision commits on its own: a failure leaves the database at the last good one
    transaction_per_migration=True,
    # SQLite alters a table only by copying it: batch mode does that where a revision needs it
    render_as_batch=True,
    compare_type=True,
)

connection = config.attributes.get("connection")
if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True, **options)
    with context.begin_transaction():
        context.run_migrations()
elif connection is not None:
    context.configure(connection=connection, **options)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, **options)
        with context.begin_transaction():
            context.run_migrations()
