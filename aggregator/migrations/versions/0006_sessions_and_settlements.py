"""The session journal (each station's start, end and EV needs of a charging session) and
every settlement run with its hash-chained rows, both append-only.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _id() -> sa.Column[int]:
    return sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                     primary_key=True, autoincrement=True)


def upgrade() -> None:
    op.create_table(
        "session_events",
        _id(),
        sa.Column("station_id", sa.String(64), nullable=False),
        sa.Column("evse_number", sa.Integer(), nullable=False),
        sa.Column("transaction_id", sa.String(64), nullable=False),
        sa.Column("evse_id", sa.String(64)),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("at_us", sa.BigInteger(), nullable=False),
        sa.Column("received_at_us", sa.BigInteger(), nullable=False),
        sa.Column("needs_json", sa.Text()),
        sa.UniqueConstraint("station_id", "evse_number", "transaction_id", "kind", "at_us",
                            name="uq_session_events_natural_key"),
    )
    op.create_index("ix_session_events_at_us", "session_events", ["at_us"])
    op.create_table(
        "settlement_runs",
        _id(),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.Column("period_start_us", sa.BigInteger()),
        sa.Column("period_end_us", sa.BigInteger()),
        sa.Column("event_source", sa.String(32)),
        sa.Column("event_id", sa.String(128)),
        sa.Column("modification_number", sa.Integer()),
        sa.Column("params_json", sa.Text(), nullable=False),
        sa.Column("columns_json", sa.Text(), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("seal", sa.String(64), nullable=False),
        sa.UniqueConstraint("run_id", name="uq_settlement_runs_run_id"),
    )
    op.create_table(
        "settlement_rows",
        _id(),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("row_json", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("row_hash", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["settlement_runs.run_id"],
                                name="fk_settlement_rows_run_id"),
        sa.UniqueConstraint("run_id", "position", name="uq_settlement_rows_run_position"),
    )


def downgrade() -> None:
    op.drop_table("settlement_rows")
    op.drop_table("settlement_runs")
    op.drop_index("ix_session_events_at_us", table_name="session_events")
    op.drop_table("session_events")
