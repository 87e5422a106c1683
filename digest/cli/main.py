"""The `digest` command (Typer): a thin door onto the same functions the web app and the tests call.

The root only gathers the groups, one module each; errors a user can cause print one line and exit 2,
tracebacks are for bugs.

Start-up (issue 16): Typer builds the click command of every one of our ~60 commands (reading each
signature, evaluating its annotations) and loads its whole Rich help formatter (Markdown, tracebacks,
syntax highlighting) before it looks at the arguments: `digest --help` took 3.5 times the instructions of
`import typer`. `main()` runs `_Root` instead: the same commands, built by Typer's own functions, but only
the one that runs (or whose help is asked for); `digest --help` lists them from their help texts with a
light Rich layout of the same look. `app` stays the Typer app the tests drive (`CliRunner`), and
tests/test_cli_startup.py checks the two list the same commands with the same parameters.
"""

from __future__ import annotations

import copy
import inspect
import os
import sys
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass

import typer
import typer.main
from rich.markup import escape
from typer import _click as click
from typer.core import TyperGroup, TyperOption
from typer.models import CommandInfo, DefaultPlaceholder, TyperInfo

from digest.cli import deliveries, issue, listings, recall, report, schedule, subscribers, users, web
from digest.cli.common import err, starting
from digest.cli.params import plain
from digest.errors import DigestError

app = typer.Typer(help="Build and send a weekly newsletter digest.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)

# a group without a name adds its commands at the top level (`digest draft`, `digest schedule`,
# `digest hold`, `digest serve`, ...); the order here is the order `digest --help` lists them in
app.add_typer(issue.app)
app.add_typer(subscribers.app, name="subscribers")
app.add_typer(deliveries.app, name="deliveries")
app.add_typer(recall.app)
app.add_typer(report.app)
app.add_typer(users.app, name="users")
app.add_typer(listings.app, name="listings")
app.add_typer(schedule.app)
app.add_typer(web.app)


@dataclass(frozen=True)
class _Entry:
    """A top-level command or group of `digest`: its help text, and how Typer builds its click command."""

    help: str
    hidden: bool
    build: Callable[[], click.Command]


def _entries(typer_app: typer.Typer, root: typer.Typer | None = None) -> dict[str, _Entry]:
    """The commands of `typer_app` in Typer's own order (its commands, then each group: a named group under
    its name, an unnamed group's commands at the top level), built lazily by the functions Typer's eager
    `get_group_from_info` calls for each, with the settings of the `root` app it passes down."""
    top = root or typer_app
    short, markup = top.pretty_exceptions_short, top.rich_markup_mode

    def command(info: CommandInfo) -> tuple[str, _Entry]:
        assert info.callback is not None
        name = info.name or typer.main.get_command_name(info.callback.__name__)
        text = info.short_help or (inspect.cleandoc(info.help) if info.help is not None
                                   else inspect.getdoc(info.callback) or "")
        return name, _Entry(text, info.hidden, lambda: typer.main.get_command_from_info(
            info, pretty_exceptions_short=short, rich_markup_mode=markup))

    entries = dict(command(info) for info in typer_app.registered_commands)
    for group in typer_app.registered_groups:
        solved = typer.main.solve_typer_info_defaults(group)
        assert group.typer_instance is not None
        if solved.name:
            entries[solved.name] = _Entry(
                solved.short_help or typer.main.solve_typer_info_help(group), bool(solved.hidden),
                lambda group=group: _group(group, top))  # type: ignore[misc]
        else:  # digest's unnamed groups hold commands only (a nested unnamed group would need Typer's recursion)
            assert not group.typer_instance.registered_groups, "an unnamed group of groups"
            entries.update(command(info) for info in group.typer_instance.registered_commands)
    return entries


def _group(info: TyperInfo, root: typer.Typer) -> TyperGroup:
    """A named group (`digest subscribers`) as Typer's `get_group_from_info` builds it (its help, options,
    callback), with its commands built on first use like the root's: `subscribers show` builds `show`, not
    the group's dozen commands (reading each signature costs `subscribers show` a seventh of its start-up)."""
    real = info.typer_instance
    assert real is not None
    shell, bare = copy.copy(info), copy.copy(real)
    bare.registered_commands, bare.registered_groups = [], []  # the group alone: its commands come below
    shell.typer_instance = bare
    group = typer.main.get_group_from_info(shell, pretty_exceptions_short=root.pretty_exceptions_short,
                                           rich_markup_mode=root.rich_markup_mode,
                                           suggest_commands=root.suggest_commands)
    group.commands = _Commands(_entries(real, root))
    return group


class _Commands(MutableMapping[str, click.Command]):
    """A group's `commands` whose click commands are built when first looked up. Every name is listed
    from the start, so click and Typer (the listing, a misspelt command's "Did you mean" suggestion) see
    all of them, as with Typer's eager group."""

    def __init__(self, entries: dict[str, _Entry]) -> None:
        self.entries = entries
        self.built: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self.built:
            # KeyError for an unknown name, as a dict; str and Path parameters converted without pydantic
            self.built[name] = plain(self.entries[name].build())
        return self.built[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self.entries.setdefault(name, _Entry(command.help or "", command.hidden, lambda: command))
        self.built[name] = command

    def __delitem__(self, name: str) -> None:
        del self.entries[name]
        self.built.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


class _Root(TyperGroup):
    """`digest`: its commands built on first use; its --help written from their help texts alone."""

    def __init__(self, entries: dict[str, _Entry], **attrs: object) -> None:
        super().__init__(**attrs)  # type: ignore[arg-type]
        self.commands = self.lazy = _Commands(entries)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # Typer's own reads `.items()`: it would build every command to list them

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Typer's layout (usage, help, an Options and a Commands panel), drawn with rich.panel and
        rich.table only: Typer's formatter module alone costs more than `import typer`."""
        from rich.console import Console
        from rich.padding import Padding
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        width = os.environ.get("TERMINAL_WIDTH")  # Typer's own width override, honoured the same
        console = Console(width=int(width) if width and width.isdigit() else None, highlight=False)
        console.print(Padding(Text(self.get_usage(ctx), style="bold"), 1))
        if self.help:
            console.print(Padding(Text(_first_paragraph(self.help)), (0, 1, 1, 1)))
        options = Table.grid(padding=(0, 2), expand=True)
        options.add_column(style="bold cyan", no_wrap=True)
        options.add_column(ratio=10)
        for param in self.get_params(ctx):
            if isinstance(param, TyperOption) and not param.hidden:
                options.add_row(", ".join(param.opts), Text(param.help or ""))
        console.print(Panel(options, title="Options", title_align="left", border_style="dim"))
        commands = Table.grid(padding=(0, 2), expand=True)
        commands.add_column(style="bold cyan", no_wrap=True)
        commands.add_column(ratio=10)
        for name, entry in self.lazy.entries.items():
            if not entry.hidden:
                commands.add_row(name, Text(_first_paragraph(entry.help)))
        console.print(Panel(commands, title="Commands", title_align="left", border_style="dim"))


def _first_paragraph(text: str) -> str:
    """A command's summary as Typer's Markdown mode shows it: the first paragraph, its lines joined (the
    docstrings wrap at the source's width, not the terminal's)."""
    return " ".join(inspect.cleandoc(text).split("\n\n")[0].split())


def root(typer_app: typer.Typer = app) -> _Root:
    """The lazy click group of `typer_app` (the settings Typer's `get_group_from_info` gives its root)."""
    info = TyperInfo(typer_app)
    assert not typer_app.registered_callback and isinstance(info.callback, DefaultPlaceholder), \
        "a root callback would have to be built here too"
    return plain(_Root(_entries(typer_app), name="", help=typer.main.solve_typer_info_help(info),
                       no_args_is_help=True, rich_markup_mode=typer_app.rich_markup_mode,
                       suggest_commands=typer_app.suggest_commands))


def main() -> None:
    """Entry point: usage errors are Typer's (exit 2); our own user errors print one line and exit 2."""
    try:
        root()()
    except DigestError as e:
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)  # `[delivry]` is text, not markup
        sys.exit(2)


def run() -> None:
    """The process's entry point (`digest`, `python -m digest`): `main`, then `_leave` (the tests call `main`
    in their own process, which goes on). The collector is quieter until the command has started
    (`digest.cli.common.starting`)."""
    starting()
    try:
        main()
    finally:
        _leave()


def _leave() -> None:
    """Before the interpreter exits: the database connections closed (SQLite checkpoints its WAL then), and
    every object frozen out of the collector. Python's finalization collects the whole heap several times
    while it tears the modules down, 0.2 s after a send (SQLAlchemy's, pydantic's and our modules' objects,
    issue 16); frozen objects are skipped (gc.freeze, https://docs.python.org/3/library/gc.html#gc.freeze),
    and the operating system takes the memory back anyway."""
    import gc

    store = sys.modules.get("digest.store")  # loaded only by a command that opened a database
    if store is not None:
        store.close_engines()
    gc.freeze()
