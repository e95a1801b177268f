"""The Ente stack files (article: "Creating the Docker Compose files") checked
by Debian 12's docker-compose 1.29.2, bash -n / shellcheck, and facts."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml
from conftest import load, need, render_into

from entelab import payload

D = "/usr/local/docker-ente"


@pytest.fixture(scope="module")
def rendered_official(tmp_path_factory, lab_secrets):
    return render_into(tmp_path_factory.mktemp("rootfs-official"), load(["stack.payload=official"]),
                       lab_secrets)


@pytest.fixture(scope="module")
def rendered_tarball(tmp_path_factory, lab_secrets):
    archive = tmp_path_factory.mktemp("archive") / "ente-images.tar"
    archive.write_bytes(b"")
    return render_into(tmp_path_factory.mktemp("rootfs-tarball"),
                       load(["stack.payload=tarball", f"stack.tarball={archive}"]), lab_secrets)


def compose_config(rendered, tmp_path, *extra) -> subprocess.CompletedProcess:
    """docker-compose config in a copy of the compose dir, with the build
    contexts the file names present (1.29.2 fails when one is missing)."""
    work = tmp_path / "docker-ente"
    shutil.copytree(rendered.path(D), work)
    (work / "ente-git" / "web").mkdir(parents=True)
    (work / "ente-git" / "cli").mkdir(parents=True)
    return subprocess.run([need("docker-compose"), "--project-directory", str(work),
                           "-f", str(work / "docker-compose.yml"), "config", *extra],
                          cwd=work, capture_output=True, text=True)


def test_docker_compose_1_29_accepts_it(rendered, tmp_path):
    version = subprocess.run([need("docker-compose"), "version", "--short"],
                             capture_output=True, text=True).stdout.strip()
    assert version.startswith("1.29"), version        # Debian 12's, the guest's
    res = compose_config(rendered, tmp_path)
    assert res.returncode == 0, res.stderr
    assert "WARNING" not in res.stderr, res.stderr     # e.g. an unset variable
    cfg = yaml.safe_load(res.stdout)
    sec, s = rendered.secrets, rendered.settings
    museum = cfg["services"]["ente-museum"]
    # .env values arrive intact (quotes stripped, nothing interpolated away)
    assert museum["environment"]["ENTE_KEY_HASH"] == sec.key_hash
    assert museum["environment"]["ENTE_DB_PASSWORD"] == sec.db_password
    assert museum["environment"]["ENTE_S3_SCW_EU_FR_V3_SECRET"] == sec.minio_secret
    assert museum["networks"][s.docker.network]["ipv4_address"] == s.docker.museum_ip
    assert museum["image"] == payload.standin_images()["museum"]
    assert "/ping" in " ".join(museum["healthcheck"]["test"])
    prov = cfg["services"]["ente-minio-provision"]
    assert prov["entrypoint"] == ["sh", "/provision.sh", sec.minio_key, sec.minio_secret]
    assert cfg["services"]["ente-auth-web"]["depends_on"]["ente-museum"]["condition"] == "service_healthy"
    assert cfg["networks"][s.docker.network]["external"] is True
    assert len(cfg["services"]) == 7                    # "seven containers in total"
    services = subprocess.run([need("docker-compose"), "--project-directory", str(tmp_path / "docker-ente"),
                               "-f", str(tmp_path / "docker-ente" / "docker-compose.yml"),
                               "config", "--services"], capture_output=True, text=True)
    assert services.returncode == 0


def test_compose_has_nothing_1_29_refuses(rendered):
    doc = yaml.safe_load(rendered.text(f"{D}/docker-compose.yml"))
    assert "name" not in doc and "version" not in doc
    for name, svc in doc["services"].items():
        assert "tags" not in svc.get("build", {}), name
        assert "start_interval" not in svc.get("healthcheck", {}), name
        assert "post_start" not in svc, name
    assert "COMPOSE_PROJECT_NAME=ente" in rendered.text(f"{D}/.env")


@pytest.mark.parametrize("which", ["standin", "official", "tarball"])
def test_each_payload_passes_compose_config(which, rendered, rendered_official, rendered_tarball, tmp_path):
    """Each payload's compose file passes docker-compose 1.29.2 config and names the
    images of its payload; only the official one builds (from the article's clone)."""
    tree = {"standin": rendered, "official": rendered_official, "tarball": rendered_tarball}[which]
    work = tmp_path / "docker-ente"
    shutil.copytree(tree.path(D), work)
    if which == "official":      # the article's git clone provides the build contexts
        (work / "ente-git" / "web").mkdir(parents=True)
        (work / "ente-git" / "cli").mkdir(parents=True)
    res = subprocess.run([need("docker-compose"), "--project-directory", str(work),
                          "-f", str(work / "docker-compose.yml"), "config"],
                         cwd=work, capture_output=True, text=True)
    assert res.returncode == 0 and "WARNING" not in res.stderr, res.stderr
    cfg = yaml.safe_load(res.stdout)
    s = tree.settings
    images = {name: svc["image"] for name, svc in cfg["services"].items()}
    built = sorted(name for name, svc in cfg["services"].items() if "build" in svc)
    if which == "standin":
        assert images["ente-museum"] == "ente-lab/museum-standin:lab"
        assert all("standin" in ref for name, ref in images.items()
                   if name not in ("ente-postgres", "ente-socat")), images
        assert images["ente-postgres"] == "ente-lab/postgres:15"
        assert built == []
    else:
        assert images["ente-museum"] == s.images.museum == "ghcr.io/ente/server:latest"
        assert images["ente-minio"] == s.images.minio and images["ente-socat"] == s.images.socat
        assert not any("standin" in ref for ref in images.values()), images
        assert built == (["ente-auth-web", "ente-cli"] if which == "official" else [])


def test_compose_missing_build_context_is_refused(rendered_official, tmp_path):
    """Sanity check of the tool itself: the validation really runs 1.29.2."""
    work = tmp_path / "bare"
    shutil.copytree(rendered_official.path(D), work)
    res = subprocess.run([need("docker-compose"), "-f", str(work / "docker-compose.yml"), "config"],
                         cwd=work, capture_output=True, text=True)
    assert res.returncode != 0


def test_compose_facts(rendered, rendered_official):
    assert "ghcr.io/ente/server" in rendered_official.text(f"{D}/docker-compose.yml")
    text = rendered.text(f"{D}/docker-compose.yml")
    s = rendered.settings
    assert "ghcr.io/ente-io" not in text and "STAND-INS" in text
    assert '"echo", "1"' not in text
    assert f"127.0.0.1:{s.ports.museum}:8080" in text
    assert f"127.0.0.1:{s.ports.web}:3322" in text
    assert f"{s.paths.data_dir}/postgres-data" in text
    assert "ente-museum.ente.lan" in text
    # published ports are loopback only
    for port in re.findall(r"^\s+- \"?(\S+:\d+:\d+)", text, re.M):
        assert port.startswith("127.0.0.1:"), port


def test_dockerfile_and_cli_config(rendered):
    s = rendered.settings
    dockerfile = rendered.text(f"{D}/Dockerfile.auth")
    assert f"ARG NEXT_PUBLIC_ENTE_ENDPOINT=https://{s.api_host}" in dockerfile
    assert "ENV PORT=3322" in dockerfile
    cli = yaml.safe_load(rendered.text(f"{D}/cli-config.yaml"))
    assert cli["endpoint"]["api"] == "http://ente-museum:8080"


def test_museum_yaml(rendered):
    m = yaml.safe_load(rendered.text(f"{D}/museum.yaml"))
    sec, s = rendered.secrets, rendered.settings
    assert m["key"] == {"encryption": sec.key_encryption, "hash": sec.key_hash}
    assert m["jwt"]["secret"] == sec.jwt_secret
    assert m["db"]["host"] == "ente-postgres" and m["db"]["password"] == sec.db_password
    assert set(m["s3"]) == {"are_local_buckets", "b2-eu-cen", "wasabi-eu-central-2-v3", "scw-eu-fr-v3"}
    assert m["s3"]["wasabi-eu-central-2-v3"]["compliance"] is False
    assert m["smtp"] == {"host": s.mail_host, "port": s.smtp.port, "username": s.smtp.username,
                         "password": sec.sasl_password, "email": s.smtp.email,
                         "sender-name": s.smtp.sender_name, "encryption": s.smtp.encryption}
    assert m["internal"] == {"admins": [], "hardcoded-ott": {"emails": []}}
    for dest in (f"{D}/museum.yaml", f"{D}/.env"):
        assert rendered.entries[dest].mode == "0600"


def test_museum_yaml_ott_and_admins(tmp_path, lab_secrets):
    tree = render_into(tmp_path, load(['ott=["me@home.lan,012345", "friend@foo.org,987654"]',
                                       "admins=[5551234567654321]"]), lab_secrets)
    m = yaml.safe_load(tree.text(f"{D}/museum.yaml"))
    # quoted: a leading zero must not turn the code into an octal number
    assert m["internal"]["hardcoded-ott"]["emails"] == ["me@home.lan,012345", "friend@foo.org,987654"]
    assert m["internal"]["admins"] == [5551234567654321]
    assert "ENTE_HARDCODED_OTT_EMAIL='me@home.lan,012345 friend@foo.org,987654'" in tree.text(f"{D}/.env")


def test_minio_provision_script(rendered):
    path = rendered.path(f"{D}/minio-provision.sh")
    text = path.read_text()
    code = re.sub(r"#.*", "", text)
    assert "mc alias set" in code and "mc config host add" not in code
    for bucket in ("b2-eu-cen", "wasabi-eu-central-2-v3", "scw-eu-fr-v3"):
        assert bucket in text
    assert rendered.entries[f"{D}/minio-provision.sh"].mode == "0755"
    res = subprocess.run([need("bash"), "-n", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([need("shellcheck"), "-s", "sh", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


def test_stack_conf_lists_the_compose_services_rc_ente_status_asks_for(rendered):
    """rc.ente status asks ``docker ps`` for STACK_SERVICES: the compose file's services,
    one list (stack.SERVICES), read by the shell as the words it wrote."""
    from entelab import stack
    compose = yaml.safe_load(rendered.text(f"{D}/docker-compose.yml"))
    assert sorted(compose["services"]) == sorted(stack.SERVICES)
    conf = rendered.root / "etc/ente-lab/stack.conf"
    out = subprocess.run(["sh", "-c", '. "$1" && printf "%s\\n" $STACK_SERVICES', "sh", str(conf)],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == list(stack.SERVICES)
