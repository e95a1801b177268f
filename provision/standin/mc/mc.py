#!/usr/bin/python3
"""ente-lab STAND-IN for the MinIO client ``mc`` (minio/mc image): just enough for the
stack's provisioning script. Commands: alias set, config host add (deprecated form),
mb [-p|--ignore-existing], ls, rb, --version. Requests are signed with AWS SigV4 (s3sig).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "minio"))
import s3sig  # noqa: E402

VERSION = "RELEASE.ente-lab-standin"
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
TIMEOUT = float(os.environ.get("MC_STANDIN_TIMEOUT", "5"))

USAGE = """NAME:
  mc - ente-lab stand-in for the MinIO Client (not the real mc)

USAGE:
  mc [--config-dir DIR] COMMAND [ARGS...]

COMMANDS:
  alias set ALIAS URL ACCESSKEY SECRETKEY   add a server (checked with a signed ListBuckets)
  config host add ALIAS URL ACCESSKEY SECRETKEY   deprecated form of 'alias set'
  mb [-p|--ignore-existing] ALIAS/BUCKET   make a bucket
  rb ALIAS/BUCKET                          remove an empty bucket
  ls ALIAS[/BUCKET[/PREFIX]]               list buckets or objects
  --version                                print the version

Configuration: $MC_CONFIG_DIR or ~/.mc (config.json, as real mc)."""


class McError(Exception):
    pass


class S3Reply(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def err(msg: str) -> None:
    print(f"mc: <ERROR> {msg}", file=sys.stderr)


# ------------------------------------------------------------------ config
class Config:
    def __init__(self, config_dir: str | None) -> None:
        self.dir = Path(config_dir or os.environ.get("MC_CONFIG_DIR") or Path.home() / ".mc")
        self.file = self.dir / "config.json"

    def load(self) -> dict:
        try:
            data = json.loads(self.file.read_text())
        except FileNotFoundError:
            data = {}
        except ValueError as e:
            raise McError(f"Unable to parse {self.file}: {e}") from None
        data.setdefault("version", "10")
        data.setdefault("aliases", {})
        return data

    def save(self, data: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.file.with_suffix(".json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, self.file)

    def alias(self, name: str) -> dict:
        a = self.load()["aliases"].get(name)
        if not a:
            raise McError(f"Unable to find alias `{name}`. Add it with `mc alias set {name} URL KEY SECRET`.")
        return a


# ------------------------------------------------------------------ S3 calls
def request(alias: dict, method: str, path: str = "/", query: dict[str, str] | None = None,
            body: bytes = b"") -> bytes:
    base = alias["url"].rstrip("/")
    url = base + quote(path, safe="/-_.~")
    if query:
        url += "?" + urlencode(sorted(query.items()), quote_via=quote, safe="-_.~")
    headers = s3sig.sign_headers(method, url, {}, body, alias["accessKey"], alias["secretKey"],
                                 alias.get("region") or "us-east-1")
    req = urllib.request.Request(url, data=body if method in ("PUT", "POST") else None, method=method,
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.read()
    except urllib.error.HTTPError as e:
        raw = e.read()
        code, message = f"HTTP{e.code}", e.reason
        try:
            root = ET.fromstring(raw)
            code = root.findtext("Code") or code
            message = root.findtext("Message") or message
        except ET.ParseError:
            pass
        raise S3Reply(e.code, code, message) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise McError(f'Get "{url}": {reason}') from None


def split_target(target: str) -> tuple[str, str, str]:
    alias, _, rest = target.partition("/")
    bucket, _, prefix = rest.partition("/")
    return alias, bucket, prefix


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{n}B"


def stamp(iso: str) -> str:
    try:
        t = dt.datetime.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return iso
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


# ------------------------------------------------------------------ commands
def alias_set(cfg: Config, args: list[str]) -> int:
    if len(args) != 4:
        err("alias set needs ALIAS URL ACCESSKEY SECRETKEY")
        return 1
    name, url, key, secret = args
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        err(f"Invalid URL `{url}`. URL should be of the form http(s)://host[:port]")
        return 1
    entry = {"url": url.rstrip("/"), "accessKey": key, "secretKey": secret, "api": "s3v4", "path": "auto"}
    try:
        request(entry, "GET", "/")
    except S3Reply as e:
        err(f"Unable to initialize new alias from the provided credentials. {e.message}")
        return 1
    except McError as e:
        err(f"Unable to initialize new alias from the provided credentials. {e}")
        return 1
    data = cfg.load()
    data["aliases"][name] = entry
    cfg.save(data)
    print(f"Added `{name}` successfully.")
    return 0


def make_bucket(cfg: Config, args: list[str]) -> int:
    ignore = False
    targets = []
    for a in args:
        if a in ("-p", "--ignore-existing"):
            ignore = True
        elif a.startswith("-"):
            err(f"flag {a} is not supported by the ente-lab mc stand-in")
            return 1
        else:
            targets.append(a)
    if not targets:
        err("mb needs ALIAS/BUCKET")
        return 1
    rc = 0
    for t in targets:
        alias, bucket, _ = split_target(t.rstrip("/"))
        if not bucket:
            err(f"Unable to make bucket `{t}`. Bucket name cannot be empty.")
            rc = 1
            continue
        try:
            request(cfg.alias(alias), "PUT", "/" + bucket)
        except S3Reply as e:
            if not (ignore and e.code == "BucketAlreadyOwnedByYou"):
                err(f"Unable to make bucket `{alias}/{bucket}`. {e.message}")
                rc = 1
                continue
        except McError as e:
            err(f"Unable to make bucket `{alias}/{bucket}`. {e}")
            rc = 1
            continue
        print(f"Bucket created successfully `{alias}/{bucket}`.")
    return rc


def remove_bucket(cfg: Config, args: list[str]) -> int:
    targets = [a for a in args if not a.startswith("-")]
    if not targets or len(targets) != len(args):
        err("rb needs ALIAS/BUCKET (no flags in the ente-lab stand-in; --force is not supported)")
        return 1
    rc = 0
    for t in targets:
        alias, bucket, _ = split_target(t.rstrip("/"))
        try:
            request(cfg.alias(alias), "DELETE", "/" + bucket)
            print(f"Removed `{alias}/{bucket}` successfully.")
        except S3Reply as e:
            err(f"Unable to remove bucket `{alias}/{bucket}`. {e.message}")
            rc = 1
        except McError as e:
            err(f"Unable to remove bucket `{alias}/{bucket}`. {e}")
            rc = 1
    return rc


def list_(cfg: Config, args: list[str]) -> int:
    targets = [a for a in args if not a.startswith("-")]
    if len(targets) != 1:
        err("ls needs exactly one ALIAS[/BUCKET[/PREFIX]]")
        return 1
    alias_name, bucket, prefix = split_target(targets[0])
    try:
        alias = cfg.alias(alias_name)
        if not bucket:
            root = ET.fromstring(request(alias, "GET", "/"))
            for b in root.iter(NS + "Bucket"):
                print(f"[{stamp(b.findtext(NS + 'CreationDate') or '')}] {human(0):>7} {b.findtext(NS + 'Name')}/")
            return 0
        token = ""
        while True:
            q = {"list-type": "2", "prefix": prefix, "delimiter": "/"}
            if token:
                q["continuation-token"] = token
            root = ET.fromstring(request(alias, "GET", "/" + bucket, q))
            for c in root.iter(NS + "Contents"):
                key = (c.findtext(NS + "Key") or "")[len(prefix):]
                size = int(c.findtext(NS + "Size") or 0)
                print(f"[{stamp(c.findtext(NS + 'LastModified') or '')}] {human(size):>7} STANDARD {key}")
            for p in root.iter(NS + "CommonPrefixes"):
                print(f"{'':>33}{human(0):>7} {(p.findtext(NS + 'Prefix') or '')[len(prefix):]}")
            if root.findtext(NS + "IsTruncated") != "true":
                return 0
            token = root.findtext(NS + "NextContinuationToken") or ""
    except S3Reply as e:
        err(f"Unable to list `{targets[0]}`. {e.message}")
    except McError as e:
        err(f"Unable to list `{targets[0]}`. {e}")
    return 1


def main(argv: list[str]) -> int:
    config_dir = None
    args: list[str] = []
    it = iter(argv)
    for a in it:
        if a in ("-C", "--config-dir"):
            config_dir = next(it, None)
        elif a.startswith("--config-dir="):
            config_dir = a.split("=", 1)[1]
        elif a in ("--quiet", "-q", "--insecure", "--no-color", "--disable-pager"):
            continue
        else:
            args.append(a)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 1
    if args[0] in ("--version", "-v", "version"):
        print(f"mc version {VERSION} (ente-lab stand-in for minio/mc, not the real MinIO client)")
        return 0
    cfg = Config(config_dir)
    cmd, rest = args[0], args[1:]
    try:
        if cmd == "alias" and rest[:1] == ["set"]:
            return alias_set(cfg, rest[1:])
        if cmd == "config" and rest[:2] == ["host", "add"]:
            print("mc: <DEPRECATED> `mc config host add` is deprecated. Please use `mc alias set` instead.",
                  file=sys.stderr)
            return alias_set(cfg, rest[2:])
        if cmd == "mb":
            return make_bucket(cfg, rest)
        if cmd == "rb":
            return remove_bucket(cfg, rest)
        if cmd == "ls":
            return list_(cfg, rest)
    except McError as e:
        err(str(e))
        return 1
    err(f"`{' '.join(args[:3])}` is not a command of the ente-lab mc stand-in (it knows: alias set, "
        "config host add, mb, rb, ls, --version).")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
