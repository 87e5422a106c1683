"""CLI commands of this area, registered on the root app by digest.cli."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root `digest` app."""
