"""/etc/ente-lab/users.conf (article: "Create the mail user"): the format
documented in templates/users/NOTES.md, and the values."""

from __future__ import annotations

from entelab.secrets import sha512_crypt


def records(tree):
    out = []
    for line in tree.text("/etc/ente-lab/users.conf").splitlines():
        if line and not line.startswith("#"):
            out.append(line.split(":"))
    return out


def test_users_conf(rendered):
    s, sec = rendered.settings, rendered.secrets
    entry = rendered.entries["/etc/ente-lab/users.conf"]
    assert (entry.mode, entry.reload) == ("0600", "users")
    recs = records(rendered)
    for r in recs:
        assert (r[0] == "user" and len(r) == 9) or (r[0] == "member" and len(r) == 3), r
    users = {r[1]: r for r in recs if r[0] == "user"}
    v = users[s.smtp.username]
    # useradd -c "Ente Verification" -m -g users -s /bin/false verification
    assert v[2:8] == ["Ente Verification", "users", "/home/verification", "/bin/false", "yes", "no"]
    assert v[8] == sha512_crypt(sec.sasl_password, sec.sasl_salt) and v[8].startswith("$6$")
    assert sec.sasl_password not in rendered.text("/etc/ente-lab/users.conf")
    a = users[s.acme.user]
    assert a[4] == "/var/lib/dehydrated" and a[7] == "yes" and a[8] == "!"
    assert ["member", "postfix", "sasl"] in recs


def test_sendmail_variant_has_no_postfix_membership(rendered_sendmail):
    assert ["member", "postfix", "sasl"] not in records(rendered_sendmail)
