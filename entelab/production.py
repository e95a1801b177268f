"""Read a production server laid out as the article's Slackware host, over SSH, read-only.

``PRODUCTION_FILES`` is the one list of what is read: Apache (``/etc/httpd/httpd.conf``
and every ``/etc/httpd/extra/*.conf``), Postfix, SASL, dnsmasq, the host's name files,
dehydrated, ``/etc/sudoers.d/*`` and the compose directory (``paths.compose_dir``).

Only reading commands run on the server: ``ls -1A`` (a directory's names), ``stat``,
``test -r``, ``cat``, and with ``--sudo`` ``sudo -n ls`` / ``sudo -n cat`` (never a
prompt, never a write). A file that is missing, unreadable or too large is recorded
with its status, not fatal. ``root`` prefixes every path (``/`` on a real server; a
stand-in tree elsewhere in the tests).
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass, field

from fabric import Config, Connection
from invoke.exceptions import CommandTimedOut
from paramiko.ssh_exception import SSHException

from .errors import StageFailed

MAX_BYTES = 1024 * 1024          # a configuration file larger than this is not read


@dataclass(frozen=True)
class ProdFile:
    """One file (or ``dir/*`` pattern) of the production layout."""

    path: str                 # production path; may contain {compose_dir}; '*' = every file in dir
    section: str              # the article section it belongs to
    lab: str = ""             # the lab's rendering it is compared with ('' = none; '=' same path)
    optional: bool = False    # its absence is normal (not reported as missing)
    note: str = ""


def _same(section: str, *paths: str) -> tuple[ProdFile, ...]:
    """Files of one article section that the lab renders at the same path."""
    return tuple(ProdFile(path, section, lab="=") for path in paths)


# The one list of what lab.diff and lab.import read, in the article's order.
PRODUCTION_FILES: tuple[ProdFile, ...] = (
    ProdFile("/etc/httpd/httpd.conf", "Apache reverse proxy configuration",
             note="scanned for pitfalls (global CORS lines); the lab renders Debian's apache2"),
    ProdFile("/etc/httpd/extra/*.conf", "Apache reverse proxy configuration",
             lab="vhost", note="matched to the lab's vhosts by ServerName"),
    *_same("Add IP / name mapping to the host", "/etc/hosts", "/etc/networks"),
    *_same("DNS serving local IPs", "/etc/resolv.conf", "/etc/dnsmasq.conf"),
    *_same("Configuring SASL", "/etc/sasl2/smtpd.conf"),
    ProdFile("/etc/postfix/sasl/smtpd.conf", "Configuring SASL", optional=True,
             note="where a Debian-built Postfix reads its SASL config"),
    *_same("Configuring Postfix", "/etc/postfix/main.cf", "/etc/postfix/master.cf",
           "/etc/dehydrated/config", "/etc/dehydrated/domains.txt", "/etc/dehydrated/hook.sh",
           "/etc/sudoers.d/*"),
    *_same("Cloning the git repository and preparing the web app image",
           "{compose_dir}/Dockerfile.auth"),
    *_same("Considerations for the .env file", "{compose_dir}/.env"),
    *_same("museum.yaml", "{compose_dir}/museum.yaml"),
    *_same("cli-config.yaml", "{compose_dir}/cli-config.yaml"),
    *_same("minio-provision.sh", "{compose_dir}/minio-provision.sh"),
    *_same("docker-compose.yml", "{compose_dir}/docker-compose.yml"),
)


@dataclass
class Fetched:
    """What was found at one production path."""

    path: str                 # the production path (without the root prefix)
    spec: ProdFile
    status: str               # ok | sudo | missing | unreadable | too-large | not-a-file
    text: str = ""
    mode: str = ""
    owner: str = ""
    size: int = 0
    detail: str = ""

    @property
    def readable(self) -> bool:
        return self.status in ("ok", "sudo")

    def lines(self) -> list[str]:
        return self.text.splitlines()


@dataclass
class Production:
    """Every file read from one server."""

    host: str
    root: str
    compose_dir: str
    files: dict[str, Fetched] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)     # every command run, in order

    def get(self, path: str) -> Fetched | None:
        return self.files.get(path)

    def text(self, path: str) -> str | None:
        f = self.files.get(path)
        return f.text if f is not None and f.readable else None

    def readable(self) -> list[Fetched]:
        return [f for f in self.files.values() if f.readable]

    def under(self, directory: str) -> list[Fetched]:
        prefix = directory.rstrip("/") + "/"
        return [f for f in self.files.values() if f.path.startswith(prefix)]

    def by_status(self, *status: str) -> list[Fetched]:
        return [f for f in self.files.values() if f.status in status]

    def compose(self, name: str) -> str:
        return posixpath.join(self.compose_dir, name)


def expand(spec: ProdFile, compose_dir: str) -> str:
    return spec.path.replace("{compose_dir}", compose_dir.rstrip("/"))


# The only commands lab.diff / lab.import run on the server (tests assert it).
READ_ONLY_PROGRAMS = ("test", "stat", "cat", "ls", "sudo -n cat", "sudo -n ls")


class Reader:
    """Runs the read-only commands over one SSH connection (Fabric/paramiko)."""

    def __init__(self, conn: Connection, root: str = "/", sudo: bool = False):
        self.conn = conn
        self.root = "/" + root.strip("/") if root.strip("/") else "/"
        self.sudo = sudo
        self.commands: list[str] = []

    @classmethod
    def connect(cls, host: str, user: str = "", port: int = 22, identity: str = "",
                root: str = "/", sudo: bool = False, timeout: int = 20) -> Reader:
        kwargs: dict = {"banner_timeout": timeout, "auth_timeout": timeout}
        if identity:
            kwargs.update(key_filename=[identity], look_for_keys=False, allow_agent=False)
        conn = Connection(host=host, user=user or None, port=port, connect_timeout=timeout,
                          connect_kwargs=kwargs,
                          config=Config(overrides={"run": {"in_stream": False}}))
        return cls(conn, root=root, sudo=sudo)

    def close(self) -> None:
        self.conn.close()

    def real(self, path: str) -> str:
        return path if self.root == "/" else self.root + path

    def _run(self, cmd: str, timeout: float = 60) -> tuple[int, str, str]:
        self.commands.append(cmd)
        try:
            res = self.conn.run(cmd, hide=True, warn=True, timeout=timeout)
        except CommandTimedOut:
            return 124, "", f"timed out after {timeout}s"
        except (OSError, SSHException) as exc:
            raise StageFailed(f"SSH to {self.conn.host}:{self.conn.port} failed: {exc}",
                              hint="check --user, --port and --identity; `ssh -p PORT USER@HOST true` "
                                   "must work without a password") from None
        return res.exited, res.stdout, res.stderr

    def listdir(self, directory: str) -> tuple[list[str], str]:
        """The names in ``directory`` (sorted), and how they were listed or why not."""
        real = shlex.quote(self.real(directory))
        rc, out, err = self._run(f"ls -1A {real}")
        how = "ok"
        if rc != 0 and self.sudo:
            rc, out, err = self._run(f"sudo -n ls -1A {real}")
            how = "sudo"
        if rc != 0:
            return [], ("missing" if "No such file" in err else "unreadable: " + _first(err))
        return sorted(n for n in out.splitlines() if n and "/" not in n), how

    def fetch(self, path: str, spec: ProdFile) -> Fetched:
        real = shlex.quote(self.real(path))
        probe = (f"if ! test -e {real}; then echo missing; "
                 f"else stat -c '%a %U:%G %s %F' {real}; "
                 f"if test -r {real}; then echo readable; else echo unreadable; fi; fi")
        rc, out, err = self._run(probe)
        lines = out.splitlines()
        if rc != 0 or not lines:
            return Fetched(path, spec, "unreadable", detail=_first(err) or f"stat exited {rc}")
        if lines[0] == "missing":
            return Fetched(path, spec, "missing")
        parts = lines[0].split(" ", 3)
        mode, owner, size, kind = (parts + ["", "", "0", ""])[:4]
        f = Fetched(path, spec, "unreadable", mode=mode.zfill(4), owner=owner,
                    size=int(size) if size.isdigit() else 0)
        if kind != "regular file" and kind != "regular empty file":
            f.status, f.detail = "not-a-file", kind
            return f
        if f.size > MAX_BYTES:
            f.status, f.detail = "too-large", f"{f.size} bytes (more than {MAX_BYTES})"
            return f
        readable = len(lines) > 1 and lines[1] == "readable"
        if readable:
            rc, out, err = self._run(f"cat {real}")
            if rc == 0:
                f.status, f.text = "ok", out
                return f
        if self.sudo:
            # argv exactly 'cat PATH' so a sudoers rule naming the file matches it
            rc, out, err = self._run(f"sudo -n cat {real}")
            if rc == 0:
                f.status, f.text = "sudo", out
                return f
            f.detail = "sudo -n cat refused: " + _first(err)
        else:
            f.detail = f"mode {f.mode} {f.owner}: not readable by the SSH user (--sudo reads it with sudo -n cat)"
        return f


def _first(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[0][:200] if lines else ""


def read_production(reader: Reader, host: str, compose_dir: str) -> Production:
    """Read every file of ``PRODUCTION_FILES`` (patterns expanded) through ``reader``."""
    prod = Production(host=host, root=reader.root, compose_dir=compose_dir.rstrip("/"))
    for spec in PRODUCTION_FILES:
        path = expand(spec, prod.compose_dir)
        if path.endswith("/*") or path.endswith("/*.conf"):
            directory, pattern = path.rsplit("/", 1)
            names, how = reader.listdir(directory)
            if how not in ("ok", "sudo"):
                prod.files[path] = Fetched(path, spec, "missing" if how == "missing" else "unreadable",
                                           detail=how)
                continue
            suffix = pattern[1:]
            for name in names:
                if name.endswith(suffix) and not name.startswith("."):
                    f = reader.fetch(f"{directory}/{name}", spec)
                    if f.status != "not-a-file":
                        prod.files[f.path] = f
            continue
        prod.files[path] = reader.fetch(path, spec)
    prod.commands = list(reader.commands)
    return prod
