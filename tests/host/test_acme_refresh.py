"""ente-lab-acme-refresh: the guest script that re-registers dehydrated after pebble restarts.

The full path (pebble + Apache + dehydrated) runs in the VM tests; here the
script's decisions are checked with a stub `sudo` that records what it would run.
"""

import os
import subprocess
from pathlib import Path

import pytest

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
    marker = tmp_path / "pebble.started"
    return {"base": base, "log": log, "marker": marker,
            "env": {**os.environ, "ACME_CONF": str(conf), "PEBBLE_MARKER": str(marker),
                    "ACME_REFRESH_LOCK": str(tmp_path / "lock"),
                    "PATH": f"{bindir}:{os.environ['PATH']}"}}


def run(env, *args):
    return subprocess.run([str(SCRIPT), *args], env=env["env"], capture_output=True, text=True)


def calls(env):
    return env["log"].read_text().splitlines() if env["log"].exists() else []


def test_refuses_without_pebble(env):
    res = run(env)
    assert res.returncode == 1 and "pebble is not running" in res.stderr
    assert calls(env) == []


def test_registers_and_forces_after_a_pebble_start_then_plain_cron(env):
    env["marker"].write_text("start 1\n")
    res = run(env)
    assert res.returncode == 0, res.stderr
    c = calls(env)
    assert c[0].endswith("--register --accept-terms") and c[1].endswith("--cron --force")
    env["log"].unlink()
    assert run(env).returncode == 0
    assert [x.split(" -f ")[1].split(" ", 1)[1] for x in calls(env)] == ["--cron"]
    env["log"].unlink()
    env["marker"].write_text("start 2\n")          # pebble restarted: new root, accounts gone
    run(env)
    assert calls(env)[0].endswith("--register --accept-terms")


def test_nothing_to_do_before_converge(env):
    (env["base"] / "config").unlink()
    res = run(env)
    assert res.returncode == 0 and "nothing to do" in res.stdout and calls(env) == []
