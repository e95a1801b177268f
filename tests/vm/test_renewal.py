"""Certificate renewal through the dehydrated hook (issue 5)."""

import pytest
from labfix import variant_build  # noqa: F401

from entelab import certs, probes

pytestmark = pytest.mark.vm

BROKEN_APACHE = "/etc/apache2/conf-enabled/zz-entelab-broken.conf"
MASTER_SAVED = "/root/master.cf.entelab-test"


def counts(guest) -> tuple[int, int]:
    """(Apache graceful restarts, Postfix reloads) seen in their logs so far."""
    g = guest.run("grep -c 'Graceful restart requested\\|SIGUSR1 received' /var/log/apache2/error.log",
           check=False).stdout.strip() or "0"
    p = guest.run("grep -c 'postfix/master.*reload' /var/log/maillog", check=False).stdout.strip() or "0"
    return int(g), int(p)


def forced(guest, settings):
    conf = certs.dehydrated_conf(settings)
    return guest.run(conf.cmd("--cron --force") + " 2>&1", check=False)


def redeploy(guest, settings):
    """The hook's deploy step again, as dehydrated runs it after an issuance, for the
    certificate already on disk: once the broken configuration is fixed, the same hook
    reloads both services (seconds, where a second forced renewal takes a minute)."""
    conf = certs.dehydrated_conf(settings)
    d = f"{conf.basedir}/certs/{conf.domain}"
    return guest.run(f"sudo -n -u {conf.user} -H {conf.basedir}/hook.sh deploy_cert {conf.domain} "
                     f"{d}/privkey.pem {d}/cert.pem {d}/fullchain.pem {d}/chain.pem $(date +%s) 2>&1",
                     check=False)


def test_renew_changes_the_served_serials_and_mail_still_flows(guest, paths, settings):
    from test_ott_mail_vm import ask_code, code_of, fresh
    r = certs.renew_with(guest, paths, settings)
    assert r["after"]["file"] != "-"
    assert r["after"]["apache"] == r["after"]["file"] != r["before"]["apache"]
    assert r["after"]["postfix"] == r["after"]["file"] != r["before"]["postfix"]
    # Museum's mail through the renewed Postfix certificate (issue 14): a code arrives
    code_of(ask_code(guest, settings, fresh(settings)))


def test_run_with_nothing_to_renew_reloads_nothing(guest, paths, settings):
    before = counts(guest)
    serial = certs.served_serial(guest, settings.api_host, 443)
    conf = certs.dehydrated_conf(settings)
    res = guest.run(conf.cmd("--cron") + " 2>&1")
    assert "Skipping renew" in res.stdout
    assert counts(guest) == before
    assert certs.served_serial(guest, settings.api_host, 443) == serial


def test_broken_configs_fail_the_hook_and_nothing_is_reloaded_until_both_are_fixed(guest, paths, settings):
    """One forced renewal with Apache's and Postfix's configurations both broken: the hook
    checks both and reloads neither: Apache keeps serving the old certificate, Postfix keeps
    answering on 587 (the running master reads master.cf only at start/reload). Fixed one at
    a time, the hook's deploy step (as dehydrated calls it after an issuance) still refuses
    while one check fails, then reloads both with the certificate it held back. One forced
    renewal instead of one per service: a renewal takes a minute under TCG, a deploy step
    seconds."""
    conf = certs.dehydrated_conf(settings)
    served = certs.served_serial(guest, settings.api_host, 443)
    before = counts(guest)
    guest.run(f"echo 'ThisIsNotADirective on' > {BROKEN_APACHE}")
    # master.cf with a bad field count: `postfix check` fails
    guest.run(f"cp -p /etc/postfix/master.cf {MASTER_SAVED} && "
              "echo 'submission inet n' >> /etc/postfix/master.cf")
    try:
        res = forced(guest, settings)
        assert res.exited != 0
        assert "check FAILED: apachectl configtest" in res.stdout, res.stdout
        assert "check FAILED: postfix check" in res.stdout, res.stdout
        assert "nothing was reloaded" in res.stdout, res.stdout
        assert counts(guest) == before, "nothing may be reloaded"
        new = certs.file_serial(guest, conf)
        assert new != served
        assert certs.served_serial(guest, settings.api_host, 443) == served
        # (Postfix's 587 is not compared here: each new smtpd process reads the certificate
        # files itself, so a fresh connection may already see the new one without a reload)
        assert "STARTTLS" in probes.smtp_session(guest, settings.mail_host, starttls=False)["ehlo_plain"]
        # Postfix fixed, Apache still broken: the deploy step still reloads nothing
        guest.run(f"cp -p {MASTER_SAVED} /etc/postfix/master.cf && rm -f {MASTER_SAVED}")
        res = redeploy(guest, settings)
        assert res.exited != 0
        assert "check FAILED: apachectl configtest" in res.stdout and "check ok: postfix check" in res.stdout, \
            res.stdout
        assert counts(guest) == before, "one failed check: nothing may be reloaded"
        assert certs.served_serial(guest, settings.api_host, 443) == served
    finally:
        guest.run(f"rm -f {BROKEN_APACHE}; if [ -f {MASTER_SAVED} ]; then "
                  f"cp -p {MASTER_SAVED} /etc/postfix/master.cf && rm -f {MASTER_SAVED}; fi")
    # both fixed: the hook deploys the certificate it refused, and both services serve it
    res = redeploy(guest, settings)
    assert res.exited == 0, res.stdout
    assert "reloaded: apache" in res.stdout and "reloaded: postfix" in res.stdout, res.stdout
    assert certs.served_serial(guest, settings.api_host, 443) == new
    assert certs.served_serial(guest, settings.mail_host, 587, starttls=True) == new
    after = counts(guest)
    assert after[0] > before[0] and after[1] == before[1] + 1, (before, after)
