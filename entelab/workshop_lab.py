"""The workshop against the VM (issue 17): ``lab.workshop.start/check/solve/reset``.

``make_base`` (run by ``lab.up --workshop`` instead of the lab's own converge): the
lab's own converge and the certificates from the lab CA (an http-01 challenge needs the
Apache step's vhosts, and pebble looks the names up through the dnsmasq step: neither
can be left undone before issuing), then one converge that takes every step back to its
starting state (workshop.plan_for with no step done) and the steps' undo commands, then
the snapshot ``workshop-base`` (disk + memory, like every lab snapshot; counted in the
cap of ``snapshot.MAX_SNAPSHOTS``). No snapshot is taken per step: ``start STEP`` and
``reset STEP`` restore ``workshop-base`` and run the one converge that brings every
step before STEP to the lab's files (and the stack up once "Running the server" is
among them); without a base (a lab brought up plainly) the same converge takes the
running lab back to the start of STEP, from wherever it is (directories and the
stack's data stay).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from . import converge, snapshot, workshop
from . import secrets as secrets_mod
from .errors import StageFailed
from .guest import Guest
from .progress import console, info, stage, warn
from .render import Entry, load_manifest, render_lab
from .settings import Settings
from .state import LabPaths

COLOURS = {workshop.DONE: "green", workshop.NOT_DONE: "yellow", workshop.WRONG: "bold red",
           workshop.PITFALL: "magenta"}


def rendered_pairs(paths: LabPaths) -> list[tuple[Entry, bytes]]:
    """The manifest with each file's rendered bytes (build/rootfs)."""
    out = []
    for e in load_manifest(paths):
        data = (paths.rendered / e.path.lstrip("/")).read_bytes() if e.kind == "file" else b""
        out.append((e, data))
    return out


def _state_file(paths: LabPaths) -> Path:
    return paths.home / "workshop.json"


def current(paths: LabPaths) -> str:
    try:
        return str(json.loads(_state_file(paths).read_text()).get("step", ""))
    except (OSError, ValueError):
        return ""


def _run(guest: Guest, commands: list[str], what: str) -> None:
    for cmd in commands:
        res = guest.run(cmd, check=False, stream="rc.ente start" in cmd)
        if not res.ok:
            raise StageFailed(f"{what}: {cmd} failed: {guest.redact(res.output)[-400:]}",
                              hint="./labctl lab.ssh; ./labctl lab.status")


def apply_plan(guest: Guest, paths: LabPaths, plan: workshop.Plan, what: str) -> converge.ConvergeResult:
    tree = paths.build / "workshop" / "rootfs"
    if tree.exists():
        import shutil
        shutil.rmtree(tree)
    workshop.write_tree(plan, tree)
    with stage(f"workshop: {what}", hint="./labctl lab.status; ./labctl lab.ssh"):
        result = converge.converge_entries(guest, plan.entries, tree, paths.build / "workshop",
                                           force=plan.force)
        converge.show(result)
        if not result.ok:
            raise StageFailed("some files were refused or a reload failed (see above)")
        _run(guest, plan.undo, what)
        _run(guest, plan.after, what)
    return result


def make_base(guest: Guest, paths: LabPaths, settings: Settings) -> None:
    """Certificates issued from the fully converged lab, then every step taken back to
    its starting state; then the snapshot workshop-base (replacing an older one)."""
    from . import certs
    converge.converge(guest, paths)
    certs.issue(guest, paths, "--if-stale")     # lab.up --workshop: right after the boot's run
    plan = workshop.plan_for(rendered_pairs(paths), [], settings)
    apply_plan(guest, paths, plan, "the article's assumptions in place, every step left to do")
    if workshop.BASE_SNAPSHOT in snapshot.names(paths):
        snapshot.forget(paths, workshop.BASE_SNAPSHOT)
    snapshot.snapshot(paths, workshop.BASE_SNAPSHOT)
    _state_file(paths).write_text(json.dumps({"step": workshop.STEP_NAMES[0]}))
    info(f"workshop base ready: ./labctl lab.workshop.start {workshop.STEP_NAMES[0]} (or any later step)")


def start(paths: LabPaths, settings: Settings, step: str, guest_factory) -> None:
    """Bring the lab to the start of STEP: every earlier step done, STEP onward left to do."""
    workshop.get(step)
    restored = workshop.BASE_SNAPSHOT in snapshot.names(paths)
    if restored:
        snapshot.restore(paths, workshop.BASE_SNAPSHOT, settings)
    else:
        warn(f"no {workshop.BASE_SNAPSHOT} snapshot (./labctl lab.up --workshop takes it): the "
             "running lab is taken to the start of the step instead; directories and the "
             "stack's data stay as they are")
    render_lab(paths, settings, quiet=True)
    guest = guest_factory()
    if restored:
        guest.close()        # an SSH connection older than the restore was reset by it: a new one
    plan = workshop.plan_for(rendered_pairs(paths), workshop.steps_before(step), settings)
    apply_plan(guest, paths, plan, f"every step before {step} done, {step} onward left to do")
    _state_file(paths).write_text(json.dumps({"step": step}))
    s = workshop.get(step)
    console.print(f"[bold]workshop step {step}[/]: {escape(s.title)} "
                  f"(article section \"{escape(s.section)}\")\n  type: {escape(s.types)}\n"
                  "  then: ./labctl lab.workshop.check")


def solve(paths: LabPaths, settings: Settings, step: str, guest: Guest) -> None:
    """Converge STEP alone (its files as the lab renders them; later steps untouched)."""
    s = workshop.get(step)
    render_lab(paths, settings, quiet=True)
    pairs = rendered_pairs(paths)
    entries = [e for e, _ in pairs if s.owns(e) or s.force(e)]
    fmt = workshop.command_fields(settings, pairs)
    plan = workshop.Plan(entries=entries, texts={e.path: d for e, d in pairs if e in entries},
                         force=frozenset(e.path for e in entries if s.force(e)),
                         after=[c.format(**fmt) for c in s.after])
    if not entries and not plan.after:
        info(f"{step}: nothing to converge (the attendee's step is done by hand): {s.types}")
        return
    apply_plan(guest, paths, plan, f"solve {step}")


def facts(guest: Guest, paths: LabPaths, settings: Settings,
          steps: Iterable[str] = ()) -> tuple[workshop.Facts, workshop.Context]:
    """The guest's facts in one round trip: the probes the checks of ``steps`` read
    (every probe when none is named)."""
    pairs = rendered_pairs(paths)
    ctx = workshop.context(settings, pairs)
    password = secrets_mod.load_or_create(paths.secrets, dry_run=True)[0].sasl_password
    args = workshop.facts_args(settings, ctx, [e for e, _ in pairs], password, workshop.probes_for(steps))
    answer = guest.python(workshop.FACTS_PROGRAM, args, sudo=True, name="workshop facts")
    return workshop.facts_from(answer if isinstance(answer, dict) else {}), ctx


def table(verdicts: list[workshop.Verdict], at: str = "") -> Table:
    out = Table(title="ente-lab workshop" + (f" (started at {at})" if at else ""))
    for col in ("#", "step", "state", "symptom", "reread (article section)"):
        out.add_column(col)
    for i, v in enumerate(verdicts, 1):
        label = escape(v.label) + "".join(f"\n(./labctl lab.explain {p})" for p in v.pitfalls)
        out.add_row(str(i), v.step, f"[{COLOURS[v.state]}]{label}[/]", escape(v.symptom),
                    escape(v.section) if v.state != workshop.DONE else "")
    return out


def check(paths: LabPaths, settings: Settings, guest: Guest, steps: Iterable[str] = ()) -> list[workshop.Verdict]:
    """Every step's verdict, or only those of ``steps`` (their probes alone: faster; an
    unknown step is refused by ``workshop.probes_for`` before the round trip)."""
    f, ctx = facts(guest, paths, settings, steps)
    verdicts = workshop.check_all(f, ctx, steps)
    console.print(table(verdicts, current(paths)))
    return verdicts
