"""The MinIO and mc stand-ins (provision/standin/{minio,mc}) against an independent client.

botocore/boto3 is the oracle: if it can sign, create, list, put, get and presign against
minio.py, the stand-in speaks S3 SigV4 as AWS defines it (not just as our own s3sig does).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest
from botocore.client import Config
from botocore.exceptions import ClientError

from entelab.state import ROOT

STANDIN = ROOT / "provision" / "standin"
MINIO = STANDIN / "minio" / "minio.py"
MC = STANDIN / "mc" / "mc.py"
USER, SECRET = "ente-lab-key", "s3cr3t-Value/with+chars"
BUCKETS = ["b2-eu-cen", "wasabi-eu-central-2-v3", "scw-eu-fr-v3"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"port {port} never opened")


class Minio:
    def __init__(self, proc: subprocess.Popen, port: int, console: int, data: Path) -> None:
        self.proc, self.port, self.console, self.data = proc, port, console, data
        self.url = f"http://127.0.0.1:{port}"

    def client(self, key: str = USER, secret: str = SECRET):
        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=key, aws_secret_access_key=secret,
                            region_name="eu-central-2",
                            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                                          retries={"max_attempts": 1}))


def start_minio(tmp_path: Path, port: int | None = None) -> Minio:
    port = port or free_port()
    console = free_port()
    env = {**os.environ, "MINIO_ROOT_USER": USER, "MINIO_ROOT_PASSWORD": SECRET}
    proc = subprocess.Popen([sys.executable, str(MINIO), "server", str(tmp_path / "data"),
                             "--address", f"127.0.0.1:{port}", "--console-address", f"127.0.0.1:{console}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_port(port, proc)
    return Minio(proc, port, console, tmp_path / "data")


@pytest.fixture
def minio(tmp_path):
    m = start_minio(tmp_path)
    yield m
    m.proc.terminate()
    m.proc.wait(timeout=5)
    m.proc.stdout.close()
    m.proc.stderr.close()


def mc(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MC_CONFIG_DIR": str(tmp_path / "mc"), "MC_STANDIN_TIMEOUT": "2"}
    return subprocess.run([sys.executable, str(MC), *args], env=env, capture_output=True, text=True, timeout=20)


def code_of(exc: pytest.ExceptionInfo) -> tuple[int, str]:
    e = exc.value
    assert isinstance(e, ClientError)
    return e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]


# ------------------------------------------------------------------ S3 API through boto3
def test_boto3_bucket_and_object_round_trip(minio):
    s3 = minio.client()
    for b in BUCKETS:
        s3.create_bucket(Bucket=b)
    assert sorted(b["Name"] for b in s3.list_buckets()["Buckets"]) == sorted(BUCKETS)
    with pytest.raises(ClientError) as exc:
        s3.create_bucket(Bucket="b2-eu-cen")
    assert code_of(exc) == (409, "BucketAlreadyOwnedByYou")
    s3.head_bucket(Bucket="b2-eu-cen")

    body = b"\x00ente\xffbytes" * 100
    put = s3.put_object(Bucket="b2-eu-cen", Key="user 1/file+odd&name.bin", Body=body, ContentType="image/png")
    got = s3.get_object(Bucket="b2-eu-cen", Key="user 1/file+odd&name.bin")
    assert got["Body"].read() == body
    assert got["ContentType"] == "image/png"
    assert got["ETag"] == put["ETag"]
    part = s3.get_object(Bucket="b2-eu-cen", Key="user 1/file+odd&name.bin", Range="bytes=1-4")
    assert part["Body"].read() == b"ente"
    assert s3.head_object(Bucket="b2-eu-cen", Key="user 1/file+odd&name.bin")["ContentLength"] == len(body)

    s3.put_object(Bucket="b2-eu-cen", Key="other/x", Body=b"x")
    listed = s3.list_objects_v2(Bucket="b2-eu-cen", Prefix="user 1/")
    assert [o["Key"] for o in listed["Contents"]] == ["user 1/file+odd&name.bin"]
    page = s3.list_objects_v2(Bucket="b2-eu-cen", MaxKeys=1)
    assert page["IsTruncated"] and page["KeyCount"] == 1
    rest = s3.list_objects_v2(Bucket="b2-eu-cen", ContinuationToken=page["NextContinuationToken"])
    assert [o["Key"] for o in page["Contents"] + rest["Contents"]] == ["other/x", "user 1/file+odd&name.bin"]

    with pytest.raises(ClientError) as exc:
        s3.delete_bucket(Bucket="b2-eu-cen")
    assert code_of(exc) == (409, "BucketNotEmpty")
    s3.delete_object(Bucket="b2-eu-cen", Key="other/x")
    s3.delete_object(Bucket="b2-eu-cen", Key="user 1/file+odd&name.bin")
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket="b2-eu-cen", Key="other/x")
    assert code_of(exc)[0] == 404
    s3.delete_bucket(Bucket="b2-eu-cen")
    assert "b2-eu-cen" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_presigned_get_works_and_tampering_fails(minio):
    s3 = minio.client()
    s3.create_bucket(Bucket="scw-eu-fr-v3")
    s3.put_object(Bucket="scw-eu-fr-v3", Key="a/b.txt", Body=b"presigned!")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "scw-eu-fr-v3", "Key": "a/b.txt"}, ExpiresIn=60)
    assert "X-Amz-Signature=" in url
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.read() == b"presigned!"
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(url.replace("a/b.txt", "a/c.txt"), timeout=5)
    assert exc.value.code == 403
    assert b"<Code>SignatureDoesNotMatch</Code>" in exc.value.read()


def test_wrong_secret_unknown_key_and_unsigned_are_refused(minio):
    minio.client().create_bucket(Bucket="wasabi-eu-central-2-v3")
    with pytest.raises(ClientError) as exc:
        minio.client(secret="not-the-secret").list_buckets()
    assert code_of(exc) == (403, "SignatureDoesNotMatch")
    with pytest.raises(ClientError) as exc:
        minio.client(key="nobody").list_buckets()
    assert code_of(exc) == (403, "InvalidAccessKeyId")
    for method, path in (("GET", "/"), ("PUT", "/newbucket"), ("GET", "/wasabi-eu-central-2-v3?list-type=2")):
        req = urllib.request.Request(minio.url + path, method=method)
        with pytest.raises(urllib.error.HTTPError) as herr:
            urllib.request.urlopen(req, timeout=5)
        assert herr.value.code == 403, path
        assert b"<Code>AccessDenied</Code>" in herr.value.read()
    assert not (minio.data / "newbucket").exists()
    # Health is unauthenticated (as on MinIO); the console port is a stand-in page.
    with urllib.request.urlopen(minio.url + "/minio/health/live", timeout=5) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{minio.console}/", timeout=5) as resp:
        assert b"ente-lab MinIO stand-in (no console)" in resp.read()


def test_sigterm_stops_it_promptly(tmp_path):
    m = start_minio(tmp_path)
    t0 = time.monotonic()
    m.proc.terminate()
    assert m.proc.wait(timeout=3) == 0
    assert time.monotonic() - t0 < 2
    err = m.proc.stderr.read()
    assert "ente-lab stand-in for minio/minio" in err
    m.proc.stdout.close()
    m.proc.stderr.close()


# ------------------------------------------------------------------ mc stand-in
def test_mc_alias_set_checks_credentials(minio, tmp_path):
    bad = mc(tmp_path, "alias", "set", "h0", minio.url, USER, "wrong-secret")
    assert bad.returncode == 1
    assert "signature we calculated does not match" in bad.stderr
    assert not (tmp_path / "mc" / "config.json").exists()
    ok = mc(tmp_path, "alias", "set", "h0", minio.url, USER, SECRET)
    assert ok.returncode == 0, ok.stderr
    assert "Added `h0` successfully." in ok.stdout
    cfg = (tmp_path / "mc" / "config.json").read_text()
    assert f'"url": "{minio.url}"' in cfg and f'"secretKey": "{SECRET}"' in cfg
    old = mc(tmp_path, "config", "host", "add", "h1", minio.url, USER, SECRET)
    assert old.returncode == 0 and "DEPRECATED" in old.stderr


def test_mc_alias_set_fails_while_the_server_is_down(tmp_path):
    r = mc(tmp_path, "alias", "set", "h0", f"http://127.0.0.1:{free_port()}", USER, SECRET)
    assert r.returncode != 0
    assert "Unable to initialize new alias" in r.stderr


def test_mc_provisioning_loop_mb_ls_rb(tmp_path):
    """The provisioning script's flow: loop on `mc alias set` until the server is up, then mb -p."""
    port = free_port()
    assert mc(tmp_path, "alias", "set", "h0", f"http://127.0.0.1:{port}", USER, SECRET).returncode != 0
    m = start_minio(tmp_path, port)
    try:
        assert mc(tmp_path, "alias", "set", "h0", m.url, USER, SECRET).returncode == 0
        for _ in range(2):   # -p: a second run (container restart) succeeds too
            for b in BUCKETS:
                r = mc(tmp_path, "mb", "-p", f"h0/{b}")
                assert r.returncode == 0, r.stderr
                assert r.stdout.strip() == f"Bucket created successfully `h0/{b}`."
        again = mc(tmp_path, "mb", "h0/b2-eu-cen")
        assert again.returncode == 1 and "already own it" in again.stderr
        ls = mc(tmp_path, "ls", "h0")
        assert ls.returncode == 0
        assert sorted(line.split()[-1] for line in ls.stdout.splitlines()) == sorted(b + "/" for b in BUCKETS)
        m.client().put_object(Bucket="b2-eu-cen", Key="dir/obj.bin", Body=b"12345")
        m.client().put_object(Bucket="b2-eu-cen", Key="top.txt", Body=b"1")
        objs = mc(tmp_path, "ls", "h0/b2-eu-cen")
        assert objs.returncode == 0
        names = [line.split()[-1] for line in objs.stdout.splitlines()]
        assert names == ["top.txt", "dir/"]
        assert mc(tmp_path, "rb", "h0/scw-eu-fr-v3").returncode == 0
        assert "scw-eu-fr-v3" not in [b["Name"] for b in m.client().list_buckets()["Buckets"]]
        nope = mc(tmp_path, "cp", "a", "b")
        assert nope.returncode == 1 and "not a command of the ente-lab mc stand-in" in nope.stderr
        assert "stand-in" in mc(tmp_path, "--version").stdout
    finally:
        m.proc.terminate()
        m.proc.wait(timeout=5)
        m.proc.stdout.close()
        m.proc.stderr.close()
