"""The entry point of ``replaylog``, and ``replaylog append`` without click (SPEC section 8).

Importing click costs more than a whole append, so :func:`main` parses the plain forms
of ``replaylog [--root DIR] [--logs-dir NAME] [--index PATH] append FEATURE --type T
--aggregate A [...]`` itself and runs :func:`append_command`, the function the click
command runs. Every other command line goes to the click CLI (:mod:`replaylog.cli`)
unchanged: help, ``--version``, any other command, ``--sync``, an option given twice
or unknown, a missing value, ``--``, a ``--root`` that click would refuse. So click
parses everything this module does not fully understand, and writes every usage
message. :data:`GROUP_OPTIONS` and :data:`APPEND_OPTIONS` mirror the click
parameters; the tests compare them with the click objects.

It also holds what both paths print with: :func:`echo`, the ``Error:`` line of a
failure and its exit code (:func:`fail`, :func:`errors`, :func:`exit_for`).
"""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple, NoReturn

from .errors import ReplaylogError, ReplaylogWarning, StoreError, UsageError, translate
from .store import DEFAULT_LOGS_DIR, EventStore, find_root

__all__ = [
    "APPEND_OPTIONS",
    "CLICK_ONLY",
    "GROUP_OPTIONS",
    "CliContext",
    "Option",
    "PathCheck",
    "append_command",
    "echo",
    "errors",
    "exit_for",
    "fail",
    "json_object",
    "json_out",
    "main",
    "output_failed",
    "parse_append",
    "read_file_text",
    "read_payload",
    "silence_stdout",
]


# --------------------------------------------------------------------------- output


def echo(message: str = "", *, err: bool = False) -> None:
    """``click.echo(message, err=err)``, without importing click for plain text.

    click writes ASCII text without ANSI escapes to a standard stream as it is, then
    flushes; for anything else (text it may re-encode or strip), or once click is
    loaded, click itself writes it.
    """
    if "click" in sys.modules or not message.isascii() or "\x1b" in message:
        import click

        click.echo(message, err=err)
        return
    stream = sys.stderr if err else sys.stdout
    if stream is None:  # no standard stream to write to: click writes nothing either
        return
    stream.write(message + "\n")
    stream.flush()


def json_out(obj: Any) -> None:
    echo(json.dumps(obj, sort_keys=True))


def fail(exc: BaseException, code: int, as_json: bool, message: str | None = None) -> NoReturn:
    """Print ``exc`` as one ``Error: ...`` line (a JSON object with ``as_json``), exit ``code``."""
    message = message or str(exc) or type(exc).__name__
    if isinstance(exc, StoreError) and exc.path and exc.path not in message:
        message = f"{exc.path}: {message}"
    if isinstance(exc, StoreError) and exc.line and "replaylog repair" not in message:
        # A bad line inside a log is never changed by replaylog: say what to do with it.
        message += (
            "; replaylog changes no line of a log: correct or remove this one by hand"
            " (`replaylog verify` lists every problem)"
        )
    message = " ".join(message.split("\n"))
    try:
        if as_json:
            json_out({"error": {"type": type(exc).__name__, "message": message}})
        else:
            echo(f"Error: {message}", err=True)
    except OSError as out:  # standard output itself cannot be written (a full disk)
        output_failed(out)
    sys.exit(code)


def silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


def output_failed(exc: OSError) -> NoReturn:
    """The command's own output could not be written: one line on stderr, exit 1."""
    silence_stdout()
    try:
        echo(
            f"Error: cannot write the output to standard output: {exc.strerror or exc};"
            " nothing more was printed",
            err=True,
        )
    except OSError:
        pass
    sys.exit(1)


def _is_click_exception(exc: BaseException) -> bool:
    click = sys.modules.get("click")  # none can exist before click is imported
    return click is not None and isinstance(exc, click.ClickException)


@contextmanager
def errors(as_json: bool) -> Iterator[None]:
    """Turn every failure into one line (or JSON object) and its documented exit code,
    and the library's warnings into ``Warning: ...`` lines on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReplaylogWarning)
        try:
            yield
        except ReplaylogError as exc:
            fail(exc, exc.exit_code, as_json)
        except BrokenPipeError:
            raise  # main() handles it: a closed pipe is not worth an error message
        except OSError as exc:
            if exc.filename is None:
                # The library names the file of every error it raises: an error without
                # one is the command's own output failing (stdout on a full disk).
                output_failed(exc)
            mapped = translate(exc)
            fail(mapped or exc, mapped.exit_code if mapped else 1, as_json)
        except Exception as exc:
            if _is_click_exception(exc):
                raise  # main() handles these
            # The library maps its errors at its edge; this is the same mapping, for
            # anything that did not go through it.
            mapped = translate(exc)
            if mapped is not None:
                fail(mapped, mapped.exit_code, as_json)
            if isinstance(exc, ValueError):
                fail(exc, 1, as_json)
            raise
        finally:
            for warning in caught:
                if issubclass(warning.category, ReplaylogWarning):
                    echo(f"Warning: {warning.message}", err=True)


def exit_for(exc: BaseException, args: Sequence[str]) -> NoReturn:
    """The line and exit code of a failure that no command turned into one."""
    if isinstance(exc, KeyboardInterrupt):
        # (a command that did part of its work before it was stopped says what, in exc)
        fail(exc, 130, "--json" in args, str(exc) if exc.args else "interrupted")
    if isinstance(exc, BrokenPipeError):
        # The reader went away (`replaylog log F | head`): stop quietly, and keep Python
        # from complaining again when it flushes stdout at exit.
        silence_stdout()
        sys.exit(1)
    if isinstance(exc, OSError):
        if exc.filename is None:
            output_failed(exc)
        fail(exc, 1, "--json" in args)
    kind = f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins.")
    # SPEC 6: an error is one line, never a traceback.
    fail(exc, 1, "--json" in args, f"unexpected {kind}: {exc} (please report this)")


# --------------------------------------------------------------------------- append


class CliContext:
    """What the global options name: the root, the logs folder and the index."""

    def __init__(self, root: str | None, logs_dir: str, index: str | None) -> None:
        self.root = os.path.abspath(root) if root else find_root()
        self.logs_dir = logs_dir
        self.index = index

    def store(self) -> EventStore:
        return EventStore.from_environment(self.root, logs_dir=self.logs_dir, index_path=self.index)


#: The most of a file (or standard input) an option reads: a log line holds at most
#: 1 MiB, so a file many times longer cannot be a payload (``/dev/zero``, a pipe that
#: never ends); it is refused rather than read into memory without end.
MAX_INPUT_BYTES = 64 << 20


def read_file_text(path: str, what: str) -> tuple[str, str]:
    """``(where, text)`` of a file named by an option, ``-`` for standard input, read
    as UTF-8 (as JSON is) and at most :data:`MAX_INPUT_BYTES` of it."""
    where = "standard input" if path == "-" else path
    try:
        if path == "-":
            stream = getattr(sys.stdin, "buffer", None)
            if stream is None:  # a text stream put in its place
                text = sys.stdin.read(MAX_INPUT_BYTES + 1)
                data = text.encode("utf-8", "surrogatepass")
            else:
                data = stream.read(MAX_INPUT_BYTES + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_INPUT_BYTES + 1)
        if len(data) > MAX_INPUT_BYTES:
            raise UsageError(
                f"the {what} from {where} is longer than {MAX_INPUT_BYTES >> 20} MiB, and a"
                f" log line holds at most 1 MiB: give a file that holds the {what}"
            )
        return where, data.decode("utf-8")
    except OSError as exc:
        why = "it is a folder" if isinstance(exc, IsADirectoryError) else exc.strerror or exc
        raise UsageError(f"cannot read the {what} from {where}: {why}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"cannot read the {what} from {where}: not UTF-8 text (byte {exc.start + 1})"
        ) from exc


def json_object(text: str, what: str, where: str) -> dict[str, Any]:
    """A JSON object given by the user (no NaN or Infinity), or a UsageError naming it."""

    def no_constants(name: str) -> Any:
        raise UsageError(
            f"the {what} from {where} is not valid JSON: {name} is not allowed in the {what}"
        )

    def each_key_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):  # the parser would keep the last value of a key
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    raise UsageError(
                        f"the {what} from {where} holds the key {key!r} twice in one object:"
                        " the first value would be lost; give each key once"
                    )
                seen.add(key)
        return obj

    try:
        value = json.loads(text, parse_constant=no_constants, object_pairs_hook=each_key_once)
    except UsageError:
        raise
    except json.JSONDecodeError as exc:  # the parser's words, with line and column
        raise UsageError(f"the {what} from {where} is not valid JSON: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        # An integer too long for int(), nesting too deep: Python would say so in its own
        # terms ("use sys.set_int_max_str_digits()"); said as a log's reader says it.
        from .log.read import json_error_reason

        raise UsageError(
            f"the {what} from {where} is not valid JSON: {json_error_reason(exc)}"
        ) from exc
    if not isinstance(value, dict):
        raise UsageError(
            f"the {what} from {where} must be a JSON object, not {type(value).__name__}"
        )
    return value


def read_payload(payload: str | None, payload_file: str | None) -> dict[str, Any] | None:
    if payload is not None and payload_file is not None:
        raise UsageError("give --payload or --payload-file, not both")
    if payload_file is not None:
        where, text = read_file_text(payload_file, "payload")
    elif payload is not None:
        where, text = "--payload", payload
    else:
        return None
    return json_object(text, "payload", where)


def append_command(
    ctx: CliContext,
    feature: str,
    event_type: str,
    aggregate_id: str,
    payload: str | None,
    payload_file: str | None,
    causation_id: str | None,
    correlation_id: str | None,
    sync: bool,
    sync_timeout: float,
    url: str | None,
    token_env: str,
    allow_insecure_http: bool,
    as_json: bool,
) -> None:
    """``replaylog append``, once its parameters are parsed (by click or by :func:`main`)."""
    with errors(as_json):
        if sync and not url:
            raise UsageError("--sync needs a server: give --url or set REPLAYLOG_URL")
        body = read_payload(payload, payload_file)
        with ctx.store() as store:
            if sync:
                assert url is not None
                result = store.emit(
                    feature,
                    event_type,
                    aggregate_id,
                    body,
                    url=url,
                    token=os.environ.get(token_env) or None,
                    sync_timeout=sync_timeout,
                    causation_id=causation_id,
                    correlation_id=correlation_id,
                    allow_insecure_http=allow_insecure_http,
                )
                line = result.event.to_dict()
                if result.warning:
                    echo(f"Warning: {result.warning}", err=True)
            else:
                # The line object as written: what Event.to_dict gives of a new event.
                line = store._append_object(
                    feature,
                    event_type,
                    aggregate_id,
                    body,
                    causation_id,
                    correlation_id,
                )
        if as_json:
            json_out(line)
        else:
            echo(line["event_id"])


# --------------------------------------------------------------------------- parsing


class PathCheck(NamedTuple):
    """The checks of a ``click.Path`` option type, with click's defaults."""

    exists: bool = False
    file_okay: bool = True
    dir_okay: bool = True
    writable: bool = False
    readable: bool = True
    executable: bool = False
    resolve_path: bool = False
    allow_dash: bool = False

    def accepts(self, value: str) -> bool:
        """True if ``click.Path`` takes ``value`` and gives it back unchanged (then the
        value is used as it is); False sends the command line to click, which says why."""
        if self.resolve_path:
            return False
        if self.file_okay and self.allow_dash and value == "-":
            return True
        try:
            st = os.stat(value)
        except OSError:
            return not self.exists
        except ValueError:  # an embedded NUL: click's own error
            return False
        if not self.file_okay and stat.S_ISREG(st.st_mode):
            return False
        if not self.dir_okay and stat.S_ISDIR(st.st_mode):
            return False
        if self.readable and not os.access(value, os.R_OK):
            return False
        if self.writable and not os.access(value, os.W_OK):
            return False
        return not (self.executable and not os.access(value, os.X_OK))


class Option(NamedTuple):
    """One option of the click CLI: its parameter name and how click gets its value."""

    name: str
    is_flag: bool = False
    envvar: str | None = None
    default: Any = None
    required: bool = False
    path: PathCheck | None = None  # a click.Path type; None: a plain string (or flag)


#: The options of the ``replaylog`` group, as in :func:`replaylog.cli.cli`.
GROUP_OPTIONS: dict[str, Option] = {
    "--root": Option("root", envvar="REPLAYLOG_ROOT", path=PathCheck(exists=True, file_okay=False)),
    "--logs-dir": Option("logs_dir", envvar="REPLAYLOG_LOGS_DIR", default=DEFAULT_LOGS_DIR),
    "--index": Option("index", envvar="REPLAYLOG_INDEX", path=PathCheck(dir_okay=False)),
}

#: The options of ``replaylog append``, as in :func:`replaylog.cli.append`.
APPEND_OPTIONS: dict[str, Option] = {
    "--type": Option("event_type", required=True),
    "--aggregate": Option("aggregate_id", required=True),
    "--payload": Option("payload"),
    "--payload-file": Option("payload_file"),
    "--causation-id": Option("causation_id"),
    "--correlation-id": Option("correlation_id"),
    "--sync": Option("sync", is_flag=True, default=False),
    "--sync-timeout": Option("sync_timeout", default=2.0),
    "--url": Option("url", envvar="REPLAYLOG_URL"),
    "--token-env": Option("token_env", default="REPLAYLOG_TOKEN"),
    "--allow-insecure-http": Option("allow_insecure_http", is_flag=True, default=False),
    "--json": Option("as_json", is_flag=True, default=False),
}

#: The argument of ``replaylog append``.
APPEND_ARGUMENT = "feature"

#: Options of append that only click handles: given, they send the command line to it
#: (--sync talks to a server, so start-up is not what its time is spent on).
CLICK_ONLY = frozenset({"--sync", "--sync-timeout", "--url"})

#: click's shell completion is asked for through this variable (click's main).
_COMPLETE_VAR = "_REPLAYLOG_COMPLETE"


def _take_options(
    args: Sequence[str], start: int, table: Mapping[str, Option], *, interspersed: bool
) -> tuple[dict[str, Any], list[str], int] | None:
    """Parse ``args[start:]`` as click does: ``(values by parameter name, positional
    arguments, where it stopped)``; None for anything but options of ``table``, each
    given once, with their values."""
    values: dict[str, Any] = {}
    positional: list[str] = []
    i = start
    while i < len(args):
        arg = args[i]
        if arg[:1] != "-" or arg == "-":  # click: "-" is an argument, not an option
            if not interspersed:
                break
            positional.append(arg)
            i += 1
            continue
        name, equals, value = arg.partition("=")
        option = table.get(name)  # None as well for "--", a short option, --help ...
        if option is None or option.name in values:
            return None
        i += 1
        if option.is_flag:
            if equals:
                return None  # click: "Option '--json' does not take a value."
            values[option.name] = True
        elif equals:
            values[option.name] = value
        elif i < len(args):
            values[option.name] = args[i]  # whatever it is, as click takes it
            i += 1
        else:
            return None  # click: "Option '--type' requires an argument."
    return values, positional, i


def _resolve(
    table: Mapping[str, Option], given: dict[str, Any], environ: Mapping[str, str]
) -> dict[str, Any] | None:
    """Every parameter's value as click gives it: from the command line, else the
    environment variable (when not empty), else the default; None if click would refuse
    one (a missing required option, a path that fails its checks)."""
    values: dict[str, Any] = {}
    for option in table.values():
        value = given.get(option.name)
        if value is None and option.envvar:
            value = environ.get(option.envvar) or None
        if value is None:
            if option.required:
                return None
            value = option.default
        if option.path is not None and value is not None and not option.path.accepts(value):
            return None
        values[option.name] = value
    return values


def parse_append(
    args: Sequence[str], environ: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(group parameters, append parameters)`` of a plain ``replaylog ... append``
    command line, exactly as click would give them; None when click must parse it."""
    if environ.get(_COMPLETE_VAR):
        return None
    group = _take_options(args, 0, GROUP_OPTIONS, interspersed=False)
    if group is None:
        return None
    group_given, _, at = group
    if at >= len(args) or args[at] != "append":
        return None
    command = _take_options(args, at + 1, APPEND_OPTIONS, interspersed=True)
    if command is None:
        return None
    given, positional, _ = command
    if len(positional) != 1 or any(APPEND_OPTIONS[o].name in given for o in CLICK_ONLY):
        return None
    group_values = _resolve(GROUP_OPTIONS, group_given, environ)
    values = _resolve(APPEND_OPTIONS, given, environ)
    if group_values is None or values is None:
        return None
    values[APPEND_ARGUMENT] = positional[0]
    return group_values, values


class _PacifiedFlush:
    """A standard stream whose flush ignores a closed pipe: what click's main leaves
    after one, so that Python's own flush at exit does not change the exit code."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped

    def flush(self) -> None:
        try:
            self.wrapped.flush()
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


def _run_as_click_does(command: Callable[[], None], args: Sequence[str]) -> None:
    """Run ``command`` and meet what it raises as click's main (not standalone) and
    :func:`replaylog.cli.main` meet what a click command raises."""
    try:
        try:
            command()
            return
        except (EOFError, KeyboardInterrupt):
            echo(err=True)  # click's blank line, which closes a terminal's ^C
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise
            sys.stdout = _PacifiedFlush(sys.stdout)
            sys.stderr = _PacifiedFlush(sys.stderr)
            sys.exit(1)
    except (KeyboardInterrupt, Exception) as exc:
        exit_for(exc, args)
    # click turns the interrupt into Abort, which replaylog.cli.main prints so.
    echo("Error: interrupted", err=True)
    sys.exit(130)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``replaylog`` and ``python -m replaylog``."""
    args = sys.argv[1:] if argv is None else argv
    parsed = parse_append(args, os.environ)
    if parsed is None:
        from .cli import main as click_main

        click_main(args)
        return
    group, values = parsed

    def command() -> None:
        append_command(CliContext(**group), **values)

    _run_as_click_does(command, args)
