"""The lab's base box: Debian 12 built offline with mmdebstrap, cached by recipe.

Recipe = the package list + the build options + every file under provision/box/
(the hooks) and provision/guest/ (overlay + setup.sh, applied in the image) +
the stand-in images' recipe hash (entelab/images.py: their rootfs tar and
manifest are baked into the box at /var/lib/ente-lab/images/, and its images
into the guest's /var/lib/docker: provision/box/bake-images.sh).
The box file is cached as ``<box_cache>/debian12-<hash12>.box``; it is rebuilt
only when the recipe hash changes (or with force), and re-added to Vagrant
(VAGRANT_HOME per lab) only when the installed box has another hash. Replacing
a box also deletes its base volume from the lab's storage pool.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shlex
import shutil
import tarfile
from pathlib import Path

from . import images, vocab
from .errors import StageFailed
from .hostrun import run, vagrant, virsh
from .progress import info, stage, warn
from .state import LabPaths, default_box_name, ensure_dirs

SUITE = "bookworm"
MIRRORS = [
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
]
PACKAGES = [
    # boot + base system
    "systemd", "systemd-sysv", "udev", "dbus", "openssh-server", "sudo",
    "linux-image-cloud-amd64", "initramfs-tools", "python3", "ifupdown", "isc-dhcp-client",
    "iproute2", "netbase", "ca-certificates", "procps", "psmisc", "rsync", "apparmor", "less",
    "passwd",
    # what later stages configure (never apt-install these inside a TCG guest)
    "apache2", "ssl-cert", "postfix", "sasl2-bin", "libsasl2-modules", "dnsmasq-base",
    "dehydrated", "pebble", "docker.io", "docker-compose", "swaks", "openssl", "curl",
    "dnsutils", "netcat-openbsd",
]
DEBCONF = [
    "postfix postfix/main_mailer_type select Internet Site",
    "postfix postfix/mailname string localhost.localdomain",
]
IMAGE_SIZE = "12G"


def box_name(p: LabPaths) -> str:
    """The Vagrant box name: the ``box`` key render writes, else ente-lab/debian12-<lab_id>."""
    try:
        name = json.loads(p.vagrant_json.read_text()).get("box")
    except (OSError, ValueError):
        name = None
    return name or default_box_name(p.lab_id)


def box_dir(root: Path) -> Path:
    return root / "provision" / "box"


def guest_dir(root: Path) -> Path:
    return root / "provision" / "guest"


def vagrant_pubkey() -> Path:
    found = sorted(glob.glob("/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub")
                   + glob.glob("/opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub"))
    if not found:
        raise StageFailed("Vagrant's insecure public key (keys/vagrant.pub) not found; "
                          "run `invoke host.prepare` to install vagrant")
    return Path(found[-1])


def _tree_entries(base: Path, label: str) -> list[tuple[str, bytes]]:
    entries = []
    if base.exists():
        for path in sorted(base.rglob("*")):
            rel = f"{label}/{path.relative_to(base).as_posix()}"
            if path.is_symlink():
                entries.append((rel, b"link:" + os.readlink(path).encode()))
            elif path.is_file():
                mode = "x" if os.access(path, os.X_OK) else "-"
                entries.append((rel, mode.encode() + path.read_bytes()))
            elif path.is_dir():
                entries.append((rel + "/", b"dir"))
    return entries


def recipe_hash(root: Path) -> str:
    """sha256 over everything that shapes the image. Same inputs -> same hash."""
    h = hashlib.sha256()
    meta = {"suite": SUITE, "mirrors": MIRRORS, "packages": sorted(PACKAGES),
            "debconf": DEBCONF, "size": IMAGE_SIZE, "format": 2,
            "services": [sv.services_line for sv in vocab.SERVICES],
            "standin_images": images.recipe_hash(root)}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for rel, data in _tree_entries(box_dir(root), "box") + _tree_entries(guest_dir(root), "guest"):
        h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


def box_file(p: LabPaths, digest: str) -> Path:
    return p.box_cache / f"debian12-{digest[:12]}.box"


def installed_file(p: LabPaths) -> Path:
    return p.box_cache / "installed.json"


# ------------------------------------------------------------------ image
def build_image(p: LabPaths, out: Path, standin: tuple[Path, Path]) -> None:
    """mmdebstrap -> ext4 -> qcow2 -> box tarball at ``out``.

    ``standin``: the stand-in images' (tar, manifest), copied into the image at
    images.GUEST_DIR and loaded into the guest's /var/lib/docker right here
    (provision/box/bake-images.sh runs the guest's `ente-lab-images load`), with every
    other image tar lying beside the stand-in tar (the PostgreSQL 17 rootfs, loaded
    lazily: images.tars).
    """
    log = p.logs / "box-build.log"
    work = p.home / "boxbuild"
    if work.exists():
        shutil.rmtree(work)            # leftovers of an interrupted build
    rootfs, staging = work / "rootfs", work / "box"
    staging.mkdir(parents=True)
    hooks = box_dir(p.root)
    debconf = "\n".join(DEBCONF)
    services = " ".join(shlex.quote(sv.services_line) for sv in vocab.SERVICES)
    q = lambda path: shlex.quote(str(path))  # noqa: E731 - hooks run through sh
    tars = " ".join(q(t) for t in images.sibling_tars(standin[0]))
    cmd = [
        "mmdebstrap", "--variant=apt", "--mode=root", "--format=directory",
        "--include=" + ",".join(PACKAGES),
        "--essential-hook=" + f"printf '%s\\n' '{debconf}' | chroot \"$1\" debconf-set-selections",
        "--customize-hook=" + f"sh {q(hooks / 'customize.sh')} \"$1\" {q(staging)} {q(vagrant_pubkey())}",
        # the service list, defined once in entelab/vocab.py, for rc.M and setup.sh
        "--customize-hook=" + f"mkdir -p \"$1/etc/ente-lab\" && printf '%s\\n' {services} "
                              f"> \"$1{vocab.SERVICES_FILE}\"",
        "--customize-hook=" + f"sh {q(hooks / 'guest-hook.sh')} \"$1\" {q(guest_dir(p.root))}",
        "--customize-hook=" + f"mkdir -p \"$1{images.GUEST_DIR}\" && cp {tars} \"$1{images.GUEST_DIR}/\" "
                              f"&& cp {q(standin[1])} \"$1{images.GUEST_DIR}/manifest.json\"",
        # the guest's /var/lib/docker filled here, by the box's own dockerd in the rootfs:
        # the first start in the guest then has every image (bake-images.sh)
        "--customize-hook=" + f"sh {q(hooks / 'bake-images.sh')} \"$1\"",
        "--customize-hook=" + "chroot \"$1\" apt-get clean",
        SUITE, str(rootfs), *MIRRORS,
    ]
    run(cmd, log=log)
    fs = work / "fs.ext4"
    run(["truncate", "-s", IMAGE_SIZE, fs], log=log)
    run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", rootfs, fs], log=log)
    shutil.rmtree(rootfs)
    run(["qemu-img", "convert", "-O", "qcow2", fs, staging / "box.img"], log=log)
    fs.unlink()
    (staging / "metadata.json").write_text(json.dumps(
        {"provider": "libvirt", "format": "qcow2", "virtual_size": int(IMAGE_SIZE.rstrip("G"))}))
    shutil.copy(hooks / "box.Vagrantfile", staging / "Vagrantfile")
    tmp = out.with_suffix(".partial")
    with tarfile.open(tmp, "w") as tar:
        for name in ("metadata.json", "Vagrantfile", "vmlinuz", "initrd.img", "box.img"):
            tar.add(staging / name, arcname=name)
    tmp.rename(out)
    shutil.rmtree(work)


# ------------------------------------------------------------------ vagrant box
def box_listed(p: LabPaths) -> bool:
    # Vagrant's own store first (a `vagrant box list` costs 4-5 s of Ruby start-up at
    # every lab.up): the box's provider dir with its metadata means it is added
    stored = p.vagrant_home / "boxes" / box_name(p).replace("/", "-VAGRANTSLASH-") / "0" / "libvirt"
    if (stored / "metadata.json").is_file() and (stored / "box.img").is_file():
        return True
    out = vagrant(p, "box", "list", "--machine-readable", capture=True, check=False)
    return f",box-name,{box_name(p)}" in out.stdout


def base_volumes(p: LabPaths) -> list[str]:
    """Base volumes vagrant-libvirt made from this box in the lab's pool."""
    out = virsh("vol-list", "--pool", p.lab_id)
    stem = box_name(p).replace("/", "-VAGRANTSLASH-")
    return [line.split()[0] for line in out.stdout.splitlines()[2:]
            if line.split() and line.split()[0].startswith(stem + "_vagrant_box_image")]


def _installed_hash(p: LabPaths) -> str | None:
    try:
        return json.loads(installed_file(p).read_text()).get("hash")
    except (OSError, ValueError):
        return None


def build(paths: LabPaths, force: bool = False, vm_exists: bool | None = None,
          prepare: bool = True) -> str:
    """Build (if needed) and add the box; returns the recipe hash.

    ``prepare``: run host.prepare first (mmdebstrap, vagrant and libvirt must be
    there); lab.up has done that already and passes False.
    """
    from . import host, vm  # pool handling lives with the VM

    if prepare:
        host.prepare(paths)
    name = box_name(paths)
    ensure_dirs(paths)
    log = paths.logs / "box-build.log"
    digest = recipe_hash(paths.root)
    out = box_file(paths, digest)
    with stage(f"box image {digest[:12]}", log=log,
               hint="read the log; mmdebstrap needs the Debian mirror and root"):
        if out.exists() and not force:
            info(f"  cached: {out}")
        else:
            standin = images.build(paths)      # cached by its own recipe hash
            build_image(paths, out, standin)
            info(f"  built: {out} ({out.stat().st_size / 2**20:.0f} MiB)")
        for stale in paths.box_cache.glob("debian12-*.box"):
            if stale != out:
                stale.unlink()

    with stage("box add", log=log, hint="read the log; try `vagrant box list` with VAGRANT_HOME set"):
        listed = box_listed(paths)
        if listed and _installed_hash(paths) == digest and not force:
            info(f"  {name} already added")
            return digest
        vm.ensure_pool(paths)
        if vm_exists is None:
            vm_exists = vm.domain_exists(paths)
        if listed and vm_exists:
            warn(f"the box recipe changed but the VM exists; keeping the old box until "
                 f"`invoke lab.destroy` (new box cached at {out})")
            return digest
        if listed:
            vagrant(paths, "box", "remove", "--force", "--all", name)
        for vol in base_volumes(paths):
            virsh("vol-delete", "--pool", paths.lab_id, vol, check=True)
        vagrant(paths, "box", "add", "--force", "--name", name, str(out))
        installed_file(paths).write_text(json.dumps({"hash": digest, "box": name,
                                                     "file": str(out)}) + "\n")
    return digest
