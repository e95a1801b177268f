"""Postfix main.cf/master.cf (article: "Configuring Postfix") and the SASL
files (article: "Configuring SASL"), checked by the real Postfix 3.7."""

from __future__ import annotations

import difflib
import re
import shutil
import subprocess
from pathlib import Path

from conftest import need


def confdir(rendered, tmp_path: Path) -> Path:
    d = tmp_path / "postfix"
    d.mkdir()
    for name in ("main.cf", "master.cf"):
        shutil.copy(rendered.path(f"/etc/postfix/{name}"), d / name)
    return d


def run(*cmd) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


def test_postfix_check_passes_before_the_certificate_exists(rendered, tmp_path):
    d = confdir(rendered, tmp_path)
    cert = f"/etc/dehydrated/certs/{rendered.settings.domain}/fullchain.pem"
    assert not Path(cert).exists()           # first boot: no certificate yet
    res = run(need("postfix"), "-c", str(d), "check")
    assert res.returncode == 0, res.stderr
    assert res.stderr == "" and res.stdout == ""


def test_postconf_sees_the_articles_settings_without_warnings(rendered, tmp_path):
    d = confdir(rendered, tmp_path)
    res = run(need("postconf"), "-c", str(d), "-n")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    conf = {k.strip(): v.strip() for k, v in (ln.split("=", 1) for ln in res.stdout.splitlines())}
    s = rendered.settings
    certdir = f"/etc/dehydrated/certs/{s.domain}"
    assert conf["mynetworks_style"] == "class"
    assert "mynetworks" not in conf                     # would override the style
    assert conf["smtpd_tls_cert_file"] == f"{certdir}/fullchain.pem"
    assert conf["smtpd_tls_key_file"] == f"{certdir}/privkey.pem"
    assert conf["smtpd_tls_security_level"] == "may"
    assert conf["smtpd_sasl_type"] == "cyrus" and conf["smtpd_sasl_path"] == "smtpd"
    assert conf["smtpd_recipient_restrictions"] == \
        "permit_sasl_authenticated,permit_mynetworks,reject_unauth_destination"
    assert conf["myhostname"] == s.mail_host
    assert s.domain in conf["mydomain"] and "$mydomain" in conf["mydestination"]
    assert conf["default_transport"].startswith("error:")
    assert conf["maillog_file"] == "/var/log/maillog"
    assert "home_mailbox" not in conf                   # /var/mail/<user>
    assert "smtpd_sasl_auth_enable" not in conf         # submission only (master.cf)
    assert "syslog_name" not in conf
    assert conf["compatibility_level"] == "3.6"         # Debian's default kept
    # every parameter is set once (postconf shows the last; grep the file)
    main = (d / "main.cf").read_text()
    names = re.findall(r"^([a-z_0-9]+)\s*=", main, re.M)
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
    # resolved value: derived from this machine's interfaces (class style);
    # in the guest the Docker bridge adds its class B net (VM tests check it)
    nets = run(need("postconf"), "-c", str(d), "-h", "mynetworks").stdout
    assert "127.0.0.0/8" in nets


def test_master_cf_submission_service(rendered, tmp_path):
    d = confdir(rendered, tmp_path)
    res = run(need("postconf"), "-c", str(d), "-M", "submission/inet")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    fields = res.stdout.split()
    assert fields[:8] == ["submission", "inet", "n", "-", "n", "-", "-", "smtpd"]
    opts = run(need("postconf"), "-c", str(d), "-P", "submission/inet").stdout
    assert "submission/inet/smtpd_tls_security_level = encrypt" in opts
    assert "submission/inet/smtpd_sasl_auth_enable = yes" in opts
    assert "submission/inet/syslog_name = postfix/submission" in opts


def test_main_and_master_are_debians_defaults_plus_marked_changes(rendered):
    main = rendered.text("/etc/postfix/main.cf")
    for src in ("/usr/share/postfix/main.cf.debian",):
        assert Path(src).read_text() in main
    head, _, section = main.partition("# BEGIN ente-lab section")
    assert section and "# END ente-lab section" in section
    assert "mynetworks_style = class" in section
    dist = Path("/usr/share/postfix/master.cf.dist").read_text().splitlines()
    master = rendered.text("/etc/postfix/master.cf").splitlines()
    diff = [line for line in difflib.unified_diff(dist, master, lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    added = [line[1:] for line in diff if line.startswith("+")]
    removed = [line[1:] for line in diff if line.startswith("-")]
    # only the header comment and the submission block changed
    assert all(r.startswith("#submission") or r.startswith("#  -o ") for r in removed), removed
    assert all(a.startswith("#") or a.startswith("submission") or a.startswith("  -o ")
               for a in added), added


def test_sasl_files(rendered):
    conf = rendered.text("/etc/sasl2/smtpd.conf")
    lines = [ln for ln in conf.splitlines() if ln and not ln.startswith("#")]
    assert lines == ["pwcheck_method: saslauthd", "mech_list: PLAIN LOGIN"]
    link = rendered.entries["/etc/postfix/sasl/smtpd.conf"]
    assert link.kind == "link" and link.target == "/etc/sasl2/smtpd.conf"
    # absolute target: the link resolves inside the guest, not in the test root
    assert rendered.path("/etc/postfix/sasl/smtpd.conf").is_symlink()


def test_postfix_files_only_with_postfix(rendered_sendmail):
    assert "/etc/postfix/main.cf" not in rendered_sendmail.entries
    assert "/etc/postfix/master.cf" not in rendered_sendmail.entries
    assert "/etc/sasl2/Sendmail.conf" in rendered_sendmail.entries
