"""The lab as a whole: bring it up stage by stage, and show its status."""

from __future__ import annotations

from rich.table import Table

from . import accel, host, vm
from . import box as boxmod
from .progress import console, stage
from .state import LabPaths, ensure_dirs


def render(paths: LabPaths, settings) -> None:
    from . import render as r
    with stage("render"):
        r.render_lab(paths, settings)


def up(paths: LabPaths, settings) -> None:
    ensure_dirs(paths)
    host.prepare(paths)
    render(paths, settings)
    boxmod.build(paths, prepare=False)
    if settings.vm.accel == "auto":
        accel.probe(paths)
    vm.up(paths)
    # converge -> certificates -> smoke check (issues 4 and 5)
    from . import certs, converge, verify
    from .connection import connect
    with stage("boot: wait for rc.M (rc-slackware.service) to finish starting services"):
        verify.wait_boot(connect(paths))
    converge.converge(paths)
    certs.issue(paths)
    verify.smoke(paths)


def status(paths: LabPaths) -> None:
    st = vm.state(paths)
    table = Table(title=f"ente-lab {paths.lab_id}", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    table.add_row("state", st["state"])
    table.add_row("provider", st["provider"])
    table.add_row("acceleration", st["accel"])
    table.add_row("address", st["address"] or "-")
    table.add_row("state dir", str(paths.home))
    if st["state"] == "running":
        _guest_status(paths, table)
    console.print(table)


def _guest_status(paths: LabPaths, table: Table) -> None:
    """Each service's state (from its rc.d script) and the last converge."""
    from . import converge, verify
    from .connection import connect
    try:
        conn = connect(paths)
        for name, st in verify.services(conn).items():
            table.add_row(f"rc.{name}", st if st == "stopped" else f"[green]{st}[/]")
        last = converge.last_converge(conn)
    except Exception as exc:  # noqa: BLE001 - status must still print what it has
        table.add_row("guest", f"[red]unreachable over SSH: {exc}[/]")
        return
    if last:
        table.add_row("last converge", f"{last.get('time', '?')}: {last.get('changed', 0)} changed, "
                      f"reloaded {', '.join(last.get('reloaded', [])) or 'nothing'}, "
                      f"{len(last.get('refused', {}))} refused")
    else:
        table.add_row("last converge", "never")
