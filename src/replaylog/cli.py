"""The ``replaylog`` command (SPEC section 6): parse, call one EventStore method, print.

Exit codes: 0 ok; 1 data or I/O error; 2 usage; 3 replay left events pending after
transient failures; 4 authentication refused; 130 interrupted. An error is one
``Error: ...`` line on stderr, or with ``--json`` an ``{"error": {"type", "message"}}``
object on stdout.

A plain ``append`` runs without click, through :mod:`replaylog.fastcli` (SPEC section
8), which calls the same :func:`~replaylog.fastcli.append_command` as the command here.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from ._version import __version__
from .errors import LogsUnreadableError, UsageError
from .fastcli import CliContext as _Context
from .fastcli import append_command, exit_for, json_object, read_file_text
from .fastcli import errors as _errors
from .fastcli import fail as _fail
from .fastcli import json_out as _json_out
from .store import DEFAULT_LOGS_DIR

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES = """\b
Exit codes:
  0  ok
  1  data or I/O error (corrupt log, bad index, replay stopped)
  2  usage error (bad feature name, bad JSON payload, missing URL)
  3  replay left events pending after transient failures
  4  authentication refused by the server
  130  interrupted (Ctrl-C); a replay says what it had done"""


T = TypeVar("T")


def _over_logs(call: Callable[[], T]) -> tuple[T | None, LogsUnreadableError | None]:
    """Run a command over many logs: its result, and the error listing the bad logs."""
    try:
        return call(), None
    except LogsUnreadableError as exc:
        return exc.partial, exc  # type: ignore[return-value]


def _fail_bad_logs(exc: LogsUnreadableError, as_json: bool, shown: dict[str, Any] | None) -> None:
    """Each bad log as ``PATH:LINE: message`` on stdout, one ``Error:`` line, exit 1
    (SPEC section 10); with --json
    one object: what was shown for the readable logs, ``problems`` and ``error``."""
    problems = [
        {"path": path, "line": line, "message": message} for path, line, message in exc.problems
    ]
    if as_json:
        out = dict(shown or {})
        out["problems"] = problems
        out["error"] = {"type": type(exc).__name__, "message": str(exc)}
        _json_out(out)
        sys.exit(1)
    for path, line, message in exc.problems:  # on stdout, as verify lists them
        where = f"{_shown_path(path)}:{line}" if line else _shown_path(path)
        click.echo(f"{where}: {message}")
    _fail(exc, 1, False)


pass_ctx = click.make_pass_decorator(_Context)


class Seconds(click.ParamType[float]):
    """A finite number of seconds, at least 0 (above 0 with ``positive``): never NaN,
    infinity or a negative number, which would mean no bound at all or a bound in the past."""

    name = "seconds"

    def __init__(self, *, positive: bool = False) -> None:
        self.positive = positive

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds < 0 or (self.positive and seconds == 0):
            bound = "above 0" if self.positive else "at least 0"
            self.fail(f"{value!r} is not a finite number of seconds {bound}", param, ctx)
        return seconds


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")(f)


@click.group(epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="replaylog")
@click.option(
    "--root",
    # A root that does not exist is a typo: refused before any folder is made under it.
    type=click.Path(exists=True, file_okay=False),
    envvar="REPLAYLOG_ROOT",
    help="Project root. Default: REPLAYLOG_ROOT, else the nearest folder above with"
    " .git or .replaylog, else the working directory.",
)
@click.option(
    "--logs-dir",
    default=DEFAULT_LOGS_DIR,
    envvar="REPLAYLOG_LOGS_DIR",
    show_default=True,
    help="Folder under the root that holds one folder per feature (REPLAYLOG_LOGS_DIR).",
)
@click.option(
    "--index",
    type=click.Path(dir_okay=False),
    envvar="REPLAYLOG_INDEX",
    help="The index file (REPLAYLOG_INDEX). Default: <root>/.replaylog/queue.db.",
)
@click.pass_context
def cli(ctx: click.Context, root: str | None, logs_dir: str, index: str | None) -> None:
    """replaylog: an offline-first event store.

    Each feature keeps an append-only log, <root>/<logs-dir>/<feature>/status.events.jsonl,
    which is the truth. The index, .replaylog/queue.db, is derived from the logs and
    drives replay of pending events to a server.
    """
    ctx.obj = _Context(root, logs_dir, index)


def server_options(f: F) -> F:
    """--token-env and --allow-insecure-http, for the commands that talk to the server."""
    f = click.option(
        "--allow-insecure-http", is_flag=True, help="Allow http:// to a non-loopback host."
    )(f)
    return click.option(
        "--token-env",
        default="REPLAYLOG_TOKEN",
        show_default=True,
        help="Environment variable that holds the bearer token.",
    )(f)


@cli.command(epilog=EXIT_CODES)
@click.argument("feature")
@click.option("--type", "event_type", required=True, help="The event type.")
@click.option("--aggregate", "aggregate_id", required=True, help="The aggregate id.")
@click.option("--payload", help="The payload, a JSON object.")
@click.option(
    "--payload-file", help="Read the payload (a JSON object) from a file, or - for stdin."
)
@click.option("--causation-id", help="The id of the event that caused this one.")
@click.option("--correlation-id", help="An id shared by related events.")
@click.option("--sync", is_flag=True, help="After appending, try to deliver within --sync-timeout.")
@click.option(
    "--sync-timeout", type=Seconds(), default=2.0, show_default=True, help="Seconds, in all."
)
@click.option("--url", envvar="REPLAYLOG_URL", help="Server base URL for --sync (REPLAYLOG_URL).")
@server_options
@json_option
@pass_ctx
def append(ctx: _Context, /, **params: Any) -> None:
    """Append one event to FEATURE's log and print its id.

    The event is on disk (fsync) when the command returns. With --sync it is then sent
    to the server; offline or failing, it stays pending, a warning is printed, and the
    command still succeeds.
    """
    # The parameters are append_command's, by name (tests/test_s06_cli_fast.py checks
    # that both take the same ones): the fast path calls it without click.
    append_command(ctx, **params)


@cli.command("log", epilog=EXIT_CODES)
@click.argument("feature")
@click.option(
    "--type",
    "event_type",
    help="Only lines of this type: an event_type, a record's type, or a kind"
    " (envelope, transition, annotation, record).",
)
@click.option(
    "--aggregate", "aggregate_id", help="Only lines of this aggregate or work package (wp_id)."
)
@click.option("--limit", type=click.IntRange(min=0), help="At most N lines.")
@json_option
@pass_ctx
def log_command(
    ctx: _Context,
    feature: str,
    event_type: str | None,
    aggregate_id: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """Print FEATURE's lines (events, transitions, annotations, records) in file order.

    A FEATURE that has no log is an error (exit 1), as in `replaylog verify`.
    """
    with _errors(as_json):
        lines = ctx.store().log(
            feature, event_type=event_type, aggregate_id=aggregate_id, limit=limit
        )
        if as_json:
            for line in lines:
                _json_out(line.to_dict())
            return
        from .lines import describe

        for line in lines:
            clock, when, what, subject, detail = describe(line)
            click.echo(f"{clock:>6}  {line.event_id}  {when}  {what}  {subject}  {detail}")


def _board_width() -> int:
    """The terminal's width for a board: 80 when unknown, within what a board can use."""
    import shutil

    return max(40, min(shutil.get_terminal_size((80, 24)).columns, 240))


@cli.command(epilog=EXIT_CODES)
@click.argument("feature", required=False)
@json_option
@pass_ctx
def board(ctx: _Context, feature: str | None, as_json: bool) -> None:
    """Show each work package's lane, as spec-kitty's board does.

    FEATURE's board, or without FEATURE every feature's. On a terminal the lanes are
    columns; --json prints the snapshot spec-kitty writes to status.json (without
    FEATURE: one snapshot per feature, by name).
    """
    from .board import render

    with _errors(as_json), ctx.store() as store:
        if feature is not None:
            snap = store.board(feature)
            if as_json:
                _json_out(snap)
            else:
                click.echo(render(snap, width=_board_width(), title=feature), nl=False)
            return
        boards, bad = _over_logs(store.boards)
        if as_json and bad is None:
            _json_out(boards)
            return
        if bad is not None and as_json:
            # Nested: a feature may be named "problems" or "error".
            _fail_bad_logs(bad, True, {"boards": boards or {}})
        width = _board_width()
        for number, (name, snap) in enumerate((boards or {}).items()):
            if number:
                click.echo()
            click.echo(render(snap, width=width, title=name), nl=False)
        if bad is not None:
            if boards:
                click.echo()
            _fail_bad_logs(bad, False, None)


def _read_evidence(evidence_file: str | None) -> dict[str, Any] | None:
    """The evidence object of --evidence-file (a path, or - for stdin)."""
    if evidence_file is None:
        return None
    where, text = read_file_text(evidence_file, "evidence")
    return json_object(text, "evidence", where)


@cli.command(epilog=EXIT_CODES)
@click.argument("feature")
@click.argument("wp")
@click.option("--to", "to_lane", required=True, help="The lane to move to (doing = in_progress).")
@click.option("--actor", required=True, help="Who moves it.")
@click.option("--reason", help="Why; required with --force, as spec-kitty asks.")
@click.option("--review-ref", help="A reference to the review this move answers.")
@click.option(
    "--evidence-file",
    help="A JSON file (or - for stdin) holding the evidence object: review, repos,"
    " verification; a move to done without --force needs one.",
)
@click.option(
    "--execution-mode", help="worktree or direct_repo, as spec-kitty.  [default: worktree]"
)
@click.option("--force", is_flag=True, help="Allow a move the lane rules do not allow.")
@json_option
@pass_ctx
def move(
    ctx: _Context,
    feature: str,
    wp: str,
    to_lane: str,
    actor: str,
    reason: str | None,
    review_ref: str | None,
    evidence_file: str | None,
    execution_mode: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Move a work package to another lane, as spec-kitty does.

    Appends one transition line for WP to FEATURE's log, as spec-kitty writes it, and
    rewrites status.json when the feature has one. Without --force only the moves of
    spec-kitty's lane rules are allowed; a refused move changes nothing and names the
    lanes allowed from where the WP is.
    """
    with _errors(as_json):
        evidence = _read_evidence(evidence_file)
        with ctx.store() as store:
            line = store.move(
                feature,
                wp,
                to=to_lane,
                actor=actor,
                reason=reason,
                review_ref=review_ref,
                evidence=evidence,
                execution_mode=execution_mode,
                force=force,
            )
        if as_json:
            _json_out(line.to_dict())
        else:
            forced = " (forced)" if line.force else ""
            click.echo(f"{line.event_id}  {line.wp_id}  {line.from_lane} -> {line.to_lane}{forced}")


@cli.command(epilog=EXIT_CODES)
@click.argument("feature", required=False)
@json_option
@pass_ctx
def status(ctx: _Context, feature: str | None, as_json: bool) -> None:
    """Per feature: events, pending, delivered and failed; and the Lamport clock.

    A FEATURE that has no log is an error (exit 1), as in `replaylog log`.
    """
    with _errors(as_json), ctx.store() as store:
        report, bad = _over_logs(lambda: store.status(feature))
        if as_json and bad is None:
            _json_out(report)
            return
        if bad is not None and (as_json or report is None):
            _fail_bad_logs(bad, as_json, report)
        assert report is not None
        width = max([len("feature")] + [len(f) for f in report["features"]])
        click.echo(
            f"{'feature':<{width}}  {'events':>8} {'pending':>8} {'delivered':>9} {'failed':>7}"
        )
        rows = list(report["features"].items()) + [("total", report["totals"])]
        for name, c in rows:
            click.echo(
                f"{name:<{width}}  {c['events']:>8} {c['pending']:>8} {c['delivered']:>9}"
                f" {c['failed']:>7}"
            )
        click.echo(f"lamport clock: {report['lamport_clock']}")
        if bad is not None:
            _fail_bad_logs(bad, False, None)


@cli.command(epilog=EXIT_CODES)
@click.option("--url", envvar="REPLAYLOG_URL", help="Server base URL (REPLAYLOG_URL).")
@click.option("--feature", help="Only this feature's events.")
@click.option("--batch-size", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--max-retries", type=click.IntRange(min=0), default=3, show_default=True)
@click.option(
    "--backoff-base",
    type=Seconds(),
    default=1.0,
    show_default=True,
    help="Seconds; retry k sleeps backoff_base * 2**k * U(0.5, 1).",
)
@click.option(
    "--timeout",
    type=Seconds(positive=True),
    default=10.0,
    show_default=True,
    help="Seconds per request, from connect to the last byte of the answer.",
)
@server_options
@json_option
@pass_ctx
def replay(
    ctx: _Context,
    url: str | None,
    feature: str | None,
    batch_size: int,
    max_retries: int,
    backoff_base: float,
    timeout: float,
    token_env: str,
    allow_insecure_http: bool,
    as_json: bool,
) -> None:
    """Send pending events to the server, in Lamport order, in batches."""
    with _errors(as_json):
        if not url:
            raise UsageError("no server URL: give --url or set REPLAYLOG_URL")
        with ctx.store() as store, _progress("replaying", as_json) as progress:
            settled = 0  # events whose answer is recorded, for a replay cut short

            def on_batch(done: int, total: int) -> None:
                nonlocal settled
                settled = done
                if progress is not None:
                    progress(done, total)

            try:
                report, bad = _over_logs(
                    lambda: store.replay(
                        url,
                        token=os.environ.get(token_env) or None,
                        batch_size=batch_size,
                        max_retries=max_retries,
                        backoff_base=backoff_base,
                        timeout=timeout,
                        feature=feature,
                        allow_insecure_http=allow_insecure_http,
                        on_batch=on_batch,
                    )
                )
            except KeyboardInterrupt:
                # What was done is kept: say so (a batch in flight stays pending, and a
                # receiver that stored it answers "duplicate" when it comes again).
                raise KeyboardInterrupt(
                    f"interrupted; {settled} event(s) were sent and their answers"
                    " recorded before, the others stay pending and the next replay sends"
                    " them"
                ) from None
        if bad is not None and (as_json or report is None):
            _fail_bad_logs(bad, as_json, report.to_dict() if report is not None else None)
        assert report is not None
        if as_json:
            _json_out(report.to_dict())
        else:
            click.echo(
                f"accepted {report.accepted}, rejected {report.rejected},"
                f" pending {report.pending}, batches {report.batches}"
            )
            if bad is not None:
                _fail_bad_logs(bad, False, None)


@contextmanager
def _progress(label: str, quiet: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on a terminal (stderr), nothing otherwise."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    bar: Any = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = click.progressbar(length=max(total, 1), label=label, file=sys.stderr)
            bar.__enter__()
        bar.update(done - bar.pos)

    try:
        yield update
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


@cli.command("rebuild-index", epilog=EXIT_CODES)
@click.option("--reset-delivery", is_flag=True, help="Forget delivery state: all events pending.")
@click.option(
    "--skip-bad",
    is_flag=True,
    help="Build the index from the readable logs even if some cannot be read (they are"
    " listed); without it, any bad log keeps the old index as it was.",
)
@click.option(
    "--wait",
    type=Seconds(),
    default=300.0,
    show_default=True,
    help="Seconds to wait at most for a running replay to finish before the swap.",
)
@json_option
@pass_ctx
def rebuild_index(
    ctx: _Context, reset_delivery: bool, skip_bad: bool, wait: float, as_json: bool
) -> None:
    """Build queue.db again from the logs, and swap it in atomically.

    A replay running meanwhile records its outcomes first: the new index is put in place
    when it has finished (waiting --wait seconds at most), with every outcome in it.
    """
    with _errors(as_json), ctx.store() as store:
        total = len(store.features())
        with _progress("indexing", as_json) as bar:
            seen: list[str] = []

            def step(feature: str, events: int) -> None:
                seen.append(feature)
                if bar is not None:
                    bar(len(seen), total)

            result, bad = _over_logs(
                lambda: store.rebuild_index(
                    reset_delivery=reset_delivery, skip_bad=skip_bad, progress=step, wait=wait
                )
            )
        if bad is not None:
            _fail_bad_logs(bad, as_json, None)
        assert result is not None
        if as_json:
            _json_out(result)
            return
        for p in result.get("skipped", []):
            where = f"{_shown_path(p['path'])}:{p['line']}" if p["line"] else _shown_path(p["path"])
            click.echo(f"{where}: {p['message']}")
        skipped = len(result.get("skipped", []))
        click.echo(
            f"indexed {result['events']} events in {result['features']} features"
            + (f"; skipped {skipped} log(s) that cannot be read (listed above)" if skipped else "")
        )


@cli.command(epilog=EXIT_CODES)
@click.argument("features", nargs=-1)
@json_option
@pass_ctx
def verify(ctx: _Context, features: tuple[str, ...], as_json: bool) -> None:
    """Check every log (or the FEATURES named); print PATH:LINE: message per problem.

    Exits 1 if a log cannot be read as it is; warnings (such as identical duplicate
    lines) alone exit 0.
    """
    with _errors(as_json):
        store = ctx.store()
        report = store.verify(list(features) if features else None)
        if as_json:
            _json_out(report.to_dict())
        else:
            for p in report.problems:
                where = f"{_shown_path(p.path)}:{p.line}" if p.line else _shown_path(p.path)
                prefix = "warning: " if p.level == "warning" else ""
                click.echo(f"{where}: {prefix}{p.message}")
            if report.ok:
                checked = len(features) if features else len(store.features())
                click.echo(f"ok: {checked} log(s) verified", err=True)
        if not report.ok:
            sys.exit(1)


def _shown_path(path: str) -> str:
    """``path`` relative to the working directory when it is below it, else absolute."""
    relative = os.path.relpath(path)
    return path if relative == os.pardir or relative.startswith(os.pardir + os.sep) else relative


@cli.command(epilog=EXIT_CODES)
@click.argument("feature")
@json_option
@pass_ctx
def repair(ctx: _Context, feature: str, as_json: bool) -> None:
    """Fix a torn last line of FEATURE's log.

    A torn line that is not valid JSON is moved to status.events.jsonl.torn-<UTC time>
    beside the log, and the log is cut back to its last complete line. A bad line in the
    middle of a log is never changed: `replaylog verify` shows it for you to fix.
    """
    with _errors(as_json):
        repaired = ctx.store().repair(feature)
        if as_json:
            _json_out({"repaired": repaired})
        else:
            click.echo("repaired" if repaired else "nothing to repair")


@cli.command(epilog=EXIT_CODES)
@click.argument("feature", required=False)
@click.option("--event", "event_id", help="Only this event id (a ULID).")
@json_option
@pass_ctx
def requeue(ctx: _Context, feature: str | None, event_id: str | None, as_json: bool) -> None:
    """Make failed events pending again, so the next replay sends them.

    A FEATURE that has no log, or an --event that is not in FEATURE's log (or, without
    FEATURE, in any log), is an error (exit 1) and nothing changes; an --event that is
    not a ULID is a usage error (exit 2).
    """
    with _errors(as_json), ctx.store() as store:
        count = store.requeue(feature, event_id=event_id)
        if as_json:
            _json_out({"requeued": count})
        else:
            click.echo(f"requeued {count}")


@cli.command("merge-driver", epilog=EXIT_CODES)
@click.argument("base")
@click.argument("ours")
@click.argument("theirs")
@click.argument("path", required=False)
@json_option
def merge_driver(base: str, ours: str, theirs: str, path: str | None, as_json: bool) -> None:
    """The git merge driver for logs (git calls it as %O %A %B %P).

    Writes OURS followed by the lines of THEIRS whose event_id OURS lacks. The same
    event_id with different content on the two sides (or an unreadable side) is a
    conflict: exit 1, OURS as it was. --json prints {"merged", "added", "conflict"}:
    conflict is null, or {"message", "path"} when it did not merge.
    """
    from .gitmerge import MergeConflict, merge_logs

    with _errors(as_json):
        try:
            added = merge_logs(base, ours, theirs, path)
        except MergeConflict as exc:
            if not as_json:
                raise
            _json_out(
                {
                    "merged": False,
                    "added": 0,
                    "conflict": {"message": str(exc), "path": exc.path},
                }
            )
            sys.exit(exc.exit_code)
        if as_json:
            _json_out({"merged": True, "added": added, "conflict": None})


@cli.command("git-setup", epilog=EXIT_CODES)
@click.option(
    "--replace",
    is_flag=True,
    help="Take over the logs from a merge driver .gitattributes already names"
    " (spec-kitty's, say): it is taken off its line and replaylog's line is added.",
)
@json_option
@pass_ctx
def git_setup(ctx: _Context, replace: bool, as_json: bool) -> None:
    """Configure this clone so that git merges logs with `replaylog merge-driver`.

    A .gitattributes that already gives the logs another merge driver is left as it is
    unless --replace is given.
    """
    from .gitmerge import git_setup as setup

    with _errors(as_json):
        changed = setup(ctx.root, replace=replace, logs_dir=ctx.logs_dir)
        if as_json:
            _json_out(changed)
            return
        other = changed.get("existing_driver")
        if other is not None and not replace:
            click.echo(
                f".gitattributes gives the logs the merge driver {other!r}; nothing was"
                " changed. `replaylog git-setup --replace` makes git use replaylog's driver"
                " instead (spec-kitty's driver also merges these logs)"
            )
            return
        click.echo(
            f".gitattributes: {'updated' if changed['gitattributes'] else 'already set'};"
            f" git config: {'updated' if changed['config'] else 'already set'}"
            + (f" (replaces the merge driver {other!r} for the logs)" if other else "")
        )


@cli.command(epilog=EXIT_CODES)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="TCP port."
)
@click.option(
    "--db",
    default="sqlite:///replaylog-server.db",
    show_default=True,
    help="Database URL: sqlite:///PATH, or postgresql+psycopg://USER@HOST/DB for a team.",
)
@click.option(
    "--tokens-file",
    type=click.Path(dir_okay=False),
    help="Lines `PROJECT SHA256-HEX-OF-TOKEN [NAME]`; without it, loopback clients only.",
)
def serve(host: str, port: int, db: str, tokens_file: str | None) -> None:
    """Run the receiver: takes replayed batches and shows every clone's boards (SPEC 11)."""
    with _errors(False):
        from .server import serve as run_server  # Starlette and uvicorn: only for this command

        run_server(host=host, port=port, db=db, tokens_file=tokens_file)


def main(argv: list[str] | None = None) -> None:
    """The click CLI: :func:`replaylog.fastcli.main`, the entry point of ``replaylog`` and
    ``python -m replaylog``, calls it with every command line it does not run itself."""
    args = sys.argv[1:] if argv is None else argv
    try:
        cli.main(args=args, prog_name="replaylog", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(2)
    except click.UsageError as exc:
        # One line, as for every other error; --help shows the whole usage.
        _fail(UsageError(exc.format_message()), 2, "--json" in args)
    except click.ClickException as exc:
        _fail(exc, exc.exit_code, "--json" in args)
    except click.exceptions.Abort as exc:  # click's name for a KeyboardInterrupt
        exit_for(
            exc.__cause__ if isinstance(exc.__cause__, KeyboardInterrupt) else KeyboardInterrupt(),
            args,
        )
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, Exception) as exc:  # noqa: BLE001 - SPEC 6: one line, no traceback
        exit_for(exc, args)
