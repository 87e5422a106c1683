"""`digest serve`: the reader pages, the editors' and admins' pages and the webhooks.

The port is bound here, before uvicorn starts, so a taken port is one line and exit 2 (uvicorn prints its
own error and exits 3); and the listen address is compared with `public_url`, the address every link
in the emails and pages points at, so a demo that listens elsewhere says so instead of sending its
readers to another server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlsplit

import typer
from rich.markup import escape

from digest.cli.common import ConfigOpt, err, settings_for
from digest.errors import DigestError

if TYPE_CHECKING:
    import socket

app = typer.Typer()

_LOCAL_NAMES = {"localhost", "localhost.localdomain"}
_ANY = {"0.0.0.0", "::", ""}


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a one-line DigestError naming what is wrong."""
    import errno
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise DigestError(f"cannot listen on {host!r}: {e.strerror} (give --host an address of this machine)") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart need not wait for TIME_WAIT
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise DigestError(f"port {port} on {host} is already in use (another `digest serve`?): stop it, or "
                              "choose another with --port (and set public_url to match)") from None
        if e.errno == errno.EACCES:
            raise DigestError(f"not allowed to listen on port {port} (ports under 1024 need privileges): "
                              "use --port 8000 behind a reverse proxy") from None
        raise DigestError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.set_inheritable(True)
    return sock


def _is_local(host: str) -> bool:
    import ipaddress

    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def address_warning(public_url: str, host: str, port: int) -> str | None:
    """A warning when the server listens where public_url's links do not lead (None when they match).

    A public_url naming a host by a domain name is taken to be a reverse proxy in front of this server
    (https://news.example.com forwarding to 127.0.0.1:8000), so only an address public_url gives as an IP
    or as localhost is compared: then the links lead straight to host:port, and must match it."""
    import ipaddress

    parts = urlsplit(public_url)
    public_host = (parts.hostname or "").lower()
    public_port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        ipaddress.ip_address(public_host)
        literal = True
    except ValueError:
        literal = public_host in _LOCAL_NAMES
    if not literal:
        return None
    same_host = (host in _ANY or host == public_host or (_is_local(host) and _is_local(public_host)))
    if same_host and port == public_port:
        return None
    return (f"public_url is {public_url}, but this server listens on {host}:{port}: the links in the emails "
            f"and pages lead to {public_host}:{public_port}, not here (set [publication] public_url, or use "
            f"--host/--port to match it)")


@app.command()
def serve(config: ConfigOpt = None,
          host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
          workers: Annotated[int, typer.Option("--workers", min=1, help="Server processes sharing the port; "
                                               "sessions and rate limits are shared through the database.")] = 1,
          ) -> None:
    """Serve the reader pages, the editors' and admins' pages and the webhooks (uvicorn)."""
    import logging
    import os

    import uvicorn

    from digest.web.app import ENV_APP_CONFIG, RedactTokens, create_app, prepare_to_serve

    settings = settings_for(config, create_secret=True)
    sock = bind(host, port)
    warning = address_warning(settings.publication.public_url, host, port)
    if warning:
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)  # `[publication]` is text
    forwarded = settings.web.forwarded_allow_ips
    if workers > 1:
        # uvicorn's own supervisor: each worker process imports the app from the config named here (the
        # settings were loaded and the schema migrated once, above)
        from uvicorn.supervisors import Multiprocess

        os.environ[ENV_APP_CONFIG] = str(settings.path)
        cfg = uvicorn.Config("digest.web.app:from_environment", factory=True, host=host, port=port,
                             workers=workers, log_level="info", proxy_headers=bool(forwarded),
                             forwarded_allow_ips=forwarded or None)
        Multiprocess(cfg, sockets=[sock]).run()
        return
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port, log_level="info",
                                           proxy_headers=bool(forwarded), forwarded_allow_ips=forwarded or None))
    prepare_to_serve()
    logging.getLogger("uvicorn.access").addFilter(RedactTokens())  # after uvicorn set up its logging
    server.run(sockets=[sock])
