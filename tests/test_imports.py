"""SPEC section 7, the names modules export: every module's ``__all__`` is accurate
(``from module import *`` works and names only what the module defines or re-exports),
and ``import replaylog`` names resolve lazily."""

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
