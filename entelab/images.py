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

The tar is imported once as ``ente-lab/standin-base:<hash12>`` and each image
is a metadata-only ``docker build`` (FROM + ENTRYPOINT/CMD/ENV/WORKDIR/LABEL/
STOPSIGNAL, no RUN: no new layer, no network) on top of it. The tar and
``manifest.json`` (the image list below, with each Dockerfile) ship inside the box
at ``GUEST_DIR``; ``ente-lab-images load`` does the import/builds (idempotent).
It runs once when the box is built, by the box's own dockerd chrooted in the box's
rootfs (provision/box/bake-images.sh), so a new VM's /var/lib/docker already holds
the images; in the guest the same command then finds nothing to do, and re-imports
from the tar only after a ``docker system prune -a``.

A second rootfs carries the next PostgreSQL major for upgrade rehearsals (issue 16):
``ente-lab/postgres:17`` from Debian trixie's ``postgresql-17`` (LLVM/JIT purged like
the 15 image), with only the postgres entrypoint appended. It is cached as
``<box_cache>/postgres17-base-<basehash12>.tar`` and shipped as
``postgres17-<hash12>.tar`` beside the stand-in tar; its image is *lazy*: the guest
imports it only when asked for it by name (``ente-lab-images load ente-lab/postgres:17``,
which rc.ente and lab.upgrade do when the settings select it), so the first start of
a lab does not grow. Its ``postgres`` user has the 15 image's uid/gid (100:102), so
the 17 entrypoint never re-owns a 15 data directory it is (wrongly) pointed at.
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
import time
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

# ---- the second rootfs: PostgreSQL 17 from trixie (upgrade rehearsals, issue 16)
PG17_SUITE = "trixie"
PG17_MIRRORS = [
    "deb http://deb.debian.org/debian trixie main",
    "deb http://deb.debian.org/debian-security trixie-security main",
]
PG17_PACKAGES = ["postgresql-17", "util-linux", "ca-certificates"]
# the same user ids as the 15 image (its /etc/passwd): the entrypoint's chown never
# touches a 15 data directory the 17 image is pointed at
PG_UID, PG_GID = 100, 102
# LLVM (+z3), pulled for the JIT only, whatever their versioned names are in trixie; and
# perl (55 MB), which only postgresql-common's wrappers (pg_ctlcluster, /usr/bin/psql) use:
# the entrypoint and the lab call the binaries in /usr/lib/postgresql/17/bin (perl-base,
# essential, stays)
PG17_PURGE_GLOBS = ["libllvm*", "libz3-*", "perl", "perl-modules-*", "libperl5.*"]
PG17_JIT_FILES = ["/usr/lib/postgresql/17/lib/llvmjit*.so", "/usr/lib/postgresql/17/lib/bitcode"]
PG17_TRIM = [
    "/var/lib/apt/lists/*", "/var/cache/apt/*", "/var/cache/debconf/*-old", "/var/log/*",
    "/var/lib/dpkg/*-old", "/usr/share/doc/*/changelog*", "/usr/share/postgresql/17/man",
    "/usr/share/i18n/locales", "/usr/share/i18n/charmaps", *PG17_JIT_FILES,
]
PG17_LINKS = {"docker-entrypoint.sh": "postgres/docker-entrypoint.sh"}
# rootfs name -> the repository its base image is imported as in the guest
ROOTFS = ("standin", "postgres17")

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
BASE_REPOS = {"standin": BASE_REPO, "postgres17": "ente-lab/postgres17-base"}
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
    rootfs: str = "standin"  # which rootfs (ROOTFS) it is built on
    lazy: bool = False       # imported in the guest only when asked for by name

    def dockerfile(self, hash12: str) -> str:
        """FROM + metadata only: no RUN, so no new layer and no network."""
        labels = {LABEL_STANDIN: "true" if self.standin else "false", LABEL_BASE: hash12}
        if self.standin:
            labels[LABEL_DESCRIPTION] = f"ente-lab stand-in for {self.upstream}"
        lines = [f"FROM {BASE_REPOS[self.rootfs]}:{hash12}"]
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
               "PATH": "/usr/lib/postgresql/15/bin:" + STD_PATH, "PG_MAJOR": "15"}),
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
    # the next major, for upgrade rehearsals (images.postgres); Debian trixie, loaded lazily
    Image("ente-lab/postgres:17", key="postgres", upstream="postgres:17", standin=False,
          rootfs="postgres17", lazy=True,
          entrypoint=["docker-entrypoint.sh"],
          cmd=["postgres"], stopsignal="SIGINT",
          env={"PGDATA": "/var/lib/postgresql/data",
               "PATH": "/usr/lib/postgresql/17/bin:" + STD_PATH, "PG_MAJOR": "17"}),
]


def default_images() -> dict[str, str]:
    """settings.images key -> the image the standin payload uses by default (the first
    non-lazy image of each key: PostgreSQL 15)."""
    out: dict[str, str] = {}
    for img in IMAGES:
        if not img.lazy:
            out.setdefault(img.key, img.name)
    return out


def postgres_images() -> dict[int, str]:
    """PostgreSQL major -> the lab-built image of it."""
    return {int(img.name.rsplit(":", 1)[1]): img.name for img in IMAGES if img.key == "postgres"}


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


def base_recipe(rootfs: str = "standin") -> dict:
    """What shapes one package-only rootfs (read at call time: tests patch the lists)."""
    if rootfs == "standin":
        return {"suite": SUITE, "mirrors": MIRRORS, "packages": sorted(PACKAGES), "serve": SERVE_VERSION,
                "excludes": PATH_EXCLUDES, "includes": PATH_INCLUDES, "trim": TRIM, "options": OPTIONS,
                "purge": PURGE, "locales": LOCALES}
    if rootfs == "postgres17":
        return {"suite": PG17_SUITE, "mirrors": PG17_MIRRORS, "packages": sorted(PG17_PACKAGES),
                "excludes": PATH_EXCLUDES, "includes": PATH_INCLUDES, "trim": PG17_TRIM,
                "options": OPTIONS, "purge_globs": PG17_PURGE_GLOBS, "locales": LOCALES,
                "ids": [PG_UID, PG_GID]}
    raise ValueError(f"unknown rootfs {rootfs!r}; one of {ROOTFS}")


def base_hash(rootfs: str = "standin") -> str:
    """sha256 over what shapes the package-only rootfs."""
    return hashlib.sha256(json.dumps(base_recipe(rootfs), sort_keys=True).encode()).hexdigest()


def recipe_hash(root: Path) -> str:
    """sha256 over the base recipe, the programs in provision/standin/ and the image list."""
    h = hashlib.sha256(base_hash().encode())
    # "append": bump it when append_programs() lays out the tar differently
    h.update(json.dumps({"append": 2, "links": LINKS, "web": WEB_APP, "prefix": STANDIN_PREFIX,
                         "images": [img.dockerfile("") for img in IMAGES]}, sort_keys=True).encode())
    h.update(json.dumps({"postgres17": base_hash("postgres17"), "links": PG17_LINKS,
                         "lazy": [img.name for img in IMAGES if img.lazy]}, sort_keys=True).encode())
    _tree_digest(h, standin_dir(root))
    return h.hexdigest()


def tar_name(rootfs: str, hash12: str) -> str:
    return f"{rootfs}-{hash12}.tar"


def manifest(hash12: str) -> dict:
    """What the guest's ente-lab-images reads: the tars, their base tags and each Dockerfile.
    ``tar``/``base``: the stand-in rootfs (what a plain ``load`` imports); ``bases``: every
    rootfs; each image names its base and whether it is lazy (loaded only by name)."""
    return {
        "format": 2,
        "hash": hash12,
        "tar": tar_name("standin", hash12),
        "base": f"{BASE_REPO}:{hash12}",
        "bases": {f"{BASE_REPOS[r]}:{hash12}": tar_name(r, hash12) for r in ROOTFS},
        "images": [{"name": img.name, "upstream": img.upstream, "standin": img.standin,
                    "lazy": img.lazy, "base": f"{BASE_REPOS[img.rootfs]}:{hash12}",
                    "dockerfile": img.dockerfile(hash12)} for img in IMAGES],
    }


def base_file(p: LabPaths, rootfs: str = "standin") -> Path:
    return p.box_cache / f"{rootfs}-base-{base_hash(rootfs)[:12]}.tar"


def tar_file(p: LabPaths, digest: str, rootfs: str = "standin") -> Path:
    return p.box_cache / tar_name(rootfs, digest[:12])


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


def _mmdebstrap(packages: list[str], tmp: Path, suite: str, mirrors: list[str], *,
                essential: str, customize: list[str], trim: list[str]) -> list[str]:
    """The mmdebstrap command of both rootfs builds: a minbase tar of ``packages`` at
    ``tmp`` (dpkg skips PATH_EXCLUDES); the essential hook writes PostgreSQL's
    createcluster.conf, then ``essential`` (shell appended as is); the ``customize``
    hooks run in order, last the removal of ``trim``."""
    dpkgopts = ([f"--dpkgopt=path-exclude={x}" for x in PATH_EXCLUDES]
                + [f"--dpkgopt=path-include={x}" for x in PATH_INCLUDES])
    rm = " ".join(f'"$1"{t}' for t in trim)     # constants: no spaces, globs expand
    return [
        "mmdebstrap", "--variant=minbase", "--mode=root", "--format=tar",
        "--include=" + ",".join(packages), *dpkgopts,
        "--essential-hook=" + "mkdir -p \"$1/etc/postgresql-common\" && printf '%s\\n' "
                              f"{shlex.quote(CREATECLUSTER)} "
                              "> \"$1/etc/postgresql-common/createcluster.conf\"" + essential,
        *("--customize-hook=" + hook for hook in customize),
        "--customize-hook=" + f"rm -rf {rm}",
        suite, str(tmp), *mirrors,
    ]


def _locale_gen(then: str) -> str:
    """A customize hook: /etc/locale.gen lists LOCALES, then the shell ``then``."""
    return (f"printf '%s\\n' {' '.join(shlex.quote(x) for x in LOCALES)} "
            f"> \"$1/etc/locale.gen\" && {then}")


def build_base(out: Path, log: Path, rootfs: str = "standin") -> None:
    """mmdebstrap minbase + packages (+ serve for the stand-ins), trimmed, as a tar at ``out``."""
    if rootfs == "postgres17":
        build_pg17_base(out, log)
        return
    q = lambda path: shlex.quote(str(path))  # noqa: E731 - hooks run through sh
    with tempfile.TemporaryDirectory(prefix="ente-lab-serve-") as npmdir:
        serve_bin = fetch_serve(Path(npmdir), log)
        tmp = out.with_suffix(".partial")
        cmd = _mmdebstrap(PACKAGES, tmp, SUITE, MIRRORS, essential="", customize=[
            f"mkdir -p \"$1/opt/serve\" && cp -a {q(npmdir)}/. \"$1/opt/serve/\" "
            f"&& ln -sf /opt/serve/{serve_bin} \"$1/usr/local/bin/serve\"",
            _locale_gen("chroot \"$1\" locale-gen"),
            f"chroot \"$1\" dpkg --purge --force-depends {' '.join(PURGE)}",
        ], trim=TRIM)
        run(cmd, log=log, hint="read the log; mmdebstrap needs the Debian mirror and root")
    tmp.rename(out)


def build_pg17_base(out: Path, log: Path) -> None:
    """trixie minbase + postgresql-17, LLVM/JIT purged, trimmed, as a tar at ``out``."""
    ids = (f"grep -q '^postgres:' \"$1/etc/group\" || echo 'postgres:x:{PG_GID}:' >> \"$1/etc/group\"; "
           f"grep -q '^postgres:' \"$1/etc/passwd\" || echo 'postgres:x:{PG_UID}:{PG_GID}:PostgreSQL "
           "administrator,,,:/var/lib/postgresql:/bin/bash' >> \"$1/etc/passwd\"")
    purge = " ".join(shlex.quote(g) for g in PG17_PURGE_GLOBS)
    tmp = out.with_suffix(".partial")
    cmd = _mmdebstrap(PG17_PACKAGES, tmp, PG17_SUITE, PG17_MIRRORS, essential=" && " + ids, customize=[
        _locale_gen("{ [ ! -x \"$1/usr/sbin/locale-gen\" ] || chroot \"$1\" locale-gen; }"),
        f"pkgs=$(chroot \"$1\" dpkg-query -W -f='${{Package}}\\n' {purge} 2>/dev/null); "
        "[ -z \"$pkgs\" ] || chroot \"$1\" dpkg --purge --force-depends $pkgs",
    ], trim=PG17_TRIM)
    run(cmd, log=log, hint="read the log; mmdebstrap needs the Debian mirror (trixie) and root")
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


def append_programs(base: Path, src: Path, out: Path, links: dict[str, str] | None = None,
                    web: bool = True) -> None:
    """``out`` = ``base`` + ``src`` at /opt/ente-lab-standin, the /usr/local/bin links, /app.
    ``links``/``web``: the programs linked (default LINKS) and whether /app is laid
    (the PostgreSQL 17 rootfs gets the postgres entrypoint only)."""
    links = LINKS if links is None else links
    missing = [rel for rel in [*links.values(), *([WEB_APP] if web else [])] if not (src / rel).exists()]
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
            for name, rel in links.items():
                app.add(f"usr/local/bin/{name}", link=f"/{STANDIN_PREFIX}/{rel}")
            if web:
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
    """Build (or reuse) the stand-in tar, the PostgreSQL 17 tar and the manifest;
    returns (stand-in tar, manifest). The other tars lie beside it (``tar_file``)."""
    ensure_dirs(p)
    log = p.logs / "images-build.log"
    digest = recipe_hash(p.root)
    man = manifest_file(p, digest)
    keep = {man}
    for rootfs in ROOTFS:
        base = base_file(p, rootfs)
        out = tar_file(p, digest, rootfs)
        keep |= {base, out}
        with stage(f"{rootfs} rootfs {base.name}", log=log,
                   hint="read the log; mmdebstrap needs the Debian mirror and root, npm the registry"):
            if base.exists() and not force:
                info(f"  cached: {base}")
            else:
                start = time.monotonic()
                build_base(base, log, rootfs)
                info(f"  built: {base} ({base.stat().st_size / 2**20:.0f} MiB, "
                     f"{time.monotonic() - start:.0f} s)")
        with stage(f"{rootfs} images {digest[:12]}", log=log):
            if out.exists() and not force:
                info(f"  cached: {out}")
            elif rootfs == "standin":
                append_programs(base, standin_dir(p.root), out)
            else:
                append_programs(base, standin_dir(p.root), out, links=PG17_LINKS, web=False)
    if force or not man.exists():
        man.write_text(json.dumps(manifest(digest[:12]), indent=2) + "\n")
    for rootfs in ROOTFS:
        for stale in [*p.box_cache.glob(f"{rootfs}-*.tar"), *p.box_cache.glob(f"{rootfs}-*.json")]:
            if stale not in keep:
                stale.unlink()
    return tar_file(p, digest), man


def sibling_tars(standin_tar: Path) -> list[Path]:
    """Every image tar of the recipe whose stand-in tar is ``standin_tar`` (what the box
    ships beside manifest.json): ``standin-<h>.tar`` -> [it, ``postgres17-<h>.tar``]."""
    hash12 = standin_tar.name.removeprefix("standin-").removesuffix(".tar")
    return [standin_tar.with_name(tar_name(rootfs, hash12)) for rootfs in ROOTFS]
