"""Stand-in container images for the Ente stack, built offline, delivered into the guest once.

Upstream images cannot be pulled, so the lab runs the article's 7-container
stack on images it builds itself. All seven share ONE rootfs layer:

* a Debian bookworm minbase rootfs (mmdebstrap) with postgresql-15, socat,
  python3 (+psycopg2, yaml), curl, nodejs and the npm package ``serve``
  (fetched on the host with npm, pinned), trimmed of docs/man/locales;
  cached as ``<box_cache>/standin-base-<basehash12>.tar`` (hash: packages +
  options + serve version), so a program change never re-runs mmdebstrap;
* plus the stand-in programs from ``provision/standin/`` appended with
  tarfile (seconds): ``<box_cache>/standin-<hash12>.tar``, hash = base hash +
  the programs + the image list.

In the guest the tar is imported once as ``ente-lab/standin-base:<hash12>``
and each image is a metadata-only ``docker build`` (FROM + ENTRYPOINT/CMD/
ENV/WORKDIR/LABEL/STOPSIGNAL, no RUN: no new layer, no network) on top of it.
The tar and ``manifest.json`` (the image list below, with each Dockerfile)
ship inside the box at ``GUEST_DIR``; ``ente-lab-images load`` in the guest
does the import/builds (idempotent).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import StageFailed
from .hostrun import run
from .progress import info, stage
from .state import LabPaths, ensure_dirs

SUITE = "bookworm"
MIRRORS = [
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
]
PACKAGES = [
    "postgresql-15", "socat", "python3", "python3-psycopg2", "python3-yaml", "curl",
    "ca-certificates", "nodejs",
]
SERVE_VERSION = "14.2.4"     # npm `serve`, the article's static web server
# dpkg never unpacks these (saves the space and the time of writing them).
PATH_EXCLUDES = [
    "/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*",
    "/usr/share/lintian/*", "/usr/share/linda/*", "/usr/share/perl/*/pod/*",
    "/usr/share/bash-completion/*", "/usr/share/zsh/*",
]
PATH_INCLUDES = ["/usr/share/doc/*/copyright"]   # licences stay
# postgresql-15 pulls LLVM (+z3) for its JIT only: 130 MB of the 475 MB rootfs. The
# stand-ins never need JIT (PostgreSQL disables it when llvmjit.so is absent), so
# they go, against their dependency (nobody runs apt in these containers).
PURGE = ["libllvm14", "libz3-4"]
JIT_FILES = ["/usr/lib/postgresql/15/lib/llvmjit*.so", "/usr/lib/postgresql/15/lib/bitcode"]
LOCALES = ["en_US.UTF-8 UTF-8"]   # what the official postgres image generates; sources dropped
# removed after the install: caches, logs, and what a container never uses
TRIM = [
    "/var/lib/apt/lists/*", "/var/cache/apt/*", "/var/cache/debconf/*-old", "/var/log/*",
    "/var/lib/dpkg/*-old", "/usr/share/doc/*/changelog*",
    "/usr/lib/python3/dist-packages/*/tests", "/usr/lib/python3.11/test",
    "/usr/lib/python3.11/__pycache__/*.opt-*.pyc", "/usr/share/postgresql/15/man",
    "/usr/share/i18n/locales", "/usr/share/i18n/charmaps", *JIT_FILES,
]
# no "main" cluster at install time (like the official postgres image)
CREATECLUSTER = "create_main_cluster = false"
OPTIONS = {"variant": "minbase", "format": 1, "createcluster": CREATECLUSTER}

STANDIN_PREFIX = "opt/ente-lab-standin"
LINKS = {   # /usr/local/bin/<name> -> program under /opt/ente-lab-standin
    "museum": "museum/museum.py",
    "minio": "minio/minio.py",
    "mc": "mc/mc.py",
    "ente": "cli/ente.py",
    "docker-entrypoint.sh": "postgres/docker-entrypoint.sh",
    "auth-web-standin": "web/auth-web-standin.sh",
}
WEB_APP = "web/app"          # copied to /app as well
GUEST_DIR = "/var/lib/ente-lab/images"
BASE_REPO = "ente-lab/standin-base"
LABEL_STANDIN = "org.ente-lab.standin"
LABEL_BASE = "org.ente-lab.base"
LABEL_DESCRIPTION = "org.ente-lab.description"
STD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Image:
    name: str
    upstream: str
    standin: bool
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    stopsignal: str | None = None
    key: str = ""            # the settings.images key (compose service) it serves

    def dockerfile(self, hash12: str) -> str:
        """FROM + metadata only: no RUN, so no new layer and no network."""
        labels = {LABEL_STANDIN: "true" if self.standin else "false", LABEL_BASE: hash12}
        if self.standin:
            labels[LABEL_DESCRIPTION] = f"ente-lab stand-in for {self.upstream}"
        lines = [f"FROM {BASE_REPO}:{hash12}"]
        lines += [f"ENV {k}={json.dumps(v)}" for k, v in self.env.items()]
        if self.workdir:
            lines.append(f"WORKDIR {self.workdir}")
        if self.stopsignal:
            lines.append(f"STOPSIGNAL {self.stopsignal}")
        lines.append("LABEL " + " ".join(f"{k}={json.dumps(v)}" for k, v in labels.items()))
        if self.entrypoint is not None:
            lines.append(f"ENTRYPOINT {json.dumps(self.entrypoint)}")
        if self.cmd is not None:
            lines.append(f"CMD {json.dumps(self.cmd)}")
        return "\n".join(lines) + "\n"


# The one definition of the lab's images.
IMAGES = [
    Image("ente-lab/postgres:15", key="postgres", upstream="postgres:15", standin=False,
          entrypoint=["docker-entrypoint.sh"],
          cmd=["postgres"], stopsignal="SIGINT",
          env={"PGDATA": "/var/lib/postgresql/data",
               "PATH": "/usr/lib/postgresql/15/bin:" + STD_PATH}),
    Image("ente-lab/socat:1", key="socat", upstream="alpine/socat:latest", standin=False, entrypoint=["socat"]),
    Image("ente-lab/museum-standin:lab", key="museum", upstream="ghcr.io/ente/server:latest", standin=True,
          entrypoint=["museum"], workdir="/"),
    Image("ente-lab/minio-standin:lab", key="minio", upstream="minio/minio:latest", standin=True, entrypoint=["minio"],
          cmd=["server", "/data"]),
    Image("ente-lab/mc-standin:lab", key="mc", upstream="minio/mc:latest", standin=True, entrypoint=["mc"]),
    # NO_UPDATE_CHECK: serve would ask the npm registry for a newer serve at each start
    Image("ente-lab/auth-web-standin:lab", key="auth_web", upstream="ente-auth-web:latest", standin=True,
          env={"PORT": "3322", "NO_UPDATE_CHECK": "1"},
          workdir="/app", cmd=["auth-web-standin"]),
    Image("ente-lab/cli-standin:lab", key="cli", upstream="ente-cli:latest", standin=True, cmd=["/bin/sh"]),
]


# ------------------------------------------------------------------ recipe
def standin_dir(root: Path) -> Path:
    return root / "provision" / "standin"


def _tree_digest(h: hashlib._Hash, base: Path) -> None:
    """Paths, modes (x or not), symlink targets and contents of every file under ``base``."""
    if not base.exists():
        return
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(base).as_posix()
        if path.is_symlink():
            data = b"link:" + os.readlink(path).encode()
        elif path.is_file():
            data = (b"x" if os.access(path, os.X_OK) else b"-") + path.read_bytes()
        elif path.is_dir():
            data = b"dir"
        else:
            continue
        h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())


def base_hash() -> str:
    """sha256 over what shapes the package-only rootfs."""
    meta = {"suite": SUITE, "mirrors": MIRRORS, "packages": sorted(PACKAGES), "serve": SERVE_VERSION,
            "excludes": PATH_EXCLUDES, "includes": PATH_INCLUDES, "trim": TRIM, "options": OPTIONS,
            "purge": PURGE, "locales": LOCALES}
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def recipe_hash(root: Path) -> str:
    """sha256 over the base recipe, the programs in provision/standin/ and the image list."""
    h = hashlib.sha256(base_hash().encode())
    # "append": bump it when append_programs() lays out the tar differently
    h.update(json.dumps({"append": 2, "links": LINKS, "web": WEB_APP, "prefix": STANDIN_PREFIX,
                         "images": [img.dockerfile("") for img in IMAGES]}, sort_keys=True).encode())
    _tree_digest(h, standin_dir(root))
    return h.hexdigest()


def manifest(hash12: str) -> dict:
    """What the guest's ente-lab-images reads: the tar, the base tag and each Dockerfile."""
    return {
        "format": 1,
        "hash": hash12,
        "tar": f"standin-{hash12}.tar",
        "base": f"{BASE_REPO}:{hash12}",
        "images": [{"name": img.name, "upstream": img.upstream, "standin": img.standin,
                    "dockerfile": img.dockerfile(hash12)} for img in IMAGES],
    }


def base_file(p: LabPaths) -> Path:
    return p.box_cache / f"standin-base-{base_hash()[:12]}.tar"


def tar_file(p: LabPaths, digest: str) -> Path:
    return p.box_cache / f"standin-{digest[:12]}.tar"


def manifest_file(p: LabPaths, digest: str) -> Path:
    return p.box_cache / f"standin-{digest[:12]}.json"


# ------------------------------------------------------------------ base rootfs
def fetch_serve(dest: Path, log: Path) -> str:
    """``npm install serve@SERVE_VERSION`` into ``dest`` (on the host); returns its bin path
    relative to ``dest``."""
    run(["npm", "install", "--prefix", dest, "--no-audit", "--no-fund", "--omit=dev",
         "--no-package-lock", f"serve@{SERVE_VERSION}"], log=log,
        hint="npm needs the npm registry; check `npm config get registry`")
    pkg = json.loads((dest / "node_modules" / "serve" / "package.json").read_text())
    binary = pkg["bin"]["serve"] if isinstance(pkg.get("bin"), dict) else pkg["bin"]
    return f"node_modules/serve/{os.path.normpath(binary)}"


def build_base(out: Path, log: Path) -> None:
    """mmdebstrap minbase + packages + serve, trimmed, as a tar at ``out``."""
    q = lambda path: shlex.quote(str(path))  # noqa: E731 - hooks run through sh
    with tempfile.TemporaryDirectory(prefix="ente-lab-serve-") as npmdir:
        serve_bin = fetch_serve(Path(npmdir), log)
        trim = " ".join(f'"$1"{t}' for t in TRIM)     # constants: no spaces, globs expand
        dpkgopts = ([f"--dpkgopt=path-exclude={x}" for x in PATH_EXCLUDES]
                    + [f"--dpkgopt=path-include={x}" for x in PATH_INCLUDES])
        tmp = out.with_suffix(".partial")
        cmd = [
            "mmdebstrap", "--variant=minbase", "--mode=root", "--format=tar",
            "--include=" + ",".join(PACKAGES), *dpkgopts,
            "--essential-hook=" + "mkdir -p \"$1/etc/postgresql-common\" && printf '%s\\n' "
                                  f"{shlex.quote(CREATECLUSTER)} "
                                  "> \"$1/etc/postgresql-common/createcluster.conf\"",
            "--customize-hook=" + f"mkdir -p \"$1/opt/serve\" && cp -a {q(npmdir)}/. \"$1/opt/serve/\" "
                                  f"&& ln -sf /opt/serve/{serve_bin} \"$1/usr/local/bin/serve\"",
            "--customize-hook=" + f"printf '%s\\n' {' '.join(shlex.quote(x) for x in LOCALES)} "
                                  "> \"$1/etc/locale.gen\" && chroot \"$1\" locale-gen",
            "--customize-hook=" + f"chroot \"$1\" dpkg --purge --force-depends {' '.join(PURGE)}",
            "--customize-hook=" + f"rm -rf {trim}",
            SUITE, str(tmp), *MIRRORS,
        ]
        run(cmd, log=log, hint="read the log; mmdebstrap needs the Debian mirror and root")
    tmp.rename(out)


# ------------------------------------------------------------------ programs
class _Appender:
    """Adds members as root:root, mtime 0. ``docker import`` refuses duplicate paths:
    a directory the tar has already is skipped, any other existing path is an error."""

    def __init__(self, tar: tarfile.TarFile):
        self.tar = tar
        self.seen = {os.path.normpath(m.name).lstrip("/"): m.isdir() for m in tar.getmembers()}

    def add(self, name: str, *, data: bytes | None = None, mode: int | None = None,
            link: str | None = None, owner: tuple[int, int] = (0, 0)) -> None:
        is_dir = data is None and link is None
        if name in self.seen:
            if is_dir and self.seen[name]:
                return
            raise StageFailed(f"/{name} is in the stand-in rootfs already; a stand-in program may "
                              "not replace it",
                              hint="rename the program in provision/standin/ or in entelab/images.py")
        self.seen[name] = is_dir
        ti = tarfile.TarInfo("./" + name)
        ti.uid, ti.gid = owner
        ti.mtime = 0
        if link is not None:
            ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, link, 0o777
            self.tar.addfile(ti)
        elif data is None:
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755 if mode is None else mode
            self.tar.addfile(ti)
        else:
            ti.size, ti.mode = len(data), 0o644 if mode is None else mode
            self.tar.addfile(ti, io.BytesIO(data))

    def user(self, name: str) -> tuple[int, int] | None:
        """uid, gid of ``name`` in the base's /etc/passwd (None: no such user)."""
        try:
            member = self.tar.getmember("./etc/passwd")
        except KeyError:
            return None
        fh = self.tar.fileobj          # mode "a" cannot extractfile(): read it in place
        assert fh is not None
        pos = fh.tell()
        fh.seek(member.offset_data)
        text = fh.read(member.size).decode()
        fh.seek(pos)
        for line in text.splitlines():
            f = line.split(":")
            if len(f) > 3 and f[0] == name:
                return int(f[2]), int(f[3])
        return None

    def tree(self, src: Path, dest: str) -> None:
        self.add(dest)
        for path in sorted(src.rglob("*")):
            name = f"{dest}/{path.relative_to(src).as_posix()}"
            if path.is_symlink():
                self.add(name, link=os.readlink(path))
            elif path.is_dir():
                self.add(name)
            elif path.is_file():
                self.add(name, data=path.read_bytes(),
                         mode=0o755 if os.access(path, os.X_OK) else 0o644)


def append_programs(base: Path, src: Path, out: Path) -> None:
    """``out`` = ``base`` + ``src`` at /opt/ente-lab-standin, the /usr/local/bin links, /app."""
    missing = [rel for rel in [*LINKS.values(), WEB_APP] if not (src / rel).exists()]
    if missing:
        raise StageFailed(f"stand-in programs missing under {src}: {', '.join(missing)}",
                          hint="provision/standin/ holds the stand-in programs (museum, minio, mc, "
                               "cli, web, postgres); restore them from git")
    tmp = out.with_suffix(".partial")
    shutil.copyfile(base, tmp)
    try:
        with tarfile.open(tmp, "a", format=tarfile.GNU_FORMAT) as tar:
            app = _Appender(tar)
            for d in ("opt", "usr", "usr/local", "usr/local/bin"):
                app.add(d)
            app.tree(src, STANDIN_PREFIX)
            for name, rel in LINKS.items():
                app.add(f"usr/local/bin/{name}", link=f"/{STANDIN_PREFIX}/{rel}")
            app.tree(src / WEB_APP, "app")
            # mmdebstrap empties /run; PostgreSQL's socket dir, as the official image makes it
            pg = app.user("postgres")
            if pg:
                app.add("run/postgresql", mode=0o3777, owner=pg)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.rename(out)


# ------------------------------------------------------------------ build
def build(p: LabPaths, force: bool = False) -> tuple[Path, Path]:
    """Build (or reuse) the stand-in tar and its manifest; returns (tar, manifest)."""
    ensure_dirs(p)
    log = p.logs / "images-build.log"
    digest = recipe_hash(p.root)
    out, man = tar_file(p, digest), manifest_file(p, digest)
    base = base_file(p)
    with stage(f"stand-in rootfs {base.name}", log=log,
               hint="read the log; mmdebstrap needs the Debian mirror and root, npm the registry"):
        if base.exists() and not force:
            info(f"  cached: {base}")
        else:
            build_base(base, log)
            info(f"  built: {base} ({base.stat().st_size / 2**20:.0f} MiB)")
    with stage(f"stand-in images {digest[:12]}", log=log):
        if out.exists() and man.exists() and not force:
            info(f"  cached: {out}")
        else:
            append_programs(base, standin_dir(p.root), out)
            man.write_text(json.dumps(manifest(digest[:12]), indent=2) + "\n")
            info(f"  built: {out} ({out.stat().st_size / 2**20:.0f} MiB)")
        for stale in [*p.box_cache.glob("standin-*.tar"), *p.box_cache.glob("standin-*.json")]:
            if stale not in (out, man, base):
                stale.unlink()
    return out, man
