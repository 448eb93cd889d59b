"""ACME: nonces and accounts.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from ca.store.tables import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "acme_nonces",
        sa.Column("nonce", sa.String(64), primary_key=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_acme_nonces_created_at", "acme_nonces", ["created_at"])
    op.create_table(
        "acme_accounts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("key_thumbprint", sa.String(64), nullable=False, unique=True),
        sa.Column("jwk", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("contact", sa.Text(), nullable=False),
        sa.Column("tos_agreed", sa.Boolean(), nullable=False),
        sa.Column("requester", sa.String(128), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("acme_accounts")
    op.drop_index("ix_acme_nonces_created_at", table_name="acme_nonces")
    op.drop_table("acme_nonces")
