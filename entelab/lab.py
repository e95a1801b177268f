"""The lab as a whole: bring it up stage by stage, and show its status.

Each task loads the settings once (``task_bodies``) and passes them down; nothing here
or below reads them from disk again.
"""

from __future__ import annotations

import ipaddress
import shlex

from rich.markup import escape
from rich.table import Table

from . import accel, certs, converge, health, host, payload, pitfalls, snapshot, stack, vm
from . import box as boxmod
from . import secrets as secrets_mod
from .errors import LabError
from .guest import Guest
from .progress import console, stage
from .render import load_manifest, render_lab
from .settings import Settings
from .state import LabPaths, ensure_dirs


def guest(paths: LabPaths) -> Guest:
    """The guest runner for this lab, redacting every lab secret from its errors."""
    try:
        known = secrets_mod.load_or_create(paths.secrets, dry_run=True)[0].values()
    except LabError:
        known = []
    return Guest.reach(paths, secrets=known)


def up(paths: LabPaths, settings: Settings, workshop: bool = False) -> None:
    """``workshop``: after the payload, workshop_lab.make_base instead of the rest (the
    converge and the certificates, then every step back to its start, then the
    workshop-base snapshot; docs/workshop.md)."""
    ensure_dirs(paths)
    host.prepare(paths)
    if settings.vm.provider == "libvirt":
        vm.check_network_free(paths, settings.vm.management_network,
                              avoid=[ipaddress.IPv4Network(settings.docker.subnet)])
    with stage("render"):
        render_lab(paths, settings)
    boxmod.build(paths, prepare=False)
    if settings.vm.accel == "auto":
        accel.probe(paths)
    if snapshot.suspended(snapshot.dominfo(paths)):
        # its memory is saved (lab.suspend): resume it, clock corrected and checked,
        # rather than let Vagrant start it with a stale clock
        snapshot.resume(paths, settings)
    vm.up(paths)
    with stage("boot: wait for rc.M (rc-slackware.service) to finish starting services"):
        g = guest(paths)
        health.wait_boot(g)
    if settings.stack.payload == "auto":
        settings = payload.resolve_auto(g, settings)
        with stage("render (the resolved payload)"):
            render_lab(paths, settings)
    payload.deliver(g, settings)
    if workshop:
        from . import workshop_lab
        workshop_lab.make_base(g, paths, settings)
        return
    converge.converge(g, paths)
    # the boot's rc.M ran the refresh: it is not run again when nothing it reads changed
    certs.issue(g, paths, "--if-stale")
    health.smoke(g, settings)
    stack.start(g, settings)
    stack.smoke(g, settings)


def pitfalls_in_vm(g: Guest, paths: LabPaths) -> list[str]:
    """The pitfalls live in the VM: marker comments in the lab's files there (the
    manifest's list), whatever the settings say now."""
    try:
        files = [e.path for e in load_manifest(paths) if e.kind == "file"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if not files:
        return []
    cmd = (f"grep -h -o -E {shlex.quote(pitfalls.MARKED.pattern.replace(chr(92) + '1', '[a-z_]+'))}"
           f" -- {' '.join(shlex.quote(f) for f in files)} 2>/dev/null || true")
    return pitfalls.marked(g.run(cmd, check=False).stdout)


def _pitfalls_row(names: list[str] | None) -> str:
    if names is None:
        return "[red]unknown (the settings do not load: ./labctl lab.settings)[/]"
    return "[bold red]" + ", ".join(names) + "[/] (./labctl lab.explain NAME)" if names else "none"


def status(paths: LabPaths, pitfalls_on: list[str] | None = None) -> None:
    """``pitfalls_on``: the switches on in the settings (None: the settings do not load)."""
    st = vm.state(paths)
    table = Table(title=f"ente-lab {paths.lab_id}", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    suspended = st["state"] == "shut off" and snapshot.suspended(snapshot.dominfo(paths))
    table.add_row("state", "suspended (memory saved; ./labctl lab.resume)" if suspended else st["state"])
    table.add_row("provider", st["provider"])
    table.add_row("acceleration", st["accel"])
    table.add_row("address", st["address"] or "-")
    table.add_row("state dir", str(paths.home))
    table.add_row("pitfalls on (settings)", _pitfalls_row(pitfalls_on))
    if st["state"] == "running":
        _guest_status(paths, table)
    else:
        console.print(table)


def _guest_status(paths: LabPaths, table: Table) -> None:
    """Each service's state (from its rc.d script) and the last converge."""
    try:
        g = guest(paths)
        for name, st in health.services(g).items():
            table.add_row(f"rc.{name}", st if st == "stopped" else f"[green]{st}[/]")
        table.add_row("stack.payload", stack.payload_in_guest(g))
        table.add_row("pitfalls live in the VM", _pitfalls_row(pitfalls_in_vm(g, paths)))
        last = converge.last_converge(g)
        found = stack.containers(g)
    except LabError as exc:     # status must still print what it has
        table.add_row("guest", f"[red]unreachable over SSH: {escape(exc.message)}[/]")
        console.print(table)
        return
    if last:
        table.add_row("last converge", f"{last.get('time', '?')}: {last.get('changed', 0)} changed, "
                      f"reloaded {', '.join(last.get('reloaded', [])) or 'nothing'}, "
                      f"{len(last.get('refused', {}))} refused")
    else:
        table.add_row("last converge", "never")
    console.print(table)
    console.print(stack.table(found) if found else "Ente stack: no containers (./labctl lab.up starts it)")
