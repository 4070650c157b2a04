"""The customer portal: the public website (landing page, pricing, API
documentation, legal pages), German first with English beside it.

Accounts, dashboard, team and DSGVO self-service come in later steps and
register their routes here too; :func:`register` is the one entry point
``create_app`` calls.
"""
from __future__ import annotations

from privatai.portal.routes import register

__all__ = ["register"]
