"""The article's seven-container Ente stack running in the VM (issue 12), standin payload:
real PostgreSQL 15 and socat, declared stand-ins for Museum, MinIO, mc, the web app, the CLI."""

from __future__ import annotations

import ipaddress
import json

import pytest
from labfix import MUSEUM_HEALTH_TEST, run_museum_health_check
from tenacity import retry, stop_after_delay, wait_fixed

from entelab import probes, stack

pytestmark = pytest.mark.vm


def compose(guest, settings, *args, check=True):
    return guest.run(stack.compose_command(settings, *args), check=check)


def test_seven_services_up_and_healthy(guest, settings):
    found = stack.containers(guest)
    assert stack.problems(found) == []
    assert sorted(c.name for c in found) == sorted(stack.SERVICES)
    assert {c.name for c in found if c.health == "healthy"} >= {"ente-museum", "ente-postgres"}
    # docker-compose itself agrees: every long-running service is running
    running = compose(guest, settings, "ps", "--services", "--filter", "status=running").stdout.split()
    assert set(running) == set(stack.SERVICES) - {stack.ONESHOT}
    assert guest.run("/etc/rc.d/rc.ente status", check=False).ok


def test_images_are_named_for_what_they_are(guest, settings):
    by_name = {c.name: c for c in stack.containers(guest)}
    for name in ("ente-museum", "ente-minio", "ente-auth-web", "ente-cli", "ente-minio-provision"):
        assert by_name[name].standin and "standin" in by_name[name].image
    for name in ("ente-postgres", "ente-socat"):
        assert not by_name[name].standin
    # real PostgreSQL 15 inside ente-postgres, and the stand-in says so in its log
    version = guest.run("docker exec ente-postgres postgres --version").stdout
    assert "(PostgreSQL) 15." in version
    logs = compose(guest, settings, "logs", "--no-color", "ente-museum").stdout
    assert "stand-in" in logs.lower()


def test_images_came_in_the_box_not_imported_at_the_first_start(guest):
    """provision/box/bake-images.sh filled the guest's /var/lib/docker when the box was
    built: every default image is older than this VM's first boot (its SSH host key,
    made then), and `ente-lab-images load` finds nothing to do."""
    first_boot = int(guest.run("stat -c %Y /etc/ssh/ssh_host_ed25519_key").stdout)
    for name in ("ente-lab/postgres:15", "ente-lab/museum-standin:lab"):
        created = guest.run(f"date -d \"$(docker image inspect --format '{{{{.Created}}}}' {name})\" +%s")
        assert int(created.stdout) < first_boot, name
    assert "nothing to do" in guest.run("/usr/local/sbin/ente-lab-images load").stdout


def test_network_data_dirs_and_museum_address_match_settings(guest, settings):
    net = json.loads(guest.run(f"docker network inspect {settings.docker.network}").stdout)[0]
    cfg = net["IPAM"]["Config"][0]
    assert (cfg["Subnet"], cfg["IPRange"], cfg["Gateway"]) == (
        settings.docker.subnet, settings.docker.ip_range, settings.docker.gateway)
    museum = json.loads(guest.run("docker inspect ente-museum").stdout)[0]
    assert museum["NetworkSettings"]["Networks"][settings.docker.network]["IPAddress"] == settings.docker.museum_ip
    assert ipaddress.ip_address(settings.docker.museum_ip) in ipaddress.ip_network(settings.docker.subnet)
    # dnsmasq (the lab's) names Museum by its fixed address
    assert probes.resolve(guest, f"ente-museum.{settings.docker.network}") == [settings.docker.museum_ip]
    # the data directories the compose file mounts are the settings' ones, and used
    pg = json.loads(guest.run("docker inspect ente-postgres").stdout)[0]
    mounts = {m["Destination"]: m["Source"] for m in pg["Mounts"]}
    assert mounts["/var/lib/postgresql/data"] == f"{settings.paths.data_dir}/postgres-data"
    assert guest.run(f"test -s {settings.paths.data_dir}/postgres-data/PG_VERSION && "
                     f"cat {settings.paths.data_dir}/postgres-data/PG_VERSION").stdout.strip() == "15"


def test_ping_follows_postgres_down_and_back(guest, settings, pristine):
    """https://<api>/ping goes Apache -> Museum -> PostgreSQL: it fails while PostgreSQL
    is stopped and recovers after it starts again, with no manual step. Meanwhile the
    lab's health check (it asks /ping) fails at once: the fix of the workshop's
    healthcheck_echo switch, whose `echo 1` passes in the same outage
    (test_workshop_vm.py's six pitfalls)."""
    assert probes.https_get(guest, settings.api_host, "/ping")["status"] == 200
    compose(guest, settings, "stop", "-t", "10", "ente-postgres")
    try:
        down = probes.https_get(guest, settings.api_host, "/ping")
        assert down["status"] >= 500 and "pong" not in down["body"]
        assert "/ping" in guest.run(MUSEUM_HEALTH_TEST).stdout
        assert run_museum_health_check(guest) != 0
    finally:
        compose(guest, settings, "start", "ente-postgres")

    @retry(stop=stop_after_delay(180), wait=wait_fixed(3), reraise=True)
    def pong():
        r = probes.https_get(guest, settings.api_host, "/ping")
        assert r["status"] == 200 and "pong" in r["body"], r

    pong()


def test_buckets_through_the_s3_api_with_the_lab_keys(guest, settings, lab_secrets):
    res = stack.s3_buckets(guest, settings, lab_secrets.minio_key, lab_secrets.minio_secret)
    assert res["exit_code"] == 0, res
    for bucket in stack.BUCKETS:
        assert bucket in res["out"]
    wrong = stack.s3_buckets(guest, settings, lab_secrets.minio_key, lab_secrets.minio_secret + "x")
    assert wrong["exit_code"] != 0
    unsigned = stack.s3_buckets(guest, settings, "", "", signed=False)
    assert unsigned["out"].strip() == "403"
    # the MinIO port published on the VM's loopback answers the same way
    code = guest.run(f"curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{settings.ports.minio_api}/",
                     sudo=False).stdout
    assert code == "403"


def test_cli_container_answers_as_a_standin(guest, settings):
    out = guest.run("docker exec ente-cli ente version", check=False)
    assert out.ok and "stand-in" in (out.stdout + out.stderr).lower()
    assert "ente-museum:8080" in out.stdout + out.stderr
