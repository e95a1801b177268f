"""Guest-side half of converge, part 3: the lab's accounts, from
/etc/ente-lab/users.conf (the ``users`` reload). Standard library only: shipped
to the VM beside agent.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def apply_users(root: Path) -> tuple[bool, str]:
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
