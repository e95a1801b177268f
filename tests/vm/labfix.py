"""Shared VM-test fixtures (imported by the vm test modules; guest is in conftest)."""

import dataclasses
import json
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


def variant_build(paths, tmp_path, path: str, transform) -> state.LabPaths:
    """A copy of build/ where one rendered file is changed by transform(text)."""
    import hashlib
    build = tmp_path / "build"
    shutil.copytree(paths.build, build, symlinks=True)
    variant = dataclasses.replace(paths, build=build)
    f = variant.rendered / path.lstrip("/")
    f.write_text(transform(f.read_text()))
    manifest = json.loads(variant.manifest.read_text())
    for e in manifest["files"]:
        if e["path"] == path:
            e["sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
    variant.manifest.write_text(json.dumps(manifest))
    return variant
