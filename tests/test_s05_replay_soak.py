"""SPEC section 5 under a hostile network: a soak of replays against a faulty server.

The loopback :class:`~receiver.Receiver` answers at random (seeded): 500, 503 with
Retry-After, 429, a closed connection, a stall past the client's timeout, a 200 whose
body is garbage, or it stores the batch and drops the answer. Replay is run again and
again until nothing is pending (or a bounded number of runs). In the end the server
holds every event, one content per id; every local status is ``delivered``; and no
event was ever ``failed``: transient faults never dead-letter. One summary line is
printed per soak. ``pytest --big`` runs 5,000 events through the API.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from receiver import Action, Receiver, RecordedRequest

from replaylog import EventStore, TransientDeliveryError

pytestmark = pytest.mark.reliability

FAULTS = ("500", "503", "429", "close", "stall", "garbage", "drop")
TIMEOUT = 0.5  # seconds per request; a stall lasts past it
BACKOFF = 0.01
BATCH = 7


class RandomFaults:
    """A ``Receiver.hook`` that misbehaves on a seeded share of requests.

    Faults are drawn from a shuffled bag of every kind, so that a soak with at least
    as many faults as kinds meets each of them. Retry-After is 0 or 1 (or absent for
    some 429s), to keep the soak quick.
    """

    def __init__(self, seed: int, rate: float) -> None:
        self.rng = random.Random(seed)
        self.rate = rate
        self.injected: Counter[str] = Counter()
        self._bag: list[str] = []
        self._lock = threading.Lock()  # handlers run in threads (a stall outlives its client)

    def __call__(self, request: RecordedRequest) -> Action | None:
        with self._lock:
            if self.rng.random() >= self.rate:
                # Both answer shapes of section 5, "duplicate" included on a resend.
                return Action.ok(shape="results") if self.rng.random() < 0.5 else None
            if not self._bag:
                self._bag = list(FAULTS)
                self.rng.shuffle(self._bag)
            kind = self._bag.pop()
            retry_after = "1" if self.rng.random() < 0.2 else "0"
            no_header = self.rng.random() < 0.5
            self.injected[kind] += 1
        if kind == "500":
            return Action.answer(500)
        if kind == "503":
            return Action.answer(503, retry_after=retry_after)
        if kind == "429":
            return Action.answer(429, retry_after=None if no_header else retry_after)
        if kind == "stall":
            return Action.stall(TIMEOUT * 3)
        return Action(kind=kind)  # close, garbage, drop


def fill(store: EventStore, n: int) -> dict[str, dict[str, Any]]:
    """``n`` events over three features, Lamport values interleaved; returns them by id."""
    features = ("alpha", "beta", "gamma")
    for start in range(0, n, 50):
        for k, feature in enumerate(features):
            items = [
                {"event_type": "soak", "aggregate_id": f"A{i % 5}", "payload": {"i": i}}
                for i in range(start, min(start + 50, n))
                if i % len(features) == k
            ]
            if items:
                store.append_many(feature, items)
    logged = {obj["event_id"]: obj for f in features for obj in store.read_raw(f)}
    assert len(logged) == n
    return logged


def check_soak(
    r: Receiver, faults: RandomFaults, logged: dict[str, dict[str, Any]], totals: dict[str, int]
) -> Counter[str]:
    """The end state every soak must reach; returns what the server did, by kind."""
    n = len(logged)
    lost = sorted(set(logged) - set(r.events))
    assert lost == [], f"{len(lost)} event(s) lost, e.g. {lost[:3]}"
    assert r.conflicts == [], "an id reached the server twice with different content"
    assert r.events == logged, "the server holds events that differ from the log"
    assert totals == {"events": n, "pending": 0, "delivered": n, "failed": 0}
    # Every retry of a batch carries the batch's own key: sha256 of its ids in order.
    for request in r.requests:
        expected = hashlib.sha256("\n".join(request.event_ids).encode()).hexdigest()
        assert request.idempotency_key == expected
    for kind in FAULTS:
        assert faults.injected[kind] >= 1, f"the soak never injected {kind!r}: too short"
    # A dropped answer means the batch was stored, then sent again.
    assert r.duplicates >= 1
    return Counter(request.action for request in r.requests)


def summary(label: str, n: int, runs: int, done: Counter[str], extra: str = "") -> str:
    faults = {kind: done[kind] for kind in FAULTS}
    requests = sum(done.values())
    return (
        f"soak {label}: {n} events, {runs} runs, {requests} requests,"
        f" faults {faults} ({sum(faults.values())}){extra}, 0 lost"
    )


def test_soak_of_replays_against_random_faults_delivers_everything_once(
    tmp_path: Path, big: bool
) -> None:
    n = 5000 if big else 300
    max_runs = 1000 if big else 200
    started = time.monotonic()
    with EventStore(tmp_path, fsync=False) as store, Receiver() as r:
        logged = fill(store, n)
        faults = RandomFaults(seed=20240611, rate=0.3)
        r.hook = faults
        runs = attempts = stopped = 0
        report = None
        while runs < max_runs:
            runs += 1
            try:
                report = store.replay(
                    r.url,
                    batch_size=BATCH,
                    max_retries=2,
                    backoff_base=BACKOFF,
                    timeout=TIMEOUT,
                )
            except TransientDeliveryError as exc:
                stopped += 1
                report = exc.report  # type: ignore[attr-defined]
            assert report is not None
            attempts += report.attempts
            totals = store.status()["totals"]
            # Section 5: a transient failure never turns an event failed, in any run.
            assert totals["failed"] == 0, f"run {runs}: transient faults dead-lettered events"
            assert report.rejected == 0
            assert totals["pending"] == report.pending
            if report.pending == 0:
                break
        assert report is not None and report.pending == 0, f"still pending after {runs} runs"
        done = check_soak(r, faults, logged, store.status()["totals"])
        retried = store.index.conn.execute(
            "SELECT count(*) FROM events WHERE retry_count > 0"
        ).fetchone()[0]
    print(
        summary(
            "api",
            n,
            runs,
            done,
            f", {attempts} attempts counted by replay, {stopped} runs stopped early,"
            f" {retried} events retried, {time.monotonic() - started:.1f} s",
        )
    )


def test_soak_of_cli_replays_exits_0_or_3_and_delivers_everything_once(
    tmp_path: Path, big: bool
) -> None:
    """``replaylog replay`` in a loop: pending after faults is exit 3, never 1 or 4."""
    n = 1000 if big else 120
    max_runs = 300 if big else 100
    root = tmp_path / "project"
    root.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLAYLOG_")}
    started = time.monotonic()
    with EventStore(root, fsync=False) as store:
        logged = fill(store, n)
    with Receiver() as r:
        faults = RandomFaults(seed=7, rate=0.35)
        r.hook = faults
        codes: Counter[int] = Counter()
        runs = 0
        finished = False
        while runs < max_runs and not finished:
            runs += 1
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "replaylog",
                    "--root",
                    str(root),
                    "replay",
                    "--url",
                    r.url,
                    "--batch-size",
                    str(BATCH),
                    "--max-retries",
                    "1",  # runs stop often: exit 3 is met many times
                    "--backoff-base",
                    str(BACKOFF),
                    "--timeout",
                    str(TIMEOUT),
                    "--json",
                ],
                capture_output=True,
                text=True,
                env=env,
                timeout=300,
            )
            codes[proc.returncode] += 1
            assert proc.returncode in (0, 3), f"run {runs}: exit {proc.returncode}: {proc.stderr}"
            assert "Traceback" not in proc.stderr
            out = json.loads(proc.stdout)
            if proc.returncode == 3:
                assert out["error"]["type"] == "TransientDeliveryError", out
            else:
                finished = out["pending"] == 0
            with EventStore(root) as store:
                totals = store.status()["totals"]
            assert totals["failed"] == 0, f"run {runs}: transient faults dead-lettered events"
        assert finished, f"still pending after {runs} runs (exit codes {dict(codes)})"
        with EventStore(root) as store:
            totals = store.status()["totals"]
        done = check_soak(r, faults, logged, totals)
    assert codes[3] >= 1, "no run was stopped by faults: the soak proves nothing about exit 3"
    print(
        summary(
            "cli",
            n,
            runs,
            done,
            f", exit codes {dict(sorted(codes.items()))}, {time.monotonic() - started:.1f} s",
        )
    )
