"""Revocation: CRLs, OCSP responders and pre-signed responses, certificates' CRL shard.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from ca.store.tables import UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("crl_shard", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "crls",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "issuer_id", sa.Integer(), sa.ForeignKey("certificate_authorities.id"), nullable=False
        ),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("this_update", UtcDateTime(), nullable=False),
        sa.Column("next_update", UtcDateTime(), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.UniqueConstraint("issuer_id", "shard", "number"),
    )
    op.create_table(
        "ocsp_responders",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "issuer_id", sa.Integer(), sa.ForeignKey("certificate_authorities.id"), nullable=False
        ),
        sa.Column("serial", sa.String(64), nullable=False, unique=True),
        sa.Column("certificate_der", sa.LargeBinary(), nullable=False),
        sa.Column("key_token", sa.String(64), nullable=False),
        sa.Column("key_label", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("key_type", sa.String(16), nullable=False),
        sa.Column("not_before", UtcDateTime(), nullable=False),
        sa.Column("not_after", UtcDateTime(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_ocsp_responders_issuer_id", "ocsp_responders", ["issuer_id"])
    op.create_table(
        "ocsp_responses",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "issuer_id", sa.Integer(), sa.ForeignKey("certificate_authorities.id"), nullable=False
        ),
        sa.Column("serial", sa.String(64), nullable=False),
        sa.Column("cert_status", sa.String(8), nullable=False),
        sa.Column("this_update", UtcDateTime(), nullable=False),
        sa.Column("next_update", UtcDateTime(), nullable=False),
        sa.Column("produced_at", UtcDateTime(), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.UniqueConstraint("issuer_id", "serial"),
    )
    op.create_index("ix_ocsp_responses_next_update", "ocsp_responses", ["next_update"])


def downgrade() -> None:
    op.drop_table("ocsp_responses")
    op.drop_table("ocsp_responders")
    op.drop_table("crls")
    with op.batch_alter_table("certificates") as batch:
        batch.drop_column("crl_shard")
