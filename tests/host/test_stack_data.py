"""The stack's view from the host, as data: docker inspect in, containers and
problems out; service names; the payload settings (refused early, nothing written)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from entelab import payload, stack
from entelab.errors import LabError
from entelab.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def inspect(name, image, status="running", health=None, code=0, labels=None, started="2026-11-29T07:00:00.1Z"):
    st = {"Status": status, "ExitCode": code, "StartedAt": started}
    if health:
        st["Health"] = {"Status": health}
    return {"Name": "/" + name, "Config": {"Image": image, "Labels": labels or {}}, "State": st}


HEALTHY = [
    inspect("ente-cli", "ente-lab/cli-standin:lab", labels={"org.ente-lab.standin": "true"}),
    inspect("ente-museum", "ente-lab/museum-standin:lab", health="healthy"),
    inspect("ente-postgres", "ente-lab/postgres:15", health="healthy", labels={"org.ente-lab.standin": "false"}),
    inspect("ente-socat", "ente-lab/socat:1"),
    inspect("ente-minio", "ente-lab/minio-standin:lab"),
    inspect("ente-minio-provision", "ente-lab/mc-standin:lab", status="exited"),
    inspect("ente-auth-web", "ente-lab/auth-web-standin:lab"),
]


def test_healthy_stack_has_no_problems_and_keeps_compose_order():
    found = stack.parse_inspect(json.dumps(HEALTHY))
    assert stack.problems(found) == []
    assert [c.name for c in found] == list(stack.SERVICES)
    assert {c.name: c.standin for c in found} == {
        "ente-museum": True, "ente-socat": False, "ente-postgres": False, "ente-minio": True,
        "ente-minio-provision": True, "ente-auth-web": True, "ente-cli": True}


@pytest.mark.parametrize("change,problem", [
    ({"name": "ente-museum", "health": "starting"}, "ente-museum: running starting"),
    ({"name": "ente-postgres", "status": "restarting"}, "ente-postgres: restarting healthy"),
    ({"name": "ente-minio-provision", "status": "exited", "code": 1}, "ente-minio-provision: exited"),
    ({"name": "ente-minio-provision", "status": "running"}, "ente-minio-provision: running"),
])
def test_each_unhealthy_state_is_named(change, problem):
    docs = [d for d in HEALTHY if d["Name"] != "/" + change["name"]]
    base = next(d for d in HEALTHY if d["Name"] == "/" + change["name"])
    docs.append(inspect(change["name"], base["Config"]["Image"], status=change.get("status", "running"),
                        health=change.get("health", (base["State"].get("Health") or {}).get("Status")),
                        code=change.get("code", 0)))
    assert stack.problems(stack.parse_inspect(json.dumps(docs))) == [problem]


def test_a_missing_container_is_named():
    found = stack.parse_inspect(json.dumps(HEALTHY[1:]))
    assert stack.problems(found) == ["ente-cli: not created"]


def test_uptime_and_table():
    c = stack.parse_inspect(json.dumps([HEALTHY[1]]))[0]
    assert c.uptime(datetime(2026, 11, 29, 8, 1, 5, tzinfo=UTC)) == "1h01m"
    assert c.uptime(datetime(2026, 11, 29, 7, 2, 5, tzinfo=UTC)) == "2m04s"
    assert stack.parse_inspect(json.dumps([HEALTHY[5]]))[0].uptime() == "-"
    assert stack.table(stack.parse_inspect(json.dumps(HEALTHY))).row_count == 7


def test_service_names():
    assert stack.service_name("museum") == "ente-museum"
    assert stack.service_name("ente-auth-web") == "ente-auth-web"
    for bad in ("bogus", "ente-museum; rm -rf /", "../x", ""):
        with pytest.raises(LabError, match="unknown stack service"):
            stack.service_name(bad)


def test_compose_command_quotes_its_arguments():
    s, _ = load_settings(ROOT)
    cmd = stack.compose_command(s, "logs", "--tail=5", "ente-museum")
    assert cmd == "cd /usr/local/docker-ente && docker-compose logs --tail=5 ente-museum"


def test_standin_images_are_named_so_and_official_are_the_settings():
    s, _ = load_settings(ROOT)
    std = payload.images_for(s)
    assert set(std) == set(payload.IMAGE_KEYS)
    real = {"postgres", "socat"}
    assert all("standin" in ref for key, ref in std.items() if key not in real), std
    assert not any("standin" in std[key] for key in real)
    off, _ = load_settings(ROOT, ["stack.payload=official"])
    assert payload.images_for(off) == {k: getattr(off.images, k) for k in payload.IMAGE_KEYS}
    assert payload.builds_web_images(off) and not payload.builds_web_images(s)


@pytest.mark.parametrize("overrides,message", [
    (["stack.payload=tarball"], "payload 'tarball' needs stack.tarball"),
    (["stack.payload=registry"], "Input should be 'standin', 'official', 'tarball' or 'auto'"),
    (["stack.tarball=images.tar"], "must be an absolute path to a 'docker save' archive"),
    (["stack.tarball=/srv/x;rm.tar"], "must be an absolute path to a 'docker save' archive"),
    (["stack.tarball=/srv/images.zip"], "must be an absolute path to a 'docker save' archive"),
    (["stack.payload=tarball", "stack.tarball=/nonexistent/ente.tar"], "is not a readable file on this host"),
])
def test_bad_payload_settings_are_refused_early(overrides, message):
    with pytest.raises(SettingsError) as exc:
        load_settings(ROOT, overrides)
    assert message in str(exc.value)
    assert "Traceback" not in str(exc.value)


@pytest.mark.parametrize("answers, shown, calls", [
    ([(502, "Bad Gateway"), (200, "<html>app")], "200 ok", 2),      # the backend's first seconds
    ([(404, "Not Found")], "404", 1),                                  # final: no retry
    ([(200, "no marker")], "200 'no marker'", 1),                      # wrong body: final
])
def test_the_smoke_check_retries_only_while_apache_has_no_backend(monkeypatch, answers, shown, calls):
    seen = []

    def fake_get(guest, host, path):
        seen.append(path)
        status, body = answers[min(len(seen), len(answers)) - 1]
        return {"status": status, "body": body}

    monkeypatch.setattr(stack, "https_get", fake_get)
    import tenacity
    monkeypatch.setattr(tenacity.nap, "sleep", lambda s: None)
    assert shown in stack._proxied(object(), "web.lab", "/", "<html")
    assert len(seen) == calls


@pytest.mark.parametrize("web_answers, ok", [
    ([(502, "Bad Gateway"), (200, "<html>app")], True),     # the web app's first seconds: waited for
    ([(404, "Not Found")], False),                           # final at once, with what Apache said
])
def test_the_verify_proxy_check_waits_only_for_a_starting_backend(monkeypatch, web_answers, ok):
    """lab.upgrade's proxy check right after a re-created stack: a container without a
    health check counts as up before it listens, so Apache's 502 is retried."""
    from pathlib import Path

    from entelab import certs, snapshot, verify
    from entelab.settings import load_settings
    settings = load_settings(ROOT, [], local_file=ROOT / "tests" / "no-such-settings.yaml")[0]
    web = []

    def fake_get(guest, host, path):
        if host == settings.web_host:
            web.append(path)
            status, body = web_answers[min(len(web), len(web_answers)) - 1]
            return {"status": status, "body": body}
        return {"status": 200, "body": '{"message": "pong"}'}

    monkeypatch.setattr(stack, "https_get", fake_get)
    monkeypatch.setattr(certs, "publish_root", lambda guest, paths: (Path("/root.pem"), False))
    monkeypatch.setattr(snapshot, "address", lambda guest: "192.0.2.1")
    monkeypatch.setattr(snapshot, "host_tls_serial", lambda *a, **k: "AB12")
    import tenacity
    monkeypatch.setattr(tenacity.nap, "sleep", lambda s: None)
    check = verify.timed("proxy", lambda: verify.check_proxy(object(), None, settings))
    assert check.ok is ok, check
    assert len(web) == len(web_answers)
    if not ok:
        assert f"https://{settings.web_host}/: 404" in check.detail
