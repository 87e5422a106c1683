"""`digest serve`: the reader pages, the editors' and admins' pages and the webhooks."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from digest.cli.common import ConfigOpt, settings_for

app = typer.Typer()


@app.command()
def serve(config: ConfigOpt = None,
          host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000) -> None:
    """Serve the reader pages, the editors' and admins' pages and the webhooks (uvicorn)."""
    import uvicorn

    from digest.web.app import RedactTokens, create_app

    settings = settings_for(config, create_secret=True)
    forwarded = settings.web.forwarded_allow_ips
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port, log_level="info",
                                           proxy_headers=bool(forwarded), forwarded_allow_ips=forwarded or None))
    logging.getLogger("uvicorn.access").addFilter(RedactTokens())  # after uvicorn set up its logging
    server.run()

