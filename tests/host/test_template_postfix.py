"""Postfix main.cf/master.cf (article: "Configuring Postfix") and the SASL
files (article: "Configuring SASL"), checked by the real Postfix 3.7."""

from __future__ import annotations

import difflib
import re
import shutil
import subprocess
from pathlib import Path

from conftest import load, need, render_into


def confdir(rendered, tmp_path: Path) -> Path:
    d = tmp_path / "postfix"
    d.mkdir()
    for name in ("main.cf", "master.cf", "ente-lab-catchall.regexp"):
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
    # nothing leaves the lab, so the SMTP client verifies no server: no CA path (with
    # Debian's, every start copies /etc/ssl/certs into the chroot and every check compares it)
    assert "smtp_tls_CApath" not in conf and conf["relay_transport"].startswith("error:")
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


# ---------------------------------------------------------------- the catch-all mailbox (issue 14)
def lookup(table: Path, address: str) -> tuple[int, str]:
    res = run(need("postmap"), "-q", address, f"regexp:{table}")
    assert res.stderr == "", res.stderr
    return res.returncode, res.stdout.strip()


def test_catchall_delivers_every_address_of_the_domain_to_one_mailbox(rendered, tmp_path):
    d = confdir(rendered, tmp_path)
    conf = {k.strip(): v.strip() for k, v in (ln.split("=", 1) for ln in
            run(need("postconf"), "-c", str(d), "-n").stdout.splitlines())}
    assert conf["virtual_alias_maps"] == "regexp:/etc/postfix/ente-lab-catchall.regexp"
    entry = rendered.entries["/etc/postfix/ente-lab-catchall.regexp"]
    assert (entry.reload, entry.validate, entry.mode) == ("postfix", "postfix", "0644")
    table = rendered.path("/etc/postfix/ente-lab-catchall.regexp")
    dom = rendered.settings.domain
    for addr in (f"anybody@{dom}", f"Friend.Name+tag@{dom.upper()}", f"verification@{dom}"):
        assert lookup(table, addr) == (0, "labmail@localhost"), addr
    # the same user resolves locally: localhost is in mydestination
    assert "localhost" in [x.strip() for x in conf["mydestination"].split(",")]
    # other domains, sub-domains, look-alikes: no match (they keep the error transport)
    for addr in ("x@other.lan", f"x@sub.{dom}", f"x@{dom}.evil", f"x@{dom.replace('.', 'x')}",
                 f"{dom}@other.lan", "labmail@localhost"):
        assert lookup(table, addr) == (1, ""), addr
    # the isolation is unchanged
    assert conf["default_transport"].startswith("error:") and conf["relay_transport"].startswith("error:")
    assert conf["smtpd_relay_restrictions"] == \
        "permit_mynetworks permit_sasl_authenticated defer_unauth_destination"
    res = run(need("postfix"), "-c", str(d), "check")
    assert res.returncode == 0 and res.stderr == "", res.stderr


def test_catchall_follows_the_domain_setting(tmp_path, lab_secrets):
    tree = render_into(tmp_path / "root", load(["domain=lab-9.example.org"]), lab_secrets)
    table = tree.path("/etc/postfix/ente-lab-catchall.regexp")
    assert lookup(table, "a@lab-9.example.org") == (0, "labmail@localhost")
    assert lookup(table, "a@darkstar.lan") == (1, "")
    assert lookup(table, "a@lab-9xexample.org") == (1, "")


def test_catchall_account_is_declared(rendered, rendered_sendmail):
    users = [ln.split(":") for ln in rendered.text("/etc/ente-lab/users.conf").splitlines()
             if ln.startswith("user:labmail:")]
    assert users == [["user", "labmail", "ente-lab catch-all mailbox", "labmail", "/nonexistent",
                      "/usr/sbin/nologin", "no", "yes", "!"]]
    assert "labmail" not in rendered_sendmail.text("/etc/ente-lab/users.conf")
    assert "/etc/postfix/ente-lab-catchall.regexp" not in rendered_sendmail.entries


def test_regexp_filter_escapes_every_metacharacter_and_refuses_injection(tmp_path):
    import pytest

    from entelab.render import UnsafeValue, regexp_literal
    weird = "a.b-c+d*e?f(g)h[i]j{k}l|m^n$o\\p"
    escaped = regexp_literal(weird)
    table = tmp_path / "t.regexp"
    table.write_text(f"/^x@{escaped}$/ hit\n")
    assert lookup(table, f"x@{weird}") == (0, "hit")
    assert lookup(table, "x@aXb-c+d*e?f(g)h[i]j{k}l|m^n$o\\p") == (1, "")
    assert lookup(table, "x@a.b-cd") == (1, "")
    # a hostile domain never reaches the table: '/' ends the pattern, a space or a
    # newline would start a result or a new rule
    for bad in ("a.lan/ root\n/.*/", "a.lan$/ root", "a lan", "a.lan\n/./ x", "", "é.lan", 7, None):
        with pytest.raises(UnsafeValue):
            regexp_literal(bad)
    # and the settings grammar refuses them before rendering

    from entelab.errors import SettingsError
    with pytest.raises(SettingsError):
        load(["domain=a.lan/x"])


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
