"""dnsmasq (article: "DNS serving local IPs"): syntax by the real dnsmasq,
then a live dnsmasq on 127.0.0.1:<high port> answering from the rendered
/etc/hosts block, forwarding nothing."""

from __future__ import annotations

import random
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import need


def test_dnsmasq_syntax(rendered):
    res = subprocess.run([need("dnsmasq"), "--test", "-C", str(rendered.path("/etc/dnsmasq.conf"))],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "syntax check OK" in res.stderr + res.stdout


def test_dnsmasq_facts(rendered):
    s = rendered.settings
    lines = [ln for ln in rendered.text("/etc/dnsmasq.conf").splitlines() if ln and not ln.startswith("#")]
    for want in ("listen-address=127.0.0.1", f"listen-address={s.docker.gateway}", "no-resolv",
                 "domain-needed", "bogus-priv", f"local=/{s.domain}/", f"local=/{s.docker.network}/"):
        assert want in lines, want
    assert not any(ln.startswith(("server=", "resolv-file=", "no-hosts")) for ln in lines)
    assert "bind-dynamic" in lines and "bind-interfaces" not in lines   # mutually exclusive


def query(port: int, name: str, qtype: int = 1) -> tuple[int, list[str]]:
    """Minimal DNS client: returns (rcode, A records)."""
    qid = random.randint(0, 0xFFFF)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    q += struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(q, ("127.0.0.1", port))
        data, _ = sock.recvfrom(4096)
    rid, flags, qd, an, _, _ = struct.unpack(">HHHHHH", data[:12])
    assert rid == qid
    pos = 12
    for _ in range(qd):
        while data[pos]:
            pos += data[pos] + 1
        pos += 5
    out = []
    for _ in range(an):
        if data[pos] & 0xC0 == 0xC0:
            pos += 2
        else:
            while data[pos]:
                pos += data[pos] + 1
            pos += 1
        rtype, _, _, rdlen = struct.unpack(">HHIH", data[pos:pos + 10])
        pos += 10
        if rtype == 1:
            out.append(socket.inet_ntoa(data[pos:pos + rdlen]))
        elif rtype == 12:
            labels, p = [], pos
            while data[p] and data[p] & 0xC0 != 0xC0:
                labels.append(data[p + 1:p + 1 + data[p]].decode())
                p += data[p] + 1
            out.append(".".join(labels))
        pos += rdlen
    return flags & 0xF, out


@pytest.fixture
def live_dnsmasq(rendered):
    # dnsmasq reads its hosts files after dropping root: world-readable path
    tmp_path = Path(tempfile.mkdtemp(prefix="entelab-dnsmasq-"))
    tmp_path.chmod(0o755)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    hosts = tmp_path / "hosts"
    hosts.write_text(rendered.text("/etc/hosts"))
    hosts.chmod(0o644)
    proc = subprocess.Popen([need("dnsmasq"), "-k", "-C", str(rendered.path("/etc/dnsmasq.conf")),
                             "-p", str(port), "--no-hosts", f"--addn-hosts={hosts}",
                             f"--pid-file={tmp_path}/dnsmasq.pid", "--log-facility=-"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(50):
            try:
                query(port, rendered.settings.domain)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail("dnsmasq exited: " + proc.stdout.read())
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_live_answers_from_hosts_and_forwards_nothing(rendered, live_dnsmasq):
    s, port = rendered.settings, live_dnsmasq
    assert query(port, f"ente-museum.{s.docker.network}") == (0, [s.docker.museum_ip])
    assert query(port, s.api_host) == (0, ["127.0.1.1"])
    # several addresses for the mail host: a query arriving on loopback gets
    # only the loopback one (localise-queries)
    assert query(port, s.mail_host) == (0, ["127.0.1.1"])
    # reverse lookup of Museum's fixed address (what an MTA does)
    rev = ".".join(reversed(s.docker.museum_ip.split("."))) + ".in-addr.arpa"
    rcode, names = query(port, rev, qtype=12)
    assert rcode == 0 and names[0] == "ente-museum"
    # unknown lab names: NXDOMAIN, answered locally
    assert query(port, f"nosuch.{s.domain}")[0] == 3
    # outside names are not forwarded anywhere (no upstream): REFUSED/SERVFAIL
    assert query(port, "example.com")[0] in (2, 5)
