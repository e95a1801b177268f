"""Verify: probes run inside the VM over SSH (loopback in the guest only).

Used by the smoke check at the end of ``lab.up`` and by the VM tests. Each
probe is a small standard-library Python program executed in the guest, so
TLS verification (against the lab root, with host-name checks) happens where
the services are, and no traffic leaves the lab.
"""

from __future__ import annotations

import shlex
import textwrap
from typing import Any, cast

from rich.markup import escape
from rich.table import Table

from . import vocab
from .errors import GuestCommandError, StageFailed
from .guest import Guest
from .progress import console, stage
from .settings import Settings

LAB_ROOT = "/etc/ente-lab/acme-root.pem"

_PRELUDE = textwrap.dedent("""
    import json, socket, ssl, smtplib, sys, urllib.request, http.client
    ARGS = json.loads(sys.argv[1])
    def ctx():
        c = ssl.create_default_context(cafile=ARGS.get("cafile", LAB_ROOT))
        if ARGS.get("no_verify"):   # only for probes that connect by address
            c.check_hostname = False
            c.verify_mode = ssl.CERT_NONE
        return c
""").replace("LAB_ROOT", repr(LAB_ROOT))

HTTPS_GET = _PRELUDE + textwrap.dedent("""
    host, path, port = ARGS["host"], ARGS["path"], ARGS.get("port", 443)
    scheme = ARGS.get("scheme", "https")
    if scheme == "https":
        conn = http.client.HTTPSConnection(host, port, context=ctx(), timeout=20)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=20)
    conn.request(ARGS.get("method", "GET"), path, headers=ARGS.get("headers", {}))
    r = conn.getresponse()
    body = r.read().decode(errors="replace")
    out = {"status": r.status, "headers": [[k, v] for k, v in r.getheaders()], "body": body}
    if scheme == "https":
        cert = conn.sock.getpeercert()
        out["serial"] = cert.get("serialNumber")
        out["san"] = [v for k, v in cert.get("subjectAltName", ())]
    print(json.dumps(out))
""")

SMTP_SESSION = _PRELUDE + textwrap.dedent("""
    host, port = ARGS["host"], ARGS.get("port", 587)
    out = {}
    s = smtplib.SMTP(host, port, timeout=30)
    code, msg = s.ehlo("lab-test.invalid")
    out["ehlo_plain"] = msg.decode()
    out["auth_before_tls"] = list(s.docmd("AUTH", "LOGIN"))
    out["auth_before_tls"][1] = out["auth_before_tls"][1].decode()
    if ARGS.get("starttls", True):
        s.starttls(context=ctx())
        out["serial"] = s.sock.getpeercert().get("serialNumber")
        code, msg = s.ehlo("lab-test.invalid")
        out["ehlo_tls"] = msg.decode()
        if ARGS.get("user"):
            try:
                s.login(ARGS["user"], ARGS["password"])
                out["login"] = [235, "ok"]
            except smtplib.SMTPAuthenticationError as exc:
                out["login"] = [exc.smtp_code, exc.smtp_error.decode()]
        if ARGS.get("rcpt"):
            s.mail(ARGS["rcpt"]["from"])
            code, msg = s.rcpt(ARGS["rcpt"]["to"])
            out["rcpt"] = [code, msg.decode()]
        if ARGS.get("send") and out.get("login", [0])[0] == 235:
            m = ARGS["send"]
            msg = ("From: %s\\r\\nTo: %s\\r\\nSubject: %s\\r\\nMessage-ID: %s\\r\\n\\r\\n%s\\r\\n"
                   % (m["from"], m["to"], m["subject"], m["message_id"], m["body"]))
            try:
                refused = s.sendmail(m["from"], [m["to"]], msg)
                out["sent"] = [250, json.dumps(refused)]
            except smtplib.SMTPException as exc:
                out["sent"] = [getattr(exc, "smtp_code", 0), str(exc)]
    try:
        s.quit()
    except Exception:
        pass
    print(json.dumps(out))
""")


def probe(guest: Guest, program: str, args: dict, name: str, netns: str = "") -> dict[str, Any]:
    """Run a probe program in the guest; return its JSON answer."""
    return cast(dict[str, Any], guest.python(program, args, netns=netns, name=name))


def https_get(guest: Guest, host: str, path: str = "/", **kw: Any) -> dict[str, Any]:
    return probe(guest, HTTPS_GET, {"host": host, "path": path, **kw}, f"HTTPS probe of {host}{path}")


def smtp_session(guest: Guest, host: str, netns: str = "", **kw: Any) -> dict[str, Any]:
    return probe(guest, SMTP_SESSION, {"host": host, **kw}, f"SMTP probe of {host}", netns=netns)


def resolve(guest: Guest, name: str) -> list[str]:
    res = guest.run(f"dig +short +time=2 +tries=1 @127.0.0.1 {shlex.quote(name)}", sudo=False,
                    check=False)
    return res.stdout.split()


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
