"""Alembic's entry point: migrations run on the connection PrivatAI hands in.

:mod:`privatai.store.migrate` opens the connection, holds the lock and the
transaction, and passes the connection in ``config.attributes``; this file
only runs the revisions on it. There is no offline (SQL script) mode.
"""
from __future__ import annotations

from alembic import context

from privatai.store.schema import metadata

context.configure(connection=context.config.attributes["connection"], target_metadata=metadata,
                  render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
