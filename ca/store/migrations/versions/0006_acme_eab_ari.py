"""ACME: external account binding keys, ARI ``replaces``, rate-limit and recovery columns.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

from ca.store.tables import UtcDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "acme_eab_keys",
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("hmac_key", sa.String(128), nullable=False),
        sa.Column("client", sa.String(128), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expires", UtcDateTime(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.Column("used_at", UtcDateTime(), nullable=True),
    )
    with op.batch_alter_table("acme_accounts") as batch:
        batch.add_column(sa.Column("eab_key_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("created_ip", sa.String(64), nullable=True))
        batch.create_unique_constraint("uq_acme_accounts_eab_key_id", ["eab_key_id"])
    op.create_index("ix_acme_accounts_created_at", "acme_accounts", ["created_at"])
    with op.batch_alter_table("acme_orders") as batch:
        batch.add_column(sa.Column("replaces", sa.String(64), nullable=True))
        batch.add_column(sa.Column("processing_since", UtcDateTime(), nullable=True))
    op.create_index("ix_acme_orders_replaces", "acme_orders", ["replaces"])
    with op.batch_alter_table("acme_challenges") as batch:
        batch.add_column(sa.Column("started_at", UtcDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("acme_challenges") as batch:
        batch.drop_column("started_at")
    op.drop_index("ix_acme_orders_replaces", "acme_orders")
    with op.batch_alter_table("acme_orders") as batch:
        batch.drop_column("processing_since")
        batch.drop_column("replaces")
    op.drop_index("ix_acme_accounts_created_at", "acme_accounts")
    with op.batch_alter_table("acme_accounts") as batch:
        batch.drop_constraint("uq_acme_accounts_eab_key_id", type_="unique")
        batch.drop_column("created_ip")
        batch.drop_column("eab_key_id")
    op.drop_table("acme_eab_keys")
