"""Shared test options.

Long runs (the soak of many replays against a faulty server, many SIGKILLs, thousands
of events per process) have a small default size so that the whole suite stays quick.
``pytest --big`` runs them at full size (see the README, "Guarantees").
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--big",
        action="store_true",
        default=False,
        help="run the reliability tests (soak, kills, concurrency) at full size",
    )


@pytest.fixture
def big(request: pytest.FixtureRequest) -> bool:
    """True when the run asked for full-size reliability tests (``pytest --big``)."""
    return bool(request.config.getoption("--big"))


@pytest.fixture(scope="session")
def spec_kitty_corpus() -> Path:
    """``corpus/spec-kitty`` of the ``shared/`` folder beside the repository: real logs of
    spec-kitty's own repository (read-only: copy before writing near them)."""
    corpus = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "spec-kitty"
    if not (corpus / "head" / "kitty-specs").is_dir():
        pytest.skip(f"the spec-kitty corpus is not at {corpus} (it lives in ../shared)")
    return corpus
