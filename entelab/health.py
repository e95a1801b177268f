"""Health of the lab VM: boot finished, each rc.d service's state, the smoke check.

``lab.up`` ends with ``smoke``; ``lab.status`` shows ``services``.
"""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from . import vocab
from .errors import GuestCommandError, StageFailed
from .guest import Guest
from .probes import https_get, resolve, smtp_session
from .progress import console, stage
from .settings import Settings


def wait_boot(guest: Guest, timeout: float = 900) -> str:
    """Wait until the boot's rc.M (rc-slackware.service) has finished starting services."""
    from tenacity import retry, retry_if_result, stop_after_delay, wait_fixed

    @retry(retry=retry_if_result(lambda st: st in ("activating", "")), stop=stop_after_delay(timeout),
           wait=wait_fixed(3), retry_error_callback=lambda rs: rs.outcome.result() if rs.outcome else "")
    def state() -> str:
        return guest.run("systemctl is-active rc-slackware.service", sudo=False,
                         check=False).stdout.strip()

    st = state()
    if st in ("activating", ""):
        raise StageFailed(f"rc-slackware.service still starting after {timeout:.0f}s",
                          hint="./labctl lab.ssh --command 'journalctl -u rc-slackware'")
    return st


def services(guest: Guest) -> dict[str, str]:
    """State of each service from its rc.d script."""
    res = guest.run(f"for s in {' '.join(vocab.SERVICE_NAMES)}; do "
                    "printf '%s ' $s; /etc/rc.d/rc.$s status >/dev/null 2>&1 && echo running "
                    "|| echo stopped; done", check=False)
    return dict(line.split(" ", 1) for line in res.stdout.strip().splitlines() if " " in line)


def smoke(guest: Guest, settings: Settings) -> None:
    """Short smoke check printed at the end of lab.up, for the task's settings."""
    with stage("smoke: services, DNS, TLS on 443 and 587"):
        table = Table(title="ente-lab smoke check")
        table.add_column("check")
        table.add_column("result")
        for name, st in services(guest).items():
            table.add_row(f"rc.{name}", st)
        for name in (settings.api_host, "ente-museum." + settings.docker.network):
            table.add_row(f"dns {name}", " ".join(resolve(guest, name)) or "NXDOMAIN")
        try:
            r = https_get(guest, settings.api_host, "/.well-known/acme-challenge/")
            table.add_row(f"https://{settings.api_host} (verified)", f"TLS ok, serial {r['serial']}")
        except GuestCommandError as exc:
            table.add_row(f"https://{settings.api_host}", f"[red]{escape(exc.message)}[/]")
        try:
            r = smtp_session(guest, settings.mail_host)
            ok = "STARTTLS" in r["ehlo_plain"] and "serial" in r
            table.add_row(f"smtp://{settings.mail_host}:587", f"STARTTLS verified, serial {r['serial']}"
                          if ok else "[red]no STARTTLS[/]")
        except GuestCommandError as exc:
            table.add_row(f"smtp://{settings.mail_host}:587", f"[red]{escape(exc.message)}[/]")
        console.print(table)
