"""Storage: SQLAlchemy models, migrations and the queries the core needs."""
