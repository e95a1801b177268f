"""Regression tests of issue 10: hostile or careless settings and secrets, one test
per class of problem found. Each is refused with SettingsError (exit 2 through the
task) and leaves build/ and the secrets file untouched, or is rendered safely."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_settings import attempt, snapshot

from entelab import grammar, render, state
from entelab import secrets as secrets_mod
from entelab.errors import SettingsError
from entelab.settings import MAX_PROBLEMS, load_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def checkout(empty_checkout):
    """A checkout dir with one good render already in place."""
    settings, _ = load_settings(empty_checkout)
    render.render_lab(state.paths(empty_checkout), settings, quiet=True)
    return empty_checkout


def local(values: dict) -> str:
    """A settings.local.yaml holding exactly these values (nested by the dotted keys)."""
    doc: dict = {}
    for key, value in values.items():
        parts = key.split(".")
        node = doc
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return yaml.safe_dump(doc, allow_unicode=True)


def refused(root: Path, values: dict) -> str:
    return attempt(root, local=local(values))


def set_secret(root: Path, name: str, value) -> None:
    path = root / ".lab-secrets.yaml"
    data = yaml.safe_load(path.read_text())
    data[name] = value
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)


def invoke(root_env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, **root_env})


# ------------------------------------------------------------------ command injection
@pytest.mark.parametrize("key,value", [
    ("acme.contact", "$(touch /tmp/ente-lab-pwned)@darkstar.lan"),
    ("acme.contact", "`touch /tmp/ente-lab-pwned`@darkstar.lan"),
    ("acme.contact", 'x"; touch /tmp/ente-lab-pwned; "@darkstar.lan'),
    ("acme.ca", "https://localhost:14000/dir$(touch /tmp/ente-lab-pwned)"),
    ("acme.ca", "https://localhost:14000/`id`"),
    ("acme.ca", 'https://localhost/"; touch /tmp/ente-lab-pwned; "'),
])
def test_command_injection_via_acme_contact_or_ca_is_refused(checkout, key, value):
    msg = refused(checkout, {key: value})
    assert f"{key} = " in msg and "must be" in msg


def test_dehydrated_config_is_shell_quoted_and_runs_nothing(checkout, tmp_path):
    """Even the widest values the grammars admit are single shell words in the config."""
    s, _ = load_settings(checkout, ["acme.contact=a.b_c%d+e-f@darkstar.lan",
                                    "acme.ca=https://localhost:14000/a~b/c_d.e-f"])
    render.render_lab(state.paths(checkout), s, quiet=True)
    config = state.paths(checkout).rendered / "etc/dehydrated/config"
    res = subprocess.run(["env", "-i", "bash", "-c", f'. {config}; printf "%s\\n" "$CA" "$CONTACT_EMAIL"'],
                         cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == [s.acme.ca, s.acme.contact]


# ------------------------------------------------------------------ trailing newline
@pytest.mark.parametrize("key,value", [
    ("domain", "darkstar.lan\n"), ("api_host", "ente.darkstar.lan\n"), ("vm.hostname", "darkstar\n"),
    ("docker.gateway", "172.21.0.1\n"), ("docker.subnet", "172.21.0.0/16\n"),
    ("docker.network", "ente.lan\n"), ("images.museum", "ghcr.io/ente/server:latest\n"),
    ("paths.data_dir", "/opt/ente\n"), ("acme.user", "dehydrated_user\n"),
    ("smtp.username", "verification\n"), ("smtp.email", "a@darkstar.lan\n"),
    ("acme.ca", "https://localhost:14000/dir\n"), ("db.name", "ente_db\n"),
    ("smtp.sender_name", "Ente Auth\n"), ("ott", ["me@home.lan,123456\n"]),
])
def test_trailing_newline_is_refused(checkout, key, value):
    msg = refused(checkout, {key: value})
    assert f"{key} = " in msg or f"{key}: " in msg
    assert "\\n" in msg        # the value is shown with its newline visible


# ------------------------------------------------------------------ paths
PATH_TRICKS = [
    ("/opt/ente:/etc", "must be an absolute, normalised path"),
    ("/opt/ente\nX=1", "must be an absolute, normalised path"),
    ("/", "must be an absolute, normalised path"),
    ("/etc", "is a system directory"),
    ("/etc/ente", "is a system directory"),
    ("/usr/local", "is a system directory"),
    ("/var/lib", "is a system directory"),
    ("/root", "is a system directory"),
    ("/home", "is a system directory"),
    ("/proc/self", "is a system directory"),
    ("/opt/my ente", "must be an absolute, normalised path"),
    ("/opt/../etc", "must be an absolute, normalised path"),
    ("/opt/./ente", "must be an absolute, normalised path"),
    ("/opt//ente", "must be an absolute, normalised path"),
    ("relative/dir", "must be an absolute, normalised path"),
    ("/opt/-rf", "must be an absolute, normalised path"),
]


@pytest.mark.parametrize("key", ["paths.compose_dir", "paths.data_dir"])
def test_path_tricks_are_refused(checkout, key):
    for value, expected in PATH_TRICKS:
        msg = refused(checkout, {key: value})
        assert f"{key} = {grammar.show(value)}: {expected}" in msg


def test_same_compose_and_data_dir_is_refused(checkout):
    msg = refused(checkout, {"paths.compose_dir": "/opt/ente", "paths.data_dir": "/opt/ente"})
    assert "paths.data_dir = '/opt/ente': same as paths.compose_dir" in msg


# ------------------------------------------------------------------ accounts
@pytest.mark.parametrize("key", ["smtp.username", "acme.user"])
def test_reserved_accounts_are_refused(checkout, key):
    for name in ["root", "vagrant", "postfix", "daemon", "nobody", "www-data", "sshd",
                 "messagebus", "_apt", "users", "sudo", "docker"]:
        msg = refused(checkout, {key: name})
        assert f"{key} = {name!r}: is an account or group the box already has" in msg


def test_the_labs_own_accounts_are_accepted(tmp_path):
    s, _ = load_settings(tmp_path, ["smtp.username=verification", "acme.user=dehydrated_user"],
                         local_file=tmp_path / "none.yaml")
    assert (s.smtp.username, s.acme.user) == ("verification", "dehydrated_user")
    assert "root" in grammar.RESERVED_ACCOUNTS and "vagrant" in grammar.RESERVED_ACCOUNTS
    assert not {"verification", "dehydrated_user"} & grammar.RESERVED_ACCOUNTS


# ------------------------------------------------------------------ secrets
@pytest.mark.parametrize("name", list(secrets_mod.GENERATORS))
def test_secret_with_quote_newline_or_dollar_is_refused(checkout, name):
    for bad in ["abc'def0123456789xyz", 'abc"def0123456789xyz', "abc$HOME0123456789xyz",
                "abc\ndef0123456789xyz", "abc def0123456789xyz", "abc`id`0123456789xyz",
                "abc#def0123456789xyz"]:
        set_secret(checkout, name, bad)
        msg = attempt(checkout)
        assert f"secret {name!r} must be" in msg
        assert bad not in msg and repr(bad) not in msg         # a secret is never shown


MALFORMED_SECRETS = [
    ("key_encryption", "yvmG/RnzKrbCb9L3mgsmoxXr9H7i2Z4qlbT0mL"),          # truncated
    ("key_encryption", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),     # 43 chars, no '='
    ("key_encryption", "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!="),    # not base64
    ("key_encryption", "A" * 86 + "=="),                                   # 64 bytes
    ("key_hash", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),                # 32 bytes
    ("jwt_secret", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA+/="),             # not URL-safe
    ("sasl_salt", "bad salt!"), ("sasl_salt", "$6$x"), ("db_password", "short"),
    ("minio_key", 12345678901234567890),
]


def test_malformed_secret_is_refused(checkout):
    for name, value in MALFORMED_SECRETS:
        good = (checkout / ".lab-secrets.yaml").read_text()
        set_secret(checkout, name, value)
        msg = attempt(checkout)
        assert f"secret {name!r} must be" in msg, (name, value)
        (checkout / ".lab-secrets.yaml").write_text(good)


def test_secrets_file_mode_0644_is_repaired_with_a_message(checkout, capsys):
    path = checkout / ".lab-secrets.yaml"
    path.chmod(0o644)
    s, _ = load_settings(checkout)
    result = render.render_lab(state.paths(checkout), s)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert any("had mode 0644" in w and "repaired to 0600" in w for w in result.warnings)
    assert "repaired to 0600" in " ".join(capsys.readouterr().out.split())


def test_secrets_mode_is_not_touched_when_the_settings_are_refused(checkout):
    path = checkout / ".lab-secrets.yaml"
    path.chmod(0o640)
    attempt(checkout, ["vm.memory=1"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_secrets_file_that_is_a_directory_is_refused(checkout):
    path = checkout / ".lab-secrets.yaml"
    path.unlink()
    path.mkdir()
    msg = attempt(checkout)
    assert "is a directory" in msg and path.is_dir()


def test_non_utf8_secrets_file_is_refused(checkout):
    path = checkout / ".lab-secrets.yaml"
    path.write_bytes(path.read_bytes() + b"# \xff\xfe caf\xe9\n")
    msg = attempt(checkout)
    assert "not UTF-8" in msg


def test_secrets_file_list_or_alias_is_refused(checkout):
    path = checkout / ".lab-secrets.yaml"
    good = path.read_text()
    path.write_text("- a\n")
    assert "must be a mapping name: value, got list" in attempt(checkout)
    path.write_text(good + "x: &a abc\ny: *a\n")
    assert "aliases" in attempt(checkout)
    path.write_text(good + "1: x\n'[red]': y\nzz: z\n")
    msg = attempt(checkout)
    assert "unknown secret(s) 1, '[red]', zz;" in msg.replace("\\[", "[")


# ------------------------------------------------------------------ crashes -> refusals
def test_non_utf8_settings_file_is_refused(checkout):
    (checkout / "settings.local.yaml").write_bytes(b"domain: caf\xe9.lan\n")
    msg = attempt(checkout)
    (checkout / "settings.local.yaml").unlink()
    assert "settings.local.yaml: not UTF-8 text (byte 11)" in msg


@pytest.mark.parametrize("value", ["[/b]", "[red]", "x[/b]y", "[bold red]boom[/]", "\\[red]"])
def test_markup_in_values_is_shown_literally(checkout, value):
    msg = refused(checkout, {"smtp.sender_name": value})
    from rich.console import Console

    from entelab import errors, progress
    console = Console(record=True, width=300)
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(progress, "console", console)
    try:
        progress.report(errors.SettingsError([msg]))   # how every lab error is printed
    finally:
        monkeypatch.undo()
    assert f"smtp.sender_name = {value!r}: must be" in console.export_text()


def test_markup_values_through_the_task_exit_2_without_traceback(tmp_path):
    settings = tmp_path / "s.yaml"
    settings.write_text(local({"smtp.sender_name": "[/b]", "vm.hostname": "[red]x"}))
    res = invoke({"ENTE_LAB_SETTINGS": str(settings), "ENTE_LAB_HOME": str(tmp_path / "home")},
                 "lab.render")
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "Traceback" not in out
    flat = " ".join(out.split())
    assert "smtp.sender_name = '[/b]'" in flat and "vm.hostname = '[red]x'" in flat


def test_yaml_alias_bomb_is_refused(checkout):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}]\n" for i in range(8))
    assert len(bomb) < 1024
    msg = attempt(checkout, local=bomb)
    assert "aliases (*name) are not allowed here" in msg


def test_key_given_twice_is_refused(checkout):
    msg = attempt(checkout, local="domain: a.lan\nvm:\n  memory: 4096\n  memory: 1\n")
    assert "key 'memory' given twice (line 4, column 3)" in msg


def test_bad_yaml_in_the_secrets_file_does_not_show_the_line(checkout):
    path = checkout / ".lab-secrets.yaml"
    data = yaml.safe_load(path.read_text())
    path.write_text(f"db_password: {data['db_password']}: oops\n")
    msg = attempt(checkout)
    assert "not valid YAML: mapping values are not allowed here (line 1" in msg
    assert data["db_password"] not in msg


def test_alias_in_a_set_option_is_not_expanded(checkout):
    msg = attempt(checkout, ["vm.hostname=*a"])
    assert "vm.hostname = '*a': must be a single host name label" in msg


def test_200000_unknown_keys_are_bounded(checkout):
    big = "".join(f"k{i}: 1\n" for i in range(200000))
    msg = attempt(checkout, local=big)
    assert "larger than 64 KiB" in msg and len(msg) < 1000


def test_error_list_is_capped_with_a_count(checkout):
    msg = attempt(checkout, local="".join(f"unknown_{i}: 1\n" for i in range(120)))
    assert msg.count("\n  - ") == MAX_PROBLEMS + 1
    assert "... and 100 more problems" in msg
    msg = attempt(checkout, ["ott=[" + ", ".join('"x"' for _ in range(500)) + "]"])
    assert len(msg) < 2000


def test_deeply_nested_yaml_is_refused(checkout):
    msg = attempt(checkout, local="a: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested too deeply" in msg


# ------------------------------------------------------------------ silence -> refusals
@pytest.mark.parametrize("content,kind", [("[]\n", "list"), ("0\n", "int"), ("false\n", "bool"),
                                          ("'text'\n", "str"), ("- a\n", "list")])
def test_settings_file_that_is_not_a_mapping_is_refused(checkout, content, kind):
    msg = attempt(checkout, local=content)
    assert f"must be a mapping of settings (key: value lines), got {kind}" in msg


def test_empty_settings_file_is_fine(tmp_path):
    f = tmp_path / "s.yaml"
    for content in ("", "# only a comment\n", "---\n"):
        f.write_text(content)
        assert load_settings(tmp_path, local_file=f)[0].domain == "darkstar.lan"


def test_settings_local_yaml_that_is_a_directory_is_refused(checkout):
    (checkout / "settings.local.yaml").mkdir()
    msg = attempt(checkout)
    (checkout / "settings.local.yaml").rmdir()
    assert "settings.local.yaml: is a directory" in msg


def test_env_settings_file_that_is_a_directory_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTE_LAB_SETTINGS", str(tmp_path))
    with pytest.raises(SettingsError, match="is a directory"):
        load_settings(tmp_path)


def test_type_error_and_cross_check_are_reported_together(checkout):
    msg = attempt(checkout, ["ports.web=abc", "ports.minio_api=443", "vm.memory=x",
                             "docker.museum_ip=172.21.0.1"])
    assert "ports.web = 'abc': wrong type" in msg
    assert "vm.memory = 'x': wrong type" in msg
    assert "ports.minio_api = 443: collides with Apache https" in msg
    assert "docker.museum_ip = '172.21.0.1': equals docker.gateway" in msg
    assert msg.count("\n  - ") == 4


def test_cross_check_on_a_replaced_key_is_not_reported(checkout):
    # ports.web is wrong: the default put in its place (3322) must not raise a collision
    msg = attempt(checkout, ["ports.web=abc", "ports.museum=3322"])
    assert msg.count("\n  - ") == 1 and "ports.web = 'abc': wrong type" in msg


def test_vm_memory_has_an_upper_bound(checkout):
    msg = attempt(checkout, ["vm.memory=1099511627776"])
    assert "vm.memory = 1099511627776: must be at most this host's memory" in msg


@pytest.mark.parametrize("uid", [2**63, 2**64 + 5, 10**30])
def test_admin_id_beyond_int64_is_refused(checkout, uid):
    msg = attempt(checkout, [f"admins=[{uid}]"])
    assert f"entry 0 ({uid}) must be a positive Ente account id (1 .. 9223372036854775807)" in msg


def test_admin_id_int64_max_is_accepted(tmp_path):
    s, _ = load_settings(tmp_path, [f"admins=[{2**63 - 1}]"], local_file=tmp_path / "none.yaml")
    assert s.admins == [2**63 - 1]


@pytest.mark.parametrize("code", ["١٢٣٤٥٦", "１２３４５６", "12345６", "12345\n", "12 456"])
def test_unicode_digits_in_ott_are_refused(checkout, code):
    msg = refused(checkout, {"ott": [f"me@home.lan,{code}"]})
    assert "entry 0" in msg and "must be 'email,6 digits'" in msg


def test_ott_emails_differing_by_case_are_one_address(checkout):
    msg = attempt(checkout, ['ott=["Me@Home.lan,111111", "me@home.lan,222222"]'])
    assert "ott: me@home.lan listed more than once (e-mail addresses are compared ignoring case)" in msg


def test_bad_sasl_salt_is_refused_not_a_crash(checkout):
    set_secret(checkout, "sasl_salt", "a:b\n$c")
    assert "secret 'sasl_salt' must be" in attempt(checkout)


@pytest.mark.parametrize("key,value", [("mail_host", "0.0"), ("domain", "1.2.3.4"),
                                       ("api_host", "ente.123"), ("vm.hostname", "123"),
                                       ("docker.network", "42")])
def test_all_numeric_host_names_are_refused(checkout, key, value):
    """Found by the property test: Postfix refuses 'myhostname = 0.0' (a numeric name)."""
    msg = refused(checkout, {key: value})
    assert f"{key} = {value!r}: must be" in msg and "not all digits" in msg


def test_derived_names_too_long_for_dns_are_refused(checkout):
    domain = ".".join(["a" * 49] * 5)          # 249 characters: valid itself
    msg = attempt(checkout, [f"domain={domain}"])
    assert "(derived from domain): not a valid DNS name" in msg
    msg = attempt(checkout, [f"domain={domain[:240]}", "vm.hostname=" + "h" * 20])
    assert "is too long for a DNS name" in msg


def test_refusals_name_the_setting_not_a_traceback_for_odd_keys(checkout):
    msg = attempt(checkout, local=yaml.safe_dump({"vm": {"[red]x\n": 1}, 5: "x", None: 1}))
    assert "unknown setting" in msg and "Traceback" not in msg


def test_set_option_with_a_bad_key_is_refused(checkout):
    assert "the key must be a dotted settings key" in attempt(checkout, ["vm..memory=1"])
    assert "the key must be a dotted settings key" in attempt(checkout, ["=1"])


def test_snapshot_helper_sees_a_change(checkout):
    """The 'nothing written' checks above can fail: a real write changes the snapshot."""
    before = snapshot(checkout)
    (checkout / ".lab-secrets.yaml").chmod(0o644)
    assert snapshot(checkout) != before


def test_secret_that_equals_a_word_of_a_file_renders(checkout):
    """Found by the property test: sasl_salt 'dehydrated' is in many files; the 0600 guard
    goes by which templates read secrets, not by searching the output for their values."""
    set_secret(checkout, "sasl_salt", "dehydrated")
    set_secret(checkout, "db_password", "permit_sasl_authenticated")
    s, _ = load_settings(checkout)
    result = render.render_lab(state.paths(checkout), s, quiet=True)
    assert "/etc/ente-lab/users.conf" in result.changed
    users = (state.paths(checkout).rendered / "etc/ente-lab/users.conf").read_text()
    assert "$6$dehydrated$" in users
