"""SPEC section 11, the boards page (``GET /``) in a real headless Chromium.

Chromium loads the page from a live ``replaylog serve`` on 127.0.0.1 and is driven over
the DevTools protocol on a pipe (``--remote-debugging-pipe``: commands on fd 3, answers on
fd 4, each message ended by a NUL byte). The tests read what the page shows: each work
package in its lane's column, updated by itself after new events arrive, and the token
form when the server has a tokens file. Skipped when Chromium is not installed.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_fixtures import BATCH, TOKEN_A, LiveServer, annotation, body, transition

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)"
)


class Browser:
    """One headless Chromium, one page, driven over the DevTools pipe."""

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="rl-chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
            f"--user-data-dir={self.profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        # Chromium takes the pipe on fds 3 and 4 exactly: the shell moves them there.
        script = f'exec 3<&{to_chrome_r} 4>&{from_chrome_w}; exec "$0" "$@"'
        self.proc = subprocess.Popen(
            ["bash", "-c", script, str(CHROMIUM), *flags],
            pass_fds=(to_chrome_r, from_chrome_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30) -> Any:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session is not None and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                answer = json.loads(raw)
                if answer.get("id") == self._next_id:
                    if "error" in answer:
                        raise AssertionError(f"{method}: {answer['error']}")
                    return answer.get("result")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"Chromium did not answer {method} within {timeout} s")
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise AssertionError("Chromium closed the DevTools pipe")
                self._buffer += chunk

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", {"url": url})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"the page never showed {expression!r} (last: {value!r})")

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self._to_chrome)
        os.close(self._from_chrome)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture
def browser() -> Iterator[Browser]:
    b = Browser()
    yield b
    b.close()


#: {feature: {lane: [WP ids]}} as the page shows them.
LANES_SHOWN = """
(() => {
  const shown = {};
  for (const column of document.querySelectorAll('.lane')) {
    const f = column.dataset.feature, lane = column.dataset.lane;
    shown[f] = shown[f] || {};
    shown[f][lane] = [...column.querySelectorAll('.wp')].map(c => c.dataset.wp);
  }
  return shown;
})()
"""


def _lane_of(shown: dict[str, dict[str, list[str]]], feature: str, wp: str) -> list[str]:
    return [lane for lane, wps in shown.get(feature, {}).items() if wp in wps]


def test_the_page_shows_each_work_package_in_its_lane_and_updates_by_itself(
    tmp_path: Path, browser: Browser
) -> None:
    with LiveServer(f"sqlite:///{tmp_path / 's.db'}", tmp_path) as server, server.client() as c:
        c.post(BATCH, content=body([
            transition("WP01", "planned", "claimed", at="2026-11-20T10:00:00+00:00"),
            transition("WP02", "planned", "for_review", at="2026-11-20T10:00:01+00:00"),
        ], feature="mission-one"))  # fmt: skip
        c.post(BATCH, content=body([
            transition("WP07", "planned", "done", at="2026-11-20T09:00:00+00:00"),
        ], feature="mission-two", node="node-b"))  # fmt: skip
        browser.open(server.url + "/?interval=300")
        browser.wait_for("document.querySelectorAll('.wp').length === 3")
        shown = browser.evaluate(LANES_SHOWN)
        assert _lane_of(shown, "mission-one", "WP01") == ["claimed"]
        assert _lane_of(shown, "mission-one", "WP02") == ["for_review"]
        assert _lane_of(shown, "mission-two", "WP07") == ["done"]
        assert list(shown["mission-one"]) == [
            "planned", "claimed", "in_progress", "for_review", "in_review",
            "approved", "done", "blocked", "canceled",
        ]  # fmt: skip
        # Another clone moves WP01 on: the open page shows it without being reloaded.
        c.post(BATCH, content=body([
            transition("WP01", "claimed", "in_progress", at="2026-11-20T11:00:00+00:00"),
            transition("WP03", "planned", "planned", at="2026-11-20T11:00:01+00:00"),
        ], feature="mission-one", node="node-c"))  # fmt: skip
        browser.wait_for(
            "!!document.querySelector('.lane[data-lane=in_progress] .wp[data-wp=WP01]')"
        )
        shown = browser.evaluate(LANES_SHOWN)
        assert _lane_of(shown, "mission-one", "WP01") == ["in_progress"]
        assert _lane_of(shown, "mission-one", "WP03") == ["planned"]


def test_a_feature_whose_board_cannot_be_made_is_named_and_the_others_are_drawn(
    tmp_path: Path, browser: Browser
) -> None:
    with LiveServer(f"sqlite:///{tmp_path / 's.db'}", tmp_path) as server, server.client() as c:
        c.post(BATCH, content=body([
            transition("WP01", "genesis", "planned"),
            annotation("WP01", {"shell_pid": "n/a"}),  # the reducer refuses this delta
        ], feature="aa-broken"))  # fmt: skip
        c.post(BATCH, content=body([transition("WP09", "planned", "done")], feature="zz-fine"))
        browser.open(server.url + "/?interval=300")
        browser.wait_for("document.querySelectorAll('.wp').length === 1")
        shown = browser.evaluate(LANES_SHOWN)
        assert _lane_of(shown, "zz-fine", "WP09") == ["done"]
        message = browser.evaluate(
            "document.querySelector('.feature.unavailable[data-feature=aa-broken] .error')"
            ".textContent"
        )
        assert message.startswith("no board: ") and "shell_pid" in message
        assert browser.evaluate("document.getElementById('status').className") == ""


def test_event_data_is_shown_as_text_never_run_as_markup(tmp_path: Path, browser: Browser) -> None:
    with LiveServer(f"sqlite:///{tmp_path / 's.db'}", tmp_path) as server, server.client() as c:
        evil = "<img src=x onerror=\"document.body.dataset.pwned='1'\">"
        c.post(BATCH, content=body([transition(evil, "planned", "claimed", actor=evil)]))
        browser.open(server.url + "/?interval=300")
        browser.wait_for("document.querySelectorAll('.wp').length === 1")
        assert browser.evaluate("document.querySelector('.wp .id').textContent") == evil
        assert browser.evaluate("document.querySelectorAll('.wp img').length") == 0
        assert browser.evaluate("document.body.dataset.pwned || ''") == ""


def test_with_a_tokens_file_the_page_asks_for_a_token_and_then_shows_the_boards(
    tmp_path: Path, tokens_file: Path, browser: Browser
) -> None:
    db = f"sqlite:///{tmp_path / 's.db'}"
    with LiveServer(db, tmp_path, tokens_file=tokens_file) as server:
        with server.client(TOKEN_A) as c:
            c.post(BATCH, content=body([transition("WP05", "planned", "approved")]))
        browser.open(server.url + "/?interval=300")
        browser.wait_for("!document.getElementById('login').hidden")
        assert browser.evaluate("document.querySelectorAll('.wp').length") == 0
        browser.evaluate(
            f"document.getElementById('token').value = {json.dumps(TOKEN_A)};"
            " document.getElementById('login').requestSubmit(); true"
        )
        browser.wait_for("!!document.querySelector('.lane[data-lane=approved] .wp[data-wp=WP05]')")
        assert browser.evaluate("document.getElementById('login').hidden") is True
        # The token is kept for this tab only, and never put in the page's address.
        assert browser.evaluate("sessionStorage.getItem('replaylog-token')") == TOKEN_A
        assert TOKEN_A not in browser.evaluate("location.href")
    assert TOKEN_A not in server.log()
