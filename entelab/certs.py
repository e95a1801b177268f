"""Certificates from the lab's private ACME CA (pebble in the VM) via dehydrated.

dehydrated runs as the non-root ``acme.user`` with the rendered config and gets
one certificate (named after the domain) for every lab name through the real
http-01 path: pebble -> Apache port 80 -> the challenge directory. pebble keeps
accounts and its root in memory only, so after every pebble start the lab
re-registers (re-issuing only what no trusted root anchors: rc.pebble keeps a
retired root while a served certificate chains to it) and republishes the roots
(to the guest trust store, done by rc.pebble, and to the host state dir for the
tests: never the host's system trust store).

Every function takes the task's settings: nothing here reads them from disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rich.table import Table

from .errors import GuestCommandError, StageFailed
from .guest import Guest
from .probes import LAB_ROOT as GUEST_ROOT
from .progress import console, info, stage
from .settings import Settings
from .state import LabPaths

PEBBLE_MARKER = "/run/ente-lab/pebble.started"
HOST_ROOT_NAME = "acme-root.pem"            # in the lab's state dir on the host
REFRESH = "/usr/local/sbin/ente-lab-acme-refresh"
PEBBLE_LOG_HINT = "./labctl lab.ssh --command 'sudo tail -50 /var/log/pebble.log'"
HOOK_LOG_HINT = ("the hook's output above names the check that failed; "
                 "./labctl lab.ssh --command 'sudo apachectl -t; sudo postfix check'")
# what the hook prints when one of its checks or reloads fails -> where to look
HOOK_FAILURE_HINTS = {
    "check FAILED: apachectl configtest":
        "./labctl lab.ssh --command 'sudo apachectl -t' (the hook refused: Apache's configuration)",
    "check FAILED: postfix check":
        "./labctl lab.ssh --command 'sudo postfix check; sudo tail -20 /var/log/maillog' "
        "(the hook refused: Postfix's configuration)",
    "reload FAILED: apache":
        "./labctl lab.ssh --command 'sudo tail -20 /var/log/apache2/error.log'",
    "reload FAILED: postfix":
        "./labctl lab.ssh --command 'sudo tail -20 /var/log/maillog'",
}


def failure_hint(output: str) -> str:
    """The log to read for a failed issue/renewal: the hook's failed check, else pebble's."""
    for marker, hint in HOOK_FAILURE_HINTS.items():
        if marker in output:
            return hint
    return PEBBLE_LOG_HINT


@dataclass(frozen=True)
class DehydratedConf:
    """Where dehydrated keeps things: the values templates/dehydrated/config.j2 writes."""

    user: str
    domain: str
    basedir: str = "/etc/dehydrated"
    wellknown: str = "/var/lib/dehydrated/acme-challenges"
    config: str = "/etc/dehydrated/config"

    @property
    def domains(self) -> str:
        """domains.txt: one line per certificate (templates/dehydrated/domains.txt.j2)."""
        return f"{self.basedir}/domains.txt"

    @property
    def cert(self) -> str:
        return f"{self.basedir}/certs/{self.domain}/cert.pem"

    def cmd(self, args: str) -> str:
        """Run dehydrated as its non-root user with the lab's config."""
        return f"sudo -n -u {self.user} -H dehydrated -f {self.config} {args}"


def dehydrated_conf(settings: Settings) -> DehydratedConf:
    return DehydratedConf(user=settings.acme.user, domain=settings.domain)


def _serial(text: str) -> str:
    out = text.strip()
    return out.split("=", 1)[1] if out.startswith("serial=") else "-"


def served_serial(guest: Guest, host: str, port: int, starttls: bool = False) -> str:
    """Serial of the certificate a service presents on loopback in the VM."""
    tls = "-starttls smtp " if starttls else ""
    res = guest.run(f"echo | timeout 15 openssl s_client -connect 127.0.0.1:{port} -servername {host} "
                    f"{tls}2>/dev/null | openssl x509 -noout -serial", check=False, sudo=False)
    return _serial(res.stdout)


def file_serial(guest: Guest, conf: DehydratedConf) -> str:
    return _serial(guest.run(f"openssl x509 -noout -serial -in {conf.cert}", check=False).stdout)


def verify_file_chain(guest: Guest, settings: Settings, root: Path) -> str:
    """The certificate dehydrated wrote (fullchain.pem) verified on the host for the API
    name against ``root`` (the published pebble root), when nothing serves it yet (a
    workshop before its Apache step); its serial, as ``openssl x509 -serial`` prints it."""
    from cryptography import x509
    from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
    conf = dehydrated_conf(settings)
    path = f"{conf.basedir}/certs/{conf.domain}/fullchain.pem"
    try:
        chain = x509.load_pem_x509_certificates(guest.read(path).encode())
        roots = x509.load_pem_x509_certificates(root.read_bytes())
        verifier = PolicyBuilder().store(Store(roots)).build_server_verifier(
            x509.DNSName(settings.api_host))
        verifier.verify(chain[0], chain[1:])
    except (ValueError, VerificationError) as exc:
        raise StageFailed(f"{path} in the VM does not verify for {settings.api_host} "
                          f"against {root}: {exc}", hint="./labctl lab.renew issues a new one") from exc
    serial = f"{chain[0].serial_number:X}"
    return "0" * (len(serial) % 2) + serial


def ensure_pebble(guest: Guest) -> None:
    guest.run("/etc/rc.d/rc.pebble status >/dev/null 2>&1 || /etc/rc.d/rc.pebble start",
              hint=PEBBLE_LOG_HINT)


def publish_root(guest: Guest, paths: LabPaths) -> tuple[Path, bool]:
    """Copy the guest's current pebble root to the host state dir (for host-side
    clients); returns (path, changed)."""
    pem = guest.read(GUEST_ROOT)
    if "BEGIN CERTIFICATE" not in pem:
        raise StageFailed(f"no pebble root at {GUEST_ROOT} in the VM",
                          hint="./labctl lab.certs issues and publishes it")
    dest = paths.home / HOST_ROOT_NAME
    old = dest.read_text() if dest.exists() else ""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(pem)
    return dest, pem != old


# the refresh script's option, as the host calls it ("--boot" is rc.M's alone)
RefreshMode = Literal["", "--force", "--if-stale"]


def issue_with(guest: Guest, paths: LabPaths, mode: RefreshMode = "") -> str:
    """``mode``: "" (renew when due), "--force" (lab.renew), "--if-stale" (lab.up right
    after a boot, whose rc.M ran the same script: dehydrated is skipped when that run's
    inputs are unchanged)."""
    ensure_pebble(guest)
    # The guest script re-registers when pebble restarted since
    # the last registration; rc.M runs the same script at every boot.
    cmd = f"{REFRESH} {mode}".rstrip()
    res = guest.run(f"{cmd} 2>&1", check=False)
    if not res.ok:
        raise GuestCommandError(cmd, res.exited, guest.redact(res.output), hint=failure_hint(res.output))
    publish_root(guest, paths)
    return res.output


def issue(guest: Guest, paths: LabPaths, mode: RefreshMode = "") -> None:
    with stage("certs: issue from the lab CA (pebble) with dehydrated",
               hint="./labctl lab.ssh --command 'sudo /etc/rc.d/rc.pebble status'"):
        out = issue_with(guest, paths, mode)
        for line in out.splitlines()[-8:]:
            info(f"  {line}")


def renew_with(guest: Guest, paths: LabPaths, settings: Settings) -> dict:
    conf = dehydrated_conf(settings)
    before = {"apache": served_serial(guest, settings.api_host, 443),
              "postfix": served_serial(guest, settings.mail_host, 587, starttls=True)}
    out = issue_with(guest, paths, "--force")
    after = {"apache": served_serial(guest, settings.api_host, 443),
             "postfix": served_serial(guest, settings.mail_host, 587, starttls=True),
             "file": file_serial(guest, conf)}
    return {"before": before, "after": after, "output": out}


def renew(guest: Guest, paths: LabPaths, settings: Settings) -> None:
    with stage("renew: forced renewal through the hook"):
        r = renew_with(guest, paths, settings)
    table = Table(title="certificate serials")
    for col in ("service", "before", "after", "matches file"):
        table.add_column(col)
    for svc in ("apache", "postfix"):
        table.add_row(svc, r["before"][svc], r["after"][svc],
                      "yes" if r["after"][svc] == r["after"]["file"] else "NO")
    console.print(table)
    if any(r["after"][s] != r["after"]["file"] for s in ("apache", "postfix")):
        raise StageFailed("a service still serves an old certificate; see the hook output above",
                          hint=HOOK_LOG_HINT)
