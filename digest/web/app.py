"""The FastAPI application: one factory, routers per audience (readers, admin, webhooks)."""

from __future__ import annotations

from fastapi import FastAPI

from digest.config import Settings
from digest.store import migrate


def create_app(settings: Settings) -> FastAPI:
    migrate(settings.database_url)
    app = FastAPI(title=f"{settings.publication.name} digest", docs_url=None, redoc_url=None)
    app.state.settings = settings
    from digest.web import webhooks

    app.include_router(webhooks.router)
    return app
