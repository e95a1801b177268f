"""ente-lab Museum STAND-IN: the OTT mail, sent like upstream's server/pkg/utils/email/email.go.

Not Ente's code. Go's behaviour reproduced with smtplib (stdlib only):

- ``smtp.host`` empty: no mail, ``Skipping sending email to <addr>: <subject>`` (info).
- ``smtp.encryption`` empty (or anything but tls/ssl): ``net/smtp.SendMail``: plain connect,
  EHLO localhost, STARTTLS when offered (certificate and host name verified), AUTH PLAIN only
  when username and password are both set, refused over an unencrypted connection unless the
  host is ``localhost``/``127.0.0.1``/``::1`` (Go's ``PlainAuth``), and an error when AUTH is
  wanted but the server does not offer it.
- ``smtp.encryption: tls`` or ``ssl``: implicit TLS (TLS >= 1.2), verified.
- Trusted roots like Go's ``x509.SystemCertPool`` on Linux: ``SSL_CERT_FILE`` or the first
  system bundle found, plus EVERY file (PEM, any name, no hash links needed) in each directory
  of ``SSL_CERT_DIR`` (colon-separated; default ``/etc/ssl/certs:/etc/pki/tls/certs``). Loaded
  ONCE per process at the first send, as Go caches the system pool: a root added later needs a
  Museum restart.
"""

from __future__ import annotations

import email.policy
import email.utils
import os
import re
import smtplib
import ssl
import threading
from collections.abc import Mapping
from email.message import EmailMessage
from typing import Any

SEND_TIMEOUT = 30          # seconds per socket operation (Go has none; a bound keeps the API answering)
DEFAULT_FROM_NAME = "Ente"
DEFAULT_FROM_EMAIL = "verify@ente.com"
# Go crypto/x509 root_linux.go
CERT_FILES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt",
              "/etc/ssl/ca-bundle.pem", "/etc/pki/tls/cacert.pem",
              "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", "/etc/ssl/cert.pem")
CERT_DIRS = ("/etc/ssl/certs", "/etc/pki/tls/certs")
LOCALHOST_NAMES = ("localhost", "127.0.0.1", "::1")   # Go net/smtp isLocalhost
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----\s.+?\s-----END CERTIFICATE-----", re.S)


class MailError(Exception):
    """The mail could not be sent; the API answers 500 (upstream propagates the error)."""


# ------------------------------------------------------------------ trusted roots (once per process)
_roots_lock = threading.Lock()
_roots: list[str] | None = None


def _pem_blocks(path: str) -> list[str]:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return _PEM.findall(fh.read())
    except OSError:
        return []


def load_roots(environ: Mapping[str, str] | None = None) -> list[str]:
    """Go's loadSystemRoots: one bundle file, then every regular file of the cert directories."""
    env = os.environ if environ is None else environ
    pems: list[str] = []
    files = [env["SSL_CERT_FILE"]] if env.get("SSL_CERT_FILE") else list(CERT_FILES)
    for f in files:
        blocks = _pem_blocks(f)
        if blocks:
            pems += blocks
            break
    dirs = [d for d in env["SSL_CERT_DIR"].split(":") if d] if "SSL_CERT_DIR" in env else list(CERT_DIRS)
    for d in dirs:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for name in names:
            path = os.path.join(d, name)
            # Go skips symlinks to a file in the same directory (the hash links) and reads the rest.
            if os.path.islink(path) and os.path.dirname(os.path.realpath(path)) == os.path.realpath(d):
                continue
            if os.path.isfile(path):
                pems += _pem_blocks(path)
    return pems


def trusted_roots() -> list[str]:
    global _roots
    with _roots_lock:
        if _roots is None:
            _roots = load_roots()
        return _roots


def tls_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)     # check_hostname + CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for pem in trusted_roots():
        try:
            ctx.load_verify_locations(cadata=pem)
        except (ssl.SSLError, ValueError):
            continue   # Go's AppendCertsFromPEM skips what it cannot parse
    return ctx


# ------------------------------------------------------------------ the message
def build_message(to: str, code: str, from_name: str, from_email: str) -> EmailMessage:
    msg = EmailMessage()
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg["From"] = email.utils.formataddr((from_name, from_email))
    msg["To"] = to
    msg["Subject"] = f"Verification code: {code}"
    msg.set_content(f"Your verification code is {code}.\n\nIt is valid for one hour.\n"
                    "(Sent by the ente-lab Museum stand-in.)\n")
    msg.add_alternative(f"<html><body><p>Your verification code is</p><p><b>{code}</b></p>"
                        "<p>It is valid for one hour.</p></body></html>\n", subtype="html")
    return msg


class Mailer:
    def __init__(self, smtp: Mapping[str, Any], log: Any) -> None:
        def s(key: str) -> str:
            v = smtp.get(key)
            return "" if v is None else str(v)

        self.host, self.port = s("host"), s("port")
        self.username, self.password = s("username"), s("password")
        self.from_email = s("email") or DEFAULT_FROM_EMAIL
        self.from_name = s("sender-name") or DEFAULT_FROM_NAME
        self.encryption = s("encryption").lower()
        self.log = log

    def send_ott(self, to: str, code: str) -> None:
        subject = f"Verification code: {code}"
        if not self.host:
            self.log.info(f"Skipping sending email to {to}: {subject}")
            return
        if any(c in to for c in "\r\n") or any(c in self.from_email for c in "\r\n"):
            raise MailError("invalid email address (CR/LF)")
        msg = build_message(to, code, self.from_name, self.from_email)
        try:
            self._send(to, msg)
        except MailError:
            raise
        except (OSError, smtplib.SMTPException, ssl.SSLError) as e:
            raise MailError(f"{type(e).__name__}: {e}") from e

    def _send(self, to: str, msg: EmailMessage) -> None:
        if not self.port.isdigit():
            raise MailError(f"address {self.host}:{self.port}: missing or invalid port (smtp.port)")
        port = int(self.port)
        want_auth = bool(self.username and self.password)
        if self.encryption in ("tls", "ssl"):
            with smtplib.SMTP_SSL(self.host, port, local_hostname="localhost", timeout=SEND_TIMEOUT,
                                  context=tls_context()) as smtp:
                smtp.ehlo_or_helo_if_needed()
                if want_auth:
                    self._auth(smtp)
                smtp.sendmail(self.from_email, [to], msg.as_bytes(policy=email.policy.SMTP))
            return
        with smtplib.SMTP(self.host, port, local_hostname="localhost", timeout=SEND_TIMEOUT) as smtp:
            smtp.ehlo_or_helo_if_needed()
            encrypted = False
            if smtp.has_extn("starttls"):
                smtp.starttls(context=tls_context())
                smtp.ehlo()
                encrypted = True
            if want_auth:
                if not smtp.has_extn("auth"):
                    raise MailError("smtp: server doesn't support AUTH")
                if not encrypted and self.host not in LOCALHOST_NAMES:
                    raise MailError("unencrypted connection")    # Go's PlainAuth, before sending anything
                self._auth(smtp)
            smtp.sendmail(self.from_email, [to], msg.as_bytes(policy=email.policy.SMTP))

    def _auth(self, smtp: smtplib.SMTP) -> None:
        smtp.user, smtp.password = self.username, self.password
        smtp.auth("PLAIN", smtp.auth_plain, initial_response_ok=True)
