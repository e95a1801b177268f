"""The box recipe hash: changes exactly when something that shapes the image changes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from entelab import box
from entelab.state import ROOT


@pytest.fixture
def recipe_root(tmp_path: Path) -> Path:
    """A copy of the parts of the checkout the recipe covers."""
    root = tmp_path / "checkout"
    (root / "provision").mkdir(parents=True)
    shutil.copytree(ROOT / "provision" / "box", root / "provision" / "box", symlinks=True)
    if (ROOT / "provision" / "guest").exists():
        shutil.copytree(ROOT / "provision" / "guest", root / "provision" / "guest", symlinks=True)
    else:
        (root / "provision" / "guest").mkdir()
    if (ROOT / "provision" / "standin").exists():    # the stand-in programs are baked in too
        shutil.copytree(ROOT / "provision" / "standin", root / "provision" / "standin", symlinks=True)
    return root


def test_hash_is_stable_and_independent_of_location(recipe_root):
    assert box.recipe_hash(recipe_root) == box.recipe_hash(recipe_root)
    assert box.recipe_hash(recipe_root) == box.recipe_hash(ROOT)
    assert len(box.recipe_hash(recipe_root)) == 64


def test_hook_edit_changes_hash(recipe_root):
    before = box.recipe_hash(recipe_root)
    hook = recipe_root / "provision" / "box" / "customize.sh"
    hook.write_text(hook.read_text() + "\n# edited\n")
    assert box.recipe_hash(recipe_root) != before


def test_guest_overlay_file_added_changes_hash(recipe_root):
    before = box.recipe_hash(recipe_root)
    new = recipe_root / "provision" / "guest" / "overlay" / "etc" / "ente-lab-test"
    new.parent.mkdir(parents=True, exist_ok=True)
    new.write_text("x\n")
    after = box.recipe_hash(recipe_root)
    assert after != before
    new.write_text("y\n")
    assert box.recipe_hash(recipe_root) not in (before, after)
    new.unlink()
    assert box.recipe_hash(recipe_root) != after


def test_guest_setup_script_mode_changes_hash(recipe_root):
    setup = recipe_root / "provision" / "guest" / "setup.sh"
    setup.write_text("#!/bin/sh\ntrue\n")
    setup.chmod(0o644)
    before = box.recipe_hash(recipe_root)
    setup.chmod(0o755)
    assert box.recipe_hash(recipe_root) != before


def test_package_list_changes_hash(recipe_root, monkeypatch):
    before = box.recipe_hash(recipe_root)
    monkeypatch.setattr(box, "PACKAGES", [*box.PACKAGES, "htop"])
    assert box.recipe_hash(recipe_root) != before
    monkeypatch.setattr(box, "PACKAGES", list(reversed(box.PACKAGES[:-1])))
    assert box.recipe_hash(recipe_root) == before, "order of the package list must not matter"


def test_unrelated_files_do_not_change_hash(recipe_root):
    before = box.recipe_hash(recipe_root)
    (recipe_root / "README.md").write_text("docs\n")
    (recipe_root / "build").mkdir()
    (recipe_root / "build" / "vagrant.json").write_text("{}")
    os.utime(recipe_root / "provision" / "box" / "customize.sh", (0, 0))  # mtime is not content
    assert box.recipe_hash(recipe_root) == before


def test_baked_packages_cover_what_later_stages_need():
    need = {"apache2", "postfix", "sasl2-bin", "dnsmasq-base", "dehydrated", "pebble",
            "docker.io", "docker-compose", "swaks", "openssl", "curl", "python3", "apparmor",
            "sudo", "openssh-server", "linux-image-cloud-amd64"}
    assert need <= set(box.PACKAGES)


def test_box_file_name_carries_hash(tmp_path):
    from entelab.state import LabPaths
    p = LabPaths(root=tmp_path, lab_id="entelab-00000000", home=tmp_path / "h", build=tmp_path / "b")
    assert box.box_file(p, "ab" * 32).name == f"debian12-{'ab' * 6}.box"
    assert box.box_name(p) == "ente-lab/debian12-entelab-00000000"
    p.build.mkdir()
    p.vagrant_json.write_text('{"box": "custom/name"}')
    assert box.box_name(p) == "custom/name"


def test_images_are_baked_after_the_overlay_and_their_tars_by_the_boxs_own_docker(tmp_path, monkeypatch):
    """bake-images.sh runs the guest's ente-lab-images (put there by guest-hook.sh) on
    the tars the hook before it copied, chrooted: so its hook comes after both, and
    before apt's cache is cleaned."""
    from entelab.errors import StageFailed
    from entelab.state import LabPaths
    p = LabPaths(root=ROOT, lab_id="entelab-00000000", home=tmp_path / "h", build=tmp_path / "b")
    p.logs.mkdir(parents=True)
    seen: list = []

    def first_command_only(cmd, **kw):
        seen.append([str(c) for c in cmd])
        raise StageFailed("stop here")
    monkeypatch.setattr(box, "run", first_command_only)
    monkeypatch.setattr(box, "vagrant_pubkey", lambda: Path("/k.pub"))
    tar = tmp_path / "standin-0.tar"
    with pytest.raises(StageFailed):
        box.build_image(p, tmp_path / "out.box", (tar, tmp_path / "standin-0.json"))
    hooks = [a.split("=", 1)[1] for a in seen[0] if a.startswith("--customize-hook=")]
    at = {key: next(i for i, h in enumerate(hooks) if key in h)
          for key in ("guest-hook.sh", str(tar), "bake-images.sh", "apt-get clean")}
    assert at["guest-hook.sh"] < at[str(tar)] < at["bake-images.sh"] < at["apt-get clean"]
    assert "docker.io" in box.PACKAGES and "docker-compose" in box.PACKAGES
    script = (ROOT / "provision" / "box" / "bake-images.sh").read_text()
    assert "chroot \"$R\" dockerd" in script and "--iptables=false" in script and "--bridge none" in script
