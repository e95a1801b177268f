"""ente-lab-acme-refresh: the guest script that re-registers dehydrated after pebble restarts.

The full path (pebble + Apache + dehydrated) runs in the VM tests; here the
script's decisions are checked with a stub `sudo` that records what it would run.
"""

import os
import subprocess
from pathlib import Path

import pytest
from conftest import serve_under_new_ca

SCRIPT = Path(__file__).resolve().parents[2] / "provision/guest/overlay/usr/local/sbin/ente-lab-acme-refresh"


@pytest.fixture
def env(tmp_path):
    base = tmp_path / "dehydrated"
    base.mkdir()
    (base / "config").write_text("CA=x\n")
    conf = tmp_path / "acme.conf"
    conf.write_text(f"ACME_USER=root\nBASEDIR={base}\nWELLKNOWN={tmp_path}/wk\nCHAINCACHE={tmp_path}/chains\nSTATEDIR={tmp_path}/state\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls"
    (bindir / "sudo").write_text(f"#!/bin/sh\necho \"$*\" >> {log}\n")
    (bindir / "sudo").chmod(0o755)
    (bindir / "rc.pebble").write_text(f"#!/bin/sh\necho \"rc.pebble $*\" >> {log}\n")
    (bindir / "rc.pebble").chmod(0o755)
    marker = tmp_path / "pebble.started"
    lab = tmp_path / "ente-lab"
    lab.mkdir()
    return {"base": base, "log": log, "marker": marker, "lab": lab, "done": tmp_path / "refresh.done",
            "cron_done": tmp_path / "cron.done",
            "sudo": bindir / "sudo",
            "env": {**os.environ, "ACME_CONF": str(conf), "PEBBLE_MARKER": str(marker),
                    "ACME_REFRESH_LOCK": str(tmp_path / "lock"), "ENTE_LAB_DIR": str(lab),
                    "ACME_REFRESH_DONE": str(tmp_path / "refresh.done"),
                    "ACME_CRON_DONE": str(tmp_path / "cron.done"),
                    "RC_PEBBLE": str(bindir / "rc.pebble"),
                    "PATH": f"{bindir}:{os.environ['PATH']}"}}


def serve_cert(env, name: str = "lab.example") -> bytes:
    """A served certificate under a fresh root (conftest.serve_under_new_ca): its root's PEM."""
    return serve_under_new_ca(env["base"] / "certs", name)[0]


def dehydrated_args(env) -> list[str]:
    return [x.split(" -f ")[1].split(" ", 1)[1] for x in calls(env) if " -f " in x]


def run(env, *args):
    return subprocess.run([str(SCRIPT), *args], env=env["env"], capture_output=True, text=True)


def calls(env):
    return env["log"].read_text().splitlines() if env["log"].exists() else []


def test_refuses_without_pebble(env):
    res = run(env)
    assert res.returncode == 1 and "pebble is not running" in res.stderr
    assert calls(env) == []


def test_registers_after_a_pebble_start_without_forcing_then_plain_cron(env):
    """No served certificate yet: register, then a plain --cron (it issues what is missing);
    one root in the lab's bundle: nothing to re-publish."""
    env["marker"].write_text("start 1\n")
    res = run(env)
    assert res.returncode == 0, res.stderr
    c = calls(env)
    assert len(c) == 2 and c[0].endswith("--register --accept-terms") and c[1].endswith("--cron")
    env["log"].unlink()
    assert run(env).returncode == 0
    assert dehydrated_args(env) == ["--cron"]
    env["log"].unlink()
    env["marker"].write_text("start 2\n")          # pebble restarted: accounts gone
    run(env)
    assert calls(env)[0].endswith("--register --accept-terms")


def test_a_served_certificate_under_a_kept_root_is_not_reissued_after_a_pebble_restart(env):
    """The boot's cut (issue 11): rc.pebble kept the retired root the served certificate
    chains to, so the refresh registers again and renews only when due."""
    import trustme
    current = trustme.CA().cert_pem.bytes()              # the new pebble's root, first
    (env["lab"] / "acme-root.pem").write_bytes(current + serve_cert(env))
    env["marker"].write_text("start 2\n")
    res = run(env)
    assert res.returncode == 0, res.stderr
    assert dehydrated_args(env) == ["--register --accept-terms", "--cron"]
    assert "still verify (retired root kept): no re-issue" in res.stdout
    # a retired root is in the bundle: re-published after dehydrated (rc.pebble drops it
    # once nothing chains to it)
    assert calls(env)[-1] == "rc.pebble reload"


def test_a_served_certificate_no_trusted_root_anchors_is_reissued(env):
    """A certificate under a root the lab no longer trusts (a lab from before the kept
    roots, or a lost bundle) is forced anew after the registration; --force as asked too."""
    serve_cert(env)
    import trustme
    (env["lab"] / "acme-root.pem").write_bytes(trustme.CA().cert_pem.bytes())
    env["marker"].write_text("start 3\n")
    res = run(env)
    assert res.returncode == 0, res.stderr
    assert dehydrated_args(env) == ["--register --accept-terms", "--cron --force"]
    assert "does not chain to a root the lab trusts: re-issuing" in res.stdout
    env["log"].unlink()
    assert run(env, "--force").returncode == 0
    assert dehydrated_args(env) == ["--cron --force"]


def test_nothing_to_do_before_converge(env):
    (env["base"] / "config").unlink()
    res = run(env)
    assert res.returncode == 0 and "nothing to do" in res.stdout and calls(env) == []


def test_if_stale_skips_only_a_recent_good_run_of_the_same_inputs(env):
    """lab.up right after a boot: ``--if-stale`` does nothing when this boot's run (rc.M's)
    ended well minutes ago and nothing it reads changed; any change, an old or failed run,
    or another pebble start runs dehydrated again."""
    env["marker"].write_text("start 1\n")
    (env["base"] / "domains.txt").write_text("api.lab.example mail.lab.example\n")
    assert run(env).returncode == 0                              # the boot's run
    env["log"].unlink()

    res = run(env, "--if-stale")
    assert res.returncode == 0 and "not run again" in res.stdout, res.stdout
    assert calls(env) == []

    (env["base"] / "domains.txt").write_text("api.lab.example mail.lab.example web.lab.example\n")
    assert run(env, "--if-stale").returncode == 0                # a new name: dehydrated runs
    assert dehydrated_args(env) == ["--cron"]
    env["log"].unlink()
    assert run(env, "--if-stale").returncode == 0 and calls(env) == []

    old = env["done"].stat().st_mtime - 11 * 60                  # the run is too old to count
    os.utime(env["done"], (old, old))
    assert run(env, "--if-stale").returncode == 0
    assert dehydrated_args(env) == ["--cron"]
    env["log"].unlink()

    env["sudo"].write_text(f"#!/bin/sh\necho \"$*\" >> {env['log']}\nexit 1\n")   # dehydrated fails
    assert run(env).returncode == 1 and not env["done"].exists()
    env["sudo"].write_text(f"#!/bin/sh\necho \"$*\" >> {env['log']}\n")
    env["log"].unlink()
    assert run(env, "--if-stale").returncode == 0
    assert dehydrated_args(env) == ["--cron"]
    env["log"].unlink()

    env["marker"].write_text("start 2\n")                       # pebble started again
    assert run(env, "--if-stale").returncode == 0
    assert [a.split()[0] for a in dehydrated_args(env)] == ["--register", "--cron"]


def test_boot_runs_cron_only_when_a_certificate_is_due_or_an_input_changed(env):
    """rc.M's ``--boot`` (issue 11): after the registration, ``dehydrated --cron`` is left out
    when it would renew nothing (dehydrated's own ``-checkend RENEW_DAYS`` test and the
    inputs of its last good run); a due certificate, a changed name list or config, a
    forced re-issue or no earlier good run all run it as before."""
    import datetime

    import trustme
    (env["base"] / "config").write_text('CA=x\nRENEW_DAYS="30"\n')
    (env["base"] / "domains.txt").write_text("lab.example\n")
    current = trustme.CA().cert_pem.bytes()              # the new pebble's root, first
    (env["lab"] / "acme-root.pem").write_bytes(current + serve_cert(env))

    env["marker"].write_text("start 1\n")
    assert run(env, "--boot").returncode == 0           # no earlier good --cron: it runs
    assert dehydrated_args(env) == ["--register --accept-terms", "--cron"]
    assert env["cron_done"].exists()
    env["log"].unlink()

    env["marker"].write_text("start 2\n")              # the next boot: registers, no --cron
    res = run(env, "--boot")
    assert res.returncode == 0, res.stderr
    assert dehydrated_args(env) == ["--register --accept-terms"]
    assert "no certificate expires within RENEW_DAYS" in res.stdout and "not run at boot" in res.stdout
    env["log"].unlink()
    res = run(env, "--if-stale")                        # lab.up after it: nothing again
    assert res.returncode == 0 and "not run again" in res.stdout and calls(env) == []

    (env["base"] / "domains.txt").write_text("lab.example www.lab.example\n")   # a new name
    env["marker"].write_text("start 3\n")
    assert run(env, "--boot").returncode == 0
    assert dehydrated_args(env)[-1] == "--cron"
    env["log"].unlink()

    # a certificate that expires in 10 days (RENEW_DAYS 30): due, so --cron renews it
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=10)
    root, _ = serve_under_new_ca(env["base"] / "certs", "lab.example", not_after=soon)
    (env["lab"] / "acme-root.pem").write_bytes(current + root)
    assert run(env).returncode == 0                     # a good --cron stamps this state...
    env["log"].unlink()
    env["marker"].write_text("start 4\n")
    res = run(env, "--boot")                            # ...yet the boot renews: it is due
    assert dehydrated_args(env)[-1] == "--cron", res.stdout
    assert "cert.pem expires within RENEW_DAYS" in res.stdout
    env["log"].unlink()
    (env["base"] / "config").write_text('CA=x\nRENEW_DAYS="5"\n')   # renew later: not due, but
    env["marker"].write_text("start 5\n")                            # the config changed
    assert run(env, "--boot").returncode == 0 and dehydrated_args(env)[-1] == "--cron"
    env["log"].unlink()
    env["marker"].write_text("start 6\n")
    assert run(env, "--boot").returncode == 0 and dehydrated_args(env) == ["--register --accept-terms"]
    env["log"].unlink()

    # a failed --cron leaves no stamp of its own: the next boot runs it again
    env["cron_done"].unlink()
    env["marker"].write_text("start 7\n")
    env["sudo"].write_text(f"#!/bin/sh\necho \"$*\" >> {env['log']}\ncase \"$*\" in *--cron*) exit 1;; esac\n")
    assert run(env, "--boot").returncode == 1 and not env["cron_done"].exists()
