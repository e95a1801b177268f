"""The one runner for commands on the host.

Every host subprocess of the lab goes through ``run()`` (mkosi style): output is
either appended to a log file (long steps: apt, mmdebstrap, vagrant) or captured
(short queries: virsh, dpkg-query, iptables), and a failure raises
``HostCommandError`` with the command, the exit code and the output tail or the
log to read. ``spawn()`` is the one place a long-lived process is started
(the acceleration probe's trial boot), ``interactive()`` the one place a command
gets the user's terminal (``lab.ssh``).

The libvirt URI and the Vagrant environment are defined here, once.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import HostCommandError
from .state import LabPaths

LIBVIRT_URI = "qemu:///system"


@dataclass
class Result:
    """What a command did, on the host (argv) or in the VM (a shell command line)."""

    cmd: list[str] | str
    exited: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.exited == 0

    @property
    def output(self) -> str:
        return (self.stdout + self.stderr).strip()


def _show(cmd: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(c)) for c in cmd)


def run(cmd: Sequence[str | os.PathLike], *, log: Path | None = None, check: bool = True,
        env: Mapping[str, str] | None = None, cwd: Path | None = None,
        input: str | None = None, timeout: float | None = None, hint: str = "") -> Result:
    """Run ``cmd`` on the host.

    With ``log``: stdout+stderr are appended to it (after a ``$ cmd`` line) and
    the Result holds no output. Without: output is captured. ``check`` raises
    ``HostCommandError`` on a non-zero exit (or a missing program, exit 127).
    """
    argv = [str(c) for c in cmd]
    try:
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a") as fh:
                fh.write(f"\n$ {_show(argv)}\n")
                fh.flush()
                proc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                      input=input, text=True, timeout=timeout,
                                      stdin=None if input is not None else subprocess.DEVNULL)
            res = Result(argv, proc.returncode)
        else:
            proc = subprocess.run(argv, capture_output=True, env=env, cwd=cwd, input=input,
                                  text=True, timeout=timeout,
                                  stdin=None if input is not None else subprocess.DEVNULL)
            res = Result(argv, proc.returncode, proc.stdout, proc.stderr)
    except FileNotFoundError:
        res = Result(argv, 127, "", f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired:
        res = Result(argv, 124, "", f"timed out after {timeout}s")
    if check and not res.ok:
        raise HostCommandError(_show(argv), res.exited, res.output, hint=hint,
                               log=str(log) if log else None)
    return res


def spawn(cmd: Sequence[str | os.PathLike]) -> subprocess.Popen:
    """Start a process with its stdout+stderr on a pipe (the caller reads and reaps it)."""
    return subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def interactive(cmd: Sequence[str | os.PathLike], *, env: Mapping[str, str] | None = None,
                cwd: Path | None = None) -> int:
    """Run with the user's terminal attached; returns the exit code."""
    return subprocess.run([str(c) for c in cmd], env=env, cwd=cwd).returncode


# ------------------------------------------------------------------ libvirt / vagrant
def virsh(*args: str, check: bool = False, timeout: float = 120) -> Result:
    """``virsh -c qemu:///system ARGS``, captured.

    Hot paths (state, pool, volumes) use virsh rather than python-vagrant: every
    Vagrant call starts Ruby and costs seconds; virsh answers in milliseconds.
    """
    return run(["virsh", "-c", LIBVIRT_URI, *args], check=check, timeout=timeout)


def vagrant_env(p: LabPaths, provider: str = "libvirt") -> dict[str, str]:
    """The environment every Vagrant call of this lab runs with."""
    return dict(os.environ, VAGRANT_HOME=str(p.vagrant_home), VAGRANT_CHECKPOINT_DISABLE="1",
                VAGRANT_NO_COLOR="1", VAGRANT_DEFAULT_PROVIDER=provider,
                ENTE_LAB_STATE_DIR=str(p.home), ENTE_LAB_ID=p.lab_id)


def vagrant_log(p: LabPaths) -> Path:
    return p.logs / "vagrant.log"


def vagrant(p: LabPaths, *args: str, provider: str = "libvirt", check: bool = True,
            capture: bool = False, hint: str = "") -> Result:
    """``vagrant ARGS`` in the checkout with the lab's environment.

    Output goes to ``logs/vagrant.log`` unless ``capture`` (for machine-readable
    queries such as ``vagrant box list``).
    """
    return run(["vagrant", *args], log=None if capture else vagrant_log(p), check=check,
               env=vagrant_env(p, provider), cwd=p.root, hint=hint)
