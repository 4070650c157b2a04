"""The customer portal: the public website (landing page, pricing, API
documentation, legal pages), sign-up and login, the dashboard (keys, usage,
team, DSGVO self-service) and the operator's pages, German first with
English beside it.

:func:`register` is the one entry point ``create_app`` calls; it imports the
routes only then, so :mod:`privatai.config` can import
:mod:`privatai.portal.settings` without pulling in the web side.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sanic import Sanic


def register(app: Sanic) -> None:
    from privatai.portal.routes import register as register_routes

    register_routes(app)


__all__ = ["register"]
