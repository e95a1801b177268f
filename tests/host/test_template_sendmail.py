"""Sendmail variant (article: "Configuring Sendmail"): sendmail.cf is built
from the rendered .mc with sendmail-cf's m4 macros (sendmail-bin conflicts
with postfix, so no live Sendmail)."""

from __future__ import annotations

import subprocess

from conftest import need


def build_cf(tree, tmp_path):
    mc = tree.path("/etc/mail/sendmail.mc")
    res = subprocess.run([need("m4"), str(mc)], capture_output=True, text=True, cwd=tmp_path)
    return res


def test_sendmail_cf_builds_with_tls_auth_and_submission(rendered_sendmail, tmp_path):
    res = build_cf(rendered_sendmail, tmp_path)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    cf = res.stdout
    certdir = f"/etc/dehydrated/certs/{rendered_sendmail.settings.domain}"
    for line in (f"O ServerCertFile={certdir}/fullchain.pem",
                 f"O ServerKeyFile={certdir}/privkey.pem",
                 "O AuthMechanisms=LOGIN PLAIN",
                 "O AuthOptions=A p y",
                 "C{TrustAuthMech}LOGIN PLAIN",
                 "O DaemonPortOptions=Port=smtp, Name=MTA",
                 "O DaemonPortOptions=Port=submission, Name=MSA, M=Ea",
                 "Fw/etc/mail/local-host-names",
                 f"Dj{rendered_sendmail.settings.mail_host}"):
        assert f"\n{line}\n" in cf, line
    assert "Kmailertable" in cf
    # a real sendmail.cf: version line and the rulesets are there
    assert "\nV10/" in cf and "\nScheck_rcpt" in cf


def test_cf_m4_macros_really_checked(rendered_sendmail, tmp_path):
    """The m4 step catches mistakes: an unknown FEATURE fails the build."""
    broken = tmp_path / "broken.mc"
    broken.write_text(rendered_sendmail.text("/etc/mail/sendmail.mc")
                      .replace("FEATURE(`redirect')", "FEATURE(`no_such_feature')"))
    res = subprocess.run([need("m4"), str(broken)], capture_output=True, text=True)
    assert res.returncode != 0 or "no_such_feature" in res.stderr


def test_local_host_names(rendered_sendmail):
    s = rendered_sendmail.settings
    lines = [ln for ln in rendered_sendmail.text("/etc/mail/local-host-names").splitlines()
             if ln and not ln.startswith("#")]
    assert "ente-museum.ente.lan" in lines                     # the article's line
    assert {s.domain, s.mail_host} <= set(lines)
    table = rendered_sendmail.text("/etc/mail/mailertable")
    assert ".\terror:5.7.1:550" in table


def test_sendmail_files_only_with_sendmail(rendered):
    for dest in ("/etc/mail/sendmail.mc", "/etc/mail/local-host-names", "/etc/mail/mailertable"):
        assert dest not in rendered.entries
