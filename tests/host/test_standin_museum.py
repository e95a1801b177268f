"""The Museum stand-in (provision/standin/museum/museum.py) and the postgres entrypoint.

Config loading is checked in-process against upstream's rules (upstream-facts.md);
the HTTP behaviour on a subprocess. The PostgreSQL part runs the real PostgreSQL 15
binaries through postgres/docker-entrypoint.sh (first start initialises, second skips),
then checks that /ping follows the database down and back up with no manual step.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_standin_s3 import free_port, wait_port

from entelab.state import ROOT

STANDIN = ROOT / "provision" / "standin"
MUSEUM = STANDIN / "museum" / "museum.py"
ENTRYPOINT = STANDIN / "postgres" / "docker-entrypoint.sh"
PGBIN = Path("/usr/lib/postgresql/15/bin")
_QUOTED = r'"(?:[^"\\]|\\.)*"'
LOGRUS = re.compile(r'^time="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ" level=(info|warning|error) msg=' + _QUOTED
                    + r'( [a-z_]+=(?:' + _QUOTED + r'|[^\s"]+))*$')


def load_museum():
    spec = importlib.util.spec_from_file_location("museum_standin", MUSEUM)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod      # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


museum = load_museum()


# ------------------------------------------------------------------ configuration
def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_env_name_is_vipers_rule():
    assert museum.env_name("internal.hardcoded-ott.emails") == "ENTE_INTERNAL_HARDCODED_OTT_EMAILS"
    assert museum.env_name("s3.b2-eu-cen.key") == "ENTE_S3_B2_EU_CEN_KEY"
    assert museum.env_name("s3.are_local_buckets") == "ENTE_S3_ARE_LOCAL_BUCKETS"


def test_file_precedence_local_then_credentials_then_museum(tmp_path):
    write(tmp_path / "configurations" / "local.yaml",
          "db:\n  host: localhost\n  name: from-local\n  user: u-local\nsmtp:\n  host: mail.local\n")
    write(tmp_path / "configurations" / "production.yaml", "db:\n  name: from-production\n")
    write(tmp_path / "credentials.yaml", "db:\n  name: from-credentials\n  password: pw-cred\n")
    write(tmp_path / "museum.yaml", "db:\n  user: u-museum\nsmtp:\n  host: \"\"\n")
    cfg, notes = museum.load_config(tmp_path, {})
    assert cfg["db"] == {"host": "localhost", "name": "from-credentials", "user": "u-museum", "password": "pw-cred"}
    assert cfg["smtp"]["host"] == ""      # key: "" overrides an earlier value with empty
    assert [n.rsplit("/", 1)[-1] for n in notes] == ["local.yaml", "credentials.yaml", "museum.yaml"]
    cfg, _ = museum.load_config(tmp_path, {"ENVIRONMENT": "production"})
    assert cfg["db"]["name"] == "from-credentials" and "host" not in cfg["db"]
    (tmp_path / "credentials.yaml").unlink()
    cfg, _ = museum.load_config(tmp_path, {"ENVIRONMENT": "production"})
    assert cfg["db"]["name"] == "from-production"


def test_env_overrides_underscored_names_only(tmp_path):
    write(tmp_path / "museum.yaml",
          "db:\n  port: 1\n  password: file-pw\ninternal:\n  admins: [7]\n"
          "  hardcoded-ott:\n    emails: ['file@example.org,111111']\n")
    env = {
        "ENTE_DB_PORT": "5433",
        "ENTE_INTERNAL_HARDCODED-OTT_EMAILS": "dash@example.org,222222",     # dashed: ignored
        "ENTE_S3_B2-EU-CEN_KEY": "dashed-key",                               # dashed: ignored
        "ENTE_S3_WASABI_EU_CENTRAL_2_V3_SECRET": "wasabi-secret",            # known key, not in the file
        "ENTE_INTERNAL_ADMINS": "1 2",                                       # a list of ints: not from env
        "ENTE_INTERNAL_ADMIN": "42",
        "ENTE_UNKNOWN_THING": "x",
    }
    cfg, notes = museum.load_config(tmp_path, env)
    assert cfg["db"] == {"port": "5433", "password": "file-pw"}
    assert cfg["internal"]["hardcoded-ott"]["emails"] == ["file@example.org,111111"]
    assert cfg["s3"] == {"wasabi-eu-central-2-v3": {"secret": "wasabi-secret"}}
    assert cfg["internal"]["admins"] == [7] and cfg["internal"]["admin"] == "42"
    assert "unknown" not in cfg
    assert not any("-" in n.split("env ", 1)[-1] for n in notes if n.startswith("env "))

    # the compose file always sets the variable; an empty one is unset for viper
    # (no AllowEmptyEnv upstream), so museum.yaml's entries stay
    env["ENTE_INTERNAL_HARDCODED_OTT_EMAILS"] = ""
    env["ENTE_DB_PASSWORD"] = ""
    cfg, _ = museum.load_config(tmp_path, env)
    assert cfg["internal"]["hardcoded-ott"]["emails"] == ["file@example.org,111111"]
    assert cfg["db"]["password"] == "file-pw"

    env["ENTE_INTERNAL_HARDCODED_OTT_EMAILS"] = "a@example.org,123456 \t b@example.org,012345\n"
    cfg, _ = museum.load_config(tmp_path, env)
    assert cfg["internal"]["hardcoded-ott"]["emails"] == ["a@example.org,123456", "b@example.org,012345"]


def test_an_unquoted_leading_zero_code_is_octal_in_yaml(tmp_path):
    # Why the lab quotes OTT codes: YAML 1.1 reads 012345 as an octal int (as Go's yaml does).
    write(tmp_path / "museum.yaml", "internal:\n  hardcoded-ott:\n    emails: [012345]\n")
    cfg, _ = museum.load_config(tmp_path, {})
    assert cfg["internal"]["hardcoded-ott"]["emails"] == [0o12345]


# ------------------------------------------------------------------ HTTP
class Museum:
    def __init__(self, proc: subprocess.Popen, port: int, logdir: Path) -> None:
        self.proc, self.port, self.logdir = proc, port, logdir
        self.url = f"http://127.0.0.1:{port}"

    def call(self, path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, dict, bytes]:
        req = urllib.request.Request(self.url + path, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers.items()), e.read()

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=3) == 0
        out = self.proc.stdout.read()
        self.proc.stdout.close()
        return out


def start_museum(tmp_path: Path, db_port: int, password: str = "pw", user: str = "pguser") -> Museum:
    work = tmp_path / "museum-work"
    logdir = tmp_path / "museum-logs"
    logdir.mkdir(exist_ok=True)
    # The file says port 1 and a wrong password: the ENTE_* variables must win (the compose way).
    write(work / "museum.yaml", f"db:\n  host: 127.0.0.1\n  port: 1\n  name: ente_db\n  user: {user}\n"
                                "  password: not-this\n")
    port = free_port()
    env = {**os.environ, "ENTE_DB_PORT": str(db_port), "ENTE_DB_PASSWORD": password,
           "MUSEUM_STANDIN_LOG_DIR": str(logdir)}
    proc = subprocess.Popen([sys.executable, str(MUSEUM), "--listen", f"127.0.0.1:{port}"], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_port(port, proc)
    return Museum(proc, port, logdir)


def test_ping_is_500_while_the_database_is_unreachable_and_logs_like_logrus(tmp_path):
    m = start_museum(tmp_path, free_port())
    try:
        t0 = time.monotonic()
        status, headers, body = m.call("/ping")
        assert time.monotonic() - t0 < 5
        assert status == 500
        err = json.loads(body)
        assert err["code"] == "INTERNAL_SERVER_ERROR" and "db ping failed" in err["message"]
        assert headers["Content-Type"].startswith("application/json")
        status, _, body = m.call("/no/such/route")
        assert status == 404 and json.loads(body)["code"] == "NOT_FOUND"
    finally:
        out = m.stop()
    lines = out.splitlines()
    assert "ente-lab stand-in for ghcr.io/ente/server" in lines[0]
    assert all(LOGRUS.match(line) for line in lines), [x for x in lines if not LOGRUS.match(x)]
    access = [x for x in lines if 'msg="request"' in x]
    assert len(access) == 2
    assert re.search(r" latency=[0-9.]+ms method=GET path=/ping status=500 ", access[0])
    assert "path=/no/such/route status=404" in access[1]
    assert "source=\"env ENTE_DB_PORT\"" in out
    logged = (m.logdir / "museum.log").read_text().splitlines()
    assert logged == lines


def test_cors_headers_on_every_response_and_options_preflight(tmp_path):
    m = start_museum(tmp_path, free_port())
    try:
        origin = "https://auth.ente-lab.example"
        status, headers, body = m.call("/users/ott", "OPTIONS", {
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-client-package"})
        assert (status, body) == (200, b"")
        assert headers["Access-Control-Allow-Origin"] == origin
        assert headers["Access-Control-Allow-Credentials"] == "true"
        allowed = [h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")]
        assert {"content-type", "x-client-package", "x-auth-token", "authorization"} <= set(allowed)
        assert headers["Access-Control-Allow-Methods"] == "POST, OPTIONS, GET, PUT, PATCH, DELETE"
        assert headers["Access-Control-Max-Age"] == "1728000"
        status, headers, _ = m.call("/ping", headers={"Origin": "http://other.example"})
        assert status == 500 and headers["Access-Control-Allow-Origin"] == "http://other.example"
        status, headers, _ = m.call("/ping")
        assert "Access-Control-Allow-Origin" not in headers
        assert headers["Access-Control-Allow-Credentials"] == "true"
    finally:
        m.stop()


# ------------------------------------------------------------------ real PostgreSQL 15
class Postgres:
    def __init__(self, pgdata: Path, port: int) -> None:
        self.pgdata, self.port = pgdata, port
        self.proc: subprocess.Popen | None = None
        self.env = {**os.environ, "PGDATA": str(pgdata), "PGPORT": str(port), "POSTGRES_USER": "pguser",
                    "POSTGRES_DB": "ente_db", "POSTGRES_PASSWORD": "pg pass'\"$x"}

    def start(self) -> str:
        """Run the entrypoint (as root, like the container); return its output up to 'ready'."""
        self.proc = subprocess.Popen([str(ENTRYPOINT), "postgres"], env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        out = []
        assert self.proc.stdout
        for line in self.proc.stdout:
            out.append(line)
            if "database system is ready to accept connections" in line and "PGSQL" not in line \
                    and any("listening on IPv4" in x for x in out):
                break
        else:
            raise AssertionError("postgres did not start:\n" + "".join(out))
        return "".join(out)

    def stop(self) -> None:
        # docker stop of the official image sends SIGINT (STOPSIGNAL SIGINT: fast shutdown).
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=10)
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture
def postgres():
    if os.geteuid() != 0:
        pytest.fail("the postgres entrypoint tests run as root (the container's entrypoint starts as root)")
    if not (PGBIN / "postgres").exists():
        pytest.fail("PostgreSQL 15 is not installed (apt-get install postgresql-15; see entelab/host.py)")
    pwd.getpwnam("postgres")
    base = Path(tempfile.mkdtemp(prefix="standin-pg-"))
    base.chmod(0o755)   # the postgres user must reach PGDATA
    pg = Postgres(base / "data", free_port())
    yield pg
    pg.stop()
    shutil.rmtree(base, ignore_errors=True)


def test_entrypoint_initialises_once_and_museum_follows_the_database(postgres, tmp_path):
    import psycopg2

    first = postgres.start()
    assert "PostgreSQL init process complete; ready for start up." in first
    assert "Skipping initialization" not in first
    assert postgres.pgdata.stat().st_uid == pwd.getpwnam("postgres").pw_uid
    hba = (postgres.pgdata / "pg_hba.conf").read_text()
    assert re.search(r"^host all all all scram-sha-256$", hba, re.M)

    conn = psycopg2.connect(host="127.0.0.1", port=postgres.port, dbname="ente_db", user="pguser",
                            password=postgres.env["POSTGRES_PASSWORD"], connect_timeout=3)
    with conn.cursor() as cur:
        cur.execute("SELECT current_user, current_database(), current_setting('listen_addresses')")
        assert cur.fetchone() == ("pguser", "ente_db", "*")
        cur.execute("SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'pguser'")
        assert cur.fetchone() == (True,)
    conn.close()
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host="127.0.0.1", port=postgres.port, dbname="ente_db", user="pguser",
                         password="wrong", connect_timeout=3)
    ready = subprocess.run([str(PGBIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(postgres.port),
                            "-d", "ente_db", "-U", "pguser"], capture_output=True, text=True)
    assert ready.returncode == 0, ready.stdout

    m = start_museum(tmp_path, postgres.port, password=postgres.env["POSTGRES_PASSWORD"])
    try:
        status, _, body = m.call("/ping")
        assert (status, json.loads(body)) == (200, {"message": "pong", "id": "ente-lab-standin"})
        postgres.stop()
        status, _, _ = m.call("/ping")
        assert status == 500
        second = postgres.start()
        assert "Skipping initialization" in second
        assert "init process complete" not in second
        status, _, body = m.call("/ping")
        assert status == 200 and json.loads(body)["message"] == "pong"
    finally:
        m.stop()
