"""One finished ``python -m replaylog`` process, shared by the bad-input and security tests."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20


@dataclass(frozen=True)
class Run:
    """What a CLI process did: its exit code, output, time and (when measured) memory."""

    args: tuple[str, ...]
    code: int
    out: str
    err: str
    seconds: float
    peak_rss: int | None = None  # bytes, when the runner measured it
    cpu: float = 0.0  # seconds of CPU, user and system

    def __str__(self) -> str:
        memory = f", {self.peak_rss // MiB} MiB" if self.peak_rss is not None else ""
        return (
            f"replaylog {' '.join(self.args)} -> exit {self.code} in {self.seconds:.1f} s"
            f"{memory}\nstdout: {self.out[-2000:]!r}\nstderr: {self.err!r}"
        )

    def error_line(self) -> str:
        """The one ``Error: ...`` line on stderr; fails if stderr holds anything else."""
        assert "Traceback" not in self.out + self.err, self
        lines = self.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), self
        return lines[0]
