"""Host tests for the guest's Slackware-style rc.d layer (provision/guest).

Static: every shell script parses (bash -n, and sh -n for the POSIX ones) and is
shellcheck-clean. Behaviour: the rc scripts are run natively on this host
against the real daemons (dnsmasq, saslauthd, Postfix, Apache, pebble, dockerd
when installed) with temporary configurations on loopback and non-default
ports, through the scripts' override variables, so nothing of the host's own
configuration is touched. Every daemon started here is stopped again.
"""

from __future__ import annotations

import http.client
import os
import random
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from entelab import vocab

ROOT = Path(__file__).resolve().parents[2]
GUEST = ROOT / "provision" / "guest"
OVERLAY = GUEST / "overlay"
RC_D = OVERLAY / "etc" / "rc.d"
RC_FUNCTIONS = OVERLAY / "usr" / "local" / "lib" / "ente-lab" / "rc.functions"
SERVICES = list(vocab.SERVICE_NAMES)

SHELL_FILES = sorted(
    [p for p in RC_D.glob("rc.*")]
    + [RC_FUNCTIONS, GUEST / "setup.sh", GUEST / "chroot-smoke.sh",
       GUEST / "nspawn-boot-smoke.sh",
       OVERLAY / "etc" / "dhcp" / "dhclient-enter-hooks.d" / "ente-lab-keep-resolv"]
    + list((ROOT / "provision" / "box").glob("*.sh"))     # the box recipe's hooks
)

is_root = os.geteuid() == 0
# Accepted reason: these tests start real daemons (dnsmasq, saslauthd, Postfix,
# Apache, pebble) on loopback and must run as root; CI and `./labctl test.all` do.
needs_root = pytest.mark.skipif(not is_root, reason="starts real daemons on loopback: run as root "
                                "(CI and ./labctl test.all do)")


@pytest.fixture
def pubtmp():
    """A temp dir the daemons' unprivileged users (nobody, postfix, www-data) can
    traverse; pytest's tmp_path lives under a 0700 directory."""
    d = Path(tempfile.mkdtemp(prefix="rc-test."))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def need(*tools: str) -> None:
    """Missing means the host is not prepared: fail (test.all installs them), never skip."""
    for t in tools:
        if not (shutil.which(t) or Path(t).exists()):
            pytest.fail(f"{t} is not installed; ./labctl test.all installs the host test tools")


def pebble_env(base: Path, trust_crt: str = "") -> dict[str, str]:
    """rc.pebble's environment for a private pebble under ``base`` on free loopback
    ports; ``trust_crt`` empty: never touch this host's trust store."""
    return {
        "PEBBLE_DIR": str(base / "etc-pebble"),
        "PEBBLE_LISTEN": f"127.0.0.1:{free_port()}",
        "PEBBLE_MGMT": f"127.0.0.1:{free_port()}",
        "PEBBLE_PIDFILE": str(base / "pebble.pid"),
        "PEBBLE_LOG": str(base / "pebble.log"),
        "ENTE_LAB_DIR": str(base / "ente-lab"),
        "PEBBLE_MARKER": str(base / "run" / "pebble.started"),
        "PEBBLE_TRUST_CRT": trust_crt,
        "SERVED_CERTS": str(base / "served-certs"),
        "PEBBLE_DEFAULTS": "/nonexistent",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rc(script: str, action: str, env: dict[str, str], timeout: int = 120):
    full_env = {**os.environ, **env, "RC_FUNCTIONS": str(RC_FUNCTIONS)}
    try:
        return subprocess.run([str(RC_D / script), action], env=full_env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        # what was still running says which command hung (the rc script is killed next)
        ps = subprocess.run(["ps", "-eo", "pid,ppid,stat,etimes,wchan:24,args", "--forest"],
                            capture_output=True, text=True).stdout
        pytest.fail(f"{script} {action} did not finish within {timeout}s; it printed:\n"
                    f"{exc.stdout!r}\n{exc.stderr!r}\nprocesses at the timeout:\n{ps}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead (this host's PID 1 may reap late)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pid_from_status(out: str) -> int:
    # "X is running (pid N)"
    assert "is running (pid " in out, out
    return int(out.split("(pid ", 1)[1].split(")", 1)[0])


def assert_running(script: str, env: dict[str, str], name: str) -> int:
    r = rc(script, "status", env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith(f"{name} is running (pid "), r.stdout
    pid = pid_from_status(r.stdout)
    assert alive(pid)
    return pid


def assert_stopped(script: str, env: dict[str, str], name: str) -> None:
    r = rc(script, "status", env)
    assert r.returncode == 3, r.stdout + r.stderr
    assert r.stdout.strip() == f"{name} is not running"


def start_checked(name: str, env: dict[str, str]) -> int:
    """``rc.<name> start`` from stopped: succeeds and leaves ``name`` running; its pid."""
    assert_stopped(f"rc.{name}", env, name)
    r = rc(f"rc.{name}", "start", env)
    assert r.returncode == 0, r.stdout + r.stderr
    return assert_running(f"rc.{name}", env, name)


def restart_checked(name: str, env: dict[str, str], pid: int) -> int:
    """``rc.<name> restart``: succeeds and gives a daemon other than ``pid``; its pid."""
    r = rc(f"rc.{name}", "restart", env)
    assert r.returncode == 0, r.stdout + r.stderr
    new = assert_running(f"rc.{name}", env, name)
    assert new != pid
    return new


def stop_checked(name: str, env: dict[str, str], pid: int) -> None:
    """``rc.<name> stop``: succeeds, daemon ``pid`` is gone, status says stopped; a second
    stop succeeds too (idempotent)."""
    r = rc(f"rc.{name}", "stop", env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not alive(pid)
    assert_stopped(f"rc.{name}", env, name)
    assert rc(f"rc.{name}", "stop", env).returncode == 0


# ---------------------------------------------------------------- static checks
@pytest.mark.parametrize("path", SHELL_FILES, ids=lambda p: p.name)
def test_script_parses(path: Path):
    assert path.exists()
    r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    first = path.read_text().splitlines()[0]
    if first.startswith("#!/bin/sh") or "shell=sh" in path.read_text():
        r = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("path", SHELL_FILES, ids=lambda p: p.name)
def test_shellcheck_clean(path: Path):
    need("shellcheck")
    r = subprocess.run(["shellcheck", "-x", str(path)], capture_output=True, text=True,
                       cwd=path.parent)
    assert r.returncode == 0, r.stdout + r.stderr


def test_scripts_executable_in_git():
    """The box builder copies the overlay verbatim: modes must come from git."""
    out = subprocess.run(["git", "ls-files", "-s", "provision/guest"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    modes = {line.split()[3]: line.split()[0] for line in out.splitlines()}
    assert modes, "provision/guest must be tracked by git"
    for name in [f"rc.{s}" for s in SERVICES] + ["rc.M"]:
        assert modes.get(f"provision/guest/overlay/etc/rc.d/{name}") == "100755", name
    assert modes.get("provision/guest/setup.sh") == "100755"
    assert modes.get("provision/guest/overlay/usr/local/lib/ente-lab/rc.functions") == "100644"


@pytest.mark.parametrize("svc", SERVICES)
def test_every_rc_script_has_the_five_actions(svc: str):
    text = (RC_D / f"rc.{svc}").read_text()
    assert text.startswith("#!/bin/")
    assert "set -u" in text
    for action in ("start)", "stop)", "restart)", "reload", "status)"):
        assert action in text, f"rc.{svc} lacks {action}"
    code = [ln for ln in text.splitlines() if not ln.strip().startswith("#")]
    assert not [ln for ln in code if "systemctl" in ln], \
        f"rc.{svc} must manage the daemon directly, not via systemctl"
    r = rc(f"rc.{svc}", "bogus", {})
    assert r.returncode == 2 and "usage" in r.stderr


def test_unit_and_setup_agree():
    unit = (OVERLAY / "etc" / "systemd" / "system" / "rc-slackware.service").read_text()
    for line in ("Type=oneshot", "RemainAfterExit=yes", "ExecStart=/etc/rc.d/rc.M start",
                 "ExecStop=/etc/rc.d/rc.M stop", "After=network-online.target",
                 "WantedBy=multi-user.target"):
        assert line in unit
    setup = (GUEST / "setup.sh").read_text()
    for u in ("apache2.service", "apache-htcacheclean.service", "postfix.service",
              "postfix@-.service", "saslauthd.service", "docker.service", "docker.socket",
              "containerd.service", "dnsmasq.service"):
        assert u in setup, f"setup.sh does not mask {u}"
    quiet = re.search(r'^QUIET_UNITS="([^"]*)"', setup, re.M)
    assert quiet, "setup.sh names Debian's periodic jobs in QUIET_UNITS"
    assert {"e2scrub_reap.service", "e2scrub_all.timer", "apt-daily.timer"} <= set(quiet[1].split())
    assert 'for u in $QUIET_UNITS; do\n    mask_unit "$u"' in setup, "each one masked like the rest"
    rcm = (RC_D / "rc.M").read_text()
    assert "/etc/ente-lab/services" in rcm and "dnsmasq saslauthd" not in rcm, \
        "rc.M reads the one service list; it keeps no copy"
    dhc = (OVERLAY / "etc" / "dhcp" / "dhclient.conf").read_text()
    assert "supersede domain-name-servers 127.0.0.1;" in dhc


# ---------------------------------------------------------------- rc.M ordering
def _fake_rc_dir(tmp_path: Path, failing: str = "", disabled: str = "") -> Path:
    d = tmp_path / "rc.d"
    d.mkdir()
    log = tmp_path / "calls.log"
    for s in SERVICES:
        p = d / f"rc.{s}"
        rcode = 1 if s == failing else 0
        p.write_text(f"#!/bin/sh\necho \"{s} $1\" >> {log}\nexit {rcode}\n")
        p.chmod(0o644 if s == disabled else 0o755)
    shutil.copy(RC_D / "rc.M", d / "rc.M")
    (d / "services").write_text("# from entelab/vocab.py\n" + "\n".join(SERVICES) + "\n")
    return d


def test_rc_m_order_and_reverse(tmp_path: Path):
    d = _fake_rc_dir(tmp_path, disabled="docker")
    env = {**os.environ, "RC_DIR": str(d), "SERVICES_FILE": str(d / "services")}
    r = subprocess.run([str(d / "rc.M"), "start"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(d / "rc.M"), "stop"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    calls = (tmp_path / "calls.log").read_text().split("\n")
    order = ["dnsmasq", "saslauthd", "postfix", "pebble", "httpd", "ente"]   # docker disabled
    assert calls[:6] == [f"{s} start" for s in order]
    assert calls[6:12] == [f"{s} stop" for s in reversed(order)]
    r = subprocess.run([str(d / "rc.M"), "list"], env=env, capture_output=True, text=True)
    assert "docker disabled" in r.stdout and "httpd enabled" in r.stdout


def test_rc_m_failure_does_not_stop_the_rest(tmp_path: Path):
    d = _fake_rc_dir(tmp_path, failing="postfix")
    env = {**os.environ, "RC_DIR": str(d), "SERVICES_FILE": str(d / "services")}
    r = subprocess.run([str(d / "rc.M"), "start"], env=env, capture_output=True, text=True)
    assert r.returncode == 0
    assert "postfix" in r.stderr and "FAILED" in r.stderr
    calls = (tmp_path / "calls.log").read_text().split()
    assert "docker" in calls  # services after the failed one still started
    r = subprocess.run([str(d / "rc.M"), "start"], env={**env, "RC_M_STRICT": "1"},
                       capture_output=True, text=True)
    assert r.returncode == 1


# ---------------------------------------------------------------- dnsmasq
def dns_query(port: int, name: str, timeout: float = 2.0) -> list[str]:
    """Minimal DNS A query to 127.0.0.1:port; returns the IPv4 answers."""
    qid = random.randint(0, 0xFFFF)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    q += struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(q, ("127.0.0.1", port))
        data, _ = s.recvfrom(4096)
    _, flags, qd, an, _, _ = struct.unpack(">HHHHHH", data[:12])
    off = 12
    for _ in range(qd):  # skip question
        while data[off]:
            off += data[off] + 1
        off += 5
    answers = []
    for _ in range(an):
        if data[off] & 0xC0 == 0xC0:
            off += 2
        else:
            while data[off]:
                off += data[off] + 1
            off += 1
        rtype, _, _, rdlen = struct.unpack(">HHIH", data[off:off + 10])
        off += 10
        if rtype == 1:
            answers.append(socket.inet_ntoa(data[off:off + 4]))
        off += rdlen
    return answers


@pytest.fixture
def dnsmasq_env(pubtmp: Path):
    tmp_path = pubtmp
    need("/usr/sbin/dnsmasq")
    port = free_port()
    hosts = tmp_path / "hosts"
    hosts.write_text("172.21.0.5    ente-museum ente-museum.ente.lan\n")
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text(f"port={port}\nlisten-address=127.0.0.1\nbind-interfaces\nno-resolv\n"
                    f"no-hosts\naddn-hosts={hosts}\nlocal=/ente.lan/\n")
    env = {"DNSMASQ_CONF": str(conf), "DNSMASQ_PIDFILE": str(tmp_path / "dnsmasq.pid"),
           "_port": str(port), "_hosts": str(hosts)}
    yield env
    rc("rc.dnsmasq", "stop", env)


@needs_root
def test_rc_dnsmasq_lifecycle(dnsmasq_env):
    env = dnsmasq_env
    port = int(env["_port"])
    pid = start_checked("dnsmasq", env)
    assert dns_query(port, "ente-museum.ente.lan") == ["172.21.0.5"]
    assert dns_query(port, "nosuch.ente.lan") == []
    # start again: idempotent, same daemon
    r = rc("rc.dnsmasq", "start", env)
    assert r.returncode == 0 and "already running" in r.stdout
    assert assert_running("rc.dnsmasq", env, "dnsmasq") == pid
    # the article's "killall -HUP dnsmasq" (here: only our dnsmasq) re-reads hosts
    with open(env["_hosts"], "a") as f:
        f.write("172.21.0.6    ente-web.ente.lan\n")
    os.kill(pid, signal.SIGHUP)
    time.sleep(0.5)
    assert dns_query(port, "ente-web.ente.lan") == ["172.21.0.6"]
    assert assert_running("rc.dnsmasq", env, "dnsmasq") == pid
    with open(env["_hosts"], "a") as f:
        f.write("172.21.0.7    ente-cli.ente.lan\n")
    r = rc("rc.dnsmasq", "reload", env)
    assert r.returncode == 0, r.stderr
    time.sleep(0.5)
    assert dns_query(port, "ente-cli.ente.lan") == ["172.21.0.7"]
    assert assert_running("rc.dnsmasq", env, "dnsmasq") == pid
    # restart gives a new daemon
    pid2 = restart_checked("dnsmasq", env, pid)
    assert not alive(pid)
    stop_checked("dnsmasq", env, pid2)
    assert rc("rc.dnsmasq", "reload", env).returncode == 1  # nothing to reload


@needs_root
def test_rc_dnsmasq_refuses_broken_config(dnsmasq_env):
    Path(dnsmasq_env["DNSMASQ_CONF"]).write_text("no-such-option=1\n")
    r = rc("rc.dnsmasq", "start", dnsmasq_env)
    assert r.returncode == 1
    assert "dnsmasq --test" in r.stderr
    assert_stopped("rc.dnsmasq", dnsmasq_env, "dnsmasq")


# ---------------------------------------------------------------- saslauthd
@needs_root
def test_rc_saslauthd_lifecycle(pubtmp: Path):
    tmp_path = pubtmp
    need("/usr/sbin/saslauthd", "testsaslauthd")
    rundir = tmp_path / "saslauthd"
    env = {"SASLAUTHD_RUNDIR": str(rundir)}
    try:
        pid = start_checked("saslauthd", env)
        st = rundir.stat()
        assert oct(st.st_mode & 0o7777) == "0o710"
        import grp
        assert grp.getgrgid(st.st_gid).gr_name == "sasl"
        assert (rundir / "mux").is_socket()
        t = subprocess.run(["testsaslauthd", "-f", str(rundir / "mux"), "-u",
                            "nosuchuser-entelab", "-p", "x", "-s", "smtp"],
                           capture_output=True, text=True, timeout=30)
        assert 'NO "authentication failed"' in t.stdout  # daemon answered
        assert rc("rc.saslauthd", "start", env).returncode == 0
        assert assert_running("rc.saslauthd", env, "saslauthd") == pid
        assert rc("rc.saslauthd", "reload", env).returncode == 0
        pid2 = restart_checked("saslauthd", env, pid)
        stop_checked("saslauthd", env, pid2)
    finally:
        rc("rc.saslauthd", "stop", env)


# ---------------------------------------------------------------- postfix
def postfix_instance(base: Path) -> tuple[dict[str, str], int, Path]:
    """A private Postfix instance under ``base`` (its own queue, smtpd on a free
    loopback port, log in a file): rc.postfix's env, the port, the log."""
    need("/usr/sbin/postfix")
    (base / "etc").mkdir(parents=True)
    (base / "spool").mkdir()
    (base / "data").mkdir()
    base.chmod(0o755)
    shutil.chown(base / "data", "postfix")
    port = free_port()
    maillog = base / "maillog"
    (base / "etc" / "main.cf").write_text(
        "compatibility_level = 3.6\n"
        f"queue_directory = {base}/spool\ndata_directory = {base}/data\n"
        "inet_interfaces = 127.0.0.1\ninet_protocols = ipv4\n"
        "myhostname = rctest.localdomain\nmydestination =\n"
        f"maillog_file = {maillog}\nmaillog_file_prefixes = /var, /dev/stdout, {base}\n")
    master = Path("/etc/postfix/master.cf").read_text().splitlines()
    master = [f"127.0.0.1:{port} inet n - n - - smtpd" if ln.startswith("smtp ") and " inet " in ln
              else ln for ln in master]
    (base / "etc" / "master.cf").write_text("\n".join(master) + "\n")
    return {"POSTFIX_CONFDIR": str(base / "etc")}, port, maillog


@needs_root
def test_rc_postfix_lifecycle(pubtmp: Path):
    base = pubtmp / "pf"
    env, port, maillog = postfix_instance(base)
    try:
        pid = start_checked("postfix", env)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            assert s.recv(200).startswith(b"220 rctest.localdomain ESMTP")
        assert rc("rc.postfix", "start", env).returncode == 0
        r = rc("rc.postfix", "reload", env)
        assert r.returncode == 0, r.stderr
        assert assert_running("rc.postfix", env, "postfix") == pid
        assert "reload" in maillog.read_text()
        # the converge agent checked a copy of these files already: reloaded without a second check
        reloads = maillog.read_text().count("reload")
        r = rc("rc.postfix", "reload", {**env, "POSTFIX_CHECKED": "1"})
        assert r.returncode == 0 and "run by the caller" in r.stdout + r.stderr, r
        deadline = time.monotonic() + 10        # postlogd writes the line shortly after
        while maillog.read_text().count("reload") <= reloads and time.monotonic() < deadline:
            time.sleep(0.2)
        assert maillog.read_text().count("reload") > reloads
        # a broken main.cf: reload refused, the running master keeps serving
        good = (base / "etc" / "main.cf").read_text()
        (base / "etc" / "main.cf").write_text(good + "maillog_file = /nonexistent/x\n")
        r = rc("rc.postfix", "reload", env)
        assert r.returncode == 1 and "postfix check" in r.stderr
        assert assert_running("rc.postfix", env, "postfix") == pid
        # a main.cf postconf cannot even parse: status still follows the running master
        (base / "etc" / "main.cf").write_text(good + "this line is not a parameter\n")
        assert rc("rc.postfix", "status", env).returncode == 0
        assert assert_running("rc.postfix", env, "postfix") == pid
        (base / "etc" / "main.cf").write_text(good)
        pid2 = restart_checked("postfix", env, pid)
        stop_checked("postfix", env, pid2)
    finally:
        rc("rc.postfix", "stop", env)


@needs_root
def test_rc_postfix_stop_is_bounded_when_the_postfix_command_hangs(pubtmp: Path):
    """A ``postfix stop`` that never returns: rc.postfix kills it after RC_TIMEOUT,
    stops master itself, says so, and restart still gives a new master."""
    base = pubtmp / "pf"
    env, _port, _log = postfix_instance(base)
    wrapper = pubtmp / "postfix-hangs-on-stop"
    wrapper.write_text('#!/bin/sh\nfor a; do [ "$a" = stop ] && exec sleep 600; done\n'
                       'exec /usr/sbin/postfix "$@"\n')
    wrapper.chmod(0o755)
    hang = {**env, "POSTFIX": str(wrapper), "RC_TIMEOUT": "3"}
    try:
        pid = start_checked("postfix", env)
        r = rc("rc.postfix", "restart", hang, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "'postfix stop' did not return within 3s" in r.stderr
        assert not alive(pid)
        pid2 = assert_running("rc.postfix", env, "postfix")
        assert pid2 != pid
        r = rc("rc.postfix", "stop", hang, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert not alive(pid2)
        assert_stopped("rc.postfix", env, "postfix")
    finally:
        rc("rc.postfix", "stop", env)


# ---------------------------------------------------------------- httpd
@needs_root
def test_rc_httpd_lifecycle(pubtmp: Path):
    tmp_path = pubtmp
    need("/usr/sbin/apachectl", "/usr/sbin/apache2")
    conf = tmp_path / "apache2"
    shutil.copytree("/etc/apache2", conf, symlinks=True)
    for p in (conf / "sites-enabled").iterdir():
        p.unlink()
    port = free_port()
    (conf / "ports.conf").write_text(f"Listen 127.0.0.1:{port}\n")
    (tmp_path / "log").mkdir()
    (conf / "envvars").write_text(
        "unset HOME\nexport APACHE_RUN_USER=www-data\nexport APACHE_RUN_GROUP=www-data\n"
        f"export APACHE_PID_FILE={tmp_path}/run/apache2.pid\nexport APACHE_RUN_DIR={tmp_path}/run\n"
        f"export APACHE_LOCK_DIR={tmp_path}/lock\nexport APACHE_LOG_DIR={tmp_path}/log\n"
        "export LANG=C\n")
    with open(conf / "apache2.conf", "a") as f:
        f.write("ServerName rctest.localhost\n")
    env = {"APACHE_CONFDIR": str(conf)}
    try:
        pid = start_checked("httpd", env)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        assert conn.getresponse().status in (200, 403, 404)
        conn.close()
        assert rc("rc.httpd", "start", env).returncode == 0
        r = rc("rc.httpd", "reload", env)
        assert r.returncode == 0, r.stderr
        # the article's command, verbatim
        g = subprocess.run(["/usr/sbin/apachectl", "-k", "graceful"], capture_output=True,
                           text=True, env={**os.environ, **env}, timeout=60)
        assert g.returncode == 0, g.stderr
        time.sleep(0.5)
        assert assert_running("rc.httpd", env, "httpd") == pid
        # broken config: reload and restart refuse, Apache keeps serving
        with open(conf / "apache2.conf", "a") as f:
            f.write("ThisIsNotADirective on\n")
        r = rc("rc.httpd", "reload", env)
        assert r.returncode == 1 and "configtest failed" in r.stderr
        r = rc("rc.httpd", "restart", env)
        assert r.returncode == 1
        assert assert_running("rc.httpd", env, "httpd") == pid
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        text = (conf / "apache2.conf").read_text().replace("ThisIsNotADirective on\n", "")
        (conf / "apache2.conf").write_text(text)
        r = rc("rc.httpd", "restart", env)
        assert r.returncode == 0, r.stderr
        stop_checked("httpd", env, pid)
    finally:
        rc("rc.httpd", "stop", env)


# ---------------------------------------------------------------- pebble
@needs_root
def test_rc_pebble_lifecycle(pubtmp: Path):
    tmp_path = pubtmp
    need("/usr/bin/pebble", "openssl", "curl")
    env = pebble_env(tmp_path)  # never touches this host's trust store
    lab = tmp_path / "ente-lab"
    marker = Path(env["PEBBLE_MARKER"])
    try:
        pid = start_checked("pebble", env)
        for f in ("acme-root.pem", "acme-intermediate.pem", "pebble-tls-ca.pem"):
            assert (lab / f).read_text().startswith("-----BEGIN CERTIFICATE-----"), f
        cfg = (tmp_path / "etc-pebble" / "pebble-config.json").read_text()
        assert env["PEBBLE_LISTEN"] in cfg and '"httpPort": 80' in cfg
        m1 = dict(line.split("=", 1) for line in marker.read_text().split())
        assert m1["pid"] == str(pid) and int(m1["started"]) > 0
        # pebble reuses every valid authorization (a renewal is order + finalize, as with LE)
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"PEBBLE_AUTHZREUSE=100" in environ and b"PEBBLE_VA_NOSLEEP=1" in environ
        # the ACME directory answers with pebble's TLS CA (what dehydrated's CURL_OPTS uses)
        ctx = ssl.create_default_context(cafile=str(lab / "pebble-tls-ca.pem"))
        host, port = env["PEBBLE_LISTEN"].split(":")
        for name in ("127.0.0.1", "localhost"):
            with urllib.request.urlopen(f"https://{name}:{port}/dir", context=ctx,
                                        timeout=10) as resp:
                assert b"newAccount" in resp.read()
        root1 = (lab / "acme-root.pem").read_text()
        # the published root is the one pebble serves
        mgmt = env["PEBBLE_MGMT"].split(":")[1]
        with urllib.request.urlopen(f"https://127.0.0.1:{mgmt}/roots/0", context=ctx,
                                    timeout=10) as resp:
            assert resp.read().decode().strip() == root1.strip()
        assert rc("rc.pebble", "reload", env).returncode == 0
        assert (lab / "acme-root.pem").read_text() == root1
        # restart: new root, republished; new marker
        time.sleep(1.1)
        pid2 = restart_checked("pebble", env, pid)
        assert (lab / "acme-root.pem").read_text() != root1
        m2 = dict(line.split("=", 1) for line in marker.read_text().split())
        assert m2["pid"] == str(pid2) and m2["root_sha256"] != m1["root_sha256"]
        assert int(m2["started"]) > int(m1["started"])
        r = rc("rc.pebble", "stop", env)
        assert r.returncode == 0
        assert not alive(pid2)
        assert not marker.exists()
        assert_stopped("rc.pebble", env, "pebble")
        assert rc("rc.pebble", "stop", env).returncode == 0
    finally:
        rc("rc.pebble", "stop", env)


# rc.docker is exercised in the VM (tests/vm/test_services.py): the host has no
# Docker engine, and the guest is where dockerd runs for the lab. The whole-layer
# smoke scripts (provision/guest/chroot-smoke.sh, nspawn-boot-smoke.sh) are
# developer tools; the same checks run against the real VM in tests/vm.
# Here: its start's one retry case, with a dockerd that fails as the real one does.
FAKE_DOCKERD = """#!/bin/sh
# fails as dockerd does (its containerd slow, or another error) $FAKE_FAILS times, then runs
n=$(cat "$FAKE_COUNT" 2>/dev/null || echo 0); echo $((n + 1)) > "$FAKE_COUNT"
if [ "$n" -lt "$FAKE_FAILS" ]; then
    echo "level=info msg=\"containerd successfully booted in 17.1s\""
    echo "$FAKE_ERROR"; exit 1
fi
while [ "$1" != "-p" ]; do shift; done
echo $$ > "$2"
exec sleep 60
"""


@pytest.mark.parametrize("fails, error, ok, starts", [
    (2, "failed to start containerd: timeout waiting for containerd to start", True, 3),
    (3, "failed to start containerd: timeout waiting for containerd to start", False, 3),
    (1, "failed to start daemon: Error reading /etc/docker/daemon.json: invalid character", False, 1),
])
def test_rc_docker_tries_again_only_when_its_containerd_was_slow(tmp_path, fails, error, ok, starts):
    dockerd = tmp_path / "dockerd"
    dockerd.write_text(FAKE_DOCKERD)
    dockerd.chmod(0o755)
    cli = tmp_path / "docker"
    cli.write_text(f"#!/bin/sh\n[ -s {tmp_path}/docker.pid ]\n")
    cli.chmod(0o755)
    env = {"DOCKERD": str(dockerd), "DOCKER_CLI": str(cli), "DOCKER_PIDFILE": str(tmp_path / "docker.pid"),
           "DOCKER_LOG": str(tmp_path / "docker.log"), "DOCKER_DEFAULTS": "/nonexistent",
           "FAKE_COUNT": str(tmp_path / "count"), "FAKE_FAILS": str(fails), "FAKE_ERROR": error}
    try:
        r = rc("rc.docker", "start", env)
        assert (r.returncode == 0) is ok, r
        assert int((tmp_path / "count").read_text()) == starts       # dockerd started this often
        out = r.stdout + r.stderr
        assert out.count("trying again") == (starts - 1)
        if ok:
            assert "trying again (3 of 3)" in out and "dockerd started" in out
        else:
            assert error in out                                       # the log's last lines shown
    finally:
        rc("rc.docker", "stop", env)


def test_rc_m_refuses_to_run_without_its_service_list(tmp_path: Path):
    d = _fake_rc_dir(tmp_path)
    env = {**os.environ, "RC_DIR": str(d), "SERVICES_FILE": str(d / "no-such-file")}
    env.pop("RC_SERVICES", None)
    r = subprocess.run([str(d / "rc.M"), "start"], env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "no services listed" in r.stderr
    assert not (tmp_path / "calls.log").exists(), "nothing was started"


# ------------------------------------------------------------------ rc.ente status: the docker CLI
FAKE_DOCKER = """#!/bin/sh
# a docker CLI that answers 'info' and 'ps' from $FAKE_RUNNING, and logs every call
echo "docker $*" >> "$FAKE_LOG"
case "$1" in
info) exit 0 ;;
ps) printf '%s\\n' $FAKE_RUNNING ;;
*) exit 1 ;;
esac
"""


@pytest.mark.parametrize("running, want_rc, want", [
    ("ente-museum ente-socat ente-postgres ente-minio ente-auth-web ente-cli", 0, "running (6 containers)"),
    ("ente-museum ente-socat ente-minio ente-auth-web ente-cli", 3, "down: ente-postgres"),
])
def test_rc_ente_status_asks_docker_ps_not_compose(tmp_path, running, want_rc, want):
    """With STACK_SERVICES in stack.conf, status is one ``docker ps`` (no docker-compose
    start-up: seconds each under TCG); the one-shot provisioner may have exited."""
    from entelab import stack
    (tmp_path / "docker").write_text(FAKE_DOCKER)
    (tmp_path / "docker").chmod(0o755)
    (tmp_path / "compose").write_text('#!/bin/sh\necho "compose $*" >> "$FAKE_LOG"; exit 1\n')
    (tmp_path / "compose").chmod(0o755)
    (tmp_path / "docker-compose.yml").write_text("services: {}\n")
    conf = tmp_path / "stack.conf"
    conf.write_text(f"COMPOSE_DIR={tmp_path}\nSTACK_SERVICES='{' '.join(stack.SERVICES)}'\n")
    log = tmp_path / "calls.log"
    r = rc("rc.ente", "status", {"STACK_CONF": str(conf), "DOCKER_CLI": str(tmp_path / "docker"),
                                 "COMPOSE": str(tmp_path / "compose"), "FAKE_RUNNING": running,
                                 "FAKE_LOG": str(log)})
    assert r.returncode == want_rc, r
    assert want in r.stdout + r.stderr
    calls = log.read_text().splitlines()
    assert not [c for c in calls if c.startswith("compose")], calls
    ps = [c for c in calls if c.startswith("docker ps")]
    assert len(ps) == 1 and "label=com.docker.compose.project=ente" in ps[0] and "status=running" in ps[0]
    assert len(calls) == 1, calls                    # nothing else: no 'docker info' first


def test_rc_ente_status_says_dockerd_is_down(tmp_path):
    (tmp_path / "docker").write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2; exit 1\n")
    (tmp_path / "docker").chmod(0o755)
    (tmp_path / "docker-compose.yml").write_text("services: {}\n")
    conf = tmp_path / "stack.conf"
    conf.write_text(f"COMPOSE_DIR={tmp_path}\nSTACK_SERVICES='ente-museum ente-postgres'\n")
    r = rc("rc.ente", "status", {"STACK_CONF": str(conf), "DOCKER_CLI": str(tmp_path / "docker")})
    assert r.returncode == 3 and "dockerd is down" in r.stdout + r.stderr, r


def test_rc_ente_status_before_the_first_converge_is_4_not_3(tmp_path):
    """No stack.conf yet (a new VM, a workshop before "Running the server"): LSB's 4, which
    a restore's service check does not try to start (it printed "restarted: ente" for a
    stack that had nothing to run)."""
    r = rc("rc.ente", "status", {"STACK_CONF": str(tmp_path / "missing.conf")})
    assert r.returncode == 4 and "not configured yet" in r.stdout + r.stderr, r


def test_the_restore_service_check_starts_stopped_services_only(tmp_path):
    """snapshot.SERVICES_UP against stand-in rc scripts: every status at once, a stopped
    service started once (in rc.M's order), a not-configured one (4) left alone."""
    from entelab import snapshot
    rcd = tmp_path / "rc.d"
    rcd.mkdir()
    (rcd / "rc.M").write_text("#!/bin/sh\nprintf '%s enabled\\n' up down unconf\nprintf 'off disabled\\n'\n")
    for name, status in (("up", 0), ("down", 3), ("unconf", 4), ("off", 3)):
        (rcd / f"rc.{name}").write_text(
            f"#!/bin/sh\ncase $1 in status) exit {status};; start) echo {name} >> {tmp_path}/started;; esac\n")
    for f in rcd.iterdir():
        f.chmod(0o755)
    script = snapshot.SERVICES_UP.replace("/etc/rc.d/", f"{rcd}/")
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r
    assert r.stdout.split() == ["restarting", "down"]
    assert (tmp_path / "started").read_text().split() == ["down"]


# ------------------------------------------------------------------ rc.ente start at boot
FAKE_DOCKER_STACK = """#!/bin/sh
# docker for rc.ente start: the running services, the image IDs and the network from the
# environment; every call logged
echo "docker $*" >> "$FAKE_LOG"
case "$1 $2" in
"info "*) exit 0 ;;
"ps "*) printf '%s\\n' $FAKE_RUNNING ;;
"image inspect")
    [ "$3" = -f ] || exit 0
    for i in $FAKE_IDS; do echo "$i"; done ;;
"network inspect") echo "172.21.0.0/16 172.21.0.128/25 172.21.0.1" ;;
*) exit 1 ;;
esac
"""


def test_rc_ente_start_at_boot_runs_compose_only_when_something_changed(tmp_path):
    """At boot dockerd brings the containers back itself (restart: always): ``rc.ente
    start`` then skips ``docker-compose up -d`` (and the one-shot provisioner it starts
    again, 40-50 s of the boot under TCG) only when every long-running service runs and
    nothing compose reads changed since its last good run: the compose file, .env,
    stack.conf, an image's ID. A failed ``up -d`` forgets the stamp."""
    from entelab import stack
    (tmp_path / "docker").write_text(FAKE_DOCKER_STACK)
    (tmp_path / "compose").write_text('#!/bin/sh\necho "compose $*" >> "$FAKE_LOG"; exit ${FAKE_COMPOSE_RC:-0}\n')
    for f in ("docker", "compose"):
        (tmp_path / f).chmod(0o755)
    compose_file = tmp_path / "docker-compose.yml"
    compose_file.write_text("services: {}\n")
    (tmp_path / ".env").write_text("A=1\n")
    conf = tmp_path / "stack.conf"
    conf.write_text(f"COMPOSE_DIR={tmp_path}\nDATA_DIR={tmp_path}/data\nSTACK_PAYLOAD=standin\n"
                    f"STACK_SERVICES='{' '.join(stack.SERVICES)}'\nSTACK_IMAGES='img/a:1 img/b:2'\n"
                    "DOCKER_NETWORK=ente\nDOCKER_SUBNET=172.21.0.0/16\nDOCKER_IP_RANGE=172.21.0.128/25\n"
                    "DOCKER_GATEWAY=172.21.0.1\n")
    log = tmp_path / "calls.log"
    everything = " ".join(s for s in stack.SERVICES if s != "ente-minio-provision")
    env = {"STACK_CONF": str(conf), "STACK_STAMP": str(tmp_path / "stamp"), "DOCKER_CLI": str(tmp_path / "docker"),
           "COMPOSE": str(tmp_path / "compose"), "FAKE_RUNNING": everything, "FAKE_IDS": "sha256:a sha256:b",
           "FAKE_LOG": str(log)}

    def start(**extra) -> tuple[bool, str]:
        log.unlink(missing_ok=True)
        r = rc("rc.ente", "start", {**env, **extra})
        calls = log.read_text().splitlines() if log.exists() else []
        ran = [c for c in calls if c.startswith("compose up -d")]
        return bool(ran), r.stdout + r.stderr + f" rc={r.returncode}"

    ran, out = start()
    assert ran, out                                              # no stamp yet: compose runs
    # every image present: one docker call asks for all of them (one each costs ~0.5 s under
    # TCG), and one more reads their IDs for the stamp
    assert [c for c in log.read_text().splitlines() if c.startswith("docker image inspect")] == [
        "docker image inspect -f . img/a:1 img/b:2", "docker image inspect -f {{.Id}} img/a:1 img/b:2"]
    ran, out = start()
    assert not ran and "already up" in out and "rc=0" in out, out
    compose_file.write_text("services: {a: {}}\n")
    assert start()[0]                                            # the compose file changed
    assert not start()[0]
    (tmp_path / ".env").write_text("A=2\n")
    assert start()[0]                                            # .env changed
    assert start(FAKE_IDS="sha256:a sha256:c")[0]                # an image was loaded again
    assert not start(FAKE_IDS="sha256:a sha256:c")[0]
    assert start(FAKE_IDS="sha256:a sha256:c", FAKE_RUNNING=everything.replace("ente-postgres", ""))[0]
    compose_file.write_text("services: {b: {}}\n")
    ran, out = start(FAKE_IDS="sha256:a sha256:c", FAKE_COMPOSE_RC="1")
    assert ran and "rc=1" in out and not (tmp_path / "stamp").exists(), out
    assert start(FAKE_IDS="sha256:a sha256:c")[0]                # the failed run left no stamp


FAKE_DOCKER_IDS = """#!/bin/sh
# docker for rc.ente reload: container IDs per service from $FAKE_STATE/<service>, a
# service's network mode from $FAKE_STATE/mode.<service> (else "default")
echo "docker $*" >> "$FAKE_LOG"
case "$1" in
info) exit 0 ;;
ps)
    case " $* " in
    *label=com.docker.compose.service=*)
        for a in "$@"; do
            case "$a" in label=com.docker.compose.service=*) cat "$FAKE_STATE/${a#*service=}" 2>/dev/null ;; esac
        done ;;
    *) cat "$FAKE_STATE"/ente-* ;;
    esac ;;
inspect)
    shift; fmt=$2; shift 2
    for id in "$@"; do
        svc=$(grep -lx "$id" "$FAKE_STATE"/ente-* 2>/dev/null | head -n 1)
        svc=${svc##*/}
        mode=$(cat "$FAKE_STATE/mode.$svc" 2>/dev/null || echo default)
        case "$fmt" in
        *NetworkMode*service*) echo "$mode $svc" ;;
        *NetworkMode*) echo "$mode" ;;
        *Running*) if [ -n "$svc" ]; then echo true; else echo false; fi ;;
        *service*) echo "$svc" ;;
        esac
    done ;;
image) exit 0 ;;
network) echo "172.21.0.0/16 172.21.0.128/25 172.21.0.1" ;;
*) exit 0 ;;
esac
"""

# compose: 'up -d' re-creates the services listed in $FAKE_RECREATES, '--force-recreate'
# the ones named (a new ID each); ente-socat joins ente-museum's network when created
FAKE_COMPOSE_IDS = """#!/bin/sh
echo "compose $*" >> "$FAKE_LOG"
if [ "$1 $2" = "up -d" ]; then
    case " $* " in
    *" --force-recreate "*) again=$(echo "$*" | sed 's/.*--force-recreate//') ;;
    *) again=$FAKE_RECREATES ;;
    esac
    for s in $again; do
        echo "new-$s-$$" > "$FAKE_STATE/$s"
        [ "$s" = ente-socat ] && echo "container:$(cat "$FAKE_STATE/ente-museum")" > "$FAKE_STATE/mode.ente-socat"
    done
fi
exit 0
"""


@pytest.mark.parametrize("recreated_by_up, forced", [
    # .env changed too: up -d re-created museum already; socat, left without its
    # network, rejoins after it
    ("ente-museum", [["ente-socat"]]),
    # only museum.yaml changed: museum re-created, and socat in the same compose call
    ("", [["ente-museum", "ente-socat"]]),
    ("ente-postgres", [["ente-museum", "ente-socat"]]),   # another service re-created: same
])
def test_rc_ente_reload_recreates_a_service_once(tmp_path, recreated_by_up, forced):
    """lab.converge names the services whose bind-mounted file changed; when 'up -d' has
    just re-created one of them (its .env or compose lines changed in the same converge),
    it started with the new files: no second re-creation (under TCG, Museum's start again).
    A service sharing the re-created one's network (socat: network_mode service:ente-museum)
    is re-created in the same compose call, not by a second one afterwards."""
    (tmp_path / "docker").write_text(FAKE_DOCKER_IDS)
    (tmp_path / "compose").write_text(FAKE_COMPOSE_IDS)
    for f in ("docker", "compose"):
        (tmp_path / f).chmod(0o755)
    state = tmp_path / "state"
    state.mkdir()
    for s in ("ente-museum", "ente-postgres", "ente-socat"):
        (state / s).write_text(f"old-{s}\n")
    (state / "mode.ente-socat").write_text("container:old-ente-museum-and-the-rest-of-its-id\n")
    (tmp_path / "docker-compose.yml").write_text("services: {}\n")
    conf = tmp_path / "stack.conf"
    conf.write_text(f"COMPOSE_DIR={tmp_path}\nDATA_DIR={tmp_path}/data\nSTACK_PAYLOAD=standin\n"
                    "STACK_IMAGES='img/a:1'\nDOCKER_NETWORK=ente\nDOCKER_SUBNET=172.21.0.0/16\n"
                    "DOCKER_IP_RANGE=172.21.0.128/25\nDOCKER_GATEWAY=172.21.0.1\n")
    log = tmp_path / "calls.log"
    env = {**os.environ, "RC_FUNCTIONS": str(RC_FUNCTIONS), "STACK_CONF": str(conf),
           "STACK_STAMP": str(tmp_path / "stamp"), "DOCKER_CLI": str(tmp_path / "docker"),
           "COMPOSE": str(tmp_path / "compose"), "FAKE_LOG": str(log), "FAKE_STATE": str(state),
           "FAKE_RECREATES": recreated_by_up}
    r = subprocess.run([str(RC_D / "rc.ente"), "reload", "ente-museum"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r
    calls = log.read_text().splitlines()
    ups = [c for c in calls if c.startswith("compose up -d")]
    assert ups[0] == "compose up -d --remove-orphans", calls
    again = [c.split()[5:] for c in ups if "--force-recreate" in c]
    assert again == forced, calls
    # socat ends joined to the Museum container that runs now
    assert (state / "mode.ente-socat").read_text().strip() == \
        "container:" + (state / "ente-museum").read_text().strip(), calls
    if recreated_by_up == "ente-museum":
        assert "ente-museum: re-created by docker-compose up -d already" in r.stdout, r.stdout
