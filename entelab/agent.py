#!/usr/bin/env python3
"""Guest-side half of converge. Standard library only: it is shipped to the VM.

Two verbs, one SSH round trip each:
  facts  <entries.json>           -> JSON facts for every managed path
  apply  <bundle-dir>             -> stage, validate, install, reload; JSON report

``apply`` validates every changed file on a *staged copy* of its service's
configuration (apachectl configtest, postfix check, visudo -c, dnsmasq --test,
sh -n, docker-compose config). A group that fails validation is not installed:
the live files stay as they were and its service is not reloaded.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:                        # on the host (tests, converge's planner) ...
    from . import vocab
except ImportError:         # ... and in the guest, where vocab.py is shipped beside this file
    import vocab  # type: ignore[no-redef]

Action, Validator, Reload, Op = vocab.Action, vocab.Validator, vocab.Reload, vocab.Op
BEGIN = vocab.BLOCK_BEGIN_PREFIX
END = vocab.BLOCK_END
STATE_FILE = vocab.STATE_FILE

# Validators that check a staged copy of a whole configuration directory.
VALIDATE_DIRS = {Validator.APACHE: "/etc/apache2", Validator.POSTFIX: "/etc/postfix"}
# Validators that check one staged file: the command, {src} the staged file.
VALIDATE_FILE = {Validator.SUDOERS: "visudo -cf {src}", Validator.DNSMASQ: "dnsmasq --test -C {src}",
                 Validator.SHELL: "sh -n {src}"}


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
def _run(cmd: str, env: dict | None = None) -> tuple[int, str]:
    proc = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def _validate(kind: vocab.Validator, ops: list[vocab.Op], bundle: Path, root: Path,
              stage: Path) -> tuple[bool, str]:
    """Check the staged copies of one validation kind. Returns (ok, output)."""
    staged = {op.path: bundle / "files" / op.path.lstrip("/") for op in ops
              if op.action in (Action.WRITE, Action.MERGE_BLOCK)}
    if not staged or kind is Validator.NONE:
        return True, ""
    if kind in VALIDATE_DIRS:
        live = root / VALIDATE_DIRS[kind].lstrip("/")
        copy = stage / kind.value
        shutil.copytree(live, copy, symlinks=True)
        for path, src in staged.items():
            rel = Path(path).relative_to(VALIDATE_DIRS[kind])
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            if (copy / rel).is_symlink():
                (copy / rel).unlink()
            shutil.copyfile(src, copy / rel)
        if kind is Validator.APACHE:
            return _flip(_run(f". {live}/envvars && mkdir -p \"$APACHE_RUN_DIR\" \"$APACHE_LOCK_DIR\" "
                              f"\"$APACHE_LOG_DIR\" && apache2 -t -d {copy} -f {copy}/apache2.conf"))
        return _flip(_run(f"postfix -c {copy} check && postconf -c {copy} -n >/dev/null"))
    outputs = []
    ok = True
    for path, src in staged.items():
        if kind in VALIDATE_FILE:
            rc, out = _run(VALIDATE_FILE[kind].format(src=src))
        elif kind is Validator.COMPOSE:
            proj = stage / "compose"
            live = (root / path.lstrip("/")).parent
            if live.is_dir():
                shutil.copytree(live, proj, symlinks=True, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("ente-git"))
            proj.mkdir(exist_ok=True)
            for other, osrc in staged.items():
                if Path(other).parent == Path(path).parent:
                    shutil.copyfile(osrc, proj / Path(other).name)
            shutil.copyfile(src, proj / Path(path).name)
            for ctx in ("ente-git/web", "ente-git/cli"):   # build contexts: checked by the stack
                (proj / ctx).mkdir(parents=True, exist_ok=True)
            rc, out = _run(f"cd {proj} && docker-compose -f {Path(path).name} config -q")
        else:   # every Validator is handled above; a new one must be added here
            rc, out = 1, f"validator {kind.value!r} has no implementation in the agent"
        ok = ok and rc == 0
        if rc:
            outputs.append(f"{path}: {out}")
    return ok, "\n".join(outputs)


def _flip(result: tuple[int, str]) -> tuple[bool, str]:
    return result[0] == 0, result[1]


def _install(op: vocab.Op, bundle: Path, root: Path) -> None:
    dest = root / op.path.lstrip("/")
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


def _reload(service: vocab.Reload, root: Path) -> tuple[bool, str]:
    if service in vocab.RC_SCRIPT:
        script = root / "etc/rc.d" / vocab.RC_SCRIPT[service]
        if not script.exists():
            return False, f"{script} missing"
        running = _run(f"{script} status")[0] == 0
        rc, out = _run(f"{script} {'reload' if running else 'start'}")
        if rc == 0 and _run(f"{script} status")[0] != 0:
            # e.g. a Postfix setting that needs a full restart: the daemon died on reload
            rc2, out2 = _run(f"{script} start")
            return False, f"{out}\n{service} was not running after the reload; start: {out2}"
        return rc == 0, out
    if service is Reload.USERS:
        return _apply_users(root)
    return False, f"no reload implemented for {service.value!r}"


def _apply_users(root: Path) -> tuple[bool, str]:
    """Apply /etc/ente-lab/users.conf (format: templates/users/NOTES.md). Idempotent.

    user:NAME:COMMENT:PRIMARY_GROUP:HOME:SHELL:CREATE_HOME:SYSTEM:PASSWORD_HASH
    member:USER:GROUP
    """
    conf = root / "etc/ente-lab/users.conf"
    if not conf.exists():
        return True, "no users.conf"
    out = []

    def run(argv: list[str], stdin: str | None = None) -> int:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True)
        if proc.returncode:
            out.append(f"{' '.join(argv[:2])}...: {proc.stderr.strip()}")
        return proc.returncode

    ok = True
    for line in conf.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split(":")
        if fields[0] == "user" and len(fields) >= 9:
            _, name, comment, group, home, shell, create_home, system = fields[:8]
            pwhash = ":".join(fields[8:])
            if group == name and subprocess.run(["getent", "group", group], capture_output=True).returncode:
                ok &= run(["groupadd", "--system", group]) == 0
            exists = subprocess.run(["id", "-u", name], capture_output=True).returncode == 0
            if not exists:
                argv = ["useradd", "-c", comment, "-g", group, "-d", home, "-s", shell]
                argv += ["-m"] if create_home == "yes" else ["-M"]
                argv += ["--system"] if system == "yes" else []
                ok &= run(argv + [name]) == 0
                out.append(f"created user {name}")
            else:
                ok &= run(["usermod", "-c", comment, "-g", group, "-d", home, "-s", shell, name]) == 0
            if pwhash and pwhash != "!":
                ok &= run(["chpasswd", "-e"], stdin=f"{name}:{pwhash}\n") == 0
            elif pwhash == "!":
                run(["usermod", "-L", name])
        elif fields[0] == "member" and len(fields) == 3:
            _, user, group = fields
            groups = subprocess.run(["id", "-nG", user], capture_output=True, text=True).stdout.split()
            if group not in groups:
                ok &= run(["usermod", "-aG", group, user]) == 0
                out.append(f"added {user} to {group}")
        else:
            out.append(f"users.conf: ignored malformed line {line[:40]!r}")
    return bool(ok), "\n".join(out) or "users up to date"


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
            ok, out = _validate(kind, kops, bundle, root, stage)
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
            else:
                ok, out = _reload(service, root)
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
