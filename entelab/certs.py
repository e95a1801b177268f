"""Certificates from the lab's private ACME CA (pebble in the VM) via dehydrated.

dehydrated runs as the non-root ``acme.user`` with the rendered config and gets
one certificate (named after the domain) for every lab name through the real
http-01 path: pebble -> Apache port 80 -> the challenge directory. pebble keeps
accounts and its root in memory only, so after every pebble start the lab
re-registers, re-issues and republishes the root (to the guest trust store,
done by rc.pebble, and to the host state dir for the tests: never the host's
system trust store).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from .progress import StageFailed, console, stage
from .state import LabPaths

PEBBLE_MARKER = "/run/ente-lab/pebble.started"
GUEST_ROOT = "/etc/ente-lab/acme-root.pem"
REFRESH = "/usr/local/sbin/ente-lab-acme-refresh"


@dataclass
class DehydratedConf:
    user: str
    basedir: str
    wellknown: str
    domain: str
    config: str = "/etc/dehydrated/config"

    @property
    def cert(self) -> str:
        return f"{self.basedir}/certs/{self.domain}/cert.pem"

    def cmd(self, args: str) -> str:
        """Run dehydrated as its non-root user with the lab's config."""
        return f"sudo -n -u {self.user} -H dehydrated -f {self.config} {args}"


def _conf_value(text: str, key: str, default: str) -> str:
    m = re.search(rf'^\s*{key}="?([^"\n]+)"?', text, re.M)
    return m.group(1) if m else default


def dehydrated_conf(paths: LabPaths) -> DehydratedConf:
    from .settings import load_settings
    settings, _ = load_settings(paths.root)
    text = (paths.rendered / "etc/dehydrated/config").read_text()
    return DehydratedConf(user=settings.acme.user,
                          basedir=_conf_value(text, "BASEDIR", "/etc/dehydrated"),
                          wellknown=_conf_value(text, "WELLKNOWN", "/var/lib/dehydrated/acme-challenges"),
                          domain=settings.domain)


def sh(conn, cmd: str, check: bool = True, sudo: bool = True):
    full = f"sudo -n sh -c {shlex.quote(cmd)}" if sudo else cmd
    res = conn.run(full, hide=True, warn=True)
    if check and res.exited != 0:
        raise StageFailed(f"in the VM: {cmd!r} exited {res.exited}: "
                          f"{(res.stdout + res.stderr).strip()[-1500:]}")
    return res


def served_serial(conn, host: str, port: int, starttls: bool = False) -> str:
    """Serial of the certificate a service presents on loopback in the VM."""
    tls = "-starttls smtp " if starttls else ""
    res = sh(conn, f"echo | timeout 15 openssl s_client -connect 127.0.0.1:{port} -servername {host} "
                   f"{tls}2>/dev/null | openssl x509 -noout -serial", check=False, sudo=False)
    out = res.stdout.strip()
    return out.split("=", 1)[1] if out.startswith("serial=") else "-"


def file_serial(conn, conf: DehydratedConf) -> str:
    res = sh(conn, f"openssl x509 -noout -serial -in {conf.cert}", check=False)
    out = res.stdout.strip()
    return out.split("=", 1)[1] if out.startswith("serial=") else "-"


def ensure_pebble(conn) -> None:
    sh(conn, "/etc/rc.d/rc.pebble status >/dev/null 2>&1 || /etc/rc.d/rc.pebble start")


def publish_root(conn, paths: LabPaths) -> Path:
    """Copy the current pebble root to the host state dir (for host-side clients)."""
    dest = paths.home / "acme-root.pem"
    dest.parent.mkdir(parents=True, exist_ok=True)
    res = sh(conn, f"cat {GUEST_ROOT}", sudo=False)
    dest.write_text(res.stdout)
    return dest


def issue_with(conn, paths: LabPaths, force: bool = False) -> str:
    ensure_pebble(conn)
    # The guest script re-registers (and re-issues) when pebble restarted since
    # the last registration; rc.M runs the same script at every boot.
    res = sh(conn, f"{REFRESH}{' --force' if force else ''} 2>&1", check=False)
    output = (res.stdout + res.stderr).strip()
    if res.exited != 0:
        raise StageFailed(f"dehydrated failed (exit {res.exited}):\n{output[-2500:]}\n"
                          "next: ./labctl lab.ssh --command 'sudo tail -50 /var/log/pebble.log'")
    publish_root(conn, paths)
    return output


def issue(paths: LabPaths) -> None:
    from .connection import connect
    with stage("certs: issue from the lab CA (pebble) with dehydrated",
               hint="./labctl lab.ssh --command 'sudo /etc/rc.d/rc.pebble status'"):
        out = issue_with(connect(paths), paths)
        for line in out.splitlines()[-8:]:
            console.print(f"  {line}", markup=False)


def renew_with(conn, paths: LabPaths) -> dict:
    from .settings import load_settings
    settings, _ = load_settings(paths.root)
    conf = dehydrated_conf(paths)
    before = {"apache": served_serial(conn, settings.api_host, 443),
              "postfix": served_serial(conn, settings.mail_host, 587, starttls=True)}
    out = issue_with(conn, paths, force=True)
    after = {"apache": served_serial(conn, settings.api_host, 443),
             "postfix": served_serial(conn, settings.mail_host, 587, starttls=True),
             "file": file_serial(conn, conf)}
    return {"before": before, "after": after, "output": out}


def renew(paths: LabPaths) -> None:
    from .connection import connect
    with stage("renew: forced renewal through the hook"):
        r = renew_with(connect(paths), paths)
    table = Table(title="certificate serials")
    for col in ("service", "before", "after", "matches file"):
        table.add_column(col)
    for svc in ("apache", "postfix"):
        table.add_row(svc, r["before"][svc], r["after"][svc],
                      "yes" if r["after"][svc] == r["after"]["file"] else "NO")
    console.print(table)
    if any(r["after"][s] != r["after"]["file"] for s in ("apache", "postfix")):
        raise StageFailed("a service still serves an old certificate; see the hook output above")
