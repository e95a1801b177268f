"""The article's "Administering the server" tasks (issue 14), without a VM: facts in
(mailbox JSON, Museum's log, psql output), commands and output out."""

from __future__ import annotations

import json

import pytest
import yaml
from recording import RecordingConnection

from entelab import admin, converge, lab, progress, state, task_bodies
from entelab.guest import Guest

ESC = "\x1b"
# Museum's log as the stand-in writes it (logrus text), with ANSI colours as upstream has them
STANDIN_LOG = "\n".join([
    f'ente-museum  | {ESC}[36mINFO{ESC}[0m time="2026-11-29T07:00:01Z" level=info msg="Added ott for kq3aa=: 111111"',
    'ente-museum  | time="2026-11-29T07:00:01Z" level=info msg="Skipping sending email to '
    'alice@darkstar.lan: Verification code: 111111"',
    'ente-museum  | time="2026-11-29T07:00:05Z" level=info msg="Added ott for zz9=: 999999"',
    'ente-museum  | time="2026-11-29T07:00:05Z" level=info msg="Skipping sending email to '
    'bob@darkstar.lan: Verification code: 999999"',
    f'ente-museum  | {ESC}[36mINFO{ESC}[0m time="2026-11-29T07:01:00Z" level=info msg="Added ott for kq3aa=: 444444"',
    f'ente-museum  | time="2026-11-29T07:01:00Z" level=info msg="Skipping sending email to '
    f'{ESC}[1mAlice@darkstar.lan{ESC}[0m: Verification code: 444444"',
])
# the article's lines (upstream with caller info): hard-coded, then a new user with an old subject
ARTICLE_LOG = "\n".join([
    "ente-museum | WARN[0082]userauth.go:102 SendEmailOTT returning hardcoded ott for me@home.lan",
    "ente-museum | INFO[0082]userauth.go:131 SendEmailOTT Added hard coded ott for me@home.lan : 123456",
    "ente-museum | INFO[2626]userauth.go:125 SendEmailOTT Added ott for "
    "navQ5xarR9du1zw3QmmnwW4F48dAm7f52okwSkWFFS4=: 519032",
    "ente-museum | INFO[2626]email.go:109 sendViaTransmail Skipping sending email to "
    "friend@foo.bar: ente Verification Code",
])
PSQL = "1580559962386438|alice@darkstar.lan|1764399600000000\n1580559962386439|bob@darkstar.lan|1764399700000000\n"


def test_code_from_log_takes_the_newest_line_for_the_address_colours_stripped():
    found = admin.code_from_log(STANDIN_LOG, "alice@darkstar.lan")
    assert found is not None and found.code == "444444" and found.where == "log"
    assert ESC not in found.evidence and "Skipping sending email to Alice@darkstar.lan" in found.evidence
    assert admin.code_from_log(STANDIN_LOG, "bob@darkstar.lan").code == "999999"
    assert admin.code_from_log(STANDIN_LOG, "carol@darkstar.lan") is None


def test_code_from_log_reads_the_articles_lines():
    assert admin.code_from_log(ARTICLE_LOG, "me@home.lan").code == "123456"
    # the old subject has no code: it is the 'Added ott' line before it
    assert admin.code_from_log(ARTICLE_LOG, "friend@foo.bar").code == "519032"
    assert admin.code_from_log(ARTICLE_LOG, "foo.bar@friend") is None


# ---------------------------------------------------------------- the tasks, through a recorder
def mbox_answer(*items: tuple[str, str]) -> str:
    return json.dumps([{"from": "Ente Auth <verification@darkstar.lan>", "to": to, "subject": subj,
                        "date": f"Sun, 29 Nov 2026 07:0{i}:00 +0000", "message_id": f"<m{i}@x>",
                        "received": [], "body": subj} for i, (to, subj) in enumerate(items)]) + "\n"


@pytest.fixture
def lab_with(empty_checkout, monkeypatch):
    """A checkout and a recorder whose answers the test gives: {'mbox', 'log', 'psql', ...}."""
    monkeypatch.setattr(state, "ROOT", empty_checkout)
    monkeypatch.setattr(progress.console, "_width", 250)
    facts: dict[str, object] = {"mbox": "[]\n", "log": "", "psql": PSQL}
    calls: list[str] = []

    def answer(cmd: str) -> object:
        if "base64" in cmd:
            return facts["mbox"]
        if "docker-compose logs" in cmd:
            return facts["log"]
        if "psql" in cmd:
            return facts["psql"]
        if "docker inspect" in cmd:
            from test_stack_data import HEALTHY
            return json.dumps(HEALTHY)
        if "docker exec ente-cli" in cmd:
            return facts.get("cli", "")
        if "docker-compose restart" in cmd:
            calls.append("restart " + cmd.split()[-1].strip("'"))
        return ""

    rec = RecordingConnection(answer)
    monkeypatch.setattr(lab, "guest", lambda p: Guest(rec))
    monkeypatch.setattr(converge, "converge", lambda g, p: calls.append("converge"))
    return empty_checkout, facts, rec, calls


def exit_code(fn, **kw) -> int:
    with pytest.raises(SystemExit) as err:
        task_bodies.run(fn, **kw)
    return err.value.code


def test_ott_from_the_mailbox_first(lab_with, capsys):
    root, facts, rec, _ = lab_with
    facts["mbox"] = mbox_answer(("alice@darkstar.lan", "Verification code: 111111"),
                                ("bob@darkstar.lan", "Verification code: 222222"),
                                ("Alice <ALICE@darkstar.lan>", "Verification code: 333333"))
    facts["log"] = STANDIN_LOG
    task_bodies.ott("alice@darkstar.lan")
    out = capsys.readouterr().out
    assert "one-time code for alice@darkstar.lan: 333333" in out
    assert "catch-all mailbox /var/mail/labmail" in out
    assert not any("docker-compose logs" in c for c in rec.commands)    # no need for the log


def test_ott_from_museums_log_when_mail_is_off(lab_with, capsys):
    root, facts, rec, _ = lab_with
    facts["mbox"] = mbox_answer(("bob@darkstar.lan", "Verification code: 222222"))
    facts["log"] = STANDIN_LOG
    task_bodies.ott("alice@darkstar.lan")
    out = capsys.readouterr().out
    assert "one-time code for alice@darkstar.lan: 444444" in out
    assert "Museum's log" in out and "docker-compose logs ente-museum | grep SendEmailOTT" in out
    logs = [c for c in rec.commands if "docker-compose logs" in c]
    assert len(logs) == 1 and "cd /usr/local/docker-ente" in logs[0]
    assert "logs --no-color ente-museum" in logs[0] and "grep -E -e SendEmailOTT" in logs[0]


def test_ott_without_a_code_fails_with_a_hint(lab_with, capsys):
    root, facts, rec, _ = lab_with
    facts["log"] = STANDIN_LOG
    assert exit_code(task_bodies.ott, email="carol@darkstar.lan") == 1
    out = capsys.readouterr().out
    assert "no one-time code for carol@darkstar.lan" in out and "lab.mail" in out


@pytest.mark.parametrize("task,kw", [
    (task_bodies.ott, {"email": "not-an-address"}),
    (task_bodies.promote, {"email": "x@darkstar.lan;reboot"}),
    (task_bodies.promote, {"email": "me@home.lan\n"}),
    (task_bodies.cli_unlimited, {"email": "a@b.lan", "admin_email": "$(id)@b.lan"}),
])
def test_bad_email_is_refused_before_anything(lab_with, task, kw, capsys):
    root, facts, rec, calls = lab_with
    assert exit_code(task, **kw) == 2
    assert rec.commands == [] and calls == []
    assert not (root / "settings.local.yaml").exists() and not (root / "build").exists()
    assert "is not an e-mail address" in capsys.readouterr().out


def test_users_with_the_standin_is_psql_on_the_users_table(lab_with, capsys):
    root, facts, rec, _ = lab_with
    task_bodies.users()
    out = capsys.readouterr().out
    assert "alice@darkstar.lan" in out and "1580559962386438" in out and "2025-11-29" in out
    assert out.index("alice@darkstar.lan") < out.index("bob@darkstar.lan")
    assert "equivalent of the CLI's `ente admin list-users`" in out
    cmd = [c for c in rec.commands if "psql" in c]
    assert len(cmd) == 1
    assert "docker exec ente-postgres psql -U entedbuser -d ente_db -At" in cmd[0]
    assert "SELECT user_id, email, creation_time FROM users ORDER BY creation_time" in cmd[0]


def test_users_with_the_official_payload_runs_the_cli(lab_with, capsys):
    root, facts, rec, _ = lab_with
    (root / "settings.local.yaml").write_text("stack:\n  payload: official\n")
    facts["cli"] = "Email: me@home.lan, ID: 5551234567654321, Created: 2024-07-15\n"
    task_bodies.users(admin_email="me@home.lan")
    out = capsys.readouterr().out
    assert "ID: 5551234567654321" in out
    assert any("docker exec ente-cli ente admin list-users -a me@home.lan" in c for c in rec.commands)
    assert not any("psql" in c for c in rec.commands)


def test_cli_wrappers_refuse_the_standin_payload(lab_with):
    root, facts, rec, calls = lab_with
    assert exit_code(task_bodies.cli_unlimited, email="a@darkstar.lan", admin_email="me@home.lan") == 2
    assert not any("update-subscription" in c for c in rec.commands)


def test_cli_unlimited_with_the_official_payload(lab_with):
    root, facts, rec, _ = lab_with
    (root / "settings.local.yaml").write_text("stack:\n  payload: official\n")
    task_bodies.cli_unlimited(email="friend@foo.bar", admin_email="me@home.lan")
    assert any(c.endswith("ente admin update-subscription -a me@home.lan -u friend@foo.bar --no-limit")
               or "update-subscription -a me@home.lan -u friend@foo.bar --no-limit" in c
               for c in rec.commands)


# ---------------------------------------------------------------- lab.admin
LOCAL = """# my lab
domain: darkstar.lan   # the article's
admins:
  - 42
smtp:
  sender_name: My Lab
"""


def museum_admins(root):
    text = (root / "build/rootfs/usr/local/docker-ente/museum.yaml").read_text()
    return yaml.safe_load(text)["internal"]["admins"]


def test_admin_promotes_keeps_the_file_converges_and_restarts_museum(lab_with, capsys):
    root, facts, rec, calls = lab_with
    (root / "settings.local.yaml").write_text(LOCAL)
    task_bodies.promote("Bob@darkstar.lan")
    out = capsys.readouterr().out
    assert "user id 1580559962386439" in out
    text = (root / "settings.local.yaml").read_text()
    data = yaml.safe_load(text)
    assert data["admins"] == [42, 1580559962386439]
    assert data["smtp"] == {"sender_name": "My Lab"} and data["domain"] == "darkstar.lan"
    assert "# my lab" in text and "# the article's" in text           # comments kept
    assert museum_admins(root) == [42, 1580559962386439]               # rendered for the converge
    # converge, then the article's restart of Museum, then socat (Museum's netns)
    assert calls == ["converge", "restart ente-museum", "restart ente-socat"]
    restarts = [c for c in rec.commands if "docker-compose restart" in c]
    assert all("cd /usr/local/docker-ente" in c for c in restarts)
    # a second run changes nothing in the file
    task_bodies.promote("bob@darkstar.lan")
    assert yaml.safe_load((root / "settings.local.yaml").read_text())["admins"] == [42, 1580559962386439]


def test_admin_without_a_settings_file_creates_one(lab_with):
    root, facts, rec, calls = lab_with
    task_bodies.promote("alice@darkstar.lan")
    assert (root / "settings.local.yaml").read_text() == "admins: [1580559962386438]\n"
    assert museum_admins(root) == [1580559962386438]


def test_admin_for_an_address_without_an_account_changes_nothing(lab_with, capsys):
    root, facts, rec, calls = lab_with
    (root / "settings.local.yaml").write_text(LOCAL)
    assert exit_code(task_bodies.promote, email="carol@darkstar.lan") == 1
    assert (root / "settings.local.yaml").read_text() == LOCAL
    assert calls == [] and not (root / "build").exists()
    out = capsys.readouterr().out
    assert "no Ente account has the address carol@darkstar.lan" in out and "lab.users" in out


def test_admin_refuses_a_settings_file_that_would_not_validate(lab_with):
    root, facts, rec, calls = lab_with
    bad = "vm:\n  memry: 4096\n"
    (root / "settings.local.yaml").write_text(bad)
    assert exit_code(task_bodies.promote, email="alice@darkstar.lan") == 2
    assert (root / "settings.local.yaml").read_text() == bad and calls == []


@pytest.mark.parametrize("text,expected", [
    ("", "admins: [7]\n"),
    ("admins: []\n", "admins: [7]\n"),
    ("a: 1\nadmins:\n- 3\n\n# tail\nb: 2\n", "a: 1\nadmins: [3, 7]\n\n# tail\nb: 2\n"),
    ("admins: [7]\n", "admins: [7]\n"),
    ("x: 1", "x: 1\nadmins: [7]\n"),
])
def test_with_admin_edits_only_the_admins_block(text, expected):
    new, before, after = admin.with_admin(text, 7)
    assert new == expected
    assert 7 in after and yaml.safe_load(new)["admins"] == after


def test_with_admin_falls_back_to_a_full_dump_when_the_edit_is_ambiguous():
    # a quoted key: the text edit would add a second 'admins' (refused by the loader)
    new, _, after = admin.with_admin('"admins": [1]\nz: 3\n', 7)
    assert yaml.safe_load(new) == {"admins": [1, 7], "z": 3} and new.count("admins") == 1
    new, _, after = admin.with_admin("admins: [1,\n  2]\nz: 3\n", 7)
    assert new == "admins: [1, 2, 7]\nz: 3\n" and after == [1, 2, 7]
    with pytest.raises(yaml.YAMLError):          # aliases: refused like any settings file
        admin.with_admin("admins: &ids [1]\nb: *ids\n", 7)
