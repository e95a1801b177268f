"""Snapshots and suspend/resume (issue 11).

Break the lab after the run's pristine snapshot, restore it, and prove everything
is back, from the host too (TLS on the VM's own lab network, verified with the
root the restore republished). Suspend and resume keep pebble's process (same
root), set the clock, and a forced renewal still works. Listing and forgetting
snapshots, the cap and the name grammar.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
import uuid

import pytest

from entelab import certs, snapshot
from entelab.errors import LabError
from entelab.guest import Guest

pytestmark = pytest.mark.vm

LABCTL = [sys.executable, "-m", "invoke"]


def guest_state(g: Guest, conf) -> dict:
    return {
        "main.cf": g.run("sha256sum /etc/postfix/main.cf", check=False).stdout.split(" ")[0],
        "postfix": g.run("/etc/rc.d/rc.postfix status", check=False).ok,
        "root": g.read(certs.GUEST_ROOT),
        "marker": g.read(certs.PEBBLE_MARKER),
        "pebble_pid": g.run("pgrep -o -x pebble", check=False).stdout.strip(),
        "fullchain": g.run(f"readlink -f {conf.basedir}/certs/{conf.domain}/fullchain.pem").stdout,
    }


def host_tls(paths, settings, addr: str) -> str:
    return snapshot.host_tls_serial(addr, settings.api_host, paths.home / "acme-root.pem")


def host_starttls(paths, settings, addr: str) -> str:
    """SMTP submission (587) from the host: EHLO, STARTTLS, verify with the published root."""
    ctx = ssl.create_default_context(cafile=str(paths.home / "acme-root.pem"))
    with socket.create_connection((addr, 587), timeout=30) as raw:
        f = raw.makefile("rb")

        def reply() -> str:
            lines = []
            while True:
                line = f.readline().decode()
                lines.append(line)
                if line[3:4] != "-":
                    return "".join(lines)

        assert reply().startswith("220")
        raw.sendall(b"EHLO host.test\r\n")
        assert "STARTTLS" in reply()
        raw.sendall(b"STARTTLS\r\n")
        assert reply().startswith("220")
        with ctx.wrap_socket(raw, server_hostname=settings.mail_host) as tls:
            return str((tls.getpeercert() or {}).get("serialNumber"))


def test_restore_brings_back_a_broken_lab(pristine, paths, settings):
    conf = certs.dehydrated_conf(settings)
    # start from the snapshot itself: an earlier test may have left the lab working but
    # changed (a renewal's new certificate), which the restore would rightly undo
    pristine.restore()
    with Guest.reach(paths) as g:
        before = guest_state(g, conf)
        addr = snapshot.address(g)
        token = uuid.uuid4().hex
        g.run(f"echo {token} > /root/after-snapshot")
    serial = host_tls(paths, settings, addr)
    assert before["postfix"] and before["main.cf"]

    # break: Postfix stopped, a file under /etc/postfix deleted, another certificate served
    with Guest.reach(paths) as g:
        g.run("/etc/rc.d/rc.postfix stop; rm -f /etc/postfix/main.cf")
        d = f"{conf.basedir}/certs/{conf.domain}"
        g.run(f"cd {d} && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN={settings.api_host} "
              f"-keyout evil-key.pem -out evil-cert.pem 2>/dev/null && "
              "ln -sf evil-cert.pem fullchain.pem && ln -sf evil-key.pem privkey.pem && "
              "apachectl -k graceful && sleep 2")
        assert not g.run("/etc/rc.d/rc.postfix status", check=False).ok
        assert g.run("test -e /etc/postfix/main.cf", check=False).exited == 1
    with pytest.raises(ssl.SSLCertVerificationError):
        host_tls(paths, settings, addr)

    result = pristine.restore()

    assert abs(result["skew"]) < 5
    with Guest.reach(paths) as g:
        after = guest_state(g, conf)
        assert g.run("test -e /root/after-snapshot", check=False).exited == 1, "disk not rolled back"
        assert abs(snapshot.clock_skew(g)) < 5
        assert g.run("/etc/rc.d/rc.M status", check=False).ok
    assert after == before
    assert (paths.home / "acme-root.pem").read_text() == after["root"]
    assert host_tls(paths, settings, addr) == serial
    assert host_starttls(paths, settings, addr) == serial


@pytest.mark.budget(70)    # reference seconds (187.5 s at x2.78, 2026-11-30): tests/vm/conftest.py's time budget
def test_suspend_resume_keeps_pebble_and_renewals_work(pristine, paths, settings):
    conf = certs.dehydrated_conf(settings)
    with Guest.reach(paths) as g:
        before = guest_state(g, conf)
    pristine.guest.close()

    snapshot.suspend(paths)
    di = snapshot.dominfo(paths)
    assert di["state"] == "shut off" and snapshot.suspended(di)
    assert snapshot.save_file(paths).stat().st_size > 0
    time.sleep(10)          # the guest clock must be corrected, not just "still close"
    snapshot.resume(paths, settings)
    assert snapshot.dominfo(paths)["state"] == "running"
    assert not snapshot.suspended(snapshot.dominfo(paths))

    with Guest.reach(paths) as g:
        after = guest_state(g, conf)
        assert abs(snapshot.clock_skew(g)) < 5
        # the same pebble process: same root, same start marker
        assert after["pebble_pid"] == before["pebble_pid"] != ""
        assert after["root"] == before["root"] and after["marker"] == before["marker"]
        assert (paths.home / "acme-root.pem").read_text() == before["root"]
        r = certs.renew_with(g, paths, settings)
        assert r["after"]["apache"] == r["after"]["postfix"] == r["after"]["file"] != r["before"]["apache"]
        addr = snapshot.address(g)
    assert host_tls(paths, settings, addr).upper() == r["after"]["file"].upper()


def test_snapshots_lists_and_forget_frees_space(pristine, paths, settings):
    vol = snapshot.volume_path(paths)
    base = snapshot.allocated(vol)
    snapshot.snapshot(paths, "t-forget")
    try:
        listed = {s.name: s for s in snapshot.list_snapshots(paths)}
        assert {"pristine", "t-forget"} <= set(listed)
        assert listed["t-forget"].state == "running"
        memory = listed["t-forget"].memory
        assert memory > 64 * 2**20
        grown = snapshot.allocated(vol)
        assert grown > base
        out = subprocess.run([*LABCTL, "lab.snapshots"], cwd=paths.root, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "t-forget" in out.stdout and "pristine" in out.stdout and "MiB" in out.stdout
        # restored once: the running disk then references its memory image too,
        # and forget must still give the space back
        snapshot.restore(paths, "t-forget", settings)
        pristine.guest.close()
    finally:
        freed = snapshot.forget(paths, "t-forget")
    assert "t-forget" not in snapshot.names(paths)
    assert freed >= memory // 2
    assert snapshot.allocated(vol) <= grown - memory // 2
    assert snapshot.RELEASE not in snapshot.names(paths)


def test_cap_refuses_with_a_hint(pristine, paths, monkeypatch):
    have = snapshot.names(paths)
    monkeypatch.setenv("ENTE_LAB_MAX_SNAPSHOTS", str(len(have)))
    with pytest.raises(LabError) as err:
        snapshot.snapshot(paths, "one-too-many")
    assert "cap" in err.value.message and "lab.forget" in err.value.hint
    assert snapshot.names(paths) == have


def test_cli_errors_are_messages_not_tracebacks(pristine, paths):
    for args, code, text in ((["lab.restore", "no-such-snapshot"], 2, "no snapshot 'no-such-snapshot'"),
                             (["lab.snapshot", "Bad/Name"], 2, "invalid snapshot name"),
                             (["lab.snapshot", "pristine"], 2, "already exists"),
                             (["lab.resume"], 0, "not suspended")):
        out = subprocess.run([*LABCTL, *args], cwd=paths.root, capture_output=True, text=True,
                             timeout=120)
        both = out.stdout + out.stderr
        assert out.returncode == code, both
        assert text in both and "Traceback" not in both
        if code:
            assert "next:" in both
