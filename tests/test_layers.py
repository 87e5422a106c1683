"""Every module sits in a layer of the import contract, so a new module cannot escape `lint-imports`.

The contract itself (pyproject.toml, `[tool.importlinter]`) is checked by `lint-imports` in the test
command; a module named in no layer would be checked by nothing.
"""

from __future__ import annotations

import tomllib

from tests.conftest import ROOT


def _layer_modules() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    layers = next(c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers")["layers"]
    return [name.strip() for layer in layers for name in layer.replace("|", ":").split(":")]


def test_every_module_is_in_a_layer() -> None:
    layered = _layer_modules()
    modules = []
    for package in ("digest", "subscribers"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    outside = sorted(m for m in modules if m not in ("digest", "subscribers")
                     and not any(m == name or m.startswith(name + ".") for name in layered))
    assert outside == [], f"modules in no layer of the import contract: {outside}"
    assert len(modules) > 60  # the walk found the packages


def test_the_layers_are_lowest_last() -> None:
    layered = _layer_modules()
    # the rule of docs/architecture.md: the command line on top, the foundation at the bottom
    assert layered.index("digest.cli") < layered.index("digest.web") < layered.index("digest.issues") \
        < layered.index("digest.deliver") < layered.index("digest.render") < layered.index("subscribers") \
        < layered.index("digest.store")
