"""ACME: orders, authorizations and challenges.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from ca.store.tables import UtcDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "acme_orders",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("acme_accounts.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("identifiers", sa.Text(), nullable=False),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("not_before", UtcDateTime(), nullable=True),
        sa.Column("not_after", UtcDateTime(), nullable=True),
        sa.Column("expires", UtcDateTime(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("certificate_serial", sa.String(64), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_acme_orders_account_id", "acme_orders", ["account_id"])
    op.create_index("ix_acme_orders_certificate_serial", "acme_orders", ["certificate_serial"])
    op.create_table(
        "acme_authorizations",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("acme_accounts.id"), nullable=False),
        sa.Column("order_id", sa.Integer(), sa.ForeignKey("acme_orders.id"), nullable=False),
        sa.Column("identifier_type", sa.String(8), nullable=False),
        sa.Column("identifier_value", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("expires", UtcDateTime(), nullable=False),
        sa.Column("wildcard", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_acme_authorizations_order_id", "acme_authorizations", ["order_id"])
    op.create_table(
        "acme_challenges",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "authz_id", sa.Integer(), sa.ForeignKey("acme_authorizations.id"), nullable=False
        ),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("token", sa.String(64), nullable=False, unique=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("validated_at", UtcDateTime(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index("ix_acme_challenges_authz_id", "acme_challenges", ["authz_id"])


def downgrade() -> None:
    op.drop_index("ix_acme_challenges_authz_id", table_name="acme_challenges")
    op.drop_table("acme_challenges")
    op.drop_index("ix_acme_authorizations_order_id", table_name="acme_authorizations")
    op.drop_table("acme_authorizations")
    op.drop_index("ix_acme_orders_certificate_serial", table_name="acme_orders")
    op.drop_index("ix_acme_orders_account_id", table_name="acme_orders")
    op.drop_table("acme_orders")
