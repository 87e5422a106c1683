"""CLI commands of the web side: `digest serve`."""

from __future__ import annotations

from typing import Annotated

import typer

from digest.cli_common import ConfigOpt, settings_for


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root `digest` app."""
    @app.command()
    def serve(config: ConfigOpt = None,
              host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
              port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000) -> None:
        """Serve the reader pages, the editors' and admins' pages and the webhooks (uvicorn)."""
        import uvicorn

        from digest.web.app import create_app

        settings = settings_for(config, create_secret=True)
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info")

