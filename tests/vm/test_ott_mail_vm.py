"""A one-time token travels from Museum's container, over verified STARTTLS and SASL,
through the VM's Postfix to the lab's catch-all mailbox (issue 14); the article's
admin tasks (lab.ott, lab.admin) against the running stack."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from tenacity import retry, stop_after_delay, wait_fixed

from entelab import admin, mailbox, probes

pytestmark = pytest.mark.vm

AUTH = {"X-Client-Package": "io.ente.auth.web", "Content-Type": "application/json"}


def post(guest, settings, path, body):
    return probes.https_get(guest, settings.api_host, path, method="POST", body=json.dumps(body),
                            headers=AUTH)


def ask_code(guest, settings, email) -> mailbox.Message:
    r = post(guest, settings, "/users/ott", {"email": email, "purpose": "signup"})
    assert r["status"] == 200, r

    @retry(stop=stop_after_delay(60), wait=wait_fixed(2), reraise=True)
    def arrived() -> mailbox.Message:
        got = mailbox.for_address(mailbox.read(guest), email)
        assert got, f"no mail for {email} yet"
        return got[-1]

    return arrived()


def code_of(msg: mailbox.Message) -> str:
    m = re.fullmatch(r"Verification code: (\d{6})", msg.subject)
    assert m, msg.subject
    return m.group(1)


def fresh(settings) -> str:
    return f"m-{uuid.uuid4().hex[:10]}@{settings.domain}"


def test_ott_mail_arrives_over_esmtpsa_and_its_code_verifies_once(guest, settings):
    email = fresh(settings)
    msg = ask_code(guest, settings, email)
    code = code_of(msg)
    received = " ".join(msg.received)
    assert settings.docker.museum_ip in received and "ESMTPSA" in received, msg.received
    assert settings.smtp.email in msg.sender
    wrong = f"{(int(code) + 1) % 1000000:06d}"
    assert post(guest, settings, "/users/verify-email", {"email": email, "ott": wrong})["status"] == 401
    ok = post(guest, settings, "/users/verify-email", {"email": email, "ott": code})
    assert ok["status"] == 200 and json.loads(ok["body"])["id"] > 0
    assert post(guest, settings, "/users/verify-email", {"email": email, "ott": code})["status"] in (401, 410)
    # lab.ott finds the same code, in the mailbox
    found = admin.ott(guest, settings, email)
    assert (found.code, found.where) == (code, "mailbox")


def test_an_address_outside_the_domain_gets_museums_send_error(guest, settings):
    r = post(guest, settings, "/users/ott", {"email": "someone@example.invalid", "purpose": "signup"})
    assert r["status"] == 500
    log = guest.run("docker logs --since 2m ente-museum 2>&1").stdout
    assert "level=error" in log and "550" in log


@pytest.mark.budget(87)    # reference seconds in CI: tests/vm/conftest.py's time budget
def test_lab_admin_promotes_and_it_survives_restart_and_converge(guest, paths, settings, monkeypatch, tmp_path,
                                                                  pristine):
    from entelab import converge, stack
    email = fresh(settings)
    code = code_of(ask_code(guest, settings, email))
    uid = json.loads(post(guest, settings, "/users/verify-email", {"email": email, "ott": code})["body"])["id"]
    own = tmp_path / "settings.yaml"         # not the checkout's settings.local.yaml
    own.write_text("# lab.admin test\n")
    monkeypatch.setenv("ENTE_LAB_SETTINGS", str(own))
    try:
        assert admin.promote(guest, paths, settings, email) == uid

        def admins_in_museum() -> str:
            return guest.run("docker exec ente-museum cat /museum.yaml").stdout

        assert str(uid) in admins_in_museum()
        guest.run(stack.compose_command(settings, "restart", "ente-museum"))
        assert str(uid) in admins_in_museum()
        converge.converge(guest, paths)
        assert str(uid) in admins_in_museum()
        assert str(uid) in own.read_text()
    finally:
        from entelab.render import render_lab
        render_lab(paths, settings, quiet=True)       # the session's settings again
        pristine.restore()                            # seconds, not a converge + re-creations
