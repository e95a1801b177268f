"""Where the compose stack's images come from: ``stack.payload`` (README: Payloads).

- ``standin``: images made offline from Debian packages (entelab/images.py): real
  PostgreSQL 15 and socat, declared stand-ins for the upstream images;
- ``official``: ``settings.images`` pulled in the guest, the web app and CLI built
  from a git clone as the article does (needs a registry: not run on these machines);
- ``tarball``: ``settings.images`` loaded from a ``docker save`` archive the user made;
- ``auto`` (opt-in only): the registry with a 5 s bound, else the tarball, else the
  stand-ins; resolved in the guest by ``lab.up`` before anything is rendered.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from .progress import info, stage
from .settings import Settings

if TYPE_CHECKING:
    from .guest import Guest

# the compose services' image keys, as settings.images names them
IMAGE_KEYS = ("museum", "postgres", "minio", "mc", "socat", "auth_web", "cli")
# where lab.up puts a tarball payload in the guest (rc.ente loads it once)
GUEST_ARCHIVE = "/var/lib/ente-lab/images/payload.tar"
# the registry probe of payload auto: one bounded pull attempt of the Museum image
AUTO_PROBE_SECONDS = 5


def standin_images() -> dict[str, str]:
    """settings.images key -> the stand-in (or real, Debian-built) image by default."""
    from .images import default_images
    return default_images()


PG_TAG = re.compile(r"(?:(?:docker\.io/)?(?:library/)?postgres|ente-lab/postgres):(\d+)(?:[.\-][\w.\-]*)?")


def postgres_major(image: str) -> int | None:
    """The PostgreSQL major an image reference names (``postgres:15``, ``postgres:17.2-bookworm``,
    ``ente-lab/postgres:17``), or None (``postgres:latest``, a digest, another image)."""
    m = PG_TAG.fullmatch(image)
    return int(m.group(1)) if m else None


def standin_postgres(settings: Settings) -> str:
    """The lab-built PostgreSQL image the standin payload runs: the major images.postgres
    names when the lab has an image of it (15 from bookworm, 17 from trixie), else 15."""
    from .images import postgres_images
    built = postgres_images()
    major = postgres_major(settings.images.postgres)
    return built.get(major, standin_images()["postgres"]) if major is not None else standin_images()["postgres"]


def images_for(settings: Settings) -> dict[str, str]:
    """The image each compose service uses under the settings' payload. The standin
    payload ignores settings.images except for PostgreSQL's major (images.postgres:
    ``postgres:17`` or ``ente-lab/postgres:17`` -> the lab's real PostgreSQL 17)."""
    if settings.stack.payload == "standin":
        return {**standin_images(), "postgres": standin_postgres(settings)}
    return {key: getattr(settings.images, key) for key in IMAGE_KEYS}


def builds_web_images(settings: Settings) -> bool:
    """Only the official payload builds the web app and the CLI from a clone
    (docker-compose 1.29 fails on a missing build context)."""
    return settings.stack.payload == "official"


def announce(settings: Settings) -> str:
    p = settings.stack.payload
    return {
        "standin": "stand-ins built offline (Museum, MinIO, mc, web app, CLI) + real PostgreSQL 15 "
                   "and socat from Debian",
        "official": "the upstream images of settings.images, pulled in the VM (needs a registry)",
        "tarball": f"the images of settings.images from {settings.stack.tarball}",
        "auto": "the registry (5 s), else stack.tarball, else the stand-ins",
    }[p]


def deliver(guest: Guest, settings: Settings) -> None:
    """Put what the payload needs into the VM before converge starts the stack:
    the tarball payload's archive (copied only when its checksum differs; rc.ente
    loads it once); nothing for the others (the stand-ins are in the box)."""
    with stage(f"payload: {settings.stack.payload} ({announce(settings)})"):
        if settings.stack.payload != "tarball":
            return
        local = Path(settings.stack.tarball)
        digest = _sha256(local)
        have = guest.run(f"sha256sum {GUEST_ARCHIVE} 2>/dev/null | cut -d' ' -f1", check=False).stdout.strip()
        if have == digest:
            info(f"  {GUEST_ARCHIVE} already holds this archive")
            return
        info(f"  copying {local} ({local.stat().st_size // 2**20} MiB) to {GUEST_ARCHIVE}")
        tmp = f"/tmp/ente-lab-payload-{digest[:12]}.tar"
        guest.put(str(local), tmp)
        guest.run(f"mkdir -p {Path(GUEST_ARCHIVE).parent} && mv {tmp} {GUEST_ARCHIVE} "
                  f"&& chmod 0600 {GUEST_ARCHIVE}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_auto(guest: Guest, settings: Settings) -> Settings:
    """payload auto -> a concrete payload: one bounded pull of the Museum image in
    the VM (AUTO_PROBE_SECONDS), else the tarball when one is set, else the stand-ins.
    Opt-in only: no test and no CI run selects it (these machines may reach no registry)."""
    if settings.stack.payload != "auto":
        return settings
    with stage(f"payload auto: one registry attempt ({AUTO_PROBE_SECONDS} s bound)"):
        image = shlex.quote(settings.images.museum)
        pulled = guest.run(f"timeout {AUTO_PROBE_SECONDS} docker pull -q {image}", check=False).ok
        chosen = "official" if pulled else ("tarball" if settings.stack.tarball else "standin")
        info(f"  registry {'answered' if pulled else 'not reachable'}: payload {chosen}")
    return settings.model_copy(update={"stack": settings.stack.model_copy(update={"payload": chosen})})
