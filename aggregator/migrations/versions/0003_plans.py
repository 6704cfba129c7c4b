"""The plan journal: every schedule the controller computed, why, and what the stations said.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  primary_key=True, autoincrement=True),
        sa.Column("plan_id", sa.String(64), nullable=False),
        sa.Column("planned_at_us", sa.BigInteger(), nullable=False),
        sa.Column("horizon_start_us", sa.BigInteger(), nullable=False),
        sa.Column("interval_s", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("objective", sa.Float()),
        sa.Column("solve_s", sa.Float(), nullable=False),
        sa.Column("dispatch_s", sa.Float(), nullable=False),
        sa.Column("latency_s", sa.Float(), nullable=False),
        sa.Column("sessions", sa.Integer(), nullable=False),
        sa.Column("unmet_kwh", sa.Float(), nullable=False),
        sa.Column("fallback", sa.Text(), nullable=False),
        sa.Column("triggers_json", sa.Text(), nullable=False),
        sa.Column("power_json", sa.Text(), nullable=False),
        sa.Column("deliveries_json", sa.Text(), nullable=False),
        sa.UniqueConstraint("plan_id", name="uq_plans_plan_id"),
    )


def downgrade() -> None:
    op.drop_table("plans")
