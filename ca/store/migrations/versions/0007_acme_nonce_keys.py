"""ACME: the shared HMAC key of stateless nonces; ``acme_nonces`` now records used nonces.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

from ca.store.tables import UtcDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "acme_nonce_keys",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    # Rows were nonces handed out and not yet used; they mean nothing in the new scheme (and
    # clients simply fetch a new nonce on badNonce).
    op.execute("DELETE FROM acme_nonces")


def downgrade() -> None:
    op.drop_table("acme_nonce_keys")
