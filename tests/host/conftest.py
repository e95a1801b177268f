"""Shared fixtures for the host tests of the rendered templates.

``rendered`` renders the default settings (postfix) with freshly generated
secrets into a throw-away root, exactly as lab.render would lay them out;
``rendered_sendmail`` does the same with ``mta=sendmail``. ``lab_certs`` is a
trustme CA plus one leaf for every lab name, laid out like dehydrated's
``certs/<domain>/`` directory.
"""

from __future__ import annotations

import contextlib
import datetime
import http.server
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from entelab import render
from entelab import secrets as secrets_mod
from entelab import settings as settings_mod
from entelab.state import ROOT


@dataclass
class Tree:
    root: Path
    settings: settings_mod.Settings
    secrets: secrets_mod.Secrets
    entries: dict            # dest path -> render.Entry

    def __repr__(self) -> str:
        return f"Tree({self.root}, mta={self.settings.mta}, {len(self.entries)} entries)"

    def path(self, dest: str) -> Path:
        return self.root / dest.lstrip("/")

    def text(self, dest: str) -> str:
        return self.path(dest).read_text()

    def by_src(self, src: str) -> render.Entry:
        return next(e for e in self.entries.values() if e.src == src)

    def files(self):
        return [e for e in self.entries.values() if e.kind == "file"]


def load(overrides=()) -> settings_mod.Settings:
    # local_file: a path that does not exist, so a developer's settings.local.yaml
    # (or ENTE_LAB_SETTINGS) never changes what the tests see.
    settings, _ = settings_mod.load_settings(ROOT, overrides=list(overrides),
                                             local_file=ROOT / "tests" / "no-such-settings.yaml")
    return settings


def render_into(root: Path, settings, secrets) -> Tree:
    entries = {}
    for entry, data in render.render_tree(settings, secrets, lab_id="entelab-test"):
        target = root / entry.path.lstrip("/")
        entries[entry.path] = entry
        if entry.kind == "absent":
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if entry.kind == "link":
            target.symlink_to(entry.target)
        elif entry.kind in ("dir", "datadir"):
            target.mkdir(exist_ok=True)
        else:
            target.write_bytes(data)
            target.chmod(int(entry.mode, 8))
        entries[entry.path] = entry
    return Tree(root=root, settings=settings, secrets=secrets, entries=entries)


@pytest.fixture(scope="session")
def lab_secrets(tmp_path_factory) -> secrets_mod.Secrets:
    path = tmp_path_factory.mktemp("secrets") / "s.yaml"
    secrets, _ = secrets_mod.load_or_create(path)
    return secrets


@pytest.fixture(scope="session")
def rendered(tmp_path_factory, lab_secrets) -> Tree:
    return render_into(tmp_path_factory.mktemp("rootfs"), load(), lab_secrets)


@pytest.fixture(scope="session")
def rendered_sendmail(tmp_path_factory, lab_secrets) -> Tree:
    return render_into(tmp_path_factory.mktemp("rootfs-sendmail"), load(["mta=sendmail"]),
                       lab_secrets)


@dataclass
class Certs:
    ca_pem: Path
    certdir: Path            # like /etc/dehydrated/certs/<domain>/


@pytest.fixture(scope="session")
def lab_certs(tmp_path_factory, rendered) -> Certs:
    import trustme

    base = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    leaf = ca.issue_cert(*rendered.settings.cert_names, "127.0.0.1", "localhost")
    certdir = base / "certs" / rendered.settings.domain
    certdir.mkdir(parents=True)
    leaf.private_key_pem.write_to_path(str(certdir / "privkey.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(certdir / "cert.pem"))
    with open(certdir / "fullchain.pem", "wb") as fh:
        for blob in leaf.cert_chain_pems:
            fh.write(blob.bytes())
    ca.cert_pem.write_to_path(str(base / "ca.pem"))
    os.chmod(certdir / "privkey.pem", 0o600)
    return Certs(ca_pem=base / "ca.pem", certdir=certdir)


def serve_under_new_ca(certs: Path, name: str = "lab.example",
                       not_after: datetime.datetime | None = None) -> tuple[bytes, Path]:
    """A certificate laid out as dehydrated serves it (CERTS/NAME/cert.pem + chain.pem,
    replacing one there) under a fresh trustme root + intermediate, valid until
    NOT_AFTER (trustme's default otherwise): the root's PEM and the certificate's dir."""
    import trustme
    root = trustme.CA()
    leaf = root.create_child_ca().issue_cert(name, not_after=not_after)
    d = certs / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "cert.pem").write_bytes(leaf.cert_chain_pems[0].bytes())
    (d / "chain.pem").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems[1:]))
    return root.cert_pem.bytes(), d


def need(tool: str) -> str:
    """Absolute path of a real program. Missing means the host is not prepared:
    fail (CI installs it, see .ci/run), never skip."""
    path = shutil.which(tool) or next((p for p in (f"/usr/sbin/{tool}", f"/sbin/{tool}")
                                       if os.access(p, os.X_OK)), None)
    if not path:
        pytest.fail(f"{tool} is not installed; the host tests need it (apt-get install, see .ci/run)")
    return path


@pytest.fixture
def empty_checkout(tmp_path, monkeypatch):
    """A fresh checkout dir (no settings.local.yaml, no build/) with its own state home."""
    monkeypatch.delenv("ENTE_LAB_SETTINGS", raising=False)
    monkeypatch.setenv("ENTE_LAB_HOME", str(tmp_path / "home"))
    root = tmp_path / "checkout"
    root.mkdir()
    return root


@contextlib.contextmanager
def running_apache(conf: Path, port: int, backend: type, backend_port: int, cleanup=()):
    """A real apache2 (``-f conf -DFOREGROUND``) in front of a Python HTTP backend on
    127.0.0.1:``backend_port`` (handler class ``backend``), until ``port`` answers;
    stopped, and the ``cleanup`` dirs removed, afterwards."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", backend_port), backend)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    proc = subprocess.Popen([need("apache2"), "-f", str(conf), "-DFOREGROUND"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None:
                    log = conf.parent / "error.log"
                    pytest.fail("apache2 exited: " + (proc.stdout.read() if proc.stdout else "")
                                + (log.read_text() if log.exists() else ""))
                time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        httpd.shutdown()
        for d in cleanup:
            shutil.rmtree(d, ignore_errors=True)
