"""Audit checkpoints; shared application secrets; users and sign-in failures of the compliance view.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

from ca.store.tables import UtcDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("seq", sa.BigInteger(), nullable=False, unique=True),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("time", sa.String(40), nullable=False),
        sa.Column("key_serial", sa.String(64), nullable=False),
        sa.Column("algorithm", sa.String(32), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
    )
    op.create_table(
        "app_secrets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(256), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "ui_users",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(256), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("last_login_at", UtcDateTime(), nullable=True),
    )
    op.create_table(
        "ui_login_failures",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_ui_login_failures_username", "ui_login_failures", ["username"])
    op.create_index("ix_ui_login_failures_address", "ui_login_failures", ["address"])
    op.create_index("ix_ui_login_failures_at", "ui_login_failures", ["at"])


def downgrade() -> None:
    op.drop_table("ui_login_failures")
    op.drop_table("ui_users")
    op.drop_table("app_secrets")
    op.drop_table("audit_checkpoints")
