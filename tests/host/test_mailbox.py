"""The catch-all mailbox reader (issue 14), without a VM: the guest program runs for
real with the host's python3 on an mbox written with Python's mailbox module; lab.mail
gets that program's real answer through a RecordingConnection (facts in, commands out)."""

from __future__ import annotations

import json
import mailbox as mbox_mod
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest
from recording import RecordingConnection

from entelab import errors, lab, mailbox, progress, state, task_bodies
from entelab.guest import Guest

DOMAIN = "darkstar.lan"


def message(to: str, subject: str, body: str, date: str, mid: str, multipart: bool = False,
            original_to: str = "") -> mbox_mod.mboxMessage:
    """A message as Postfix's local(8) stores it: a folded Received header first."""
    m = EmailMessage()
    m["From"] = f"Ente Auth <verification@{DOMAIN}>"
    m["To"] = to
    m["Subject"] = subject
    m["Date"] = date
    m["Message-ID"] = mid
    if original_to:
        m["X-Original-To"] = original_to
    m.set_content(body)
    if multipart:
        m.add_alternative(f"<p>{body}</p>", subtype="html")
    received = (f"Received: from ente.lab (ente-museum.ente.lan [172.21.0.5])\n\tby smtp.{DOMAIN} "
                "(Postfix) with ESMTPSA id 4AB12;\n\tSun, 29 Nov 2026 07:00:00 +0000 (UTC)\n"
                "Received: from localhost by localhost\n")
    return mbox_mod.mboxMessage(received + m.as_string())


@pytest.fixture
def mbox_file(tmp_path) -> Path:
    path = tmp_path / "labmail"
    box = mbox_mod.mbox(str(path))
    box.add(message(f"alice@{DOMAIN}", "Verification code: 111111", "Your code is 111111\n",
                    "Sun, 29 Nov 2026 07:00:00 +0000", "<m1@darkstar.lan>"))
    box.add(message(f"Bob <BOB@{DOMAIN}>", "Verification code: 222222", "Your code is 222222\n",
                    "Sun, 29 Nov 2026 07:01:00 +0000", "<m2@darkstar.lan>", multipart=True))
    box.add(message("undisclosed-recipients:;", "Verification code: 333333", "Your code is 333333\n",
                    "Sun, 29 Nov 2026 07:02:00 +0000", "<m3@darkstar.lan>",
                    original_to=f"alice@{DOMAIN}"))
    box.flush()
    box.close()
    return path


def run_program(path: Path, limit: int = 500, max_body: int = 20000) -> list:
    res = subprocess.run([sys.executable, "-c", mailbox.MBOX_PROGRAM,
                          json.dumps({"path": str(path), "limit": limit, "max_body": max_body})],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_guest_program_parses_a_real_mbox(mbox_file):
    got = run_program(mbox_file)
    assert [m["subject"] for m in got] == ["Verification code: 111111", "Verification code: 222222",
                                           "Verification code: 333333"]
    first = got[0]
    assert first["from"] == f"Ente Auth <verification@{DOMAIN}>" and first["to"] == f"alice@{DOMAIN}"
    assert first["message_id"] == "<m1@darkstar.lan>" and first["date"].startswith("Sun, 29 Nov 2026")
    assert first["body"] == "Your code is 111111\n"
    assert len(first["received"]) == 2 and "ESMTPSA" in first["received"][0]
    assert "172.21.0.5" in first["received"][0] and "\n" not in first["received"][0]
    assert got[1]["body"] == "Your code is 222222\n"          # the text/plain part, not the html
    assert got[2]["original_to"] == f"alice@{DOMAIN}"
    # limit keeps the newest, max_body cuts bodies
    short = run_program(mbox_file, limit=1, max_body=4)
    assert [m["subject"] for m in short] == ["Verification code: 333333"] and short[0]["body"] == "Your"


def test_guest_program_without_a_mailbox_answers_an_empty_list(tmp_path):
    assert run_program(tmp_path / "nothing-here") == []


def test_for_address_matches_to_and_original_to_ignoring_case(mbox_file):
    msgs = mailbox.parse(run_program(mbox_file))
    assert [m.message_id for m in mailbox.for_address(msgs, f"ALICE@{DOMAIN}")] == \
        ["<m1@darkstar.lan>", "<m3@darkstar.lan>"]
    assert [m.message_id for m in mailbox.for_address(msgs, f"bob@{DOMAIN}")] == ["<m2@darkstar.lan>"]
    assert mailbox.for_address(msgs, f"carol@{DOMAIN}") == []
    assert len(mailbox.for_address(msgs, "")) == 3


@pytest.fixture
def wide(monkeypatch):
    monkeypatch.setattr(progress.console, "_width", 250)


@pytest.fixture
def mail_task(mbox_file, empty_checkout, monkeypatch, wide):
    """task_bodies.mail against a recorder that answers with the real program's output."""
    monkeypatch.setattr(state, "ROOT", empty_checkout)
    answer = json.dumps(run_program(mbox_file)) + "\n"
    rec = RecordingConnection(lambda cmd: answer if "base64" in cmd else "")
    guest = Guest(rec, secrets=["Your code is 2222"])
    monkeypatch.setattr(lab, "guest", lambda p: guest)
    return rec, guest


def test_lab_mail_prints_the_table_of_one_address(mail_task, capsys):
    rec, guest = mail_task
    task_bodies.mail(address=f"alice@{DOMAIN}")
    out = capsys.readouterr().out
    assert "Verification code: 111111" in out and "Verification code: 333333" in out
    assert "222222" not in out
    assert "2026-11-29 07:00:00 +0000" in out and "/var/mail/labmail" in out
    # one round trip, as root (the mbox is labmail's, 0600), the program reads /var/mail/labmail
    assert guest.round_trips == 1 and rec.commands[0].startswith("sudo -n sh -c")
    assert '"path": "/var/mail/labmail"' in rec.commands[0]


def test_lab_mail_show_prints_the_message_redacted(mail_task, capsys):
    task_bodies.mail(address=f"bob@{DOMAIN}", show=1)
    out = capsys.readouterr().out
    assert "Message-ID: <m2@darkstar.lan>" in out and "ESMTPSA" in out
    assert "Your code is 2222" not in out and "<secret>22" in out      # the runner's redaction


def test_lab_mail_show_out_of_range_is_bad_input(mail_task):
    with pytest.raises(errors.BadInput) as err:
        task_bodies.mail(address=f"bob@{DOMAIN}", show=2)
    assert err.value.exit_code == 2


def test_lab_mail_refuses_a_bad_address_before_connecting(empty_checkout, monkeypatch):
    monkeypatch.setattr(state, "ROOT", empty_checkout)
    monkeypatch.setattr(lab, "guest", lambda p: pytest.fail("connected to the VM"))
    with pytest.raises(errors.BadInput) as err:
        task_bodies.mail(address="alice@darkstar.lan'; rm -rf /")
    assert err.value.exit_code == 2
