"""The tarball payload proven (issue 13): a `docker save` archive of the stand-in
images, made in the VM with ente-lab-images and brought to the host, is what a lab
with `stack.payload: tarball` loads; with every lab image removed first, the stack
starts from the archive alone. The module restores the pristine snapshot after."""

from __future__ import annotations

import dataclasses

import pytest

from entelab import converge, payload, probes, stack
from entelab.render import render_lab
from entelab.settings import load_settings

pytestmark = pytest.mark.vm


@pytest.mark.budget(212)    # reference seconds in CI: tests/vm/conftest.py's time budget
def test_stack_starts_from_a_docker_save_archive(guest, paths, settings, tmp_path, pristine):
    archive = tmp_path / "ente-images.tar"
    try:
        guest.run("ente-lab-images save /var/tmp/ente-images.tar && chmod 0644 /var/tmp/ente-images.tar")
        guest.get("/var/tmp/ente-images.tar", str(archive))
        guest.run("rm -f /var/tmp/ente-images.tar")
        names = payload.standin_images()
        overrides = ["stack.payload=tarball", f"stack.tarball={archive}"] + [
            f"images.{key}={ref}" for key, ref in names.items()]
        tarball, _ = load_settings(paths.root, overrides)
        # nothing of the stand-ins left in the VM's Docker
        guest.run(stack.compose_command(settings, "down"))
        # the seven images first: the base they were built on has them as children
        guest.run("docker rmi " + " ".join(names.values()))
        guest.run("docker rmi $(docker images -q 'ente-lab/standin-base') 2>/dev/null || true")
        assert guest.run("docker images -q 'ente-lab/*'").stdout.strip() == ""
        variant = dataclasses.replace(paths, build=tmp_path / "build")
        render_lab(variant, tarball, quiet=True)
        conf = (variant.rendered / "etc/ente-lab/stack.conf").read_text()
        assert "STACK_PAYLOAD=tarball" in conf and payload.GUEST_ARCHIVE in conf
        payload.deliver(guest, tarball)
        converge.converge(guest, variant)
        stack.start(guest, tarball)
        found = stack.wait_healthy(guest, timeout=420)
        assert {c.image for c in found} == set(names.values())
        assert "pong" in probes.https_get(guest, settings.api_host, "/ping")["body"]
        # loaded from the archive: the images carry the stand-in labels it was saved with
        assert guest.run("docker image inspect -f '{{index .Config.Labels \"org.ente-lab.standin\"}}' "
                         "ente-lab/museum-standin:lab").stdout.strip() == "true"
    finally:
        pristine.restore()
