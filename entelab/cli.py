"""Adapters between tasks.py and the package: load settings, map errors to exits.

Each function here is what one task does; the work itself lives in the module
named after the concept (settings, render, host, box, vm, converge, certs ...).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from . import state
from .progress import StageFailed, console, warn
from .settings import SettingsError, load_settings


def run(fn: Callable, **kwargs) -> None:
    """Run a task body; turn the lab's own errors into a message and exit 1."""
    try:
        fn(**kwargs)
    except SettingsError as exc:
        console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        sys.exit(2)
    except StageFailed as exc:
        console.print(f"[bold red]failed:[/] {exc}")
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]")
        sys.exit(130)


def _paths() -> state.LabPaths:
    return state.paths(state.ROOT)


def _settings(overrides):
    settings, warnings = load_settings(state.ROOT, overrides)
    for w in warnings:
        warn(w)
    return settings


# ------------------------------------------------------------ settings / render
def show_settings(overrides) -> None:
    from .render import settings_table
    console.print(settings_table(_settings(overrides)))


def render(overrides, rotate=False):
    from . import render as r
    return r.render_lab(_paths(), _settings(overrides), rotate=rotate)


# ------------------------------------------------------------ host / box / vm
def host_prepare(dry_run=False):
    from . import host
    host.prepare(_paths(), dry_run=dry_run)


def host_restore():
    from . import host
    host.restore(_paths())


def box(force=False):
    from . import box as b
    b.build(_paths(), force=force)


def up(overrides):
    from . import lab
    lab.up(_paths(), _settings(overrides))


def down():
    from . import vm
    vm.down(_paths())


def destroy(yes=False):
    from . import vm
    vm.destroy(_paths(), yes=yes)


def status():
    from . import lab
    lab.status(_paths())


def ssh(command=""):
    from . import vm
    vm.ssh(_paths(), command=command)


def converge(overrides):
    from . import converge as cv
    render(overrides)
    cv.converge(_paths())


def certs():
    from . import certs as ct
    ct.issue(_paths())


def renew():
    from . import certs as ct
    ct.renew(_paths())


def tests(which="all", k="", keep=False):
    from . import testrun
    rc = testrun.run(_paths(), which=which, k=k, keep=keep)
    if rc:
        raise StageFailed(f"tests failed (pytest exit {rc})")


# ------------------------------------------------------------ snapshots / suspend (issue 11)
def _snap(verb: str, **kwargs) -> None:
    """Run a verb of entelab.snapshot; a LabError outside a stage is a message, not a traceback."""
    from . import snapshot as sn
    from .errors import LabError
    try:
        getattr(sn, verb)(_paths(), **kwargs)
    except LabError as exc:
        console.print(f"[bold red]{exc.label}:[/] {exc.message}", markup=True, highlight=False)
        if exc.hint:
            console.print(f"[yellow]next:[/] {exc.hint}", markup=True, highlight=False)
        sys.exit(exc.exit_code)


def snapshot(name):
    _snap("snapshot", name=name)


def restore_snapshot(name):
    _snap("restore", name=name)


def snapshots():
    _snap("show")


def forget(name):
    _snap("forget", name=name)


def suspend():
    _snap("suspend")


def resume():
    _snap("resume")
