"""The body of each task (tasks.py only declares them): load settings once, run, map errors to exits.

Each function here is what one task does; the work itself lives in the module
named after the concept (settings, render, host, box, vm, converge, certs ...).
Settings are loaded here, once per task, and passed down.

Exit codes (README): 0 ok, 1 a stage failed, 2 bad input (nothing changed),
70 internal error (traceback in ``<state dir>/logs/internal-error.log``),
130 interrupted.
"""

from __future__ import annotations

import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from rich.markup import escape

from . import state
from .errors import EXIT_INTERNAL, EXIT_INTERRUPTED, BadInput, LabError, StageFailed
from .progress import console, report, warn
from .settings import Settings, load_settings


def _internal_log() -> Any:
    path = state.paths(state.ROOT).logs / "internal-error.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
    except OSError:
        return state.ROOT / "build" / "internal-error.log"


def run(fn: Callable[..., Any], **kwargs: Any) -> None:
    """Run a task body; turn errors into one message and the documented exit code."""
    try:
        fn(**kwargs)
    except LabError as exc:
        report(exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]")
        sys.exit(EXIT_INTERRUPTED)
    except Exception:  # noqa: BLE001 - a bug: log the traceback, one line for the user
        log = _internal_log()
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a") as fh:
                fh.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {fn.__name__}\n")
                fh.write(traceback.format_exc())
        except OSError:
            pass
        console.print(f"[bold red]internal error[/] (a bug in ente-lab, not in your input); "
                      f"the traceback is in {escape(str(log))}")
        sys.exit(EXIT_INTERNAL)


def _paths() -> state.LabPaths:
    return state.paths(state.ROOT)


def load(overrides: Sequence[str] = ()) -> Settings:
    """The task's settings: loaded once, warnings shown once."""
    settings, warnings = load_settings(state.ROOT, list(overrides))
    for w in warnings:
        warn(w)
    return settings


# ------------------------------------------------------------ settings / render
def show_settings(overrides: Sequence[str]) -> None:
    from .render import settings_table
    console.print(settings_table(load(overrides)))


def render(overrides: Sequence[str], rotate: bool = False) -> None:
    from .render import render_lab
    render_lab(_paths(), load(overrides), rotate=rotate)


# ------------------------------------------------------------ host / box / vm
def host_prepare(dry_run: bool = False) -> None:
    from . import host
    host.prepare(_paths(), dry_run=dry_run)


def host_restore() -> None:
    from . import host
    host.restore(_paths())


def build_box(force: bool = False) -> None:
    from . import box
    box.build(_paths(), force=force)


def up(overrides: Sequence[str], workshop: bool = False) -> None:
    from . import lab
    lab.up(_paths(), load(overrides), workshop=workshop)


def down() -> None:
    from . import vm
    vm.down(_paths())


def destroy(yes: bool = False) -> None:
    from . import vm
    vm.destroy(_paths(), yes=yes)


def status() -> None:
    from . import lab
    from .errors import SettingsError
    try:
        on: list[str] | None = load().pitfalls.on
    except SettingsError:
        on = None           # status still shows the VM; lab.settings names the problem
    lab.status(_paths(), pitfalls_on=on)


def explain(name: str) -> None:
    from . import pitfalls
    console.print(pitfalls.explain(name), markup=False, highlight=False, soft_wrap=True)


def pitfalls_table() -> None:
    from . import pitfalls
    console.print(pitfalls.table(load().pitfalls.on))


def ssh(command: str = "") -> None:
    from . import vm
    vm.ssh(_paths(), command=command)


def logs(service: str, follow: bool = False, tail: int = 200) -> None:
    from . import stack, vm
    name = stack.service_name(service)
    args = ["logs", "--no-color", f"--tail={tail}"] + (["--follow"] if follow else []) + [name]
    vm.ssh(_paths(), command="sudo sh -c " + shlex.quote(stack.compose_command(load(), *args)))


def converge_lab(overrides: Sequence[str]) -> None:
    from . import certs, converge, lab
    from .render import render_lab
    paths = _paths()
    settings = load(overrides)
    render_lab(paths, settings)
    guest = lab.guest(paths)
    result = converge.converge(guest, paths)
    # a new name list (pitfalls.mail_cert_mismatch adds a lineage): issue what it names
    if certs.dehydrated_conf(settings).domains in {op.path for op in result.ops}:
        certs.issue(guest, paths)


def issue_certs() -> None:
    from . import certs, lab
    paths = _paths()
    certs.issue(lab.guest(paths), paths)


def renew(overrides: Sequence[str] = ()) -> None:
    from . import certs, lab
    paths = _paths()
    certs.renew(lab.guest(paths), paths, load(overrides))


def tests(which: str = "all", k: str = "", keep: bool = False, budget: str = "0") -> None:
    from . import testrun
    if not str(budget).isdigit() or int(budget) > 24 * 60:
        raise BadInput(f"--budget {budget!r}: whole minutes, 0 (no limit) to 1440",
                       hint="e.g. ./labctl test.all --budget 80")
    rc = testrun.run(_paths(), load(), which=which, k=k, keep=keep, budget_min=int(budget))
    if rc:
        raise StageFailed(f"tests failed (pytest exit {rc})", hint="read the pytest summary above")


# ------------------------------------------------------------ snapshots / suspend (issue 11)
def take_snapshot(name: str) -> None:
    from . import snapshot
    snapshot.snapshot(_paths(), name=name)


def restore_snapshot(name: str) -> None:
    from . import snapshot
    snapshot.restore(_paths(), name=name, settings=load())


def snapshots() -> None:
    from . import snapshot
    snapshot.show(_paths())


def forget(name: str) -> None:
    from . import snapshot
    snapshot.forget(_paths(), name=name)


def suspend() -> None:
    from . import snapshot
    snapshot.suspend(_paths())


def resume() -> None:
    from . import snapshot
    snapshot.resume(_paths(), load())


# ------------------------------------------------------------ mail and administration (issue 14)
def mail(address: str = "", show: int = 0) -> None:
    from . import lab, mailbox
    from .admin import check_email
    if address:
        check_email(address)
    mailbox.mail(lab.guest(_paths()), address=address, show_n=show)


def ott(email: str) -> None:
    from . import admin, lab
    admin.check_email(email)
    settings = load()
    admin.ott(lab.guest(_paths()), settings, email)


def users(admin_email: str = "") -> None:
    from . import admin, lab
    settings = load()
    admin.users(lab.guest(_paths()), settings, admin=admin_email)


def promote(email: str) -> None:
    from . import admin, lab
    admin.check_email(email)                 # bad input: refused before anything
    settings = load()
    paths = _paths()
    admin.promote(lab.guest(paths), paths, settings, email)


def cli_account_add() -> None:
    from . import admin, lab, vm
    settings = load()
    paths = _paths()
    admin.need_cli(lab.guest(paths), settings)
    vm.ssh(paths, command=admin.cli_account_add_command(), tty=True)


def cli_unlimited(email: str, admin_email: str) -> None:
    from . import admin, lab
    admin.check_email(email)
    admin.check_email(admin_email)
    settings = load()
    admin.cli_unlimited(lab.guest(_paths()), settings, email, admin_email)


# ------------------------------------------------------------ production (issue 18)
def diff(host: str, user: str = "", port: int = 22, identity: str = "", sudo: bool = False,
         root: str = "/", overrides: Sequence[str] = ()) -> None:
    from . import proddiff
    proddiff.run_diff(host, load(overrides), _paths().secrets, user=user, port=port,
                      identity=identity, sudo=sudo, root=root)


def import_(host: str, user: str = "", port: int = 22, identity: str = "", sudo: bool = False,
            root: str = "/", with_secrets: bool = False, output: str = "", secrets_file: str = "",
            force: bool = False) -> None:
    from pathlib import Path

    from . import prodimport
    paths = _paths()
    out = Path(output) if output else state.ROOT / "settings.local.yaml"
    sec = Path(secrets_file) if secrets_file else paths.secrets
    prodimport.run_import(host, load().paths.compose_dir, out, sec, user=user, port=port,
                          identity=identity, sudo=sudo, root=root, with_secrets=with_secrets,
                          force=force)


# ------------------------------------------------------------ verify and upgrade (issue 16)
def verify() -> None:
    from . import lab
    from . import verify as verify_mod
    paths = _paths()
    settings = load()
    verify_mod.verify(lab.guest(paths), paths, settings)


def upgrade(sets: Sequence[str], file: str = "", plan: bool = False, naive: bool = False,
            keep_on_failure: bool = False) -> None:
    from . import upgrade_lab
    upgrade_lab.run(_paths(), list(sets), file=file, plan_only=plan, naive=naive,
                    keep_on_failure=keep_on_failure)


# ------------------------------------------------------------ workshop (issue 17)
def workshop_start(step: str) -> None:
    from . import lab, workshop, workshop_lab
    workshop.get(step)                      # bad input: refused before anything
    paths = _paths()
    workshop_lab.start(paths, load(), step, lambda: lab.guest(paths))


def workshop_reset(step: str) -> None:
    workshop_start(step)


def workshop_check(steps: list[str] | None = None) -> None:
    from . import lab, workshop, workshop_lab
    for name in steps or []:
        workshop.get(name)          # an unknown step: the known ones, before any SSH
    paths = _paths()
    workshop_lab.check(paths, load(), lab.guest(paths), steps or [])


def workshop_solve(step: str) -> None:
    from . import lab, workshop, workshop_lab
    workshop.get(step)
    paths = _paths()
    workshop_lab.solve(paths, load(), step, lab.guest(paths))


def workshop_steps() -> None:
    from rich.table import Table

    from . import workshop
    table = Table(title="the workshop's steps, in the article's order")
    for col in ("#", "step", "article section", "what the attendee types"):
        table.add_column(col)
    for i, s in enumerate(workshop.STEPS, 1):
        table.add_row(str(i), s.name, s.section, escape(s.types))
    console.print(table)
