"""Guest-side half of converge, part 2: the staged-copy checks, one per
``vocab.Validator``. Standard library only: shipped to the VM beside agent.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

try:                        # on the host (tests) ...
    from . import vocab
except ImportError:         # ... and in the guest, beside agent.py
    import vocab  # type: ignore[no-redef]

Action, Validator = vocab.Action, vocab.Validator

# Validators that check a staged copy of a whole configuration directory.
VALIDATE_DIRS = {Validator.APACHE: "/etc/apache2", Validator.POSTFIX: "/etc/postfix"}
# Validators that check one staged file: the command, {src} the staged file.
VALIDATE_FILE = {Validator.SUDOERS: "visudo -cf {src}", Validator.DNSMASQ: "dnsmasq --test -C {src}",
                 Validator.SHELL: "sh -n {src}"}


def run(cmd: str, env: dict | None = None) -> tuple[int, str]:
    proc = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def validate(kind: vocab.Validator, ops: list[vocab.Op], bundle: Path, root: Path,
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
            return _flip(run(f". {live}/envvars && mkdir -p \"$APACHE_RUN_DIR\" \"$APACHE_LOCK_DIR\" "
                              f"\"$APACHE_LOG_DIR\" && apache2 -t -d {copy} -f {copy}/apache2.conf"))
        return _flip(run(f"postfix -c {copy} check && postconf -c {copy} -n >/dev/null"))
    outputs = []
    ok = True
    for path, src in staged.items():
        if kind in VALIDATE_FILE:
            rc, out = run(VALIDATE_FILE[kind].format(src=src))
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
            rc, out = run(f"cd {proj} && docker-compose -f {Path(path).name} config -q")
        else:   # every Validator is handled above; a new one must be added here
            rc, out = 1, f"validator {kind.value!r} has no implementation in the agent"
        ok = ok and rc == 0
        if rc:
            outputs.append(f"{path}: {out}")
    return ok, "\n".join(outputs)


def _flip(result: tuple[int, str]) -> tuple[bool, str]:
    return result[0] == 0, result[1]
