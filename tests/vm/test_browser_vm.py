"""A real browser signs up through the lab (issue 15): Debian's headless Chromium on the
host reaches the VM's address on the lab's own network (the lab names mapped to it,
everything else refused), trusts only the lab root the host holds, opens the web app
through Apache and makes the app's cross-origin, preflighted POST /users/ott; the code
arrives in the lab's mailbox. The pitfall switches (CORS lines, the certificate that
does not name smtp.host) are switched on by converging a variant of the settings, and
the pristine snapshot brings the lab back after each."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from tenacity import retry, stop_after_delay, wait_fixed

from entelab import browser, converge, mailbox, snapshot
from entelab.render import render_lab
from entelab.settings import load_settings

pytestmark = pytest.mark.vm


def fresh(settings) -> str:
    return f"b-{uuid.uuid4().hex[:10]}@{settings.domain}"


def sign_up(guest, paths, settings, email: str) -> browser.BrowserResult:
    return browser.open_page(f"https://{settings.web_host}/", names=[settings.web_host, settings.api_host],
                             ip=snapshot.address(guest), root_ca_pem=(paths.home / "acme-root.pem").read_bytes(),
                             email=email, timeout=45)


def mail_for(guest, email: str, wait: float = 60) -> mailbox.Message:
    @retry(stop=stop_after_delay(wait), wait=wait_fixed(2), reraise=True)
    def arrived() -> mailbox.Message:
        got = mailbox.for_address(mailbox.read(guest), email)
        assert got, f"no mail for {email} yet"
        return got[-1]
    return arrived()


def converge_with(guest, paths, tmp_path, overrides: list[str]):
    """Render the lab's settings with ``overrides`` into a scratch build dir and converge it."""
    variant_settings, _ = load_settings(paths.root, overrides)
    variant = dataclasses.replace(paths, build=tmp_path / "build")
    render_lab(variant, variant_settings, quiet=True)
    converge.converge(guest, variant)
    return variant_settings


def test_the_browser_signs_up_through_apache_and_the_code_arrives(guest, paths, settings):
    email = fresh(settings)
    r = sign_up(guest, paths, settings, email)
    assert r.load_error is None and r.state == "code-sent", r.summary()
    # the app's call: preflighted, cross-origin, with the Auth app's package header
    pre = r.preflights("/users/ott")
    assert pre and pre[0].status in (200, 204), r.summary()
    posts = [e for e in r.requests("/users/ott", "POST") if not e.preflight]
    assert posts and posts[-1].status == 200, r.summary()
    assert posts[-1].header("x-client-package") == "io.ente.auth.web"
    assert posts[-1].response_headers.get("access-control-allow-origin") == f"https://{settings.web_host}"
    # nothing but the lab: no DNS name was looked up
    assert all(h in ("localhost", "~notfound") or h[0].isdigit() for h in r.resolver_hosts), r.resolver_hosts
    msg = mail_for(guest, email)
    assert msg.subject.startswith("Verification code: ")
