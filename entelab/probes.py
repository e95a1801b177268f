"""Probes: small standard-library Python programs run inside the VM (HTTPS, SMTP)
and DNS lookups, over the guest runner; loopback in the guest only.

TLS verification (against the lab root, with host-name checks) happens where
the services are, and no traffic leaves the lab. Used by the health checks
(``health.py``) and the VM tests.
"""

from __future__ import annotations

import shlex
import textwrap
from typing import Any, cast

from .guest import Guest

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
    timeout = ARGS.get("timeout", 20)
    if scheme == "https":
        conn = http.client.HTTPSConnection(host, port, context=ctx(), timeout=timeout)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    conn.request(ARGS.get("method", "GET"), path, body=ARGS.get("body"), headers=ARGS.get("headers", {}))
    # the certificate before the response: a "Connection: close" answer closes the socket
    cert = conn.sock.getpeercert() if scheme == "https" else {}
    r = conn.getresponse()
    body = r.read().decode(errors="replace")
    out = {"status": r.status, "headers": [[k, v] for k, v in r.getheaders()], "body": body}
    if scheme == "https":
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
    """One request (``method``, ``body``, ``headers``; ``timeout`` per socket operation,
    20 s unless given): status, headers, body, and the served certificate's serial and names."""
    return probe(guest, HTTPS_GET, {"host": host, "path": path, **kw}, f"HTTPS probe of {host}{path}")


def smtp_session(guest: Guest, host: str, netns: str = "", **kw: Any) -> dict[str, Any]:
    return probe(guest, SMTP_SESSION, {"host": host, **kw}, f"SMTP probe of {host}", netns=netns)


def resolve(guest: Guest, name: str) -> list[str]:
    res = guest.run(f"dig +short +time=2 +tries=1 @127.0.0.1 {shlex.quote(name)}", sudo=False,
                    check=False)
    return res.stdout.split()
