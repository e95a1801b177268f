"""The one runner for commands in the lab VM.

``Guest`` owns the SSH connection (Fabric) and is the only code that talks to
the VM: ``run`` a shell command (as root through ``sudo -n`` unless
``sudo=False``), run a standard-library ``python`` program and read its JSON
answer, ``put`` a file. It counts SSH round trips (``round_trips``) so converge
and the benchmarks can prove how many they cost, and raises
``GuestCommandError`` carrying the command with every known secret replaced by
``<secret>``, the exit code and the output tail.

Address, user, port and key come from python-vagrant (``vm.ssh_info``, cached).
"""

from __future__ import annotations

import base64
import json
import shlex
from collections.abc import Callable, Iterable

from fabric import Config, Connection
from invoke.exceptions import CommandTimedOut
from paramiko.ssh_exception import SSHException

from .errors import GuestCommandError
from .hostrun import Result
from .state import LabPaths

# exec a base64-encoded program given as argv[1]; the rest of argv is its own
_PY_EXEC = "python3 -c 'import base64,sys; exec(base64.b64decode(sys.argv.pop(1)))'"


class Guest:
    """Commands in the VM over one SSH connection."""

    def __init__(self, conn: Connection, secrets: Iterable[str] = ()):
        self.conn = conn
        self.secrets = [s for s in secrets if s]
        self.round_trips = 0

    # ---------------------------------------------------------------- plumbing
    @classmethod
    def connect(cls, paths: LabPaths, refresh: bool = False, timeout: int = 30,
                secrets: Iterable[str] = ()) -> Guest:
        from . import vm
        info = vm.ssh_info(paths, refresh=refresh)
        conn = Connection(
            host=info["host"], user=info["user"], port=info["port"],
            connect_timeout=timeout,
            connect_kwargs={"key_filename": [info["keyfile"]], "look_for_keys": False,
                            "allow_agent": False, "banner_timeout": timeout,
                            "auth_timeout": timeout},
            inline_ssh_env=True,
            # never mirror our stdin (pytest, CI with no stdin) into remote commands
            config=Config(overrides={"run": {"in_stream": False}}),
        )
        return cls(conn, secrets)

    @classmethod
    def reach(cls, paths: LabPaths, secrets: Iterable[str] = ()) -> Guest:
        """Connect and prove it with one command, asking Vagrant again once if the
        cached address is stale (after a re-up the VM may have a new lease)."""
        guest = cls.connect(paths, secrets=secrets)
        try:
            guest.run("hostname", sudo=False)
            return guest
        except Exception:  # noqa: BLE001 - stale address after a re-up: ask Vagrant again
            guest.close()
        guest = cls.connect(paths, refresh=True, secrets=secrets)
        guest.run("hostname", sudo=False)
        return guest

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def redact(self, text: str) -> str:
        for value in self.secrets:
            text = text.replace(value, "<secret>")
        return text

    # ---------------------------------------------------------------- verbs
    def run(self, cmd: str, *, sudo: bool = True, check: bool = True, timeout: float | None = None,
            hint: str = "", shown: str | None = None, stream: bool = False) -> Result:
        """Run ``cmd`` with ``sh -c`` (as root unless ``sudo=False``).

        ``shown`` replaces the command in errors (e.g. a short name for a long
        program). A non-zero exit raises ``GuestCommandError`` when ``check``.
        ``stream`` shows the output line by line as it comes (secrets redacted),
        for long steps.
        """
        full = f"sudo -n sh -c {shlex.quote(cmd)}" if sudo else cmd
        self.round_trips += 1
        kw: dict = {"out_stream": _LineEcho(self), "err_stream": _LineEcho(self)} if stream else {}
        try:
            res = self.conn.run(full, hide=not stream, warn=True, timeout=timeout, **kw)
        except CommandTimedOut:
            raise GuestCommandError(self.redact(shown or cmd), 124, f"timed out after {timeout}s",
                                    hint=hint) from None
        except (OSError, SSHException) as exc:
            raise GuestCommandError(self.redact(shown or cmd), 255, f"SSH to the VM failed: {exc}",
                                    hint="./labctl lab.status (is the VM running?)") from None
        out = Result(cmd, res.exited, res.stdout, res.stderr)
        if check and not out.ok:
            raise GuestCommandError(self.redact(shown or cmd), out.exited,
                                    self.redact(out.output), hint=hint)
        return out

    def python(self, program: str, args: object = None, *, sudo: bool = False, netns: str = "",
               argv: Iterable[str] = (), name: str = "python program", hint: str = "") -> object:
        """Run a standard-library Python program in the guest; return its last
        stdout line parsed as JSON. ``args`` reach it JSON-encoded as argv[1]
        (``argv`` instead passes plain arguments)."""
        code = base64.b64encode(program.encode()).decode()
        extra = [json.dumps(args)] if args is not None else list(argv)
        cmd = f"{_PY_EXEC} {code} {' '.join(shlex.quote(a) for a in extra)}"
        if netns:
            cmd = f"ip netns exec {shlex.quote(netns)} {cmd}"
        res = self.run(cmd, sudo=sudo or bool(netns), check=False)
        if not res.ok:
            raise GuestCommandError(name, res.exited, self.redact(res.stderr or res.stdout),
                                    hint=hint)
        try:
            return json.loads(res.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise GuestCommandError(name, res.exited, "no JSON answer: "
                                    + self.redact(res.output), hint=hint) from None

    def spawn_python(self, program: str, argv: Iterable[str] = (), sudo: bool = False) -> str:
        """Start a Python program in the background (a test backend, say); returns its pid."""
        code = base64.b64encode(program.encode()).decode()
        args = " ".join(shlex.quote(a) for a in argv)
        return self.run(f"setsid nohup {_PY_EXEC} {code} {args} >/dev/null 2>&1 & echo $!",
                        sudo=sudo, shown="background python program").stdout.strip()

    def put(self, local: str, remote: str) -> None:
        """Copy a host file into the VM (as the SSH user)."""
        self._transfer("put", remote, lambda: self.conn.put(local, remote))

    def get(self, remote: str, local: str) -> None:
        """Copy a VM file (readable by the SSH user) to the host."""
        self._transfer("get", remote, lambda: self.conn.get(remote, local))

    def _transfer(self, verb: str, remote: str, do: Callable[[], object]) -> None:
        self.round_trips += 1
        try:
            do()
        except (OSError, SSHException) as exc:
            raise GuestCommandError(f"{verb} {remote}", 255, f"SSH to the VM failed: {exc}",
                                    hint="./labctl lab.status (is the VM running?)") from None

    def read(self, path: str, sudo: bool = True) -> str:
        """A file's text (empty when it does not exist)."""
        return self.run(f"cat {shlex.quote(path)} 2>/dev/null || true", sudo=sudo).stdout


class _LineEcho:
    """A stream for Fabric's ``out_stream``: prints each complete line, indented and
    with the guest's secrets redacted, as the command produces it."""

    def __init__(self, guest: Guest):
        self.guest = guest
        self.buf = ""

    def write(self, data: str) -> int:
        from .progress import info
        self.buf += data
        *lines, self.buf = self.buf.split("\n")
        for line in lines:
            info("  " + self.guest.redact(line))
        return len(data)

    def flush(self) -> None:
        pass
