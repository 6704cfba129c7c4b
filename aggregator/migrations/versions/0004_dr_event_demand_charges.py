"""The DR event journal keeps the demand charges an event carried, beside its limits and
prices (existing rows carried none).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dr_events") as batch:
        batch.add_column(sa.Column("demand_charges_json", sa.Text(), nullable=False,
                                   server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("dr_events") as batch:
        batch.drop_column("demand_charges_json")
