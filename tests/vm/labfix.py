"""Shared VM-test fixtures (imported by the vm test modules; guest is in conftest)."""

import dataclasses
import json
import shlex
import shutil

import pytest

from entelab import secrets as secrets_mod
from entelab import state
from entelab.settings import load_settings


@pytest.fixture(scope="session")
def paths():
    return state.paths(state.ROOT)


@pytest.fixture(scope="session")
def settings(paths):
    return load_settings(paths.root)[0]


@pytest.fixture(scope="session")
def lab_secrets(paths):
    return secrets_mod.load_or_create(paths.secrets, dry_run=True)[0]


def variant_build(paths, tmp_path, path: str, transform, overrides: tuple[str, ...] = ()) -> state.LabPaths:
    """A copy of build/ where one rendered file is changed by transform(text); with
    ``overrides`` (settings overrides, as ``--set`` takes them) the lab is rendered with
    them first instead of copied."""
    import hashlib
    build = tmp_path / "build"
    variant = dataclasses.replace(paths, build=build)
    if overrides:
        from entelab.render import render_lab
        render_lab(variant, load_settings(paths.root, list(overrides))[0], quiet=True)
    else:
        shutil.copytree(paths.build, build, symlinks=True)
    f = variant.rendered / path.lstrip("/")
    f.write_text(transform(f.read_text()))
    manifest = json.loads(variant.manifest.read_text())
    for e in manifest["files"]:
        if e["path"] == path:
            e["sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
    variant.manifest.write_text(json.dumps(manifest))
    return variant


# Museum's configured health check (docker-compose.yml's healthcheck.test), as dockerd has it
MUSEUM_HEALTH_TEST = "docker inspect --format '{{json .Config.Healthcheck.Test}}' ente-museum"


def run_museum_health_check(guest) -> int:
    """Run Museum's configured health check once, as dockerd does every 10 s; its exit code."""
    test = json.loads(guest.run(MUSEUM_HEALTH_TEST).stdout)
    assert test[0] in ("CMD", "CMD-SHELL"), test
    argv = test[1:] if test[0] == "CMD" else ["sh", "-c", test[1]]
    return guest.run("docker exec ente-museum " + " ".join(shlex.quote(a) for a in argv), check=False).exited
