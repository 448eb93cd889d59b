"""Alembic environment: runs migrations on the engine handed over by ca.store.migrate."""

from alembic import context

from ca.store.tables import Base

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=False,
    )
    context.run_migrations()
