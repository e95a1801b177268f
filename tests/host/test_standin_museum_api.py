"""The Museum stand-in's user/OTT API and its mail, against upstream's rules (upstream-facts.md).

Real PostgreSQL 15 through postgres/docker-entrypoint.sh (one server for the module, the
tables emptied before each test), the stand-in as a subprocess, and a tiny stdlib SMTP
server on loopback (STARTTLS/implicit TLS with trustme certificates, AUTH PLAIN) that records
what it is sent.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path

import pytest
import trustme
import yaml
from test_standin_museum import LOGRUS, MUSEUM, PGBIN, Postgres
from test_standin_s3 import free_port, wait_port

AUTH_PKG = "io.ente.auth.web"
PHOTOS_PKG = "io.ente.photos.web"


# ------------------------------------------------------------------ PostgreSQL (one per module)
@pytest.fixture(scope="module")
def pg():
    if os.geteuid() != 0:
        pytest.fail("the postgres entrypoint tests run as root (the container's entrypoint starts as root)")
    if not (PGBIN / "postgres").exists():
        pytest.fail("PostgreSQL 15 is not installed (apt-get install postgresql-15; see entelab/host.py)")
    pwd.getpwnam("postgres")
    base = Path(tempfile.mkdtemp(prefix="standin-pg-api-"))
    base.chmod(0o755)
    server = Postgres(base / "data", free_port())
    server.start()
    yield server
    server.stop()
    shutil.rmtree(base, ignore_errors=True)


class DB:
    def __init__(self, server: Postgres) -> None:
        import psycopg2

        self.conn = psycopg2.connect(host="127.0.0.1", port=server.port, dbname="ente_db", user="pguser",
                                     password=server.env["POSTGRES_PASSWORD"], connect_timeout=3)
        self.conn.autocommit = True

    def q(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []

    def clock(self, offset: int) -> None:
        self.q("UPDATE ente_lab_clock SET offset_seconds = %s", (offset,))


@pytest.fixture
def db(pg):
    d = DB(pg)
    if d.q("SELECT to_regclass('users') IS NOT NULL")[0][0]:
        d.q("TRUNCATE users, key_attributes, otts, tokens CASCADE")
        d.clock(0)
    yield d
    d.conn.close()


# ------------------------------------------------------------------ a tiny SMTP server
class SmtpServer:
    """Records connections, commands, AUTH and messages. starttls/implicit: an SSLContext or None."""

    def __init__(self, host: str = "127.0.0.1", starttls: ssl.SSLContext | None = None,
                 implicit: ssl.SSLContext | None = None, auth: bool = True) -> None:
        self.starttls, self.implicit, self.auth = starttls, implicit, auth
        self.sock = socket.create_server((host, 0))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.connections = 0
        self.events: list[str] = []          # "STARTTLS done", "AUTH ...", "MAIL ...", "TLS error ..."
        self.auth_plain: list[tuple[str, str, str]] = []
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.raw: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            if self.implicit:
                conn = self.implicit.wrap_socket(conn, server_side=True)
            self._dialogue(conn, tls=bool(self.implicit))
        except (OSError, ssl.SSLError) as e:
            self.events.append(f"TLS error {e}" if isinstance(e, ssl.SSLError) else f"socket error {e}")
        finally:
            conn.close()

    def _dialogue(self, conn: socket.socket, tls: bool) -> None:
        f = conn.makefile("rb")

        def send(line: str) -> None:
            conn.sendall(line.encode() + b"\r\n")

        send("220 smtp.lab.test ESMTP test server")
        mail_from, rcpts = "", []
        while True:
            raw = f.readline()
            if not raw:
                return
            line = raw.decode().rstrip("\r\n")
            verb = line.split(" ", 1)[0].upper()
            if verb == "EHLO":
                ext = ["smtp.lab.test", "8BITMIME"]
                if self.starttls and not tls:
                    ext.append("STARTTLS")
                if self.auth:
                    ext.append("AUTH PLAIN LOGIN")
                for i, e in enumerate(ext):
                    send(("250 " if i == len(ext) - 1 else "250-") + e)
            elif verb == "HELO":
                send("250 smtp.lab.test")
            elif verb == "STARTTLS" and self.starttls and not tls:
                send("220 2.0.0 Ready to start TLS")
                conn = self.starttls.wrap_socket(conn, server_side=True)
                f = conn.makefile("rb")
                tls = True
                self.events.append("STARTTLS done")
            elif verb == "AUTH" and self.auth:
                self.events.append(f"AUTH tls={tls}")
                parts = line.split()
                if len(parts) == 3 and parts[1].upper() == "PLAIN":
                    authz, user, pw = base64.b64decode(parts[2]).decode().split("\0")
                    self.auth_plain.append((authz, user, pw))
                    send("235 2.7.0 Authentication successful")
                else:
                    send("504 5.5.4 only AUTH PLAIN with an initial response here")
            elif verb == "MAIL":
                mail_from = re.search(r"<(.*?)>", line).group(1)
                self.events.append(f"MAIL {mail_from}")
                send("250 2.1.0 Ok")
            elif verb == "RCPT":
                rcpts.append(re.search(r"<(.*?)>", line).group(1))
                send("250 2.1.5 Ok")
            elif verb == "DATA":
                send("354 End data with <CR><LF>.<CR><LF>")
                data = []
                while True:
                    dl = f.readline()
                    if dl in (b".\r\n", b""):
                        break
                    data.append(dl[1:] if dl.startswith(b"..") else dl)
                self.raw.append(b"".join(data))
                self.messages.append(email.message_from_bytes(self.raw[-1], policy=email.policy.default))
                self.envelopes.append((mail_from, rcpts))
                send("250 2.0.0 Ok: queued")
            elif verb in ("RSET", "NOOP"):
                send("250 2.0.0 Ok")
            elif verb == "QUIT":
                send("221 2.0.0 Bye")
                return
            else:
                send("502 5.5.2 Error: command not recognized")


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def server_ctx(ca: trustme.CA, name: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(ctx)
    return ctx


@pytest.fixture
def smtp_servers():
    servers: list[SmtpServer] = []

    def make(**kw) -> SmtpServer:
        servers.append(SmtpServer(**kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


# ------------------------------------------------------------------ the stand-in
class Api:
    def __init__(self, tmp_path: Path, pg: Postgres, config: dict | None = None, env: dict | None = None,
                 name: str = "m") -> None:
        self.work = tmp_path / f"{name}-work"
        self.logdir = tmp_path / f"{name}-logs"
        self.work.mkdir(exist_ok=True)
        self.logdir.mkdir(exist_ok=True)
        cfg = {"db": {"host": "127.0.0.1", "port": pg.port, "name": "ente_db", "user": "pguser",
                      "password": pg.env["POSTGRES_PASSWORD"]},
               "key": {"hash": base64.b64encode(b"k" * 64).decode()}}
        cfg.update(config or {})
        (self.work / "museum.yaml").write_text(yaml.safe_dump(cfg))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("ENTE_", "SSL_CERT_"))}
        self.env.update({"MUSEUM_STANDIN_LOG_DIR": str(self.logdir), "SSL_CERT_FILE": "/nonexistent/bundle.pem"})
        self.env.update(env or {})
        self.proc: subprocess.Popen | None = None

    def start(self, wait_schema: bool = True) -> Api:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, str(MUSEUM), "--listen", f"127.0.0.1:{self.port}"],
                                     cwd=self.work, env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        wait_port(self.port, self.proc)
        if wait_schema:
            self.wait_log("database schema ready")
        return self

    def wait_log(self, text: str, timeout: float = 10) -> None:
        end = time.monotonic() + timeout
        while text not in self.log():
            assert time.monotonic() < end, self.log()
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            assert self.proc.wait(timeout=5) == 0
        if self.proc and self.proc.stderr and not self.proc.stderr.closed:
            err = self.proc.stderr.read()
            self.proc.stderr.close()
            assert err == ""

    def log(self) -> str:
        path = self.logdir / "museum.log"
        return path.read_text() if path.exists() else ""

    def lines(self, pattern: str) -> list[str]:
        return [x for x in self.log().splitlines() if re.search(pattern, x)]

    def call(self, method: str, path: str, body: dict | None = None, package: str | None = AUTH_PKG,
             headers: dict | None = None) -> tuple[int, bytes]:
        hdrs = {"Content-Type": "application/json", **({"X-Client-Package": package} if package else {}),
                **(headers or {})}
        req = urllib.request.Request(self.url + path, method=method, headers=hdrs,
                                     data=json.dumps(body).encode() if body is not None else None)
        try:
            with urllib.request.urlopen(req, timeout=40) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def ott(self, addr: str, purpose: str = "signup", package: str | None = AUTH_PKG) -> tuple[int, bytes]:
        return self.call("POST", "/users/ott", {"email": addr, "purpose": purpose}, package)

    def verify(self, addr: str, code: str, package: str | None = AUTH_PKG) -> tuple[int, dict]:
        status, body = self.call("POST", "/users/verify-email", {"email": addr, "ott": code}, package)
        return status, json.loads(body)

    def skipped_code(self, addr: str) -> str:
        """The code from the last 'Skipping sending email to <addr>: Verification code: <code>' line."""
        found = re.findall(rf'msg="Skipping sending email to {re.escape(addr)}: Verification code: (\d{{6}})"',
                           self.log())
        assert found, self.log()
        return found[-1]


@pytest.fixture
def museum(tmp_path, pg, db):
    started: list[Api] = []

    def make(config: dict | None = None, env: dict | None = None, name: str = "m") -> Api:
        started.append(Api(tmp_path, pg, config, env, name).start())
        return started[-1]

    yield make
    for m in started:
        m.stop()
        lines = m.log().splitlines()
        assert all(LOGRUS.match(x) for x in lines), [x for x in lines if not LOGRUS.match(x)]


def other_code(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


# ------------------------------------------------------------------ sign-up, single use, registration
def test_signup_ott_then_verify_creates_the_user_once(museum, db):
    m = museum()
    assert m.ott(" New.User@Example.org ") == (200, b"")          # upstream: 200, no body
    addr = "new.user@example.org"                                  # NormalizeEmail: trimmed, lower case
    code = m.skipped_code(addr)
    assert m.lines(rf'msg="Added ott for [A-Za-z0-9+/=]{{44}}: {code}"')
    assert m.lines(r'level=info msg="request" .*method=POST path=/users/ott status=200')
    assert m.ott(addr) == (200, b"")
    code2 = m.skipped_code(addr)

    status, body = m.verify(addr, other_code(code) if other_code(code) != code2 else other_code(code2))
    assert (status, body) == (401, {})
    status, body = m.verify(addr, code)
    assert status == 200 and set(body) == {"id", "token"}
    uid = body["id"]
    assert isinstance(uid, int) and len(str(uid)) == 16
    assert len(base64.urlsafe_b64decode(body["token"])) == 32
    assert db.q("SELECT user_id, email FROM users") == [(uid, addr)]
    assert db.q("SELECT user_id, app, token FROM tokens") == [(uid, "auth", body["token"])]

    # The same code is not accepted twice: code2 is still live, so the reuse is a wrong code (401) ...
    assert m.verify(addr, code) == (401, {})
    status, again = m.verify(addr, code2)
    assert status == 200 and again["id"] == uid and again["token"] != body["token"]
    # ... and once no code is live, upstream answers 410 (ErrExpiredOTT, "no active OTT").
    assert m.verify(addr, code2) == (410, {})
    assert db.q("SELECT count(*) FROM users") == [(1,)]
    assert m.lines(r'level=warning msg="Request failed" error="incorrect OTT"')


def test_signup_for_a_registered_address_is_409_like_upstream(museum, db):
    m = museum()
    addr = "reg@example.org"
    m.ott(addr)
    status, body = m.verify(addr, m.skipped_code(addr))
    assert status == 200
    token = body["token"]
    # Upstream's "registered" = the user exists AND has key attributes: not yet.
    assert m.ott(addr) == (200, b"")
    assert m.ott(addr, "login")[0] == 404
    attrs = {"kekSalt": "a", "encryptedKey": "b", "keyDecryptionNonce": "c", "publicKey": "d",
             "encryptedSecretKey": "e", "secretKeyDecryptionNonce": "f", "memLimit": 67108864, "opsLimit": 2}
    assert m.call("PUT", "/users/attributes", {"keyAttributes": attrs}, headers={"X-Auth-Token": "bad"})[0] == 401
    # A token is per app: the auth token does not authenticate a photos request.
    assert m.call("PUT", "/users/attributes", {"keyAttributes": attrs}, PHOTOS_PKG,
                  headers={"X-Auth-Token": token})[0] == 401
    assert m.call("PUT", "/users/attributes", {"keyAttributes": {**attrs, "memLimit": 0}},
                  headers={"X-Auth-Token": token})[0] == 400
    assert m.call("PUT", "/users/attributes", {"keyAttributes": attrs}, headers={"X-Auth-Token": token}) == (200, b"")
    assert m.call("PUT", "/users/attributes", {"keyAttributes": attrs}, headers={"X-Auth-Token": token})[0] == 403

    status, body = m.ott(addr)
    assert status == 409
    assert json.loads(body) == {"code": "USER_ALREADY_REGISTERED", "message": "User is already registered"}
    assert m.lines(r'level=warning msg="Request failed" error="USER_ALREADY_REGISTERED : User is already registered"')
    status, body = m.ott("nobody@example.org", "login")
    assert (status, json.loads(body)["code"]) == (404, "USER_NOT_REGISTERED")
    assert m.ott(addr, "login") == (200, b"")
    status, body = m.verify(addr, m.skipped_code(addr))
    assert status == 200 and body["keyAttributes"] == attrs and body["id"] == db.q("SELECT user_id FROM users")[0][0]
    # purpose "change" to an address that already has an account: 403 (ErrPermissionDenied).
    assert m.ott(addr, "change")[0] == 403


def test_otts_are_per_app(museum, db):
    m = museum()
    addr = "apps@example.org"
    assert m.ott(addr, package=AUTH_PKG)[0] == 200
    code = m.skipped_code(addr)
    assert db.q("SELECT email, app, ott FROM otts") == [(addr, "auth", code)]
    assert m.verify(addr, code, package=None) == (410, {})             # no header: photos
    assert m.verify(addr, code, package=PHOTOS_PKG) == (410, {})
    assert m.verify(addr, code, package="io.ente.auth")[0] == 200      # prefix io.ente.auth


def test_ott_lifetime_follows_the_lab_clock(museum, db):
    m = museum()
    m.ott("early@example.org")
    m.ott("late@example.org")
    early, late = m.skipped_code("early@example.org"), m.skipped_code("late@example.org")
    db.clock(3599)
    assert m.verify("early@example.org", early)[0] == 200
    db.clock(3601)
    assert m.verify("late@example.org", late) == (410, {})
    exp = db.q("SELECT expiration_time - creation_time FROM otts")
    assert exp == [(3600 * 1_000_000,)]


def test_at_most_ten_live_otts_per_address_and_app(museum, db):
    m = museum()
    addr = "many@example.org"
    for _ in range(10):
        assert m.ott(addr) == (200, b"")
    assert m.ott(addr) == (429, b"{}")
    assert m.lines(r'level=error msg="Request failed" '
                   r'error="too many bad request: Too many ott requests in a short duration"')
    assert m.ott(addr, package=PHOTOS_PKG)[0] == 200                   # another app: its own ten
    db.clock(3601)                                                      # the ten have expired
    assert m.ott(addr)[0] == 200


def test_twenty_wrong_attempts_lock_the_live_otts(museum, db):
    m = museum()
    addr = "guess@example.org"
    m.ott(addr)
    code = m.skipped_code(addr)
    for _ in range(20):
        assert m.verify(addr, other_code(code)) == (401, {})
    assert db.q("SELECT wrong_attempt FROM otts") == [(20,)]
    assert m.verify(addr, code) == (429, {})                           # even the right code
    m.ott(addr)                                                        # a new code does not reset it
    assert m.verify(addr, m.skipped_code(addr)) == (429, {})
    db.clock(3601)
    m.ott(addr)
    assert m.verify(addr, m.skipped_code(addr))[0] == 200


# ------------------------------------------------------------------ hardcoded OTTs
def test_hardcoded_ott_from_env_no_mail(museum, db, smtp_servers):
    smtp = smtp_servers(starttls=None, auth=False)
    m = museum({"smtp": {"host": "127.0.0.1", "port": smtp.port},
                "internal": {"hardcoded-ott": {"emails": ["file@example.org,777777"],
                                               "local-domain-suffix": "@lab.test", "local-domain-value": "424242"}}},
               {"ENTE_INTERNAL_HARDCODED_OTT_EMAILS": "env@example.org,012345 \n other@example.org,135790"})
    assert m.ott("env@example.org") == (200, b"")
    log = m.log()
    first = log.index('msg="returning hardcoded ott for env@example.org"')
    second = log.index('msg="Added hard coded ott for env@example.org : 012345"')
    assert first < second
    assert m.ott("x@lab.test") == (200, b"")
    assert 'msg="Added hard coded ott for x@lab.test : 424242"' in m.log()
    assert smtp.connections == 0
    assert m.verify("env@example.org", "012345")[0] == 200
    assert m.verify("x@lab.test", "424242")[0] == 200
    # The env list replaced the file's: file@example.org gets a random code, by mail.
    assert m.ott("file@example.org") == (200, b"")
    assert "hardcoded ott for file@example.org" not in m.log()
    assert smtp.connections == 1 and len(smtp.messages) == 1
    assert smtp.messages[0]["Subject"] != "Verification code: 777777"


def test_dashed_env_name_is_ignored(museum, db):
    m = museum(env={"ENTE_INTERNAL_HARDCODED-OTT_EMAILS": "dash@example.org,111111"})
    assert m.ott("dash@example.org") == (200, b"")
    code = m.skipped_code("dash@example.org")
    assert "hardcoded" not in m.log()
    if code != "111111":       # one chance in a million that the random code is the same
        assert m.verify("dash@example.org", "111111") == (401, {})
    assert m.verify("dash@example.org", code)[0] == 200


# ------------------------------------------------------------------ SMTP
def trust_dir(tmp_path: Path, ca: trustme.CA | None, name: str = "certs") -> Path:
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    if ca:
        ca.cert_pem.write_to_path(str(d / "lab-ca.pem"))     # any file name, no hash link (like Go)
    return d


SMTP_USER, SMTP_PW = "museum@lab.test", "s3cret pw"


def smtp_config(server: SmtpServer, host: str, **extra) -> dict:
    return {"smtp": {"host": host, "port": server.port, "username": SMTP_USER, "password": SMTP_PW,
                     "email": "noreply@lab.test", "sender-name": "Ente Lab Ä", **extra}}


def test_mail_over_starttls_with_auth_plain(museum, db, ca, tmp_path, smtp_servers):
    smtp = smtp_servers(starttls=server_ctx(ca, "localhost"))
    m = museum(smtp_config(smtp, "localhost"), {"SSL_CERT_DIR": str(trust_dir(tmp_path, ca))})
    assert m.ott("Mail.Me@Example.org") == (200, b"")
    assert smtp.events[:3] == ["STARTTLS done", "AUTH tls=True", "MAIL noreply@lab.test"]
    assert smtp.auth_plain == [("", SMTP_USER, SMTP_PW)]
    assert smtp.envelopes == [("noreply@lab.test", ["mail.me@example.org"])]
    msg = smtp.messages[0]
    code = re.fullmatch(r"Verification code: (\d{6})", msg["Subject"]).group(1)
    assert parseaddr(str(msg["From"])) == ("Ente Lab Ä", "noreply@lab.test")
    raw = smtp.raw[0]
    assert raw.isascii() and re.search(rb"^From: .*=\?utf-8\?[bq]\?.+\?= <noreply@lab\.test>\r$", raw, re.M | re.I)
    assert re.search(rb"[^\r]\n", raw) is None          # CRLF line ends on the wire, as Go's DotWriter
    assert msg["To"] == "mail.me@example.org"
    assert code in msg.get_body(("plain",)).get_content()
    assert "Skipping sending email" not in m.log()
    assert m.verify("mail.me@example.org", code)[0] == 200


def test_mail_with_implicit_tls(museum, db, ca, tmp_path, smtp_servers):
    smtp = smtp_servers(implicit=server_ctx(ca, "localhost"))
    m = museum(smtp_config(smtp, "localhost", encryption="tls"), {"SSL_CERT_DIR": str(trust_dir(tmp_path, ca))})
    assert m.ott("tls@example.org") == (200, b"")
    assert smtp.auth_plain == [("", SMTP_USER, SMTP_PW)] and smtp.events[0] == "AUTH tls=True"
    assert smtp.messages[0]["Subject"].startswith("Verification code: ")


def test_certificate_for_another_name_is_refused(museum, db, ca, tmp_path, smtp_servers):
    smtp = smtp_servers(starttls=server_ctx(ca, "smtp.other.test"))
    m = museum(smtp_config(smtp, "localhost"), {"SSL_CERT_DIR": str(trust_dir(tmp_path, ca))})
    assert m.ott("x@example.org") == (500, b"{}")
    err = m.lines(r'level=error msg="Request failed" error="failed to send mail: ')
    assert len(err) == 1 and "CERTIFICATE_VERIFY_FAILED" in err[0] and "ostname mismatch" in err[0]
    assert smtp.auth_plain == [] and smtp.messages == []


def test_untrusted_root_fails_and_roots_are_loaded_once(museum, db, ca, tmp_path, smtp_servers):
    smtp = smtp_servers(starttls=server_ctx(ca, "localhost"))
    certs = trust_dir(tmp_path, None)
    m = museum(smtp_config(smtp, "localhost"), {"SSL_CERT_DIR": str(certs)})
    assert m.ott("root@example.org") == (500, b"{}")
    err = m.lines(r'level=error msg="Request failed" error="failed to send mail: ')
    assert len(err) == 1 and "CERTIFICATE_VERIFY_FAILED" in err[0] and "unable to get local issuer" in err[0]
    trust_dir(tmp_path, ca)                      # the CA arrives in SSL_CERT_DIR ...
    assert m.ott("root@example.org") == (500, b"{}")          # ... but the pool was loaded at the first use
    assert smtp.auth_plain == [] and smtp.messages == []
    m.stop()
    m2 = museum(smtp_config(smtp, "localhost"), {"SSL_CERT_DIR": str(certs)}, name="restarted")
    assert m2.ott("root@example.org") == (200, b"")
    assert len(smtp.messages) == 1 and smtp.auth_plain == [("", SMTP_USER, SMTP_PW)]


def test_no_credentials_over_plain_text_unless_localhost(museum, db, smtp_servers):
    far = smtp_servers(host="127.0.0.2")          # no STARTTLS, AUTH offered, "not localhost" for Go
    m = museum(smtp_config(far, "127.0.0.2"))
    assert m.ott("plain@example.org") == (500, b"{}")
    assert m.lines(r'level=error msg="Request failed" error="failed to send mail: unencrypted connection"')
    assert far.connections == 1 and far.auth_plain == [] and far.messages == []
    assert not any(e.startswith("AUTH") for e in far.events)
    # Go's isLocalhost: "localhost", "127.0.0.1", "::1" may get the credentials in clear.
    near = smtp_servers(host="127.0.0.1")
    m2 = museum(smtp_config(near, "127.0.0.1"), name="near")
    assert m2.ott("plain@example.org") == (200, b"")
    assert near.events[0] == "AUTH tls=False" and near.auth_plain == [("", SMTP_USER, SMTP_PW)]
    # Without username/password no AUTH at all, and the plain-text mail is sent.
    m3 = museum({"smtp": {"host": "127.0.0.2", "port": far.port}}, name="noauth")
    assert m3.ott("plain@example.org") == (200, b"")
    assert far.auth_plain == [] and len(far.messages) == 1
    assert parseaddr(str(far.messages[0]["From"])) == ("Ente", "verify@ente.com")


# ------------------------------------------------------------------ the database comes later
def test_museum_starts_without_the_database_and_creates_the_schema_later(tmp_path, pg, db):
    db.q("DROP TABLE users, key_attributes, otts, tokens, ente_lab_clock CASCADE")
    db.conn.close()
    pg.stop()
    m = Api(tmp_path, pg, {"smtp": {"host": ""}}).start(wait_schema=False)
    try:
        m.wait_log("database not ready, will retry creating the schema")
        assert m.call("GET", "/ping")[0] == 500
        assert m.ott("late@example.org") == (500, b"{}")
        assert "database schema ready" not in m.log()
        pg.start()
        m.wait_log("database schema ready")
        d = DB(pg)
        tables = d.q("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
        assert tables == [("ente_lab_clock",), ("key_attributes",), ("otts",), ("tokens",), ("users",)]
        assert d.q("SELECT offset_seconds FROM ente_lab_clock") == [(0,)]
        d.conn.close()
        assert m.call("GET", "/ping")[0] == 200
        assert m.ott("late@example.org") == (200, b"")
        assert m.verify("late@example.org", m.skipped_code("late@example.org"))[0] == 200
    finally:
        m.stop()
