"""`digest users ...`: editors and admins of the web side."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from digest.cli.common import ConfigOpt, console, settings_for, stamp

app = typer.Typer(help="Editors and admins of the web pages (readers never log in).", no_args_is_help=True)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


@app.command("add")
def users_add(email: Annotated[str, typer.Argument(help="The user's email address (their login).")],
              role: Annotated[str, typer.Option(help="editor (drafts) or admin (drafts and subscribers).")],
              password_stdin: Annotated[bool, typer.Option("--password-stdin",
                                                           help="Read the password from standard input.")] = False,
              config: ConfigOpt = None) -> None:
    """Add an editor or admin; the password is asked for (or read from stdin) and stored as an argon2 hash."""
    from digest.store import session_scope
    from digest.web.users import add_user

    settings = settings_for(config, create_secret=True)
    password = _password(password_stdin)
    with session_scope(settings.database_url) as session:
        user = add_user(session, email, role, password)
        console.print(f"added {user.role} {user.email}")


@app.command("list")
def users_list(config: ConfigOpt = None) -> None:
    """The editors and admins."""
    from rich.table import Table

    from digest.store import session_scope
    from digest.web.users import list_users

    settings = settings_for(config, create_secret=True)
    with session_scope(settings.database_url) as session:
        table = Table(title="Users")
        for col in ("email", "role", "created"):
            table.add_column(col)
        for user in list_users(session):
            table.add_row(user.email, user.role, stamp(settings, user.created_at))
        console.print(table)


@app.command("remove")
def users_remove(email: Annotated[str, typer.Argument(help="The user to remove.")],
                 config: ConfigOpt = None) -> None:
    """Remove a user: their sessions stop working on their next request."""
    from digest.store import session_scope
    from digest.web.users import remove_user

    settings = settings_for(config, create_secret=True)
    with session_scope(settings.database_url) as session:
        user = remove_user(session, email)
        console.print(f"removed {user.role} {user.email}")
