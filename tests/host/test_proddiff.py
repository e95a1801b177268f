"""lab.diff and lab.import against a production stand-in reached over real SSH.

The stand-in: Debian's OpenSSH sshd, started here on 127.0.0.1 at a free high port with
its own host key and an AuthorizedKeysFile holding a throw-away key, running as root;
the tasks log in as ``entelab-prod``, an unprivileged user made for the test (removed
afterwards). The "server" is a Slackware-layout tree under a temp dir built from the
article's files (tests/host/fixtures/production, pitfalls included) with distinctive
secrets seeded into it; the tasks read it through ``--root``. ``.env`` and
``/etc/sudoers.d/postfix_reload`` are root-only, readable through ``sudo -n cat`` (a
sudoers rule for exactly those two files, removed afterwards); ``cli-config.yaml`` is
root-only and not granted; ``Dockerfile.auth`` is missing.

Proved: every pitfall flagged with its lab.explain text and exit 3; secrets never
printed; the production tree byte-for-byte (sha256, mtime, mode) unchanged after both
tasks; only read commands ran; an import re-rendered matches the production files except
documented deviations, asserted per file; missing and unreadable files reported.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import conftest
import pytest
import yaml

from entelab import pitfalls, proddiff, production, render
from entelab import secrets as secrets_mod
from entelab import settings as settings_mod
from entelab.state import ROOT

FIXTURE = Path(__file__).parent / "fixtures" / "production"
USER = "entelab-prod"
CD = "/usr/local/docker-ente"
ROOT_ONLY = {f"{CD}/.env": 0o600, "/etc/sudoers.d/postfix_reload": 0o440, f"{CD}/cli-config.yaml": 0o600}
SUDO_GRANTED = (f"{CD}/.env", "/etc/sudoers.d/postfix_reload")
SUDOERS_RULE = Path("/etc/sudoers.d/entelab-proddiff-test")
BIN = Path(sys.executable).parent


class Standin:
    def __init__(self, base: Path, port: int, key: Path, secrets: dict[str, str]):
        self.base = base
        self.prod = base / "prod"
        self.port = port
        self.key = key
        self.secrets = secrets

    def args(self, sudo: bool = True) -> list[str]:
        return ["127.0.0.1", "--port", str(self.port), "--user", USER, "--identity", str(self.key),
                "--root", str(self.prod)] + (["--sudo"] if sudo else [])

    def snapshot(self) -> dict[str, tuple[str, int, int]]:
        out = {}
        for p in sorted(self.prod.rglob("*")):
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            out[str(p)] = (digest, st.st_mtime_ns, st.st_mode)
        return out


def _keypair(path: Path) -> str:
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ed25519
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption()))
    path.chmod(0o600)
    return key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()


def _seed() -> dict[str, str]:
    """Distinctive per-run secrets; db_password in the article's style (base64 with '=',
    which the lab's grammar refuses: import must say so without showing it)."""
    import base64
    values = {name: secrets_mod.GENERATORS[name]() for name in
              ("key_encryption", "key_hash", "jwt_secret", "minio_key", "minio_secret", "sasl_password")}
    values["db_password"] = base64.b64encode(os.urandom(32)).decode()
    return values


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            return s.recv(64).startswith(b"SSH-2.0")
    except OSError:
        return False


def _build_tree(prod: Path, seeded: dict[str, str]) -> None:
    shutil.copytree(FIXTURE, prod, ignore=shutil.ignore_patterns("README.md"))
    for p in prod.rglob("*"):
        if p.is_file():
            text = p.read_text()
            for name, value in seeded.items():
                text = text.replace(f"@@{name.upper()}@@", value)
            assert "@@" not in text, p
            p.write_text(text)
            p.chmod(0o755 if os.access(p, os.X_OK) else 0o644)
        else:
            p.chmod(0o755)
    for rel, mode in ROOT_ONLY.items():
        (prod / rel.lstrip("/")).chmod(mode)


@pytest.fixture(scope="module")
def standin():
    sshd = conftest.need("sshd")
    visudo = conftest.need("visudo")
    conftest.need("sudo")
    base = Path(tempfile.mkdtemp(prefix="entelab-prod-", dir="/tmp"))
    base.chmod(0o755)
    made_user = subprocess.run(["id", USER], capture_output=True).returncode != 0
    made_run = not Path("/run/sshd").exists()
    proc = None
    try:
        if made_user:
            subprocess.run(["useradd", "-M", "-d", str(base), "-s", "/bin/sh", "-p", "*", USER], check=True)
        if made_run:
            Path("/run/sshd").mkdir(mode=0o755)
        ssh = base / "ssh"
        ssh.mkdir(mode=0o755)
        _keypair(ssh / "host_ed25519")
        key = base / "client_ed25519"
        (ssh / "authorized_keys").write_text(_keypair(key) + "\n")
        seeded = _seed()
        prod = base / "prod"
        _build_tree(prod, seeded)
        rule = ", ".join(f"/usr/bin/cat {prod}{p}" for p in SUDO_GRANTED)
        staged = base / "sudoers"
        staged.write_text(f"{USER} ALL=(root) NOPASSWD: {rule}\n")
        subprocess.run([visudo, "-cf", str(staged)], check=True, capture_output=True)
        staged.chmod(0o440)
        shutil.move(staged, SUDOERS_RULE)
        for _attempt in range(3):
            port = _free_port()
            (ssh / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {ssh}/host_ed25519
PidFile {ssh}/sshd.pid
AuthorizedKeysFile {ssh}/authorized_keys
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin no
AllowUsers {USER}
AllowTcpForwarding no
X11Forwarding no
PrintMotd no
PrintLastLog no
LogLevel ERROR
""")
            log = open(ssh / "sshd.log", "w")  # noqa: SIM115 - closed with the process
            proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(ssh / "sshd_config")],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and proc.poll() is None and not _banner(port):
                time.sleep(0.1)
            if proc.poll() is None and _banner(port):
                break
            proc.kill()
            proc.wait()
            proc = None
        if proc is None:
            pytest.fail("sshd did not start: " + (ssh / "sshd.log").read_text()[-2000:])
        s = Standin(base, port, key, seeded)
        s.before = s.snapshot()  # type: ignore[attr-defined]
        yield s
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        SUDOERS_RULE.unlink(missing_ok=True)
        if made_user:
            subprocess.run(["userdel", USER], capture_output=True)
        if made_run:
            shutil.rmtree("/run/sshd", ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


def _task(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run a task as a user would (./labctl's invoke), isolated from a local settings file."""
    empty = tmp_path / "settings.yaml"
    empty.write_text("{}\n")
    env = dict(os.environ, ENTE_LAB_SETTINGS=str(empty), ENTE_LAB_HOME=str(tmp_path / "home"),
               COLUMNS="400", NO_COLOR="1")
    return subprocess.run([str(BIN / "invoke"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def _no_secret(standin: Standin, res: subprocess.CompletedProcess) -> None:
    both = res.stdout + res.stderr
    squashed = re.sub(r"\s+", "", both)
    for name, value in standin.secrets.items():
        assert value not in both and value not in squashed, f"secret {name} printed"


def _untouched(standin: Standin) -> None:
    assert standin.snapshot() == standin.before  # type: ignore[attr-defined]


def test_diff_flags_every_pitfall_and_masks_secrets(standin, tmp_path):
    res = _task(tmp_path, "lab.diff", *standin.args(sudo=True))
    out = res.stdout
    if os.environ.get("ENTE_LAB_REPORT_OUT"):      # the README's pasted report comes from here
        Path(os.environ["ENTE_LAB_REPORT_OUT"]).write_text(out)
    assert res.returncode == 3, out + res.stderr
    assert "Traceback" not in out + res.stderr and "internal error" not in out
    _no_secret(standin, res)
    assert "<secret>" in out
    expected = set(pitfalls.PITFALLS) - set(pitfalls.NOT_PITFALLS)
    flagged = set(re.findall(r"^  PITFALL (\w+) \(", out, re.M))
    assert flagged == expected
    for name in expected:        # each with its lab.explain text
        assert pitfalls.explain(name).splitlines()[0] in out, name
    assert re.search(r"^  note ", out, re.M) is None
    # sudo, missing, unreadable, said once at the top
    via = next(ln for ln in out.splitlines() if ln.startswith("read "))
    assert set(via.split("with sudo -n: ", 1)[1].split(", ")) == set(SUDO_GRANTED)
    assert f"missing: {CD}/Dockerfile.auth" in out
    assert f"unreadable: {CD}/cli-config.yaml" in out
    # grouped by the article's sections, in the article's order
    heads = re.findall(r"^== (.+) ==$", out, re.M)
    sections = (ROOT / "docs" / "article-sections.txt").read_text().splitlines()
    assert set(heads) <= set(sections) and heads == sorted(heads, key=proddiff.ARTICLE_ORDER.index)
    assert {"CORS", "docker-compose.yml", "Configuring Postfix", "Apache reverse proxy configuration"} <= set(heads)
    assert "pitfalls found:" in out and "next:" in out
    _untouched(standin)


def test_diff_without_sudo_reports_root_only_files(standin, tmp_path):
    res = _task(tmp_path, "lab.diff", *standin.args(sudo=False))
    assert res.returncode == 3, res.stdout + res.stderr
    _no_secret(standin, res)
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("unreadable:"))
    assert set(line.split(": ", 1)[1].split(", ")) == set(ROOT_ONLY)
    assert "with sudo -n" not in next(ln for ln in res.stdout.splitlines() if ln.startswith("read "))
    assert "note missing_sudoers" in res.stdout and "cannot verify" in res.stdout
    _untouched(standin)


def test_only_read_commands_run(standin):
    reader = production.Reader.connect("127.0.0.1", user=USER, port=standin.port,
                                       identity=str(standin.key), root=str(standin.prod), sudo=True)
    try:
        prod = production.read_production(reader, "standin", CD)
    finally:
        reader.close()
    allowed = re.compile(r"^(ls -1A |sudo -n ls -1A |cat |sudo -n cat |if ! test -e \S+; then echo missing; "
                         r"else stat -c '%a %U:%G %s %F' \S+; if test -r \S+; then echo readable; "
                         r"else echo unreadable; fi; fi$)")
    assert prod.commands and all(allowed.match(c) for c in prod.commands), prod.commands
    assert {f.path for f in prod.by_status("sudo")} == set(SUDO_GRANTED)
    assert {f.path for f in prod.by_status("missing")} == {f"{CD}/Dockerfile.auth", "/etc/postfix/sasl/smtpd.conf"}
    assert {f.path for f in prod.by_status("unreadable")} == {f"{CD}/cli-config.yaml"}
    assert prod.get(f"{CD}/cli-config.yaml").mode == "0600"
    _untouched(standin)


# What remains between the production files and a lab rendered from their import:
# per file, the documented deviations (docs/deviations.md rows) that explain every line.
REMAINING = {
    "/etc/httpd/extra/ente.darkstar.lan.conf": {1, 2, 3},
    "/etc/httpd/extra/enteauth.darkstar.lan.conf": {1, 2},
    "/etc/hosts": {16},
    "/etc/dnsmasq.conf": {16},
    "/etc/postfix/main.cf": {17, 19, 31},
    "/etc/postfix/master.cf": {17, 18},
    "/etc/dehydrated/config": {26},
    "/etc/dehydrated/domains.txt": {26},
    "/etc/dehydrated/hook.sh": {22},
    "/etc/sudoers.d/postfix_reload": {21},
    f"{CD}/.env": {7},
    f"{CD}/museum.yaml": {12},
    f"{CD}/minio-provision.sh": {9},
    f"{CD}/docker-compose.yml": {5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 32},
}
SAME = {"/etc/networks", "/etc/resolv.conf", "/etc/sasl2/smtpd.conf"}


def _rows() -> set[int]:
    text = (ROOT / "docs" / "deviations.md").read_text()
    return {int(n) for n in re.findall(r"^\| (\d+) \|", text, re.M)}


def test_import_reproduces_the_server(standin, tmp_path):
    out, sec = tmp_path / "imported.yaml", tmp_path / "imported-secrets.yaml"
    res = _task(tmp_path, "lab.import", *standin.args(sudo=True), "--with-secrets",
                "--output", str(out), "--secrets-file", str(sec))
    assert res.returncode == 0, res.stdout + res.stderr
    _no_secret(standin, res)
    _untouched(standin)
    # what could not be mapped is said
    assert "not mapped" in res.stdout
    assert "docker-compose.yml line 108: unbalanced quote repaired" in res.stdout
    assert "secret db_password: not importable" in res.stdout
    assert f"{CD}/Dockerfile.auth: missing" in res.stdout and f"{CD}/cli-config.yaml: unreadable" in res.stdout
    # settings load through the normal validation; secrets stored like the lab's own
    settings, _ = settings_mod.load_settings(ROOT, local_file=out)
    data = yaml.safe_load(out.read_text())
    assert data["domain"] == "darkstar.lan" and data["images"]["museum"] == "ghcr.io/ente-io/server"
    assert data["docker"]["museum_ip"] == "172.21.0.5" and data["ott"] == ["me@home.lan,123456"]
    assert data["admins"] == [5551234567654321] and data["smtp"]["username"] == "verification"
    assert (sec.stat().st_mode & 0o777) == 0o600
    stored = secrets_mod.read(sec)
    for name, value in standin.secrets.items():
        assert (stored[name] == value) == (name != "db_password"), name
    assert not any(v in out.read_text() for v in standin.secrets.values())

    # re-render from the import; compare with production file by file
    secrets, _ = secrets_mod.load_or_create(sec, dry_run=True)
    reader = production.Reader.connect("127.0.0.1", user=USER, port=standin.port,
                                       identity=str(standin.key), root=str(standin.prod), sudo=True)
    try:
        prod = production.read_production(reader, "standin", settings.paths.compose_dir)
    finally:
        reader.close()
    rep = proddiff.compare(prod, settings, secrets)
    rows = _rows()
    differing = {}
    for d in rep.diffs:
        if d.status == "differs":
            assert not d.unexplained, (d.path, [c.line for c in d.unexplained])
            differing[d.path] = {c.deviation for c in d.changes}
    assert differing == REMAINING
    assert all(n in rows for devs in differing.values() for n in devs)
    assert {d.path for d in rep.diffs if d.status == "same"} == SAME
    lab_only = {d.path for d in rep.diffs if d.status == "lab-only"}
    assert lab_only == {"/etc/sudoers.d/apache_reload"}      # deviation 21
    assert {d.path: d.status for d in rep.diffs if d.status in ("missing", "unreadable")} == \
        {f"{CD}/Dockerfile.auth": "missing", f"{CD}/cli-config.yaml": "unreadable"}
    _untouched(standin)


def test_import_refuses_to_overwrite(standin, tmp_path):
    out = tmp_path / "exists.yaml"
    out.write_text("domain: example.lan\n")
    res = _task(tmp_path, "lab.import", *standin.args(), "--output", str(out))
    assert res.returncode == 2 and "does not overwrite" in res.stdout
    assert out.read_text() == "domain: example.lan\n"


def test_diff_names_an_unreachable_host(tmp_path):
    res = _task(tmp_path, "lab.diff", "127.0.0.1", "--port", str(_free_port()), "--user", USER)
    assert res.returncode == 1 and "Traceback" not in res.stdout + res.stderr
    assert "SSH to 127.0.0.1" in res.stdout


def test_lab_rendering_is_not_written(tmp_path):
    """lab.diff renders in memory: nothing under build/ or a secrets file appears."""
    settings = conftest.load()
    secrets, _ = secrets_mod.load_or_create(tmp_path / "none.yaml", dry_run=True)
    lab = proddiff.lab_rendering(settings, secrets)
    assert not (tmp_path / "none.yaml").exists()
    assert f"{CD}/docker-compose.yml" in lab
    assert f"image: {render.compose_scalar(settings.images.museum)}" in lab[f"{CD}/docker-compose.yml"][1]
    assert render.MANAGED_BEGIN in lab["/etc/hosts"][1]


@pytest.mark.parametrize("value", ["/Xk3vQ9+aB7mZ2pL0sT8uW4yE6rN1cF5hJ9dG2kM0qo=",     # base64 that starts with "/"
                                   "Xk3vQ9+aB7mZ2pL0sT8uW4yE6rN1cF5hJ9dG2kM0qo="])
def test_a_base64_password_starting_with_a_slash_is_masked_as_a_value(value):
    """The article-style db_password is base64 (1 in 64 start with "/"): it is learnt as a
    secret like any other, so its line masks to NAME=<secret> on both sides (it used to be
    taken for a path, and the whole line became one random-looking token: a flaky diff)."""
    text = f"ENTE_DB_PASSWORD={value}\nsmtpd_tls_key_file = /etc/dehydrated/certs/darkstar.lan/privkey.pem\n"
    m = proddiff.Masker()
    m.learn(text)
    assert value in m.values
    assert "/etc/dehydrated/certs/darkstar.lan/privkey.pem" not in m.values      # a path stays a path
    masked = m(text)
    assert masked.splitlines() == ["ENTE_DB_PASSWORD=<secret>",
                                   "smtpd_tls_key_file = /etc/dehydrated/certs/darkstar.lan/privkey.pem"]
