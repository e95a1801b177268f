"""Converge: put the rendered tree into the VM, changing only what differs.

Facts vs operations (pyinfra style): ``plan(entries, facts)`` is pure and
tested as data. Against the VM it costs a constant number of SSH round trips,
whatever the number of files: 1 (facts) when nothing changed, else 3
(facts, upload one bundle, apply). The guest half is ``entelab/agent.py``.
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from rich.markup import escape
from rich.table import Table

from . import agent, vocab
from .errors import GuestCommandError, StageFailed
from .guest import Guest
from .progress import console, stage
from .render import Entry, load_manifest
from .state import LabPaths
from .vocab import Action, Op, Reload, Validator

AGENT_SRC = Path(agent.__file__).read_text()
VOCAB_SRC = Path(vocab.__file__).read_text()
# the guest side of converge: what the bundle ships beside plan.json
GUEST_MODULES = ("agent.py", "agent_validate.py", "agent_users.py", "vocab.py")
# The facts program: the vocabulary installed as module ``vocab``, then the agent.
FACTS_PROGRAM = (f"import sys, types\nsys.modules['vocab'] = _m = types.ModuleType('vocab')\n"
                 f"exec(compile({VOCAB_SRC!r}, 'vocab.py', 'exec'), _m.__dict__)\n"
                 f"exec(compile({AGENT_SRC!r}, 'agent.py', 'exec'))\n")
TOP_OF_FILE = {"/etc/resolv.conf"}   # the article: "add this line at the top"
REMOTE_BUNDLE = "/tmp/ente-lab-bundle"


def plan(entries: list[Entry], facts: dict) -> list[Op]:
    """Operations that bring the guest to the manifest. [] when converged."""
    ops: list[Op] = []
    for e in entries:
        f = facts.get(e.path, {"type": "missing"})

        def op(action: Action, validate: Validator | None = None, e: Entry = e, **kw: object) -> Op:
            return Op(path=e.path, action=action, mode=e.mode, owner=e.owner, group=e.group,
                      reload=Reload(e.reload), validate=validate or Validator(e.validate),
                      **kw)  # type: ignore[arg-type]

        if e.kind == "absent":
            if f.get("type") in ("file", "link"):
                ops.append(op(Action.REMOVE, Validator.NONE))
            continue
        if e.kind == "link":
            if f.get("type") != "link" or f.get("target") != e.target:
                ops.append(op(Action.LINK, Validator.NONE, target=e.target))
            continue
        if e.kind == "datadir":      # created when missing; its container sets owner and mode
            if f.get("type") != "dir":
                ops.append(op(Action.MKDIR, Validator.NONE))
            continue
        if e.kind == "dir":
            if f.get("type") != "dir":
                ops.append(op(Action.MKDIR, Validator.NONE))
            elif (f.get("mode"), f.get("owner"), f.get("group")) != (e.mode, e.owner, e.group):
                ops.append(op(Action.ATTRS, Validator.NONE))
            continue
        if e.merge == "block":
            if f.get("type") != "file" or f.get("sha256") != e.sha256:
                ops.append(op(Action.MERGE_BLOCK, top=e.path in TOP_OF_FILE))
            continue
        if f.get("type") != "file" or f.get("sha256") != e.sha256:
            ops.append(op(Action.WRITE))
        elif (f.get("mode"), f.get("owner"), f.get("group")) != (e.mode, e.owner, e.group):
            ops.append(op(Action.ATTRS, Validator.NONE))
    return ops


def bundle(ops: list[Op], rendered: Path) -> bytes:
    """One tar.gz: the guest modules, plan.json and the files the plan writes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name: str, data: bytes, mode: int = 0o600) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
        for name in GUEST_MODULES:
            add(name, (Path(agent.__file__).parent / name).read_bytes(), 0o600)
        add("plan.json", json.dumps({"ops": [op.to_dict() for op in ops]}).encode())
        for op in ops:
            if op.action in (Action.WRITE, Action.MERGE_BLOCK):
                add("files/" + op.path.lstrip("/"), (rendered / op.path.lstrip("/")).read_bytes())
    return buf.getvalue()


def remote_facts(guest: Guest, entries: list[Entry]) -> dict[str, Any]:
    payload = base64.b64encode(json.dumps(
        [{"path": e.path, "merge": e.merge} for e in entries]).encode()).decode()
    return cast(dict[str, Any], guest.python(FACTS_PROGRAM, argv=["facts", payload], sudo=True,
                                             name="converge agent: facts"))


@dataclass
class ConvergeResult:
    ops: list[Op]
    report: dict = field(default_factory=dict)
    round_trips: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.report.get("refused") or self.report.get("reload_failed"))


def converge_with(guest: Guest, paths: LabPaths) -> ConvergeResult:
    return converge_entries(guest, load_manifest(paths), paths.rendered, paths.build)


def converge_entries(guest: Guest, entries: list[Entry], rendered: Path, build: Path,
                     force: frozenset[str] = frozenset()) -> ConvergeResult:
    """Converge ``entries`` (the manifest, or a subset: lab.workshop) from the tree
    ``rendered``; ``force``: paths written (and reloaded) even when they match."""
    start = time.monotonic()
    trips = guest.round_trips
    facts = remote_facts(guest, entries)
    ops = plan(entries, {p: f for p, f in facts.items() if p not in force})
    result = ConvergeResult(ops=ops)
    if ops:
        build.mkdir(parents=True, exist_ok=True)
        local = build / "bundle.tar.gz"
        local.write_bytes(bundle(ops, rendered))
        local.chmod(0o600)
        guest.put(str(local), f"{REMOTE_BUNDLE}.tar.gz")
        res = guest.run(f"rm -rf {REMOTE_BUNDLE} && mkdir -m 700 {REMOTE_BUNDLE} && "
                        f"tar -xzf {REMOTE_BUNDLE}.tar.gz -C {REMOTE_BUNDLE} && rm -f {REMOTE_BUNDLE}.tar.gz && "
                        f"python3 {REMOTE_BUNDLE}/agent.py apply {REMOTE_BUNDLE}; rc=$?; "
                        f"rm -rf {REMOTE_BUNDLE}; exit $rc", check=False)
        try:
            result.report = json.loads(res.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise GuestCommandError("converge agent: apply", res.exited, guest.redact(res.stderr),
                                    hint="./labctl lab.ssh --command 'sudo python3 --version'") from None
    result.round_trips = guest.round_trips - trips
    result.seconds = time.monotonic() - start
    return result


def show(result: ConvergeResult) -> None:
    if not result.ops:
        console.print(f"converge: no change (0 files, 0 reloads; {result.round_trips} SSH round trip)")
        return
    table = Table(title="converge")
    table.add_column("file")
    table.add_column("action")
    table.add_column("result")
    refused = result.report.get("refused", {})
    for op in result.ops:
        table.add_row(escape(op.path), op.action.value,
                      "[red]REFUSED (live file kept)[/]" if op.path in refused else "[green]installed[/]")
    console.print(table)
    for path, out in refused.items():
        console.print(f"[red]refused[/] {escape(path)}: validation failed:\n{escape(out)}")
    console.print(f"reloaded: {', '.join(result.report.get('reloaded', [])) or 'nothing'}")
    for name, why in result.report.get("skipped", {}).items():
        console.print(f"not reloaded: {escape(name)} ({escape(why)})")
    for svc, out in result.report.get("reload_failed", {}).items():
        console.print(f"[red]reload failed[/] {escape(svc)}: {escape(out)}\n"
                      f"  next: ./labctl lab.ssh -c '/etc/rc.d/rc.{svc} status'")
    console.print(f"converge: {len(result.ops) - len(refused)} changed, {len(refused)} refused, "
                  f"{result.round_trips} SSH round trips, {result.seconds:.1f}s")


def converge(guest: Guest, paths: LabPaths) -> ConvergeResult:
    with stage("converge: push rendered files that differ", hint="./labctl lab.status; ./labctl lab.ssh"):
        result = converge_with(guest, paths)
        show(result)
        if not result.ok:
            raise StageFailed("some files were refused or a reload failed (see above)")
    return result


def last_converge(guest: Guest) -> dict[str, Any]:
    text = guest.read(agent.STATE_FILE, sudo=False)
    try:
        return cast(dict[str, Any], json.loads(text or "{}"))
    except ValueError:
        return {}
