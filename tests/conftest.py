"""Shared test options.

Long runs (the soak of many replays against a faulty server, many SIGKILLs, thousands
of events per process) have a small default size so that the whole suite stays quick.
``pytest --big`` runs them at full size (see the README, "Guarantees").
"""

from __future__ import annotations

from pathlib import Path

import pytest

#: The real spec-kitty logs (SPEC section 10): ``shared/`` is beside the repository
#: (CI puts a copy next to its clone). Read-only: copy a feature before writing to it.
SPEC_KITTY_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "spec-kitty"


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
    """The folder of real spec-kitty logs (its ``head/`` and ``v2.0.0/``), read-only."""
    if not (SPEC_KITTY_CORPUS / "head" / "kitty-specs").is_dir():
        pytest.skip(
            f"no spec-kitty corpus at {SPEC_KITTY_CORPUS}: put shared/ beside the repository"
        )
    return SPEC_KITTY_CORPUS


# The receiver's fixtures (db_url over SQLite and PostgreSQL, tokens_file).
pytest_plugins = ["server_fixtures"]
