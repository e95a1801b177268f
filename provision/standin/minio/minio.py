#!/usr/bin/python3
"""ente-lab STAND-IN for the minio/minio image: a small S3-compatible server (stdlib only).

Invoked like MinIO: ``minio server /data --address ":3200" --console-address ":3201"`` with
MINIO_ROOT_USER / MINIO_ROOT_PASSWORD. Every S3 request must carry a valid AWS Signature V4
(header or pre-signed URL) made with the root user's key, as on real MinIO. Path-style only.
Buckets are directories under the data dir; objects are files in them (key percent-encoded),
with Content-Type and ETag (md5) in a sidecar under <data>/.standin-meta/.
See NOTES.md for what it does not do (multipart uploads, versioning, policies, IAM users, ...).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import json
import os
import re
import signal
import sys
import tempfile
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit
from xml.sax.saxutils import escape

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
import s3sig  # noqa: E402

VERSION = "RELEASE.ente-lab-standin"
NS = "http://s3.amazonaws.com/doc/2006-03-01/"
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
META_DIR = ".standin-meta"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def iso_date(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class S3Error(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def no_such_bucket(b: str) -> S3Error:
    return S3Error(404, "NoSuchBucket", f"The specified bucket does not exist ({b})")


class Store:
    """Buckets as directories, objects as files named by the percent-encoded key."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.meta = root / META_DIR
        self.lock = threading.Lock()
        self.meta.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def check_bucket_name(b: str) -> None:
        if not BUCKET_RE.match(b) or ".." in b:
            raise S3Error(400, "InvalidBucketName", "The specified bucket is not valid.")

    @staticmethod
    def fname(key: str) -> str:
        if not key or len(key.encode()) > 1024:
            raise S3Error(400, "KeyTooLongError" if key else "InvalidArgument", "Invalid object key.")
        return quote(key, safe="")

    def bucket_dir(self, b: str) -> Path:
        self.check_bucket_name(b)
        return self.root / b

    def buckets(self) -> list[tuple[str, float]]:
        return sorted((p.name, p.stat().st_mtime) for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and BUCKET_RE.match(p.name))

    def has_bucket(self, b: str) -> bool:
        return self.bucket_dir(b).is_dir()

    def create_bucket(self, b: str) -> None:
        d = self.bucket_dir(b)
        with self.lock:
            if d.is_dir():
                raise S3Error(409, "BucketAlreadyOwnedByYou",
                              "Your previous request to create the named bucket succeeded and you already own it.")
            d.mkdir()
            (self.meta / b).mkdir(exist_ok=True)

    def delete_bucket(self, b: str) -> None:
        d = self.bucket_dir(b)
        with self.lock:
            if not d.is_dir():
                raise no_such_bucket(b)
            if any(d.iterdir()):
                raise S3Error(409, "BucketNotEmpty", "The bucket you tried to delete is not empty")
            d.rmdir()
            md = self.meta / b
            if md.is_dir():
                for f in md.iterdir():
                    f.unlink()
                md.rmdir()

    def put(self, b: str, key: str, data: bytes, content_type: str) -> str:
        d = self.bucket_dir(b)
        if not d.is_dir():
            raise no_such_bucket(b)
        name = self.fname(key)
        etag = hashlib.md5(data).hexdigest()
        (self.meta / b).mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        meta = json.dumps({"content_type": content_type, "etag": etag, "key": key})
        with self.lock:
            (self.meta / b / (name + ".json")).write_text(meta)
            os.replace(tmp, d / name)
        return etag

    def stat(self, b: str, key: str) -> tuple[Path, dict[str, Any]]:
        d = self.bucket_dir(b)
        if not d.is_dir():
            raise no_such_bucket(b)
        p = d / self.fname(key)
        if not p.is_file():
            raise S3Error(404, "NoSuchKey", "The specified key does not exist.")
        try:
            meta = json.loads((self.meta / b / (p.name + ".json")).read_text())
        except (OSError, ValueError):
            meta = {"content_type": "application/octet-stream", "etag": hashlib.md5(p.read_bytes()).hexdigest()}
        return p, meta

    def delete(self, b: str, key: str) -> None:
        d = self.bucket_dir(b)
        if not d.is_dir():
            raise no_such_bucket(b)
        name = self.fname(key)
        with self.lock:
            (d / name).unlink(missing_ok=True)
            (self.meta / b / (name + ".json")).unlink(missing_ok=True)

    def list(self, b: str) -> list[tuple[str, int, float, str]]:
        d = self.bucket_dir(b)
        if not d.is_dir():
            raise no_such_bucket(b)
        out = []
        for p in d.iterdir():
            if p.name.startswith(".tmp-") or not p.is_file():
                continue
            st = p.stat()
            try:
                etag = json.loads((self.meta / b / (p.name + ".json")).read_text())["etag"]
            except (OSError, ValueError, KeyError):
                etag = ""
            out.append((unquote(p.name), st.st_size, st.st_mtime, etag))
        return sorted(out)


def xml_doc(root: str, body: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{NS}">{body}</{root}>').encode()


class S3Handler(BaseHTTPRequestHandler):
    server_version = "MinIO"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def version_string(self) -> str:
        return self.server_version
    store: Store
    creds: dict[str, str]
    region: str

    def log_message(self, format: str, *args: Any) -> None:
        if os.environ.get("MINIO_STANDIN_ACCESS_LOG"):
            log(f"{self.address_string()} - {format % args}")

    # -------------------------------------------------- plumbing
    def _send(self, status: int, body: bytes = b"", ctype: str = "application/xml",
              headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        rid = uuid.uuid4().hex[:16].upper()
        self.send_header("x-amz-request-id", rid)
        self.send_header("Accept-Ranges", "bytes")
        origin = self.headers.get("Origin")
        if origin:   # MinIO's default API CORS: every origin allowed
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Access-Control-Allow-Credentials", "true")
            self.send_header("Access-Control-Expose-Headers", "ETag, x-amz-request-id, Content-Length")
            self.send_header("Vary", "Origin")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if body or not head:
            self.send_header("Content-Type", ctype)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, resource: str) -> None:
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
                f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
                f"<Resource>{escape(resource)}</Resource><RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId>"
                "</Error>")
        self._send(status, body.encode(), head=self.command == "HEAD")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise S3Error(411, "MissingContentLength", "You must provide the Content-Length HTTP header.")
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        raw_path, raw_query = parts.path or "/", parts.query
        try:
            if raw_path in ("/minio/health/live", "/minio/health/ready", "/minio/health/cluster") \
                    and self.command in ("GET", "HEAD"):
                self._send(200, head=True)
                return
            if self.command == "OPTIONS":   # CORS preflight: unauthenticated, as on MinIO
                hdrs = {"Access-Control-Allow-Methods": "GET, PUT, HEAD, POST, DELETE, OPTIONS"}
                want = self.headers.get("Access-Control-Request-Headers")
                if want:
                    hdrs["Access-Control-Allow-Headers"] = want
                self._send(200, headers=hdrs, head=True)
                return
            body = self._body()
            try:
                ver = s3sig.verify(self.command, raw_path, raw_query, dict(self.headers.items()), self.creds.get)
            except s3sig.SigError as e:
                raise S3Error(e.status, e.code, e.message) from None
            if ver.payload_hash != s3sig.UNSIGNED and hashlib.sha256(body).hexdigest() != ver.payload_hash:
                raise S3Error(400, "XAmzContentSHA256Mismatch",
                              "The provided 'x-amz-content-sha256' header does not match what was computed.")
            self._route(unquote(raw_path), s3sig.parse_query(raw_query), body)
        except S3Error as e:
            self._error(e.status, e.code, e.message, raw_path)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # a bug of the stand-in: answer like S3 would, log it
            log(f"minio stand-in: internal error on {self.command} {raw_path}: {e!r}")
            self._error(500, "InternalError", "We encountered an internal error, please try again.", raw_path)

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = do_OPTIONS = _dispatch

    # -------------------------------------------------- S3 operations
    def _route(self, path: str, query: list[tuple[str, str]], body: bytes) -> None:
        q = dict(query)
        bucket, _, key = path.lstrip("/").partition("/")
        m = self.command
        if not bucket:
            if m == "GET":
                return self.list_buckets()
            raise S3Error(405, "MethodNotAllowed", "The specified method is not allowed against this resource.")
        unsupported = {"uploads", "uploadId", "versioning", "policy", "lifecycle", "cors", "tagging", "acl",
                       "delete", "notification", "encryption", "object-lock", "replication", "versions"}
        hit = unsupported & q.keys()
        if hit or m == "POST":
            raise S3Error(501, "NotImplemented",
                          f"A header or query you provided ({', '.join(sorted(hit)) or m}) is not implemented "
                          "by the ente-lab MinIO stand-in.")
        if not key:
            if m == "PUT":
                self.store.create_bucket(bucket)
                return self._send(200, headers={"Location": "/" + bucket})
            if m == "HEAD":
                if not self.store.has_bucket(bucket):
                    raise no_such_bucket(bucket)
                return self._send(200, head=True)
            if m == "DELETE":
                self.store.delete_bucket(bucket)
                return self._send(204, head=True)
            if m == "GET":
                if "location" in q:
                    if not self.store.has_bucket(bucket):
                        raise no_such_bucket(bucket)
                    region = "" if self.region == "us-east-1" else escape(self.region)
                    return self._send(200, xml_doc("LocationConstraint", region))
                return self.list_objects(bucket, q)
        else:
            if m == "PUT":
                if "x-amz-copy-source" in {k.lower() for k in self.headers}:
                    raise S3Error(501, "NotImplemented", "CopyObject is not implemented by the stand-in.")
                ctype = self.headers.get("Content-Type") or "application/octet-stream"
                etag = self.store.put(bucket, key, body, ctype)
                return self._send(200, headers={"ETag": f'"{etag}"'}, head=True)
            if m in ("GET", "HEAD"):
                return self.get_object(bucket, key, head=(m == "HEAD"))
            if m == "DELETE":
                self.store.delete(bucket, key)
                return self._send(204, head=True)
        raise S3Error(405, "MethodNotAllowed", "The specified method is not allowed against this resource.")

    def list_buckets(self) -> None:
        items = "".join(f"<Bucket><Name>{escape(n)}</Name><CreationDate>{iso_date(t)}</CreationDate></Bucket>"
                        for n, t in self.store.buckets())
        owner = "<Owner><ID>02d6176db174dc93cb1b899f7c6078f08654445fe8cf1b6ce98d8855f66bdbf4</ID>" \
                "<DisplayName>minio</DisplayName></Owner>"
        self._send(200, xml_doc("ListAllMyBucketsResult", f"{owner}<Buckets>{items}</Buckets>"))

    def list_objects(self, bucket: str, q: dict[str, str]) -> None:
        v2 = q.get("list-type") == "2"
        prefix = q.get("prefix", "")
        delimiter = q.get("delimiter", "")
        try:
            max_keys = max(0, min(1000, int(q.get("max-keys", "1000"))))
        except ValueError:
            raise S3Error(400, "InvalidArgument", "max-keys must be an integer") from None
        after = q.get("continuation-token") or q.get("start-after", "") if v2 else q.get("marker", "")
        contents: list[str] = []
        prefixes: list[str] = []
        seen: set[str] = set()
        truncated = False
        last = ""
        for key, size, mtime, etag in self.store.list(bucket):
            if not key.startswith(prefix) or (after and key <= after):
                continue
            if delimiter:
                rest = key[len(prefix):]
                if delimiter in rest:
                    cp = prefix + rest.split(delimiter, 1)[0] + delimiter
                    if cp in seen:
                        continue
                    if len(contents) + len(prefixes) >= max_keys:
                        truncated = True
                        break
                    seen.add(cp)
                    prefixes.append(f"<CommonPrefixes><Prefix>{escape(cp)}</Prefix></CommonPrefixes>")
                    last = cp + "\U0010ffff"
                    continue
            if len(contents) + len(prefixes) >= max_keys:
                truncated = True
                break
            contents.append(f"<Contents><Key>{escape(key)}</Key><LastModified>{iso_date(mtime)}</LastModified>"
                            f"<ETag>&quot;{etag}&quot;</ETag><Size>{size}</Size>"
                            "<StorageClass>STANDARD</StorageClass></Contents>")
            last = key
        head = (f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix><MaxKeys>{max_keys}</MaxKeys>"
                f"<Delimiter>{escape(delimiter)}</Delimiter><IsTruncated>{'true' if truncated else 'false'}"
                "</IsTruncated>")
        if v2:
            head += f"<KeyCount>{len(contents) + len(prefixes)}</KeyCount>"
            if truncated:
                head += f"<NextContinuationToken>{escape(last)}</NextContinuationToken>"
        elif truncated:
            head += f"<NextMarker>{escape(last)}</NextMarker>"
        self._send(200, xml_doc("ListBucketResult", head + "".join(contents) + "".join(prefixes)))

    def get_object(self, bucket: str, key: str, head: bool) -> None:
        p, meta = self.store.stat(bucket, key)
        data = p.read_bytes()
        st = p.stat()
        hdrs = {"ETag": f'"{meta["etag"]}"', "Last-Modified": http_date(st.st_mtime)}
        status = 200
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng or "")
        if m and (m.group(1) or m.group(2)):
            size = len(data)
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:
                start, end = max(0, size - int(m.group(2))), size - 1
            if start >= size or start > end:
                raise S3Error(416, "InvalidRange", "The requested range is not satisfiable")
            hdrs["Content-Range"] = f"bytes {start}-{end}/{size}"
            data = data[start:end + 1]
            status = 206
        hdrs["Content-Length"] = str(len(data))
        self.send_response(status)
        self.send_header("Content-Type", meta.get("content_type") or "application/octet-stream")
        origin = self.headers.get("Origin")
        if origin:
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Access-Control-Expose-Headers", "ETag, Content-Length")
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(data)


CONSOLE_PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>ente-lab MinIO stand-in</title></head>
<body><h1>ente-lab MinIO stand-in (no console)</h1>
<p>This is not MinIO: the ente-lab stand-in speaks the S3 API on the API port only.</p></body></html>
"""


class ConsoleHandler(BaseHTTPRequestHandler):
    server_version = "MinIO-Console-standin"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(CONSOLE_PAGE)))
        self.end_headers()
        self.wfile.write(CONSOLE_PAGE)


def parse_address(addr: str, default_port: int) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    return (host or "0.0.0.0", int(port) if port else default_port)


USAGE = """usage: minio server DIR [--address ADDR] [--console-address ADDR]
       minio --version
ente-lab stand-in for the minio/minio image (S3 API subset; see /opt/ente-lab-standin/NOTES.md).
Credentials: MINIO_ROOT_USER / MINIO_ROOT_PASSWORD (default minioadmin/minioadmin)."""


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 1
    if argv[0] in ("--version", "-v", "version"):
        print(f"minio version {VERSION} (ente-lab stand-in for minio/minio, not MinIO)")
        return 0
    if argv[0] != "server":
        print(f"minio: unknown command {argv[0]!r} (the ente-lab stand-in only knows 'server')\n{USAGE}",
              file=sys.stderr)
        return 1
    address, console, data = ":9000", "", ""
    it = iter(argv[1:])
    for arg in it:
        if arg in ("--address", "--console-address"):
            val = next(it, None)
            if val is None:
                print(f"minio: {arg} needs a value", file=sys.stderr)
                return 1
            if arg == "--address":
                address = val
            else:
                console = val
        elif arg.startswith("--address="):
            address = arg.split("=", 1)[1]
        elif arg.startswith("--console-address="):
            console = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            print(f"minio: flag {arg} ignored by the ente-lab stand-in", file=sys.stderr)
        elif not data:
            data = arg
        else:
            print("minio: the ente-lab stand-in serves one data directory only", file=sys.stderr)
            return 1
    if not data:
        print(USAGE, file=sys.stderr)
        return 1
    user = os.environ.get("MINIO_ROOT_USER") or "minioadmin"
    password = os.environ.get("MINIO_ROOT_PASSWORD") or "minioadmin"
    if len(user) < 3 or len(password) < 8:
        log("ERROR Unable to validate credentials inherited from the shell environment: access key length should "
            "be at least 3, and secret key length at least 8 characters")
        return 1
    store = Store(Path(data))
    handler = type("Handler", (S3Handler,), {"store": store, "creds": {user: password},
                                              "region": os.environ.get("MINIO_REGION") or "us-east-1"})
    api = ThreadingHTTPServer(parse_address(address, 9000), handler)
    api.daemon_threads = True
    servers = [api]
    if console:
        con = ThreadingHTTPServer(parse_address(console, 9001), ConsoleHandler)
        con.daemon_threads = True
        servers.append(con)
        threading.Thread(target=con.serve_forever, daemon=True).start()

    def stop(signum: int, frame: Any) -> None:
        log(f"Exiting on signal: {signal.Signals(signum).name}")
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log("ente-lab stand-in for minio/minio (NOT MinIO: a small S3-compatible server for the lab)")
    log(f"MinIO Object Storage Server (stand-in) Version: {VERSION}")
    log("API: http://{}:{}".format(*api.server_address[:2]))
    if console:
        log("WebUI: http://{}:{} (stand-in page, no console)".format(*servers[1].server_address[:2]))
    log(f"Data directory: {os.path.abspath(data)}")
    try:
        api.serve_forever(poll_interval=0.2)
    finally:
        for s in servers:
            s.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
