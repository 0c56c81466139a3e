"""SPEC section 7, the names modules export: every module's ``__all__`` is accurate
(``from module import *`` works and names only what the module defines or re-exports),
and ``import replaylog`` names resolve lazily. And the code's shape (STYLE.md): which
parts of the package may import which."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import replaylog

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(replaylog.__path__, "replaylog.")
    if ".migrations" not in info.name and not info.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_every_name_in_a_modules_all_exists(name: str) -> None:
    try:
        module = importlib.import_module(name)
    except ImportError as exc:  # an optional dependency (the receiver's) not installed
        pytest.skip(f"{name} needs {exc.name}")
    names = getattr(module, "__all__", None)
    if names is None:
        return
    missing = [n for n in names if not hasattr(module, n)]
    assert missing == [], f"{name}.__all__ names what it does not define"
    namespace: dict[str, object] = {}
    exec(f"from {name} import *", namespace)  # noqa: S102 - the promise under test


def test_the_package_exports_resolve() -> None:
    for name in replaylog.__all__:
        assert getattr(replaylog, name) is not None
    assert sorted(replaylog.__all__) == sorted(set(replaylog.__all__))


def _imported(module: str) -> set[str]:
    """The replaylog modules ``module`` imports anywhere in its source (absolute names)."""
    import ast
    from pathlib import Path

    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    package = module if Path(spec.origin).name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("replaylog")}


# STYLE.md's shape: the receiver uses lines/ and board.py, never the log files or the
# index; replay takes events and returns outcomes, touching neither; board.py and lines/
# are pure.
FORBIDDEN = {
    "replaylog.server": ("replaylog.log", "replaylog.index", "replaylog.store"),
    "replaylog.replay": ("replaylog.log", "replaylog.index", "replaylog.store"),
    "replaylog.board": ("replaylog.log", "replaylog.index", "replaylog.store"),
    "replaylog.lines": ("replaylog.log", "replaylog.index", "replaylog.store"),
}


@pytest.mark.parametrize("name", MODULES)
def test_each_part_imports_only_what_the_architecture_lets_it(name: str) -> None:
    for part, forbidden in FORBIDDEN.items():
        if name == part or name.startswith(part + "."):
            wrong = {m for m in _imported(name) if m.startswith(forbidden)}
            assert not wrong, f"{name} imports {sorted(wrong)}"
