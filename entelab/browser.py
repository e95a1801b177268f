"""A real browser on the host: Debian's headless Chromium, driven by Playwright's client.

``open_page`` opens one URL of the lab in a throw-away Chromium and returns what a reader
would see and what DevTools would show: the page's state element, the console (Chromium's
CORS errors are console messages), failed requests and the network log of every request,
the CORS preflights (``OPTIONS``) included.

The browser reaches the lab and nothing else:

* ``--host-resolver-rules``: every lab name maps to the given IP, every other name to
  ``~NOTFOUND`` (no DNS query leaves the machine; ``localhost`` and the refusing proxy's
  ``127.0.0.1`` are excluded so Chromium can reach the proxy below);
* ``--proxy-server`` points at a loopback port this process holds bound but never listens
  on (every connection is refused), ``--proxy-bypass-list`` names the lab names only, and
  ``<-loopback>`` ends Chromium's implicit "loopback goes direct": whatever is not a lab
  name fails with ``ERR_PROXY_CONNECTION_FAILED``;
* ``--no-sandbox --disable-background-networking --disable-component-update --disable-sync
  --no-first-run`` (Chromium 156 still tries update.googleapis.com and accounts.google.com
  with those; the two layers above stop it);
* the lab root is trusted through a throw-away NSS database (``$HOME/.pki/nssdb`` of a
  temporary HOME, ``certutil -t C,,``): Chromium verifies the real chain, nothing is
  skipped, and the host's own trust store is never touched.

Playwright's Python client only: never ``playwright install`` (no browser is downloaded);
the browser is Debian's ``chromium`` package (``TEST_PACKAGES`` in ``host.py``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import LabError

# The real binary: /usr/bin/chromium is Debian's shell wrapper, which adds flags of its own
# (extensions, --enable-remote-extensions from /etc/chromium.d) that this module must not get.
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")
INSTALL_HINT = ("apt-get install chromium libnss3-tools (`./labctl test.host` installs them with the "
                "other test packages); never `playwright install`")

# Switches that keep Chromium off every network but the lab (the proxy/resolver ones are added per run).
QUIET_SWITCHES = [
    "--no-sandbox",                        # root in CI; the sandbox needs user namespaces
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PROXY_HOST = "127.0.0.1"
SIGNUP_PENDING = ("idle", "sending")       # #state values the sign-up has not left yet
_NAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                   r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


class BrowserError(LabError):
    """The browser could not be started or driven (not: the page failed, that is a result)."""

    label = "browser"


@dataclass
class NetworkEntry:
    """One request as DevTools' network panel shows it."""

    method: str
    url: str
    resource_type: str                    # Document, Script, Fetch, Preflight, ...
    request_headers: dict[str, str] = field(default_factory=dict)   # lower-case names
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    error: str | None = None              # net::ERR_... when it failed
    cors_error: str | None = None         # DevTools' corsError (MultipleAllowOriginValues, ...)
    preflight: bool = False               # the CORS preflight OPTIONS Chromium sent by itself

    def header(self, name: str) -> str | None:
        return self.request_headers.get(name.lower())


@dataclass
class BrowserResult:
    url: str
    chromium_version: str
    args: list[str]                       # the switches Chromium was started with (ours)
    load_error: str | None = None         # the navigation failed: net::ERR_CERT_..., ...
    title: str = ""
    state: str | None = None              # data-state of #state
    state_text: str = ""
    page_text: str = ""
    console: list[str] = field(default_factory=list)        # "error: Access to fetch at ..."
    page_errors: list[str] = field(default_factory=list)    # uncaught exceptions
    failed_requests: list[str] = field(default_factory=list)  # "POST url: net::ERR_FAILED (cors ...)"
    network: list[NetworkEntry] = field(default_factory=list)
    script_results: list[Any] = field(default_factory=list)
    # names Chromium's resolver was asked for, after --host-resolver-rules (from its NetLog):
    # only IP literals, localhost and ~NOTFOUND when nothing was looked up in DNS
    resolver_hosts: list[str] = field(default_factory=list)

    def requests(self, path: str, method: str | None = None) -> list[NetworkEntry]:
        """Requests whose URL path is ``path`` (and method, when given), in order."""
        from urllib.parse import urlsplit
        return [e for e in self.network if urlsplit(e.url).path == path
                and (method is None or e.method == method.upper())]

    def preflights(self, path: str) -> list[NetworkEntry]:
        return [e for e in self.requests(path, "OPTIONS") if e.preflight]

    def summary(self) -> str:
        """Multi-line text for assertion messages: what went wrong at a glance."""
        lines = [f"url: {self.url} (Chromium {self.chromium_version})",
                 f"load error: {self.load_error}", f"state: {self.state!r} {self.state_text!r}"]
        lines += [f"console: {c}" for c in self.console]
        lines += [f"page error: {e}" for e in self.page_errors]
        lines += [f"failed: {f}" for f in self.failed_requests]
        lines += [f"net: {e.method} {e.url} -> {e.status} {e.error or ''} "
                  f"{'(preflight)' if e.preflight else ''}" for e in self.network]
        return "\n".join(lines)


# ------------------------------------------------------------------ pieces
def find_chromium() -> Path:
    """Debian's Chromium binary, or a LabError saying how to install it."""
    for cand in CHROMIUM_CANDIDATES:
        if os.access(cand, os.X_OK):
            return Path(cand)
    found = shutil.which("chromium")
    if found:
        return Path(found)
    raise BrowserError("Chromium not found (looked for " + ", ".join(CHROMIUM_CANDIDATES) + ")",
                       hint=INSTALL_HINT)


def _check_names(names: Iterable[str]) -> list[str]:
    out = [n.strip().lower().rstrip(".") for n in names]
    bad = [n for n in out if not _NAME.match(n)]
    if not out or bad:
        raise BrowserError(f"not host names for the browser's mapping: {bad or '(none)'}",
                           hint="lab names are DNS names (letters, digits, '-', dots)")
    return out


def host_resolver_rules(names: Iterable[str], ip: str) -> str:
    """``MAP <name> <ip>`` for every lab name, every other name to ~NOTFOUND."""
    addr = ipaddress.ip_address(ip)
    target = f"[{addr}]" if addr.version == 6 else str(addr)
    rules = [f"MAP {n} {target}" for n in _check_names(names)]
    rules += ["MAP * ~NOTFOUND", "EXCLUDE localhost", f"EXCLUDE {PROXY_HOST}"]
    return ", ".join(rules)


def chromium_args(names: Iterable[str], ip: str, proxy_port: int, net_log: Path | None = None) -> list[str]:
    names = _check_names(names)
    args = [*QUIET_SWITCHES,
            f"--host-resolver-rules={host_resolver_rules(names, ip)}",
            f"--proxy-server=http://{PROXY_HOST}:{proxy_port}",
            "--proxy-bypass-list=" + ";".join([*names, "<-loopback>"])]
    if net_log is not None:
        args.append(f"--log-net-log={net_log}")
    return args


def refusing_port() -> socket.socket:
    """A loopback TCP port bound and never listened on: connections to it are refused
    (and no one else can listen there while the socket is open)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((PROXY_HOST, 0))
    return sock


def make_nssdb(home: Path, root_ca_pem: str | bytes) -> Path:
    """``home/.pki/nssdb`` (what Chromium on Linux reads) trusting only the roots in
    ``root_ca_pem`` (C,,): the lab's bundle is pebble's current root, then any retired root
    a served certificate still chains to (rc.pebble), each imported under its own name."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    certutil = shutil.which("certutil")
    if not certutil:
        raise BrowserError("certutil not found (it makes the browser's throw-away NSS database)",
                           hint="apt-get install libnss3-tools (the test command installs it)")
    pem = root_ca_pem.encode() if isinstance(root_ca_pem, str) else root_ca_pem
    try:
        roots = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise BrowserError(f"the lab's root bundle holds no PEM certificate: {exc}",
                           hint="./labctl lab.certs publishes it again") from exc
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True, mode=0o700)
    cmds = [[certutil, "-N", "-d", f"sql:{db}", "--empty-password"]]
    for i, root in enumerate(roots):
        f = home / f"lab-root-{i}.pem"
        f.write_bytes(root.public_bytes(Encoding.PEM))
        cmds.append([certutil, "-A", "-d", f"sql:{db}", "-n", f"ente-lab root {i}", "-t", "C,,",
                     "-i", str(f)])
    for cmd in cmds:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BrowserError(f"`{' '.join(cmd)}` exited {proc.returncode}: {proc.stderr.strip()}",
                               hint="the roots must be PEM certificates (the lab's root CA bundle)")
    return db


def resolver_hosts(net_log: Path) -> list[str]:
    """The hosts Chromium's resolver was asked for (after the mapping rules), from a NetLog."""
    try:
        data = json.loads(net_log.read_text())
    except (OSError, ValueError):
        return ["(net log unreadable)"]
    want = data.get("constants", {}).get("logEventTypes", {}).get("HOST_RESOLVER_MANAGER_REQUEST")
    hosts: list[str] = []
    for ev in data.get("events", []):
        host = (ev.get("params") or {}).get("host")
        if ev.get("type") == want and isinstance(host, str):
            # "https://~notfound", "http://127.0.0.1:43783", "[::1]:443" -> the bare host
            bare = host.split("://", 1)[-1]
            bare = bare[1:bare.index("]")] if bare.startswith("[") else bare.rsplit(":", 1)[0]
            if bare not in hosts:
                hosts.append(bare)
    return hosts


def _lower(headers: dict[str, Any] | None) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in (headers or {}).items()}


class _NetRecorder:
    """Network log from the DevTools protocol (Playwright's own events omit preflights)."""

    def __init__(self) -> None:
        self.by_id: dict[str, NetworkEntry] = {}
        self.order: list[str] = []

    def _entry(self, rid: str) -> NetworkEntry:
        if rid not in self.by_id:
            self.by_id[rid] = NetworkEntry(method="?", url="?", resource_type="?")
            self.order.append(rid)
        return self.by_id[rid]

    def will_be_sent(self, ev: dict) -> None:
        rid = ev["requestId"]
        if rid in self.by_id and ev.get("redirectResponse"):
            rid = f"{rid}#{len(self.order)}"      # keep the redirected hop as its own entry
        e = self._entry(rid)
        req = ev.get("request", {})
        e.method, e.url = req.get("method", "?"), req.get("url", "?")
        e.preflight = (ev.get("initiator") or {}).get("type") == "preflight"
        e.resource_type = "Preflight" if e.preflight else ev.get("type", "Other")
        e.request_headers = {**_lower(req.get("headers")), **e.request_headers}

    def extra_info(self, ev: dict) -> None:     # the headers really sent (Origin, Cookie, ...)
        e = self._entry(ev["requestId"])
        e.request_headers.update(_lower(ev.get("headers")))

    def response(self, ev: dict) -> None:
        e = self._entry(ev["requestId"])
        resp = ev.get("response", {})
        e.status = resp.get("status")
        e.response_headers = _lower(resp.get("headers"))

    def failed(self, ev: dict) -> None:
        e = self._entry(ev["requestId"])
        e.error = ev.get("errorText") or "failed"
        cors = ev.get("corsErrorStatus") or {}
        e.cors_error = cors.get("corsError")

    def entries(self) -> list[NetworkEntry]:
        return [self.by_id[r] for r in self.order]


# ------------------------------------------------------------------ the one entry point
def open_page(url: str, *, names: Sequence[str], ip: str, root_ca_pem: str | bytes,
              email: str | None = None, scripts: Sequence[str] = (), timeout: float = 20.0,
              chromium: Path | None = None) -> BrowserResult:
    """Open ``url`` in headless Chromium that reaches only ``names`` (all mapped to ``ip``)
    and trusts only ``root_ca_pem``; optionally sign up; return what the browser saw.

    ``email``: fill ``#email`` and press ``#signup`` (the Auth stand-in's first step), then
    wait (up to ``timeout`` s) until ``#state``'s ``data-state`` leaves idle/sending.
    ``scripts``: JavaScript expressions evaluated in the page afterwards (awaited when they
    return a promise); their values go to ``script_results``, an exception's text instead.
    A navigation that fails (certificate, refused) is a result (``load_error``), not an error.
    """
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        raise BrowserError(f"the Playwright client is missing ({e})",
                           hint="pip install -e '.[test]' (the pinned playwright; no `playwright install`)") from e
    exe = chromium or find_chromium()
    ms = int(timeout * 1000)
    with tempfile.TemporaryDirectory(prefix="ente-lab-browser-") as tmp:
        home = Path(tmp)
        make_nssdb(home, root_ca_pem)
        net_log = home / "netlog.json"
        proxy = refusing_port()
        args = chromium_args(names, ip, proxy.getsockname()[1], net_log)
        # HOME: the throw-away NSS db; XDG dirs too, so nothing of the host's profile is read.
        env: dict[str, str | float | bool] = {
            k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "CHROME", "GOOGLE_"))}
        env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_CACHE_HOME=str(home / ".cache"))
        try:
            with sync_playwright() as pw:
                try:
                    browser = pw.chromium.launch(executable_path=str(exe), args=args, env=env,
                                                 headless=True, timeout=ms)
                except PlaywrightError as e:
                    raise BrowserError(f"Chromium ({exe}) did not start: {str(e).splitlines()[0]}",
                                       hint=f"run `{exe} --headless --no-sandbox --dump-dom about:blank`; "
                                            + INSTALL_HINT) from e
                result = BrowserResult(url=url, chromium_version=browser.version, args=args)
                try:
                    _drive(browser, result, url, email, scripts, ms, PlaywrightError)
                    crashed = [e for e in result.page_errors if "crashed" in e]
                    if crashed or not browser.is_connected():
                        raise BrowserError(
                            f"Chromium ({exe}) {'crashed' if crashed else 'exited'} while driving {url}",
                            hint=f"run `{exe} --headless --no-sandbox --dump-dom {url}` by hand; a font "
                                 "(fonts-dejavu-core, which chromium's dependencies pull in) and a "
                                 "writable /tmp are needed")
                finally:
                    if browser.is_connected():
                        browser.close()
        finally:
            proxy.close()
        result.resolver_hosts = resolver_hosts(net_log)
    return result


def _drive(browser: Any, result: BrowserResult, url: str, email: str | None, scripts: Sequence[str],
           ms: int, PlaywrightError: type[Exception]) -> None:
    context = browser.new_context(ignore_https_errors=False, service_workers="block")
    page = context.new_page()
    page.set_default_timeout(ms)
    page.on("console", lambda m: result.console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: result.page_errors.append(str(e)))
    page.on("crash", lambda _p: result.page_errors.append("the page's renderer process crashed"))
    net = _NetRecorder()
    cdp = context.new_cdp_session(page)
    cdp.on("Network.requestWillBeSent", net.will_be_sent)
    cdp.on("Network.requestWillBeSentExtraInfo", net.extra_info)
    cdp.on("Network.responseReceived", net.response)
    cdp.on("Network.loadingFailed", net.failed)
    cdp.send("Network.enable")
    try:
        try:
            page.goto(url, wait_until="load")
        except PlaywrightError as e:
            result.load_error = str(e).splitlines()[0]
            return
        result.title = page.title()
        if email is not None:
            page.fill("#email", email)
            page.click("#signup")
            pending = json.dumps(list(SIGNUP_PENDING))
            try:
                page.wait_for_function(
                    f"() => {{ const s = document.getElementById('state');"
                    f" return s && !{pending}.includes(s.getAttribute('data-state')); }}")
            except PlaywrightError as e:
                result.page_errors.append(f"sign-up did not finish: {str(e).splitlines()[0]}")
        for script in scripts:
            try:
                result.script_results.append(page.evaluate(script))
            except PlaywrightError as e:
                result.script_results.append(f"exception: {str(e).splitlines()[0]}")
        page.wait_for_timeout(250)        # late console lines (CORS errors follow the rejection)
        state = page.query_selector("#state")
        if state is not None:
            result.state = state.get_attribute("data-state")
            result.state_text = state.inner_text()
        result.page_text = page.inner_text("body")
    finally:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and any(
                e.status is None and e.error is None and e.resource_type in ("Fetch", "XHR", "Preflight")
                for e in net.entries()):
            page.wait_for_timeout(50)
        result.network = net.entries()
        result.failed_requests = [
            f"{e.method} {e.url}: {e.error}" + (f" (CORS: {e.cors_error})" if e.cors_error else "")
            for e in result.network if e.error]
        context.close()
