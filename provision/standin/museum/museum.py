#!/usr/bin/python3
"""ente-lab STAND-IN for ghcr.io/ente/server (Museum): NOT Ente's server.

Reproduces what the lab checks of Museum: its configuration loading (files, then ENTE_*
environment overrides by viper's rule), ``GET /ping`` backed by ``SELECT 1`` on PostgreSQL,
gin's CORS headers on every response, logrus-style log lines on stdout and in
/var/logs/museum.log, and the sign-up path: ``POST /users/ott`` (with the OTT mail, sent like
upstream, see museum_mail.py), ``POST /users/verify-email``, ``PUT /users/attributes``
(museum_users.py). Stdlib + psycopg2 + PyYAML only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

# The siblings (museum_users.py, museum_mail.py): /usr/local/bin/museum is a symlink to this file.
sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
import museum_mail  # noqa: E402
import museum_users  # noqa: E402

STANDIN_ID = "ente-lab-standin"
DEFAULT_LOG_DIR = "/var/logs"

# Keys upstream Museum knows even when no file sets them (so an ENTE_* variable alone applies).
BUCKETS = ("b2-eu-cen", "wasabi-eu-central-2-v3", "scw-eu-fr-v3")
KNOWN_KEYS: tuple[str, ...] = (
    "db.host", "db.port", "db.name", "db.user", "db.password", "db.sslmode",
    "key.encryption", "key.hash", "jwt.secret",
    "smtp.host", "smtp.port", "smtp.username", "smtp.password", "smtp.email", "smtp.sender-name",
    "smtp.encryption",
    "internal.admin", "internal.admins", "internal.disable-registration",
    "internal.hardcoded-ott.emails", "internal.hardcoded-ott.local-domain-suffix",
    "internal.hardcoded-ott.local-domain-value",
    "s3.are_local_buckets", "http.use-tls",
    *(f"s3.{b}.{k}" for b in BUCKETS for k in ("key", "secret", "endpoint", "region", "bucket")),
)
# From the environment, these lists are split on whitespace (viper GetStringSlice on a string).
WHITESPACE_LISTS = {"internal.hardcoded-ott.emails"}
# A list of ints: a string from the environment does not become one upstream.
NOT_FROM_ENV = {"internal.admins"}

CORS_ALLOW_HEADERS = ("Content-Type, Content-Length, Accept-Encoding, X-CSRF-Token, Authorization, accept, origin, "
                      "Cache-Control, X-Requested-With, upgrade-insecure-requests, X-Auth-Token, "
                      "X-Auth-Access-Token, X-Cast-Access-Token, X-Auth-Access-Token-JWT, X-Client-Package, "
                      "X-Client-Version, X-Request-Id, X-Client-Platform")
CORS_ALLOW_METHODS = "POST, OPTIONS, GET, PUT, PATCH, DELETE"
CORS_MAX_AGE = "1728000"


# ------------------------------------------------------------------ logging (logrus text format)
_SAFE = re.compile(r"^[A-Za-z0-9\-._/@^+]+$")


def _fmt_value(v: Any) -> str:
    s = str(v)
    return s if _SAFE.match(s) else json.dumps(s)


class Logger:
    """logrus TextFormatter-like: time="..." level=info msg="..." key=value (keys sorted)."""

    def __init__(self, log_dir: str | None = DEFAULT_LOG_DIR, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()
        self.file = None
        if log_dir and os.path.isdir(log_dir):
            self.file = open(os.path.join(log_dir, "museum.log"), "a", encoding="utf-8")  # noqa: SIM115

    def line(self, level: str, msg: str, fields: Mapping[str, Any] | None = None) -> str:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        out = f'time="{now}" level={level} msg={json.dumps(msg)}'
        for k in sorted(fields or {}):
            out += f" {k}={_fmt_value((fields or {})[k])}"
        return out

    def log(self, level: str, msg: str, **fields: Any) -> None:
        text = self.line(level, msg, fields)
        with self.lock:
            print(text, file=self.stream, flush=True)
            if self.file:
                self.file.write(text + "\n")
                self.file.flush()

    def info(self, msg: str, **fields: Any) -> None:
        self.log("info", msg, **fields)

    def warn(self, msg: str, **fields: Any) -> None:
        self.log("warning", msg, **fields)

    def error(self, msg: str, **fields: Any) -> None:
        self.log("error", msg, **fields)


# ------------------------------------------------------------------ configuration
def deep_merge(base: dict, extra: Mapping) -> dict:
    for k, v in extra.items():
        k = str(k).lower()   # viper keys are case-insensitive
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            deep_merge(base[k], v)
        elif isinstance(v, Mapping):
            base[k] = deep_merge({}, v)
        else:
            base[k] = v
    return base


def leaf_paths(cfg: Mapping, prefix: str = "") -> Iterable[str]:
    for k, v in cfg.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            yield from leaf_paths(v, path + ".")
        else:
            yield path


def env_name(path: str) -> str:
    """viper: SetEnvPrefix("ente") + SetEnvKeyReplacer(".", "_", "-", "_") + upper case."""
    return "ENTE_" + path.replace(".", "_").replace("-", "_").upper()


def get(cfg: Mapping, path: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def set_path(cfg: dict, path: str, value: Any) -> None:
    node = cfg
    parts = path.split(".")
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = node[part] = {}
        node = nxt
    node[parts[-1]] = value


def config_files(workdir: Path, environment: str) -> list[Path]:
    return [workdir / "configurations" / f"{environment}.yaml", workdir / "credentials.yaml",
            workdir / "museum.yaml"]


def load_config(workdir: Path, environ: Mapping[str, str], log: Logger | None = None) -> tuple[dict, list[str]]:
    """Upstream's order: configurations/<ENVIRONMENT>.yaml, credentials.yaml, museum.yaml, then ENTE_*.

    Returns (config, notes): notes names the files read and the variables applied.
    """
    cfg: dict = {}
    notes: list[str] = []
    for path in config_files(workdir, environ.get("ENVIRONMENT") or "local"):
        if not path.is_file():
            continue
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: top level is not a mapping")
        deep_merge(cfg, data)
        notes.append(f"config file {path}")
    paths = set(leaf_paths(cfg)) | set(KNOWN_KEYS)
    for key in sorted(paths):
        name = env_name(key)
        if not environ.get(name):      # viper without AllowEmptyEnv: an empty variable is unset
            continue
        if key in NOT_FROM_ENV:
            if log:
                log.warn(f"{name} is ignored: {key} is a list of ints upstream cannot read from the environment; "
                         "use ENTE_INTERNAL_ADMIN (one id) or museum.yaml")
            continue
        raw = environ[name]
        set_path(cfg, key, raw.split() if key in WHITESPACE_LISTS else raw)
        notes.append(f"env {name}")
    return cfg, notes


# ------------------------------------------------------------------ database
class Database:
    """One connection, re-opened after any failure (so a PostgreSQL restart heals by itself).

    Every new connection first creates the schema (idempotent), so a database that was
    re-initialised gets its tables back without a Museum restart.
    """

    def __init__(self, db: Mapping[str, Any], timeout: int = 3) -> None:
        self.params = {
            "host": str(db.get("host") or "localhost"),
            "port": str(db.get("port") or 5432),
            "dbname": str(db.get("name") or "ente_db"),
            "user": str(db.get("user") or "postgres"),
            "password": str(db.get("password") or ""),
            "sslmode": str(db.get("sslmode") or "disable"),
            "connect_timeout": timeout,
            "options": f"-c statement_timeout={timeout * 1000}",
            "application_name": "museum-standin",
        }
        self.lock = threading.Lock()
        self.conn: Any = None

    def _connect(self) -> Any:
        import psycopg2  # imported here: config tests run without a driver

        conn = psycopg2.connect(**self.params)
        try:
            with conn.cursor() as cur:
                museum_users.create_schema(cur)
            conn.commit()
        except Exception:
            conn.close()
            raise
        return conn

    def run(self, fn: Callable[[Any], Any]) -> Any:
        """fn(cursor) in one transaction: committed on return, rolled back on an exception.

        An ApiFailure keeps the connection; any other error closes it (re-opened next time).
        """
        with self.lock:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = self._connect()
                with self.conn.cursor() as cur:
                    result = fn(cur)
                self.conn.commit()
                return result
            except museum_users.ApiFailure:
                try:
                    self.conn.rollback()
                except Exception:
                    self.close()
                raise
            except Exception:
                self.close()
                raise

    def ping(self) -> None:
        def select_one(cur: Any) -> None:
            cur.execute("SELECT 1")
            cur.fetchone()

        self.run(select_one)

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):   # a broken connection may fail to close
                self.conn.close()
        self.conn = None


# ------------------------------------------------------------------ HTTP plumbing
@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    client: str

    def header(self, name: str, default: str = "") -> str:
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return default

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(obj, separators=(",", ":")).encode(),
                    {"Content-Type": "application/json; charset=utf-8", **(headers or {})})


def api_error(status: int, code: str, message: str) -> Response:
    """Museum's ApiError body: {"code": ..., "message": ...}."""
    return json_response(status, {"code": code, "message": message})


Handler = Callable[[Request], Response]
Middleware = Callable[[Request, Handler], Response]


class Router:
    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Handler] = {}
        self.middlewares: list[Middleware] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method.upper(), path)] = handler

    def use(self, mw: Middleware) -> None:
        self.middlewares.append(mw)

    def _route(self, req: Request) -> Response:
        handler = self.routes.get((req.method, req.path))
        if handler is None:
            if any(p == req.path for _, p in self.routes):
                return api_error(405, "METHOD_NOT_ALLOWED", f"{req.method} {req.path} is not allowed")
            return api_error(404, "NOT_FOUND", f"no route {req.method} {req.path} in the ente-lab Museum stand-in")
        return handler(req)

    def handle(self, req: Request) -> Response:
        call: Handler = self._route
        for mw in reversed(self.middlewares):
            call = (lambda m, nxt: (lambda r: m(r, nxt)))(mw, call)
        return call(req)


def cors_middleware(req: Request, nxt: Handler) -> Response:
    """gin middleware of server/cmd/museum/main.go: headers on every response; OPTIONS -> 200, no body."""
    hdrs = {
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
        "Access-Control-Allow-Methods": CORS_ALLOW_METHODS,
        "Access-Control-Max-Age": CORS_MAX_AGE,
    }
    origin = req.header("Origin")
    if origin:
        hdrs["Access-Control-Allow-Origin"] = origin
    resp = Response(200) if req.method == "OPTIONS" else nxt(req)
    resp.headers.update(hdrs)
    return resp


# ------------------------------------------------------------------ the app
def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


class Museum:
    def __init__(self, config: dict, log: Logger, environment: str = "local") -> None:
        self.config = config
        self.log = log
        self.db = Database(config.get("db") or {})
        self.mailer = museum_mail.Mailer(config.get("smtp") or {}, log)
        self.users = museum_users.Users(self.db.run, config, environment, log, self.mailer.send_ott)
        self.router = Router()
        self.router.use(cors_middleware)
        self.router.add("GET", "/ping", self.ping)
        self.router.add("POST", "/users/ott", self.send_ott)
        self.router.add("POST", "/users/verify-email", self.verify_email)
        self.router.add("PUT", "/users/attributes", self.set_attributes)

    def prepare_schema(self, stop: threading.Event, interval: float = 1.0) -> None:
        """At start: create the tables, retrying until PostgreSQL answers (the API works meanwhile)."""
        failures = 0
        while not stop.is_set():
            try:
                self.db.run(lambda cur: None)     # a new connection creates the schema
            except Exception as e:
                if failures % 30 == 0:
                    self.log.warn("database not ready, will retry creating the schema", error=_one_line(e))
                failures += 1
                stop.wait(interval)
                continue
            self.log.info("database schema ready", tables="users,key_attributes,otts,tokens,ente_lab_clock")
            return

    def _failed(self, e: BaseException) -> Response:
        """handler.Error: log "Request failed" and answer.

        Warning level for a wrong code/token (401) and for 4xx ApiErrors (409, 404 with a code);
        error level for the rest (429, 410, 403, 400, 500), as upstream's requestFailureLogLevel.
        """
        if isinstance(e, museum_users.ApiFailure):
            warn = e.status == 401 or (bool(e.body.get("code")) and e.status < 500)
            self.log.log("warning" if warn else "error", "Request failed", error=e.reason)
            return json_response(e.status, e.body)
        if isinstance(e, museum_mail.MailError):
            self.log.error("Request failed", error=f"failed to send mail: {_one_line(e)}")
        else:
            self.log.error("Request failed", error=_one_line(e))
        return json_response(500, {})

    def _body(self, req: Request) -> dict:
        try:
            body = req.json()
        except ValueError as e:
            raise museum_users.ApiFailure(400, {}, f"bad request: invalid JSON: {e}") from e
        if not isinstance(body, dict):
            raise museum_users.ApiFailure(400, {}, "bad request: a JSON object is expected")
        return body

    @staticmethod
    def _str(body: dict, key: str) -> str:
        v = body.get(key, "")
        if not isinstance(v, str):
            raise museum_users.ApiFailure(400, {}, f"bad request: {key} must be a string")
        return v

    def send_ott(self, req: Request) -> Response:
        """POST /users/ott {"email","purpose"}; the app from X-Client-Package; the old "client" is ignored."""
        try:
            body = self._body(req)
            app = museum_users.app_from_package(req.header("X-Client-Package"))
            self.users.send_ott(self._str(body, "email"), self._str(body, "purpose"), app)
        except Exception as e:
            return self._failed(e)
        return Response(200)     # upstream: c.Status(200), no body

    def verify_email(self, req: Request) -> Response:
        try:
            body = self._body(req)
            app = museum_users.app_from_package(req.header("X-Client-Package"))
            result = self.users.verify_email(self._str(body, "email"), self._str(body, "ott"), app, req.client,
                                             req.header("User-Agent"))
        except Exception as e:
            return self._failed(e)
        return json_response(200, result)

    def set_attributes(self, req: Request) -> Response:
        try:
            app = museum_users.app_from_package(req.header("X-Client-Package"))
            token = req.header("X-Auth-Token") or (req.query.get("token") or [""])[0]
            user_id = self.users.user_for_token(token, app)
            self.users.set_attributes(user_id, self._body(req))
        except Exception as e:
            return self._failed(e)
        return Response(200)

    def ping(self, req: Request) -> Response:
        try:
            self.db.ping()
        except Exception as e:
            msg = _one_line(e)
            self.log.error("db ping failed", error=msg)
            return api_error(500, "INTERNAL_SERVER_ERROR", f"db ping failed: {msg}")
        return json_response(200, {"message": "pong", "id": STANDIN_ID})


def make_handler(app: Museum) -> type[BaseHTTPRequestHandler]:
    class MuseumHandler(BaseHTTPRequestHandler):
        server_version = "museum-standin"
        sys_version = ""
        protocol_version = "HTTP/1.1"

        def version_string(self) -> str:
            return self.server_version

        def log_message(self, format: str, *args: Any) -> None:
            pass   # one access line per request is written by _serve

        def _serve(self) -> None:
            start = time.monotonic()
            parts = urlsplit(self.path)
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n > 0 else b""
            req = Request(self.command, parts.path, parse_qs(parts.query), dict(self.headers.items()), body,
                          self.client_address[0])
            try:
                resp = app.router.handle(req)
            except Exception as e:
                app.log.error("unhandled error", error=repr(e), path=req.path)
                resp = api_error(500, "INTERNAL_SERVER_ERROR", "internal error")
            # Logged before the answer goes out: a client that got the answer finds the line.
            latency = time.monotonic() - start
            app.log.info("request", method=req.method, path=req.path, status=resp.status,
                         latency=f"{latency * 1000:.3f}ms", client_ip=req.client,
                         ua=req.header("User-Agent", "-"))
            self.send_response(resp.status)
            for k, v in resp.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(resp.body)))
            self.end_headers()
            if self.command != "HEAD" and resp.body:
                self.wfile.write(resp.body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _serve

    return MuseumHandler


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="museum",
                                 description="ente-lab stand-in for ghcr.io/ente/server (Museum); not Ente's server")
    ap.add_argument("--listen", default=os.environ.get("MUSEUM_STANDIN_LISTEN", "0.0.0.0:8080"),
                    help="HOST:PORT (default 0.0.0.0:8080, Museum's port)")
    ap.add_argument("--workdir", default=".", help="where configurations/, credentials.yaml, museum.yaml are read")
    args = ap.parse_args(argv)
    log = Logger(os.environ.get("MUSEUM_STANDIN_LOG_DIR", DEFAULT_LOG_DIR))
    log.info("ente-lab stand-in for ghcr.io/ente/server (Museum): NOT Ente's server; "
             "/ping, CORS, /users/ott, /users/verify-email, /users/attributes only",
             id=STANDIN_ID)
    try:
        config, notes = load_config(Path(args.workdir), os.environ, log)
    except (OSError, ValueError, yaml.YAMLError) as e:
        log.error("could not load configuration", error=str(e))
        return 1
    for note in notes:
        log.info("configuration", source=note)
    app = Museum(config, log, os.environ.get("ENVIRONMENT") or "local")
    host, _, port = args.listen.rpartition(":")
    server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), make_handler(app))
    server.daemon_threads = True

    def stop(signum: int, frame: Any) -> None:
        log.info("shutting down", signal=signal.Signals(signum).name)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("starting server", address="{}:{}".format(*server.server_address[:2]))
    stop_schema = threading.Event()
    threading.Thread(target=app.prepare_schema, args=(stop_schema,), daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        stop_schema.set()
        server.server_close()
        app.db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
