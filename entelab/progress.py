"""Progress for every user-facing step: one line per stage with its duration.

Long steps send their output to a log file (``run_logged``); the user sees the
stage line, and on failure the last lines of the log and its path.
"""

from __future__ import annotations

import subprocess
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from rich.console import Console

console = Console(highlight=False, stderr=False)


class StageFailed(Exception):
    """A stage failed; the message says what to look at next."""


def _tail(path: Path, lines: int = 25) -> str:
    try:
        with path.open(errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines))
    except OSError:
        return ""


@contextmanager
def stage(name: str, log: Path | None = None, hint: str = "") -> Iterator[None]:
    """Announce a stage, time it, report ok/failed. Re-raises as StageFailed."""
    start = time.monotonic()
    console.print(f"[bold cyan]>>[/] {name} ...")
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - reported, then re-raised
        took = time.monotonic() - start
        console.print(f"[bold red]FAILED[/] {name} after {took:.1f}s: {exc}")
        if log is not None and log.exists():
            console.print(f"[dim]--- last lines of {log} ---[/]")
            console.print(_tail(log), markup=False, end="")
            console.print(f"[dim]--- full log: {log} ---[/]")
        if hint:
            console.print(f"[yellow]next:[/] {hint}")
        if isinstance(exc, StageFailed):
            raise
        raise StageFailed(f"{name}: {exc}") from exc
    took = time.monotonic() - start
    console.print(f"[bold green]ok[/] {name} ({took:.1f}s)")


def run_logged(cmd: Sequence[str], log: Path, env: dict | None = None,
               cwd: Path | None = None, check: bool = True) -> int:
    """Run a command with stdout+stderr appended to ``log``; raise on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as fh:
        fh.write(f"\n$ {' '.join(map(str, cmd))}\n")
        fh.flush()
        rc = subprocess.call(list(map(str, cmd)), stdout=fh, stderr=subprocess.STDOUT,
                             env=env, cwd=cwd)
    if check and rc != 0:
        raise StageFailed(f"{cmd[0]} exited {rc} (see {log})")
    return rc


def info(msg: str) -> None:
    console.print(msg)


def warn(msg: str) -> None:
    console.print(f"[yellow]warning:[/] {msg}")
