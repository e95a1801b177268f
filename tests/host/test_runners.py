"""The runners, the error model and settings loaded once per task (issue 8), without a VM."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from recording import RecordingConnection

from entelab import certs, errors, health, hostrun, lab, state, task_bodies
from entelab.guest import Guest

PROBE_ANSWER = json.dumps({"status": 200, "serial": "0A", "san": [], "headers": [], "body": "",
                           "ehlo_plain": "250-STARTTLS", "ehlo_tls": "250 AUTH PLAIN",
                           "auth_before_tls": [530, "STARTTLS first"]})


def guest_answer(cmd: str) -> object:
    if "docker inspect" in cmd:             # the stack: seven healthy containers
        from test_stack_data import HEALTHY
        return json.dumps(HEALTHY)
    if "is-active" in cmd:
        return "active\n"
    if "base64" in cmd:                     # a Python probe
        return PROBE_ANSWER + "\n"
    if "rc.d/rc.$s status" in cmd:
        return "dnsmasq running\npostfix running\n"
    if "acme-root.pem" in cmd:
        return "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    if "openssl x509" in cmd:
        return "serial=0A\n"
    return ""


# ---------------------------------------------------------------- settings once per task
@pytest.fixture
def recorded_up(empty_checkout, monkeypatch):
    """task_bodies.up with everything outside the guest stubbed; returns the guest's recorder."""
    monkeypatch.setattr(state, "ROOT", empty_checkout)
    rec = RecordingConnection(guest_answer)
    calls: list[str] = []
    from entelab import accel, converge, host, vm
    from entelab import box as boxmod
    monkeypatch.setattr(host, "prepare", lambda p, **k: calls.append("prepare"))
    monkeypatch.setattr(boxmod, "build", lambda p, **k: calls.append("box"))
    monkeypatch.setattr(accel, "probe", lambda p, **k: "qemu")
    monkeypatch.setattr(vm, "up", lambda p: calls.append("vm.up"))
    monkeypatch.setattr(vm, "check_network_free", lambda p, net, avoid=(): calls.append(f"net {net}"))
    monkeypatch.setattr(converge, "converge", lambda g, p: calls.append("converge"))
    monkeypatch.setattr(lab, "guest", lambda p: Guest(rec))
    return rec, calls


def test_set_domain_reaches_smoke_check_and_certificates(recorded_up):
    rec, calls = recorded_up
    task_bodies.up(["domain=other.lan"])
    assert calls == ["prepare", "net 192.168.121.0/24", "box", "vm.up", "converge"]
    seen = "\n".join(rec.decoded())
    rendered = (state.paths(state.ROOT).rendered / "etc/dehydrated/domains.txt").read_text()
    assert "ente.other.lan" in rendered
    assert "ente-lab-acme-refresh" in seen            # certificates were issued in the guest
    assert "dig +short" in seen and "ente.other.lan" in seen   # the smoke check asked for other.lan
    assert "darkstar.lan" not in seen, [c for c in rec.decoded() if "darkstar" in c]
    assert "/etc/rc.d/rc.ente status" in seen        # the stack was checked (and found running)


def test_renew_uses_the_tasks_settings(empty_checkout, monkeypatch):
    monkeypatch.setattr(state, "ROOT", empty_checkout)
    rec = RecordingConnection(guest_answer)
    monkeypatch.setattr(lab, "guest", lambda p: Guest(rec))
    task_bodies.renew(["domain=other.lan"])
    servernames = [c for c in rec.commands if "-servername" in c]
    assert servernames and all("other.lan" in c for c in servernames)
    assert any("/etc/dehydrated/certs/other.lan/cert.pem" in c for c in rec.commands)


# ---------------------------------------------------------------- guest runner
def test_guest_runs_as_root_counts_round_trips_and_redacts():
    rec = RecordingConnection(lambda cmd: (3, "", "bad password s3cr3t-value"))
    g = Guest(rec, secrets=["s3cr3t-value"])
    with pytest.raises(errors.GuestCommandError) as err:
        g.run("testsaslauthd -p s3cr3t-value")
    assert rec.commands == ["sudo -n sh -c 'testsaslauthd -p s3cr3t-value'"]
    assert err.value.exited == 3
    assert "s3cr3t-value" not in str(err.value) and "<secret>" in err.value.message
    assert g.round_trips == 1
    assert g.run("true", check=False, sudo=False).exited == 3
    assert rec.commands[-1] == "true" and g.round_trips == 2


def test_guest_python_ships_program_and_parses_its_answer():
    seen = {}

    def answer(cmd):
        seen["cmd"] = cmd
        return 'noise\n{"ok": true}\n'

    g = Guest(RecordingConnection(answer))
    assert g.python("print(1)", {"a": 1}) == {"ok": True}
    assert seen["cmd"].startswith("python3 -c ")
    assert g.python("print(1)", {"a": 1}, netns="outside") == {"ok": True}
    assert "ip netns exec outside python3" in seen["cmd"] and seen["cmd"].startswith("sudo -n sh -c")


def test_guest_python_without_json_is_an_error():
    g = Guest(RecordingConnection(lambda cmd: "not json\n"))
    with pytest.raises(errors.GuestCommandError, match="no JSON answer"):
        g.python("print(1)", name="probe X")


# ---------------------------------------------------------------- host runner
def test_host_run_logs_and_raises_with_the_log(tmp_path):
    log = tmp_path / "x.log"
    res = hostrun.run(["sh", "-c", "echo hello"], log=log)
    assert res.ok and "$ sh -c 'echo hello'\nhello\n" in log.read_text()
    with pytest.raises(errors.HostCommandError) as err:
        hostrun.run(["sh", "-c", "echo boom >&2; exit 4"], log=log, hint="look here")
    assert err.value.exited == 4 and err.value.log == str(log) and err.value.hint == "look here"
    assert "boom" in log.read_text()


def test_host_run_captures_and_reports_missing_programs():
    res = hostrun.run(["sh", "-c", "echo out; echo err >&2; exit 2"], check=False)
    assert (res.exited, res.stdout, res.stderr) == (2, "out\n", "err\n")
    with pytest.raises(errors.HostCommandError, match="exited 127"):
        hostrun.run(["no-such-program-ente-lab"])


def test_certs_hint_names_the_failed_hook_check():
    out = "ente-lab hook: check FAILED: postfix check (exit status of: sudo -n postfix check)"
    assert "postfix check" in certs.failure_hint(out) and "pebble" not in certs.failure_hint(out)
    assert "pebble.log" in certs.failure_hint("curl: (7) Failed to connect to 127.0.0.1 port 14000")


# ---------------------------------------------------------------- error model / exit codes
def _invoke(root, *args: str, env=None):
    import os
    return subprocess.run([sys.executable, "-m", "invoke", "-r", str(root), *args], cwd=root,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_exit_code_2_for_bad_input_printed_once():
    from entelab.state import ROOT
    res = _invoke(ROOT, "lab.settings", "--set", "vm.memry=4096")
    assert res.returncode == errors.EXIT_BAD_INPUT
    assert res.stdout.count("vm.memry: unknown setting") == 1
    assert "Traceback" not in res.stdout + res.stderr


def test_exit_code_1_for_a_failed_stage_printed_once(monkeypatch, capsys):
    def failing():
        from entelab.progress import stage
        with stage("demo stage", hint="read demo.log"):
            raise errors.HostCommandError("demo", 3, "boom")

    with pytest.raises(SystemExit) as ex:
        task_bodies.run(failing)
    out = capsys.readouterr().out
    assert ex.value.code == errors.EXIT_FAILED
    assert out.count("exited 3") == 1 and out.count("next: read demo.log") == 1


def test_exit_code_70_for_a_bug_logs_the_traceback(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("ENTE_LAB_HOME", str(tmp_path))

    def buggy():
        raise KeyError("oops")

    with pytest.raises(SystemExit) as ex:
        task_bodies.run(buggy)
    out = capsys.readouterr().out
    assert ex.value.code == errors.EXIT_INTERNAL
    log = tmp_path / "logs" / "internal-error.log"
    assert str(log) in out.replace("\n", "") and "Traceback" not in out
    assert "KeyError: 'oops'" in log.read_text()


def test_exit_code_130_when_interrupted(capsys):
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as ex:
        task_bodies.run(interrupted)
    assert ex.value.code == errors.EXIT_INTERRUPTED


def test_template_bug_does_not_blame_the_settings():
    err = errors.TemplateError(["templates/x.j2: reload 'bogus' unknown"])
    assert "settings.local.yaml" not in err.message and "bug" in err.message


def test_smoke_takes_its_names_from_the_settings_it_is_given():
    from entelab.settings import load_settings
    s = load_settings(state.ROOT, ["domain=elsewhere.lan"],
                      local_file=state.ROOT / "tests" / "no-such-settings.yaml")[0]
    rec = RecordingConnection(guest_answer)
    health.smoke(Guest(rec), s)
    assert any("ente.elsewhere.lan" in c for c in rec.decoded())


def test_up_of_a_suspended_lab_resumes_it_first(recorded_up, monkeypatch):
    """lab.up on a suspended lab resumes it (clock corrected) before Vagrant sees it."""
    from entelab import snapshot
    _, calls = recorded_up
    monkeypatch.setattr(snapshot, "dominfo", lambda p: {"state": "shut off", "managed save": "yes"})
    monkeypatch.setattr(snapshot, "resume", lambda p, s: calls.append(f"resume {s.domain}"))
    task_bodies.up([])
    assert calls == ["prepare", "net 192.168.121.0/24", "box", "resume darkstar.lan", "vm.up", "converge"]
