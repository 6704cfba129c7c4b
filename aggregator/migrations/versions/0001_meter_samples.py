"""The append-only meter sample ledger.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "meter_samples",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  primary_key=True, autoincrement=True),
        sa.Column("station_id", sa.String(64), nullable=False),
        sa.Column("evse_number", sa.Integer(), nullable=False),
        sa.Column("transaction_id", sa.String(64), nullable=False),
        sa.Column("measured_at_us", sa.BigInteger(), nullable=False),
        sa.Column("measurand", sa.String(40), nullable=False),
        sa.Column("phase", sa.String(8), nullable=False),
        sa.Column("context", sa.String(32), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("evse_id", sa.String(64)),
        sa.Column("received_at_us", sa.BigInteger(), nullable=False),
        sa.Column("signed_data", sa.Text()),
        sa.UniqueConstraint("station_id", "evse_number", "transaction_id", "measured_at_us",
                            "measurand", "phase", "context",
                            name="uq_meter_samples_natural_key"),
    )


def downgrade() -> None:
    op.drop_table("meter_samples")
