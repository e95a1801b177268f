"""Certificate renewal through the dehydrated hook (issue 5)."""

import pytest

from entelab import certs, verify
from labfix import sh, variant_build  # noqa: F401

pytestmark = pytest.mark.vm

BROKEN_APACHE = "/etc/apache2/conf-enabled/zz-entelab-broken.conf"


def counts(conn) -> tuple[int, int]:
    """(Apache graceful restarts, Postfix reloads) seen in their logs so far."""
    g = sh(conn, "grep -c 'Graceful restart requested\\|SIGUSR1 received' /var/log/apache2/error.log",
           check=False).stdout.strip() or "0"
    p = sh(conn, "grep -c 'postfix/master.*reload' /var/log/maillog", check=False).stdout.strip() or "0"
    return int(g), int(p)


def forced(conn, paths):
    conf = certs.dehydrated_conf(paths)
    return sh(conn, conf.cmd("--cron --force") + " 2>&1", check=False)


def test_renew_changes_the_served_serials(conn, paths):
    r = certs.renew_with(conn, paths)
    assert r["after"]["file"] != "-"
    assert r["after"]["apache"] == r["after"]["file"] != r["before"]["apache"]
    assert r["after"]["postfix"] == r["after"]["file"] != r["before"]["postfix"]


def test_run_with_nothing_to_renew_reloads_nothing(conn, paths, settings):
    before = counts(conn)
    serial = certs.served_serial(conn, settings.api_host, 443)
    conf = certs.dehydrated_conf(paths)
    res = sh(conn, conf.cmd("--cron") + " 2>&1")
    assert "Skipping renew" in res.stdout
    assert counts(conn) == before
    assert certs.served_serial(conn, settings.api_host, 443) == serial


def test_broken_apache_config_fails_the_hook_and_keeps_the_old_cert(conn, paths, settings):
    served = certs.served_serial(conn, settings.api_host, 443)
    before = counts(conn)
    sh(conn, f"echo 'ThisIsNotADirective on' > {BROKEN_APACHE}")
    try:
        res = forced(conn, paths)
        assert res.exited != 0
        assert "configtest" in res.stdout.lower() or "apachectl" in res.stdout
        assert counts(conn) == before, "nothing may be reloaded"
        assert certs.served_serial(conn, settings.api_host, 443) == served
        assert certs.file_serial(conn, certs.dehydrated_conf(paths)) != served
    finally:
        sh(conn, f"rm -f {BROKEN_APACHE}")
    res = forced(conn, paths)
    assert res.exited == 0, res.stdout
    assert certs.served_serial(conn, settings.api_host, 443) == certs.file_serial(conn, certs.dehydrated_conf(paths))


def test_broken_postfix_config_fails_the_hook_postfix_keeps_answering(conn, paths, settings):
    before = counts(conn)
    # master.cf with a bad field count: `postfix check` fails, while the running
    # master (which reads master.cf only at start/reload) keeps serving 587
    sh(conn, "cp -p /etc/postfix/master.cf /root/master.cf.entelab-test && "
             "echo 'submission inet n' >> /etc/postfix/master.cf")
    try:
        res = forced(conn, paths)
        assert res.exited != 0
        assert "postfix check" in res.stdout
        assert counts(conn)[1] == before[1], "postfix must not be reloaded"
        assert "STARTTLS" in verify.smtp_session(conn, settings.mail_host, starttls=False)["ehlo_plain"]
    finally:
        sh(conn, "cp -p /root/master.cf.entelab-test /etc/postfix/master.cf && rm -f /root/master.cf.entelab-test")
    r = certs.renew_with(conn, paths)
    assert r["after"]["postfix"] == r["after"]["file"] == r["after"]["apache"]
