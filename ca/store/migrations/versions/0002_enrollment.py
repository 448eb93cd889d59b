"""Enrollment: API clients, pending (approval) requests, certificate owner and metadata.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from ca.store.tables import UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("owner", sa.String(128), nullable=True))
        batch.add_column(sa.Column("meta", sa.Text(), nullable=True))
    op.create_index("ix_certificates_owner", "certificates", ["owner"])
    op.create_table(
        "api_clients",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("roles", sa.Text(), nullable=False),
        sa.Column("profiles", sa.Text(), nullable=False),
        sa.Column("names", sa.Text(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("disabled_at", UtcDateTime(), nullable=True),
    )
    op.create_table(
        "enrollment_requests",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("requester", sa.String(128), nullable=False),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("csr_der", sa.LargeBinary(), nullable=False),
        sa.Column("validity_days", sa.Integer(), nullable=True),
        sa.Column("meta", sa.Text(), nullable=False),
        sa.Column("decision", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.Column("decided_by", sa.String(128), nullable=True),
        sa.Column("decided_at", UtcDateTime(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("serial", sa.String(64), nullable=True),
    )
    op.create_index("ix_enrollment_requests_requester", "enrollment_requests", ["requester"])
    op.create_index("ix_enrollment_requests_state", "enrollment_requests", ["state"])


def downgrade() -> None:
    op.drop_table("enrollment_requests")
    op.drop_table("api_clients")
    op.drop_index("ix_certificates_owner", "certificates")
    with op.batch_alter_table("certificates") as batch:
        batch.drop_column("meta")
        batch.drop_column("owner")
