"""The mail path (issue 5): Postfix submission on 587, STARTTLS, SASL via saslauthd.

Everything runs in the guest against its own Postfix; the relay test comes from
a network namespace with an address outside every network the VM has (with
``mynetworks_style = class`` every address of the VM's own networks is trusted,
as in the article).
"""

import shlex
import uuid

import pytest
from labfix import variant_build  # noqa: F401

from entelab import probes

pytestmark = pytest.mark.vm

OUTSIDE_NS = "entelab-outside"
OUTSIDE_IP = "203.0.113.7"   # TEST-NET-3: not on any interface of the VM


def test_testsaslauthd_accepts_the_verification_user(guest, settings, lab_secrets):
    # only the reply is kept: a failing assert must not print the command (it holds the password)
    good = guest.run(f"testsaslauthd -u {settings.smtp.username} -p {shlex.quote(lab_secrets.sasl_password)} "
                    "-s smtp", check=False).stdout.strip()
    assert good == '0: OK "Success."'
    bad = guest.run(f"testsaslauthd -u {settings.smtp.username} -p wrong-password -s smtp", check=False).stdout
    assert bad.strip().startswith("0: NO")


def test_submission_requires_starttls_before_auth(guest, settings):
    r = probes.smtp_session(guest, settings.mail_host, starttls=True)
    assert "STARTTLS" in r["ehlo_plain"]
    assert "AUTH" not in r["ehlo_plain"]
    assert r["auth_before_tls"][0] == 530 and "STARTTLS" in r["auth_before_tls"][1]
    assert "AUTH" in r["ehlo_tls"] and "PLAIN" in r["ehlo_tls"] and "LOGIN" in r["ehlo_tls"]


def test_wrong_password_is_refused(guest, settings):
    r = probes.smtp_session(guest, settings.mail_host, user=settings.smtp.username, password="not-it")
    assert r["login"][0] == 535


@pytest.fixture
def outside(guest):
    eth0 = guest.run("ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1").stdout.split()[0]
    setup = f"""
        ip netns del {OUTSIDE_NS} 2>/dev/null; ip link del entelab-o0 2>/dev/null
        ip netns add {OUTSIDE_NS}
        ip link add entelab-o0 type veth peer name entelab-o1
        ip link set entelab-o1 netns {OUTSIDE_NS}
        ip link set entelab-o0 up
        ip -n {OUTSIDE_NS} link set lo up
        ip -n {OUTSIDE_NS} addr add {OUTSIDE_IP}/32 dev entelab-o1
        ip -n {OUTSIDE_NS} link set entelab-o1 up
        ip -n {OUTSIDE_NS} route add default dev entelab-o1
        ip route add {OUTSIDE_IP}/32 dev entelab-o0
    """
    guest.run(setup)
    yield eth0
    guest.run(f"ip netns del {OUTSIDE_NS}; ip link del entelab-o0 2>/dev/null; true", check=False)


def test_relay_from_outside_mynetworks_is_refused(guest, settings, outside):
    mynetworks = guest.run("postconf -h mynetworks").stdout
    assert "203.0.113" not in mynetworks
    # from the outside address, no AUTH: relaying to another domain is refused ...
    r = probes.probe(guest, probes.SMTP_SESSION, {
        "host": outside, "port": 587, "no_verify": True,
        "rcpt": {"from": "someone@example.org", "to": "victim@example.net"}}, "relay probe",
        netns=OUTSIDE_NS)
    assert r["rcpt"][0] in (454, 554) and "Relay access denied" in r["rcpt"][1]
    # ... while the same session to a lab mailbox is accepted (the refusal is about relaying)
    r = probes.probe(guest, probes.SMTP_SESSION, {
        "host": outside, "port": 587, "no_verify": True,
        "rcpt": {"from": "someone@example.org", "to": f"{settings.smtp.username}@{settings.domain}"}},
        "relay probe", netns=OUTSIDE_NS)
    assert r["rcpt"][0] == 250


def test_authenticated_mail_is_delivered_to_the_lab_mailbox(guest, settings, lab_secrets):
    message_id = f"<{uuid.uuid4().hex}@lab-test.{settings.domain}>"
    rcpt = f"{settings.smtp.username}@{settings.domain}"
    r = probes.smtp_session(guest, settings.mail_host, user=settings.smtp.username,
                            password=lab_secrets.sasl_password,
                            send={"from": settings.smtp.email, "to": rcpt, "subject": "Verification code: 123456",
                                  "message_id": message_id, "body": "rehearsal"})
    assert r["login"][0] == 235
    assert r["sent"][0] == 250, r["sent"]
    # every address @<domain> lands in the catch-all mailbox (templates/postfix/catchall.regexp.j2)
    res = guest.run(f"for i in $(seq 60); do grep -qF '{message_id}' /var/mail/labmail && exit 0; "
                   f"sleep 0.5; done; tail -20 /var/log/maillog; exit 1", check=False)
    assert res.exited == 0, res.stdout


def test_outside_domains_never_leave_the_lab(guest, settings, lab_secrets):
    """Even an authenticated client cannot send outside: the lab refuses other domains."""
    r = probes.smtp_session(guest, settings.mail_host, user=settings.smtp.username,
                            password=lab_secrets.sasl_password,
                            rcpt={"from": settings.smtp.email, "to": "someone@example.com"})
    assert r["login"][0] == 235
    assert r["rcpt"][0] == 550 and "outside mail is disabled in the lab" in r["rcpt"][1]
    queue = guest.run("postqueue -j").stdout
    assert "someone@example.com" not in queue


def test_any_address_of_the_domain_lands_in_the_catchall_mailbox(guest, settings, lab_secrets):
    """Issue 14: every address @<domain> is delivered to /var/mail/labmail; lab.mail's
    reader finds it, and lab.ott's parser takes the code from its subject."""
    import time

    from entelab import admin, mailbox
    message_id = f"<{uuid.uuid4().hex}@lab-test.{settings.domain}>"
    rcpt = f"someone-{uuid.uuid4().hex[:8]}@{settings.domain}"
    r = probes.smtp_session(guest, settings.mail_host, user=settings.smtp.username,
                            password=lab_secrets.sasl_password,
                            send={"from": settings.smtp.email, "to": rcpt, "subject": "Verification code: 654321",
                                  "message_id": message_id, "body": "rehearsal"})
    assert r["sent"][0] == 250, r["sent"]
    found: list = []
    for _ in range(60):
        found = [m for m in mailbox.for_address(mailbox.read(guest), rcpt) if m.message_id == message_id]
        if found:
            break
        time.sleep(0.5)
    assert found, guest.run("tail -20 /var/log/maillog", check=False).stdout
    assert "ESMTPSA" in found[0].received[0]
    assert admin.code_from_mail(found, rcpt).code == "654321"
    owner = guest.run("stat -c '%U %a' /var/mail/labmail").stdout.split()
    assert owner == ["labmail", "600"]
