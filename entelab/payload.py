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

from .settings import Settings

# the compose services' image keys, as settings.images names them
IMAGE_KEYS = ("museum", "postgres", "minio", "mc", "socat", "auth_web", "cli")
# where lab.up puts a tarball payload in the guest (rc.ente loads it once)
GUEST_ARCHIVE = "/var/lib/ente-lab/images/payload.tar"
# the registry probe of payload auto: one bounded pull attempt of the Museum image
AUTO_PROBE_SECONDS = 5


def standin_images() -> dict[str, str]:
    """settings.images key -> the stand-in (or real, Debian-built) image."""
    return dict(_STANDIN)


# TODO(merge): from entelab/images.py
_STANDIN = {
    "museum": "ente-lab/museum-standin:lab", "postgres": "ente-lab/postgres:15",
    "minio": "ente-lab/minio-standin:lab", "mc": "ente-lab/mc-standin:lab",
    "socat": "ente-lab/socat:1", "auth_web": "ente-lab/auth-web-standin:lab",
    "cli": "ente-lab/cli-standin:lab",
}


def images_for(settings: Settings) -> dict[str, str]:
    """The image each compose service uses under the settings' payload."""
    if settings.stack.payload == "standin":
        return standin_images()
    return {key: getattr(settings.images, key) for key in IMAGE_KEYS}


def builds_web_images(settings: Settings) -> bool:
    """Only the official payload builds the web app and the CLI from a clone
    (docker-compose 1.29 fails on a missing build context)."""
    return settings.stack.payload in ("official", "auto")
