"""Text and path parameters converted without pydantic (issue 16: `digest status` and `digest subscribers
show` start within 2x of `import typer`).

Typer 0.29 converts every parameter value through a pydantic TypeAdapter (`typer._adapters`), built the
first time the parameter is processed, even for a value left at None: importing pydantic for that costs
1.5x `import typer` on its own. For a plain `str` or `Path` parameter the adapter only wraps a function of
Typer's: `str` keeps the text argv gave; a path is made a Path, then checked by Typer's
`coerce_cli_path` (exists, file or directory, readable, writable, "-"). `plain()` gives such parameters a
converter doing the same without the adapter; anything else (numbers, choices, files, bytes, a custom
parser) keeps Typer's own. The lazy root (digest.cli.main) installs it on the commands it builds;
tests/test_cli_startup.py holds it to Typer's results and errors. Pinned with Typer's minor release.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from typer import _click as click
from typer._coercion import RuntimeParam
from typer._param_types import coerce_cli_path, lenient_issubclass
from typer.core import _TyperParameter


class _Text(RuntimeParam):
    """A `str` parameter: argv's text as it is (Typer's `_parse_cli_str` for a str)."""

    def _coerce_value(self, value: Any, param: _TyperParameter, ctx: click.Context) -> Any:
        if isinstance(value, str):
            return value
        return _typers(param)._coerce_value(value, param=param, ctx=ctx)  # bytes and the like: Typer's


class _Flag(RuntimeParam):
    """A `bool` flag (--help among them): the bool click gives as it is (Typer skips converting it too; a
    flag not given is None, returned by RuntimeParam.coerce before any conversion)."""

    def _coerce_value(self, value: Any, param: _TyperParameter, ctx: click.Context) -> Any:
        if isinstance(value, bool):
            return value
        return _typers(param)._coerce_value(value, param=param, ctx=ctx)  # "yes", "0" from an env var: Typer's


class _Path(RuntimeParam):
    """A `Path` parameter: Typer's own path checks, given the Path its adapter would have made."""

    def _coerce_value(self, value: Any, param: _TyperParameter, ctx: click.Context) -> Any:
        if not isinstance(value, str):
            return _typers(param)._coerce_value(value, param=param, ctx=ctx)
        path_type: Any = self.parameter_info.path_type or self.annotation
        return coerce_cli_path(path_type(value), self.parameter_info, path_type=path_type, param=param, ctx=ctx)


def _typers(param: _TyperParameter) -> RuntimeParam:
    """Typer's own converter (with its pydantic adapter), for a value argv did not give as text."""
    from typer._coercion import build_runtime_param

    return build_runtime_param(param.type_descriptor)


def plain(command: click.Command) -> click.Command:
    """The command (and, for a group built by Typer, its commands) with its str, Path and bool parameters
    converted without pydantic; returns it. Its --help option is made here (click makes it once per command
    and keeps it) so that it is one of them; digest sets no other help option names (context_settings)."""
    help_option = command.get_help_option(click.Context(command, **command.context_settings))
    for param in [*command.params, *([help_option] if help_option is not None else [])]:
        if not isinstance(param, _TyperParameter):
            continue
        descriptor, info = param.type_descriptor, param.type_descriptor.parameter_info
        if descriptor.file_annotation is not None or info.parser is not None or descriptor.is_list \
                or descriptor.is_tuple:
            continue
        if descriptor.annotation is bool:
            param._runtime_param = _Flag(parameter_info=info, annotation=bool)
        elif descriptor.annotation is str:
            param._runtime_param = _Text(parameter_info=info, annotation=str)
        elif lenient_issubclass(descriptor.annotation, Path) and info.path_type in (None, descriptor.annotation):
            param._runtime_param = _Path(parameter_info=info, annotation=descriptor.annotation)
    commands = getattr(command, "commands", None)
    if isinstance(commands, dict):  # a group Typer built; not the lazy root's mapping, which would build them all
        for sub in commands.values():
            plain(sub)
    return command
