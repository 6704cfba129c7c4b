"""Alembic environment for the ledger: runs on the connection the Ledger hands over."""

from __future__ import annotations

from alembic import context

from aggregator.ledger import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
