"""Hourly settlement buckets per session register, kept at ingest so settlement reads them
instead of every sample; existing samples are bucketed here (the same window as the
settlement query: each reading's delta and step from the reading before it).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

HOUR_US = 3_600_000_000
KEY = "station_id, evse_number, transaction_id, measurand"

BACKFILL_SQL = f"""
INSERT INTO settlement_buckets ({KEY}, hour_us, prev_us, prev_value, first_us, last_us,
  readings, positive_wh, resets, max_inner_step_us, evse_id)
SELECT {KEY}, hour_us,
  MAX(CASE WHEN lag_hour_us < hour_us THEN lag_us END),
  MAX(CASE WHEN lag_hour_us < hour_us THEN lag_value END),
  MIN(measured_at_us), MAX(measured_at_us), COUNT(*),
  SUM(CASE WHEN value - lag_value > 0 THEN value - lag_value ELSE 0 END),
  SUM(CASE WHEN value - lag_value < 0 THEN 1 ELSE 0 END),
  MAX(CASE WHEN lag_hour_us = hour_us THEN measured_at_us - lag_us END),
  MAX(evse_id)
FROM (
  SELECT h.*, LAG(value) OVER w AS lag_value, LAG(measured_at_us) OVER w AS lag_us,
    LAG(hour_us) OVER w AS lag_hour_us
  FROM (
    SELECT {KEY}, measured_at_us, context, phase, value, evse_id,
      measured_at_us - (((measured_at_us % {HOUR_US}) + {HOUR_US}) % {HOUR_US}) AS hour_us
    FROM meter_samples
    WHERE measurand IN ('Energy.Active.Import.Register', 'Energy.Active.Export.Register')
  ) h
  WINDOW w AS (PARTITION BY {KEY} ORDER BY measured_at_us, context, phase)
) x
WHERE true
GROUP BY {KEY}, hour_us
"""


def upgrade() -> None:
    op.create_table(
        "settlement_buckets",
        sa.Column("station_id", sa.String(64), nullable=False),
        sa.Column("evse_number", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("transaction_id", sa.String(64), nullable=False),
        sa.Column("measurand", sa.String(40), nullable=False),
        sa.Column("hour_us", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("prev_us", sa.BigInteger()),
        sa.Column("prev_value", sa.Float()),
        sa.Column("first_us", sa.BigInteger(), nullable=False),
        sa.Column("last_us", sa.BigInteger(), nullable=False),
        sa.Column("readings", sa.Integer(), nullable=False),
        sa.Column("positive_wh", sa.Float(), nullable=False),
        sa.Column("resets", sa.Integer(), nullable=False),
        sa.Column("max_inner_step_us", sa.BigInteger()),
        sa.Column("evse_id", sa.String(64)),
        sa.PrimaryKeyConstraint("station_id", "evse_number", "transaction_id", "measurand",
                                "hour_us", name="pk_settlement_buckets"),
    )
    op.create_index("ix_settlement_buckets_hour_us", "settlement_buckets", ["hour_us"])
    op.create_index("ix_settlement_buckets_max_inner_step_us", "settlement_buckets",
                    ["max_inner_step_us"])
    op.execute(BACKFILL_SQL)


def downgrade() -> None:
    op.drop_index("ix_settlement_buckets_max_inner_step_us", table_name="settlement_buckets")
    op.drop_index("ix_settlement_buckets_hour_us", table_name="settlement_buckets")
    op.drop_table("settlement_buckets")
