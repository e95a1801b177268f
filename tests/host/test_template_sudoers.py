"""/etc/sudoers.d files (article: "Configuring Postfix"), checked by visudo,
and matched against the exact commands the hook runs."""

from __future__ import annotations

import re
import subprocess

from conftest import need


def commands(text: str, user: str) -> set[str]:
    out = set()
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(user)} ALL=NOPASSWD: (.+)$", line)
        if m:
            out.add(m.group(1))
    return out


def test_visudo_accepts_every_file(rendered, rendered_sendmail):
    for tree in (rendered, rendered_sendmail):
        files = [e for e in tree.files() if e.path.startswith("/etc/sudoers.d/")]
        assert files
        for e in files:
            assert e.mode == "0440" and e.validate == "sudoers"
            assert "." not in e.path.rsplit("/", 1)[1]          # includedir skips dotted names
            res = subprocess.run([need("visudo"), "-cf", str(tree.path(e.path))],
                                 capture_output=True, text=True)
            assert res.returncode == 0, res.stdout + res.stderr


def test_visudo_really_checks(tmp_path):
    bad = tmp_path / "bad"
    bad.write_text("dehydrated_user ALL=NOPASSWD /usr/sbin/postfix reload\n")
    assert subprocess.run([need("visudo"), "-cf", str(bad)], capture_output=True).returncode != 0


def test_rules_cover_exactly_what_the_hook_runs(rendered, rendered_sendmail):
    user = rendered.settings.acme.user
    pf = rendered.text("/etc/sudoers.d/postfix_reload")
    assert "dehydrated_user ALL=NOPASSWD: /usr/sbin/postfix reload" in pf   # the article's line
    allowed = commands(pf + rendered.text("/etc/sudoers.d/apache_reload"), user)
    assert allowed == {"/usr/sbin/postfix reload", "/usr/sbin/postfix check",
                       "/usr/sbin/apachectl -k graceful"}
    hook = rendered.text("/etc/dehydrated/hook.sh")
    used = {" ".join(m.split()) for m in re.findall(r'"\$\{SUDO\}" -n (/\S+ [^|\n]+?)\s*(?:\|\||$)',
                                                     hook, re.M)}
    assert used == allowed
    sm = commands(rendered_sendmail.text("/etc/sudoers.d/sendmail_reload"), user)
    assert sm == {"/etc/rc.d/rc.sendmail restart"}
    assert "/etc/sudoers.d/postfix_reload" not in rendered_sendmail.entries
