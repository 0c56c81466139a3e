"""Shared test options.

Long runs (the soak of many replays against a faulty server, many SIGKILLs, thousands
of events per process) have a small default size so that the whole suite stays quick.
``pytest --big`` runs them at full size (see the README, "Guarantees").
"""

from __future__ import annotations

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


# The receiver's fixtures (db_url over SQLite and PostgreSQL, tokens_file).
pytest_plugins = ["server_fixtures"]
