#!/usr/bin/env python3
"""Guest-side half of converge. Standard library only: it is shipped to the VM.

Two verbs, one SSH round trip each:
  facts  <entries.json>           -> JSON facts for every managed path
  apply  <bundle-dir>             -> stage, validate, install, reload; JSON report

``apply`` validates every changed file on a *staged copy* of its service's
configuration (agent_validate.py: apachectl configtest, postfix check, visudo -c,
dnsmasq --test, sh -n, docker-compose config). A group that fails validation is
not installed: the live files stay as they were and its service is not reloaded.
Accounts (the ``users`` reload) are agent_users.py's; every kind, validator and
reload name is vocab.py's.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import shlex
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Iterable
from pathlib import Path

try:                        # on the host (tests, converge's planner) ...
    from . import vocab
except ImportError:         # ... and in the guest, where vocab.py is shipped beside this file
    import vocab  # type: ignore[no-redef]

Action, Validator, Reload, Op = vocab.Action, vocab.Validator, vocab.Reload, vocab.Op


def _sibling(name: str) -> types.ModuleType:
    """agent_validate / agent_users: imported only by ``apply`` (the facts program,
    run inline, ships the vocabulary alone)."""
    import importlib
    try:
        return importlib.import_module(f"{__package__}.{name}") if __package__ else importlib.import_module(name)
    except ImportError:
        return importlib.import_module(name)

BEGIN = vocab.BLOCK_BEGIN_PREFIX
END = vocab.BLOCK_END
STATE_FILE = vocab.STATE_FILE

def extract_block(text: str) -> str | None:
    start = text.find(BEGIN)
    if start < 0:
        return None
    end = text.find(END, start)
    if end < 0:
        return None
    end = text.find("\n", end)
    return text[start:] if end < 0 else text[start:end + 1]


def merge_block(current: str, block: str, top: bool) -> str:
    old = extract_block(current)
    if old is not None:
        return current.replace(old, block if block.endswith("\n") else block + "\n", 1)
    if top:
        return block + current
    if current and not current.endswith("\n"):
        current += "\n"
    return current + block


def _fact(path: Path, merge: str) -> dict:
    if path.is_symlink():
        return {"type": "link", "target": os.readlink(path)}
    if not path.exists():
        return {"type": "missing"}
    st = path.stat()
    if path.is_dir():
        return {"type": "dir", **_owner(st)}
    data = path.read_bytes()
    if merge == "block":
        block = extract_block(data.decode(errors="replace"))
        digest = hashlib.sha256(block.encode()).hexdigest() if block is not None else ""
    else:
        digest = hashlib.sha256(data).hexdigest()
    return {"type": "file", "sha256": digest, **_owner(st)}


def _owner(st: os.stat_result) -> dict:
    """mode, owner and group of a stat result, by name where the name exists."""
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return {"mode": "%04o" % (st.st_mode & 0o7777), "owner": owner, "group": group}


def facts(entries: list[dict], root: str = "/") -> dict:
    return {e["path"]: _fact(Path(root) / e["path"].lstrip("/"), e.get("merge", "whole"))
            for e in entries}


# ----------------------------------------------------------------- apply
def _install(op: vocab.Op, bundle: Path, root: Path) -> None:
    dest = root / op.path.lstrip("/")
    if op.action is Action.REMOVE:
        if dest.is_symlink() or dest.is_file():
            dest.unlink()
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    if op.action is Action.LINK:
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        dest.symlink_to(op.target)
        return
    if op.action is Action.MKDIR:
        dest.mkdir(exist_ok=True)
        os.chmod(dest, int(op.mode, 8))
        _chown(dest, op)
        return
    if op.action in (Action.WRITE, Action.MERGE_BLOCK):
        src = bundle / "files" / op.path.lstrip("/")
        if op.action is Action.MERGE_BLOCK:
            current = dest.read_text() if dest.exists() else ""
            data = merge_block(current, src.read_text(), top=op.top).encode()
        else:
            data = src.read_bytes()
        if dest.is_symlink():        # e.g. resolv.conf managed elsewhere: replace the link
            dest.unlink()
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".ente-lab-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, int(op.mode, 8))
        _chown(tmp, op)
        os.replace(tmp, dest)
        return
    # Action.ATTRS: content is right, mode/owner drifted
    os.chmod(dest, int(op.mode, 8))
    _chown(dest, op)


def _chown(path: str | Path, op: vocab.Op) -> None:
    try:
        uid = pwd.getpwnam(op.owner).pw_uid
        gid = grp.getgrnam(op.group).gr_gid
    except KeyError:
        uid = gid = -1   # user not there yet: created by the users step, re-owned next run
    if os.geteuid() == 0:
        os.chown(path, uid, gid)


def _running(service: vocab.Reload, root: Path) -> bool:
    script = root / "etc/rc.d" / vocab.RC_SCRIPT[service]
    return script.exists() and _sibling("agent_validate").run(f"{script} status")[0] == 0


def _checked(service: vocab.Reload, ops: list[vocab.Op]) -> bool:
    """Every changed file that asks for this reload was written and passed the check its
    rc script would run again (vocab.RELOAD_CHECKED)."""
    if service not in vocab.RELOAD_CHECKED:
        return False
    changed = [op for op in ops if op.action is not Action.ATTRS]
    return bool(changed) and all(op.action in (Action.WRITE, Action.MERGE_BLOCK)
                                 and op.validate is vocab.RELOAD_CHECKED[service][0] for op in changed)


def _reload(service: vocab.Reload, root: Path, paths: Iterable[str] = (), running: bool | None = None,
            checked: bool = False) -> tuple[bool, str]:
    """Reload one service; ``paths``: the changed files that asked for it; ``running``:
    its status when the caller asked already (one ``status`` less: seconds for rc.ente
    under TCG); ``checked``: each of those files was written and passed the service's own
    check on a staged copy (vocab.RELOAD_CHECKED: the rc script skips its second one)."""
    if service in vocab.RC_SCRIPT:
        script = root / "etc/rc.d" / vocab.RC_SCRIPT[service]
        if not script.exists():
            return False, f"{script} missing"
        run = _sibling("agent_validate").run
        if running is None:
            running = run(f"{script} status")[0] == 0
        extra = ""
        if service is Reload.ENTE_STACK and running:
            names = sorted({svc for p in paths for svc in vocab.STACK_BIND_MOUNTS.get(Path(p).name, ())})
            extra = "".join(f" {shlex.quote(n)}" for n in names)
        env = {vocab.RELOAD_CHECKED[service][1]: "1"} if checked and running else None
        rc, out = run(f"{script} {'reload' + extra if running else 'start'}", env=env)
        if rc == 0 and run(f"{script} status")[0] != 0:
            # e.g. a Postfix setting that needs a full restart: the daemon died on reload
            rc2, out2 = run(f"{script} start")
            return False, f"{out}\n{service} was not running after the reload; start: {out2}"
        return rc == 0, out
    if service is Reload.USERS:
        return _sibling("agent_users").apply_users(root)
    return False, f"no reload implemented for {service.value!r}"


def apply(bundle: Path, root: Path = Path("/"), reload: bool = True) -> dict:
    """Stage, validate, install, reload. With ``reload=False`` (tests), nothing is
    reloaded: what would have been is listed under ``would_reload``."""
    report: dict = {"installed": [], "refused": {}, "reloaded": [], "reload_failed": {},
                    "skipped": {}, "would_reload": [],
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    raw = json.loads((bundle / "plan.json").read_text())["ops"]
    try:
        ops = [Op.from_dict(d) for d in raw]
    except (vocab.UnknownKind, KeyError) as exc:
        # a plan this agent does not understand: install nothing at all
        report["refused"] = {str(d.get("path", "?")): f"refused plan: {exc}" for d in raw}
        return report
    stage = Path(tempfile.mkdtemp(prefix="ente-lab-stage-"))
    try:
        by_kind: dict[vocab.Validator, list[vocab.Op]] = {}
        for op in ops:
            by_kind.setdefault(op.validate, []).append(op)
        refused_paths = set()
        for kind, kops in by_kind.items():
            ok, out = _sibling("agent_validate").validate(kind, kops, bundle, root, stage)
            if not ok:
                for op in kops:
                    if op.action in (Action.WRITE, Action.MERGE_BLOCK):
                        report["refused"][op.path] = out[-2000:]
                        refused_paths.add(op.path)
        services = []
        for op in ops:
            if op.path in refused_paths:
                continue
            _install(op, bundle, root)
            report["installed"].append(f"{op.action.value} {op.path}")
            if op.reload is not Reload.NONE and op.action is not Action.ATTRS:
                services.append(op.reload)
        # A refused file's service is never reloaded, even if another of its files changed.
        blocked = {op.reload for op in ops if op.path in refused_paths}
        for service in vocab.RELOAD_ORDER:
            if service not in services or service in blocked:
                continue
            if service in vocab.NOT_IMPLEMENTED:
                report["skipped"][service.value] = vocab.NOT_IMPLEMENTED[service]
            elif not reload:
                report["would_reload"].append(service.value)
            elif service in vocab.ONLY_WHEN_RUNNING and not _running(service, root):
                report["skipped"][service.value] = vocab.ONLY_WHEN_RUNNING[service]
            else:
                mine = [op for op in ops if op.reload is service and op.path not in refused_paths]
                ok, out = _reload(service, root, [op.path for op in mine], checked=_checked(service, mine),
                                  running=True if service in vocab.ONLY_WHEN_RUNNING else None)
                if ok:
                    report["reloaded"].append(service.value)
                else:
                    report["reload_failed"][service.value] = out[-2000:]
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    state = root / STATE_FILE.lstrip("/")
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({**report, "changed": len(report["installed"])}, indent=1))
    return report


def main(args: list[str]) -> int:
    """args: ``facts <base64 JSON entries>`` | ``apply <bundle dir>``."""
    verb = args[0] if args else ""
    if verb == "facts":
        import base64
        entries = json.loads(base64.b64decode(args[1]))
        print(json.dumps(facts(entries)))
        return 0
    if verb == "apply":
        report = apply(Path(args[1]))
        print(json.dumps(report))
        return 1 if report["refused"] or report["reload_failed"] else 0
    print("usage: agent.py facts|apply ...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    # Run as a file (agent.py apply DIR) or through Guest.python (argv: -c facts ...)
    sys.exit(main(sys.argv[1:]))
