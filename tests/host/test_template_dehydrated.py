"""dehydrated config/domains.txt/hook.sh (article: "Configuring Postfix", its
dehydrated note): bash -n, shellcheck, and the hook's behaviour with stub
sudo/apachectl (check first; on failure say which, reload nothing, exit 1)."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import need


def test_shell_syntax_and_shellcheck(rendered, rendered_sendmail):
    for tree in (rendered, rendered_sendmail):
        for dest in ("/etc/dehydrated/hook.sh", "/etc/dehydrated/config"):
            path = tree.path(dest)
            res = subprocess.run([need("bash"), "-n", str(path)], capture_output=True, text=True)
            assert res.returncode == 0, res.stderr
            res = subprocess.run([need("shellcheck"), "-s", "bash", str(path)],
                                 capture_output=True, text=True)
            assert res.returncode == 0, f"{dest}:\n{res.stdout}"
    assert rendered.entries["/etc/dehydrated/hook.sh"].mode == "0755"


def test_config_values(rendered):
    s = rendered.settings
    env = subprocess.run([need("bash"), "-c", 'source "$1"; for v in CA CURL_OPTS CHALLENGETYPE '
                          'BASEDIR CERTDIR WELLKNOWN DOMAINS_TXT HOOK CONTACT_EMAIL ACCOUNTDIR; '
                          'do printf "%s=%s\\n" "$v" "${!v}"; done', "x",
                          str(rendered.path("/etc/dehydrated/config"))],
                         capture_output=True, text=True)
    conf = dict(ln.split("=", 1) for ln in env.stdout.splitlines())
    assert conf["CA"] == s.acme.ca
    assert conf["CURL_OPTS"] == "--cacert /etc/ente-lab/pebble-tls-ca.pem"
    assert conf["CHALLENGETYPE"] == "http-01"
    assert conf["CERTDIR"] == "/etc/dehydrated/certs"
    assert conf["WELLKNOWN"] == "/var/lib/dehydrated/acme-challenges"
    assert conf["DOMAINS_TXT"] == "/etc/dehydrated/domains.txt"
    assert conf["HOOK"] == "/etc/dehydrated/hook.sh"
    assert conf["CONTACT_EMAIL"] == s.acme.contact
    # the Apache vhosts serve exactly this directory
    assert conf["WELLKNOWN"] in rendered.text("/etc/apache2/sites-enabled/ente-api.conf")
    lines = [ln for ln in rendered.text("/etc/dehydrated/domains.txt").splitlines()
             if ln and not ln.startswith("#")]
    assert lines == [" ".join(s.cert_names)] and lines[0].split()[0] == s.domain


@pytest.fixture
def stubs(tmp_path):
    """Stub sudo and apachectl: log every call; FAIL_<word> makes a call fail."""
    log = tmp_path / "calls.log"
    for name in ("sudo", "apachectl"):
        stub = tmp_path / name
        stub.write_text(f"""#!/bin/sh
echo "{name} $*" >> "{log}"
case "$*" in
  *configtest*) [ -n "${{FAIL_CONFIGTEST:-}}" ] && {{ echo "AH00526: Syntax error" >&2; exit 1; }} ;;
  *"postfix check"*) [ -n "${{FAIL_POSTFIX_CHECK:-}}" ] && {{ echo "postfix: fatal: bad" >&2; exit 1; }} ;;
esac
exit 0
""")
        stub.chmod(0o755)
    return tmp_path, log


def run_hook(tree, stubs, *args, **env):
    d, log = stubs
    full = {**os.environ, "ENTE_LAB_SUDO": str(d / "sudo"),
            "ENTE_LAB_APACHECTL": str(d / "apachectl"), **env}
    res = subprocess.run([need("bash"), str(tree.path("/etc/dehydrated/hook.sh")), *args],
                         capture_output=True, text=True, env=full)
    calls = log.read_text().splitlines() if log.exists() else []
    return res, calls


DEPLOY = ("deploy_cert", "darkstar.lan", "/k.pem", "/c.pem", "/fc.pem", "/ch.pem", "123")


def test_hook_deploy_cert_checks_then_reloads(rendered, stubs):
    res, calls = run_hook(rendered, stubs, *DEPLOY)
    assert res.returncode == 0, res.stderr
    assert calls == ["apachectl configtest", "sudo -n /usr/sbin/postfix check",
                     "sudo -n /usr/sbin/apachectl -k graceful", "sudo -n /usr/sbin/postfix reload"]
    assert "reloaded: apache" in res.stdout and "reloaded: postfix" in res.stdout
    assert res.stderr == ""


@pytest.mark.parametrize("fail,which", [("FAIL_CONFIGTEST", "apachectl configtest"),
                                        ("FAIL_POSTFIX_CHECK", "postfix check")])
def test_hook_failed_check_reloads_nothing(rendered, stubs, fail, which):
    res, calls = run_hook(rendered, stubs, *DEPLOY, **{fail: "1"})
    assert res.returncode == 1
    assert f"check FAILED: {which}" in res.stderr
    assert "nothing was reloaded" in res.stderr
    assert not any("graceful" in c or "reload" in c for c in calls), calls


def test_hook_other_handlers_are_noops(rendered, stubs):
    for args in (("deploy_challenge", "x", "t", "v"), ("clean_challenge", "x", "t", "v"),
                 ("unchanged_cert", "d", "k", "c", "f", "ch"), ("startup_hook",), ("exit_hook",),
                 ("this_hookscript_is_broken__dehydrated_is_working_fine__please_ignore_unknown_hooks_in_your_script",),
                 ()):
        res, calls = run_hook(rendered, stubs, *args)
        assert res.returncode == 0 and calls == [], (args, res.stderr)


def test_hook_sendmail_variant(rendered_sendmail, stubs):
    res, calls = run_hook(rendered_sendmail, stubs, *DEPLOY)
    assert res.returncode == 0, res.stderr
    assert calls == ["apachectl configtest", "sudo -n /usr/sbin/apachectl -k graceful",
                     "sudo -n /etc/rc.d/rc.sendmail restart"]
