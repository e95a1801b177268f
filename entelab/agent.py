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

BEGIN = "# BEGIN ente-lab managed block"
END = "# END ente-lab managed block"
STATE_FILE = "/var/lib/ente-lab/last-converge.json"

# How a staged copy of each kind of file is checked. {stage} is the staged
# config tree root (mirrors /), {file} the staged file.
VALIDATE_DIRS = {"apache": "/etc/apache2", "postfix": "/etc/postfix"}
RELOAD_ORDER = ["users", "saslauthd", "dnsmasq", "postfix", "sendmail", "httpd",
                "docker-network", "ente-stack"]
RC = {"httpd": "rc.httpd", "postfix": "rc.postfix", "saslauthd": "rc.saslauthd",
      "dnsmasq": "rc.dnsmasq", "sendmail": "rc.sendmail"}


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
    data = path.read_bytes()
    if merge == "block":
        block = extract_block(data.decode(errors="replace"))
        digest = hashlib.sha256(block.encode()).hexdigest() if block is not None else ""
    else:
        digest = hashlib.sha256(data).hexdigest()
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return {"type": "file", "sha256": digest, "mode": "%04o" % (st.st_mode & 0o7777),
            "owner": owner, "group": group}


def facts(entries: list[dict], root: str = "/") -> dict:
    return {e["path"]: _fact(Path(root) / e["path"].lstrip("/"), e.get("merge", "whole"))
            for e in entries}


# ----------------------------------------------------------------- apply
def _run(cmd: str, env: dict | None = None) -> tuple[int, str]:
    proc = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def _validate(kind: str, ops: list[dict], bundle: Path, root: Path, stage: Path) -> tuple[bool, str]:
    """Check the staged copies of one validation kind. Returns (ok, output)."""
    staged = {op["path"]: bundle / "files" / op["path"].lstrip("/") for op in ops
              if op["action"] in ("write", "merge-block")}
    if not staged:
        return True, ""
    if kind in VALIDATE_DIRS:
        live = root / VALIDATE_DIRS[kind].lstrip("/")
        copy = stage / kind
        shutil.copytree(live, copy, symlinks=True)
        for path, src in staged.items():
            rel = Path(path).relative_to(VALIDATE_DIRS[kind])
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            if (copy / rel).is_symlink():
                (copy / rel).unlink()
            shutil.copyfile(src, copy / rel)
        if kind == "apache":
            return _flip(_run(f". {live}/envvars && mkdir -p \"$APACHE_RUN_DIR\" \"$APACHE_LOCK_DIR\" "
                              f"\"$APACHE_LOG_DIR\" && apache2 -t -d {copy} -f {copy}/apache2.conf"))
        return _flip(_run(f"postfix -c {copy} check && postconf -c {copy} -n >/dev/null"))
    outputs = []
    ok = True
    for path, src in staged.items():
        if kind == "sudoers":
            rc, out = _run(f"visudo -cf {src}")
        elif kind == "dnsmasq":
            rc, out = _run(f"dnsmasq --test -C {src}")
        elif kind == "shell":
            rc, out = _run(f"sh -n {src}")
        elif kind == "compose":
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
        else:
            rc, out = 0, ""
        ok = ok and rc == 0
        if rc:
            outputs.append(f"{path}: {out}")
    return ok, "\n".join(outputs)


def _flip(result: tuple[int, str]) -> tuple[bool, str]:
    return result[0] == 0, result[1]


def _install(op: dict, bundle: Path, root: Path) -> None:
    dest = root / op["path"].lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    action = op["action"]
    if action == "link":
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        dest.symlink_to(op["target"])
        return
    if action in ("write", "merge-block"):
        src = bundle / "files" / op["path"].lstrip("/")
        if action == "merge-block":
            current = dest.read_text() if dest.exists() else ""
            data = merge_block(current, src.read_text(), top=op.get("top", False)).encode()
        else:
            data = src.read_bytes()
        if dest.is_symlink():        # e.g. resolv.conf managed elsewhere: replace the link
            dest.unlink()
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".ente-lab-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, int(op["mode"], 8))
        _chown(tmp, op)
        os.replace(tmp, dest)
        return
    if action in ("chmod", "chown", "attrs"):
        os.chmod(dest, int(op["mode"], 8))
        _chown(dest, op)


def _chown(path, op: dict) -> None:
    try:
        uid = pwd.getpwnam(op["owner"]).pw_uid
        gid = grp.getgrnam(op["group"]).gr_gid
    except KeyError:
        uid = gid = -1   # user not there yet: created by the users step, re-owned next run
    if os.geteuid() == 0:
        os.chown(path, uid, gid)


def _reload(service: str, root: Path) -> tuple[bool, str]:
    if service in RC:
        script = root / "etc/rc.d" / RC[service]
        if not script.exists():
            return False, f"{script} missing"
        running = _run(f"{script} status")[0] == 0
        rc, out = _run(f"{script} {'reload' if running else 'start'}")
        if rc == 0 and _run(f"{script} status")[0] != 0:
            # e.g. a Postfix setting that needs a full restart: the daemon died on reload
            rc2, out2 = _run(f"{script} start")
            return False, f"{out}\n{service} was not running after the reload; start: {out2}"
        return rc == 0, out
    if service == "users":
        return _apply_users(root)
    return True, "nothing to do yet (managed by a later stage)"


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
    plan = json.loads((bundle / "plan.json").read_text())
    ops: list[dict] = plan["ops"]
    report: dict = {"installed": [], "refused": {}, "reloaded": [], "reload_failed": {},
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    stage = Path(tempfile.mkdtemp(prefix="ente-lab-stage-"))
    try:
        by_kind: dict[str, list[dict]] = {}
        for op in ops:
            by_kind.setdefault(op.get("validate", "none"), []).append(op)
        refused_paths = set()
        for kind, kops in by_kind.items():
            ok, out = _validate(kind, kops, bundle, root, stage)
            if not ok:
                for op in kops:
                    if op["action"] in ("write", "merge-block"):
                        report["refused"][op["path"]] = out[-2000:]
                        refused_paths.add(op["path"])
        services = []
        for op in ops:
            if op["path"] in refused_paths:
                continue
            _install(op, bundle, root)
            report["installed"].append(f"{op['action']} {op['path']}")
            if op.get("reload", "none") != "none" and op["action"] != "attrs":
                services.append(op["reload"])
        # A refused file's service is never reloaded, even if another of its files changed.
        blocked = {op.get("reload") for op in ops if op["path"] in refused_paths}
        for service in RELOAD_ORDER:
            if service in services and service not in blocked:
                if not reload:
                    report["reloaded"].append(service)
                    continue
                ok, out = _reload(service, root)
                (report["reloaded"].append(service) if ok
                 else report["reload_failed"].__setitem__(service, out[-2000:]))
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
