"""The browser part of the lab, on the host: Debian's headless Chromium drives the Auth
web app stand-in against an API on loopback, both HTTPS with certificates of a throw-away
trustme CA. No VM: the lab names map to 127.0.0.1.

Proves: the sign-up call is a preflighted cross-origin POST that reaches "code sent"; a
doubled Access-Control-Allow-Origin (the article's pitfall) fails in the browser with
Chromium's CORS error in the console; a name outside the lab fails without a DNS lookup
(the proxy refuses it, the resolver never sees the name); a certificate of another CA fails.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trustme

from entelab import browser
from entelab.errors import LabError
from entelab.state import ROOT

pytestmark = pytest.mark.browser

WEB, API = "auth.lab.test", "api.lab.test"
NAMES = [WEB, API]
EMAIL = "reader@lab.test"
STANDIN_WEB = ROOT / "provision" / "standin" / "web"


def need_chromium() -> None:
    try:
        browser.find_chromium()
    except LabError as e:       # the test command installs it: a missing browser is a failure
        pytest.fail(f"{e.message} ({e.hint})")
    if not shutil.which("certutil"):
        pytest.fail("certutil missing: apt-get install libnss3-tools")


class Quiet:
    def log_message(self, *args) -> None:
        pass


class ApiHandler(Quiet, BaseHTTPRequestHandler):
    """Museum's CORS answer for OPTIONS and POST /users/ott; ``dup_origin`` sends
    Access-Control-Allow-Origin twice (Apache's own line on top of Museum's)."""

    protocol_version = "HTTP/1.1"
    seen: list[dict]
    dup_origin = False
    ott_status = 200           # Museum: 200 and no body; 500 {} when the mail fails

    def _answer(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        origin = self.headers.get("Origin")
        if origin:
            self.send_header("Access-Control-Allow-Origin", origin)
            if self.dup_origin and self.command != "OPTIONS":
                self.send_header("Access-Control-Allow-Origin", origin)
        self.send_header("Access-Control-Allow-Credentials", "true")
        self.send_header("Access-Control-Allow-Headers", "Content-Type, X-Client-Package, X-Auth-Token")
        self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS, GET, PUT, PATCH, DELETE")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _record(self, body: bytes = b"") -> None:
        self.seen.append({"method": self.command, "path": self.path,
                          "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})

    def do_OPTIONS(self) -> None:
        self._record()
        self._answer(200)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._record(body)
        if self.path != "/users/ott":
            self._answer(404, b'{"code":"NOT_FOUND"}')
            return
        self._answer(self.ott_status, b"" if self.ott_status == 200 else b"{}")


class Server:
    def __init__(self, handler, ctx: ssl.SSLContext) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def tls(ca: trustme.CA, name: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(ctx)
    return ctx


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def api(ca) -> Iterator[type[ApiHandler]]:
    handler = type("Api", (ApiHandler,), {"seen": [], "dup_origin": False, "ott_status": 200})
    srv = Server(handler, tls(ca, API))
    handler.port = srv.port          # type: ignore[attr-defined]
    yield handler
    srv.close()


def web_root(tmp_path: Path, api_port: int) -> Path:
    """The stand-in's files as its entrypoint lays them out, config from ENTE_API_ORIGIN."""
    out = tmp_path / "app"
    env = {k: v for k, v in os.environ.items() if k != "NEXT_PUBLIC_ENTE_ENDPOINT"}
    env.update(ENTE_API_ORIGIN=f"https://{API}:{api_port}", ENTE_LAB_WEB_DIR=str(out))
    r = subprocess.run(["sh", str(STANDIN_WEB / "auth-web-standin.sh"), "--write-config-only"],
                       env=env, capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture
def web(ca, api, tmp_path) -> Iterator[str]:
    root = web_root(tmp_path, api.port)
    srv = Server(partial(type("Web", (Quiet, SimpleHTTPRequestHandler), {}), directory=str(root)), tls(ca, WEB))
    yield f"https://{WEB}:{srv.port}/"
    srv.close()


def open_page(url: str, ca: trustme.CA, **kw) -> browser.BrowserResult:
    need_chromium()
    return browser.open_page(url, names=NAMES, ip="127.0.0.1", root_ca_pem=ca.cert_pem.bytes(), **kw)


def no_dns(result: browser.BrowserResult) -> None:
    """Chromium's resolver saw only IP literals, localhost and ~NOTFOUND: no name reached DNS."""
    assert result.resolver_hosts, "no NetLog read: " + result.summary()
    for host in result.resolver_hosts:
        if host in ("localhost", "~notfound"):
            continue
        ipaddress.ip_address(host)     # raises for a name


# ------------------------------------------------------------------ the sign-up works
def test_signup_reaches_code_sent_with_preflight(ca, api, web):
    r = open_page(web, ca, email=EMAIL)
    assert r.load_error is None, r.summary()
    assert "ente-lab stand-in for the Ente Auth web app" in r.page_text
    assert r.state == "code-sent", r.summary()
    assert EMAIL in r.state_text

    # the API server: preflight first (asking for X-Client-Package), then the POST
    methods = [(s["method"], s["path"]) for s in api.seen]
    assert methods == [("OPTIONS", "/users/ott"), ("POST", "/users/ott")], methods
    pre, post = api.seen
    origin = web.rstrip("/")
    assert pre["headers"]["origin"] == origin
    assert pre["headers"]["access-control-request-method"] == "POST"
    asked = {h.strip() for h in pre["headers"]["access-control-request-headers"].split(",")}
    assert {"content-type", "x-client-package"} <= asked
    assert post["headers"]["x-client-package"] == "io.ente.auth.web"
    assert post["headers"]["content-type"] == "application/json"
    assert post["headers"]["origin"] == origin
    assert json.loads(post["body"]) == {"email": EMAIL, "purpose": "signup"}

    # the browser's own network log says the same
    (pf,) = r.preflights("/users/ott")
    assert pf.status == 200 and pf.resource_type == "Preflight"
    assert "x-client-package" in pf.header("access-control-request-headers").lower()
    (call,) = r.requests("/users/ott", "POST")
    assert call.status == 200 and call.error is None and not call.preflight
    assert call.header("x-client-package") == "io.ente.auth.web"
    assert not [c for c in r.console if "CORS" in c], r.summary()
    no_dns(r)


# ------------------------------------------------------------------ the article's CORS pitfall
def test_duplicate_allow_origin_fails_in_the_browser(ca, api, web):
    api.dup_origin = True
    r = open_page(web, ca, email=EMAIL)
    assert r.load_error is None, r.summary()
    assert r.state == "network-error", r.summary()
    assert "network error" in r.state_text
    # the server did answer 200: only the browser refuses the doubled header
    assert [s["method"] for s in api.seen] == ["OPTIONS", "POST"]
    cors = [c for c in r.console if "blocked by CORS policy" in c]
    assert cors, r.summary()
    assert "'Access-Control-Allow-Origin' header contains multiple values" in cors[0]
    assert "but only one is allowed" in cors[0]
    (call,) = r.requests("/users/ott", "POST")
    assert call.cors_error == "MultipleAllowOriginValues", r.summary()
    assert any("/users/ott" in f and "MultipleAllowOriginValues" in f for f in r.failed_requests)


def test_api_error_is_shown_as_error_not_network_error(ca, api, web):
    api.ott_status = 500       # what Museum answers when its mail fails
    r = open_page(web, ca, email=EMAIL)
    assert r.state == "error", r.summary()
    assert r.state_text == "error: HTTP 500 {}"
    (call,) = r.requests("/users/ott", "POST")
    assert call.status == 500 and call.cors_error is None
    assert not [c for c in r.console if "CORS" in c], r.summary()


# ------------------------------------------------------------------ nothing outside the lab
def test_names_outside_the_lab_never_leave_the_machine(ca, api, web):
    fetch = "fetch({!r}).then(r => 'answered ' + r.status, e => 'rejected: ' + e)"
    loopback = f"https://127.0.0.1:{api.port}/ping"      # a lab server, but not by a lab name
    r = open_page(web, ca, scripts=[fetch.format("https://example.com/"), fetch.format(loopback)])
    assert r.load_error is None, r.summary()
    assert r.script_results == ["rejected: TypeError: Failed to fetch"] * 2, r.summary()
    (ex,) = [e for e in r.network if e.url == "https://example.com/"]
    # the refusing proxy answered for both (Chromium never fell back to a direct connection)
    assert ex.error == "net::ERR_PROXY_CONNECTION_FAILED", r.summary()
    (lo,) = r.requests("/ping")
    assert lo.error == "net::ERR_PROXY_CONNECTION_FAILED", r.summary()
    assert api.seen == []
    # ... and no name was looked up: the resolver only ever saw IP literals and ~NOTFOUND
    assert "example.com" not in r.resolver_hosts
    no_dns(r)
    proxy = next(a for a in r.args if a.startswith("--proxy-server="))
    assert proxy.startswith("--proxy-server=http://127.0.0.1:")
    assert "MAP * ~NOTFOUND" in next(a for a in r.args if a.startswith("--host-resolver-rules="))


# ------------------------------------------------------------------ the real chain is verified
def test_certificate_of_another_ca_fails(ca, tmp_path):
    other = trustme.CA()
    root = tmp_path / "app"
    root.mkdir()
    (root / "index.html").write_text("<p>should not be seen</p>")
    srv = Server(partial(type("Web", (Quiet, SimpleHTTPRequestHandler), {}), directory=str(root)), tls(other, WEB))
    try:
        r = open_page(f"https://{WEB}:{srv.port}/", ca)
    finally:
        srv.close()
    assert r.load_error is not None and "net::ERR_CERT_AUTHORITY_INVALID" in r.load_error, r.summary()
    assert "should not be seen" not in r.page_text


# ------------------------------------------------------------------ errors without a browser
def test_missing_chromium_is_a_lab_error_with_hint(monkeypatch, tmp_path):
    monkeypatch.setattr(browser, "CHROMIUM_CANDIDATES", (str(tmp_path / "no-chromium"),))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(browser.BrowserError) as e:
        browser.find_chromium()
    assert isinstance(e.value, LabError)
    assert "apt-get install chromium" in e.value.hint


def test_chromium_that_does_not_start_is_a_lab_error(ca, tmp_path):
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\necho 'not a browser' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(browser.BrowserError) as e:
        browser.open_page("https://auth.lab.test/", names=NAMES, ip="127.0.0.1",
                          root_ca_pem=ca.cert_pem.bytes(), chromium=fake, timeout=10)
    assert "did not start" in e.value.message and "apt-get install chromium" in e.value.hint


def test_switches_and_mapping():
    args = browser.chromium_args(["Auth.Lab.Test", "api.lab.test"], "192.168.121.10", 4321)
    assert args[:5] == ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--no-first-run"]
    assert ("--host-resolver-rules=MAP auth.lab.test 192.168.121.10, MAP api.lab.test 192.168.121.10, "
            "MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1") in args
    assert "--proxy-server=http://127.0.0.1:4321" in args
    assert "--proxy-bypass-list=auth.lab.test;api.lab.test;<-loopback>" in args
    assert "MAP a.test [fd00::1]" in browser.host_resolver_rules(["a.test"], "fd00::1")
    for bad in (["a.test, MAP * 1.2.3.4"], ["a b"], []):
        with pytest.raises(browser.BrowserError):
            browser.chromium_args(bad, "10.0.0.1", 1)
    with pytest.raises(ValueError):
        browser.host_resolver_rules(["a.test"], "not-an-ip")


def test_the_proxy_port_refuses():
    held = browser.refusing_port()
    try:
        with pytest.raises(ConnectionRefusedError), socket.create_connection(held.getsockname(), timeout=5):
            pass
    finally:
        held.close()


def test_the_nss_database_trusts_every_root_of_the_lab_bundle(tmp_path):
    """After a reboot the lab's bundle is pebble's new root plus the retired root the served
    certificate still chains to (issue 11): each is imported and trusted for TLS servers."""
    first, second = trustme.CA(), trustme.CA()
    db = browser.make_nssdb(tmp_path, first.cert_pem.bytes() + second.cert_pem.bytes())
    listed = subprocess.run(["certutil", "-L", "-d", f"sql:{db}"], capture_output=True,
                            text=True, check=True).stdout
    rows = {line.rsplit(None, 1)[0].strip(): line.rsplit(None, 1)[1]
            for line in listed.splitlines() if line.startswith("ente-lab root")}
    assert rows == {"ente-lab root 0": "C,,", "ente-lab root 1": "C,,"}, listed
    with pytest.raises(browser.BrowserError, match="no PEM certificate"):
        browser.make_nssdb(tmp_path / "other", b"not a certificate")
