"""Progress for every user-facing step: one line per stage with its duration.

Long steps send their output to a log file (``hostrun.run(log=...)``); the user
sees the stage line, and on failure: the error once, the last lines of the log
named by the error (or the stage's own log) and what to look at next.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from .errors import LabError, StageFailed

console = Console(highlight=False, stderr=False)

def _tail(path: Path, lines: int = 25) -> str:
    try:
        with path.open(errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines))
    except OSError:
        return ""


def report(exc: LabError, prefix: str = "") -> None:
    """Print a lab error once: the message, the log's tail, then the hint."""
    if exc.reported:
        return
    exc.reported = True
    console.print(f"[bold red]{escape(prefix or exc.label)}:[/] {escape(exc.message)}")
    log = Path(exc.log) if exc.log else None
    if log is not None and log.exists():
        console.print(f"[dim]--- last lines of {escape(str(log))} ---[/]")
        console.print(_tail(log), markup=False, end="")
        console.print(f"[dim]--- full log: {escape(str(log))} ---[/]")
    if exc.hint:
        console.print(f"[yellow]next:[/] {escape(exc.hint)}")


@contextmanager
def stage(name: str, log: Path | None = None, hint: str = "") -> Iterator[None]:
    """Announce a stage, time it, report ok/failed.

    A failure is printed here, once (``report``), and re-raised as a ``LabError``
    marked reported: a ``LabError`` keeps its own kind (and exit code), gaining
    this stage's log and hint when it has none; an ``OSError`` (a file, a
    socket) becomes ``StageFailed``. Anything else is a bug in the lab: it is
    re-raised as it is, for ``task_bodies.run`` to log (exit 70). ``KeyboardInterrupt``
    passes through untouched.
    """
    start = time.monotonic()
    console.print(f"[bold cyan]>>[/] {escape(name)} ...")
    try:
        yield
    except LabError as exc:
        took = time.monotonic() - start
        if not exc.reported:
            exc.log = exc.log or (str(log) if log else None)
            exc.hint = exc.hint or hint
            console.print(f"[bold red]FAILED[/] {escape(name)} after {took:.1f}s")
            report(exc)
        raise
    except OSError as exc:
        took = time.monotonic() - start
        console.print(f"[bold red]FAILED[/] {escape(name)} after {took:.1f}s")
        err = StageFailed(f"{name}: {exc}", hint=hint, log=str(log) if log else None)
        report(err)
        raise err from exc
    except Exception:
        took = time.monotonic() - start
        console.print(f"[bold red]FAILED[/] {escape(name)} after {took:.1f}s (internal error)")
        raise
    took = time.monotonic() - start
    console.print(f"[bold green]ok[/] {escape(name)} ({took:.1f}s)")


def info(msg: str) -> None:
    console.print(msg, markup=False)


def warn(msg: str) -> None:
    console.print(f"[yellow]warning:[/] {escape(msg)}")
