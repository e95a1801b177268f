"""The proxy path (issues 5 and 12): Apache + TLS from the lab CA in front of the
running Ente stack (Museum on the API port, the Auth web app on the web port).
No echo backends: what answers is the compose project rc.ente started."""

import uuid

import pytest

from entelab import probes

pytestmark = pytest.mark.vm


def test_api_host_proxies_to_museum_with_verified_tls(guest, settings):
    r = probes.https_get(guest, settings.api_host, "/ping")
    assert r["status"] == 200, r
    assert '"message":"pong"' in r["body"].replace(" ", "")
    assert settings.api_host in r["san"]


def test_web_host_proxies_to_the_web_app(guest, settings):
    r = probes.https_get(guest, settings.web_host, "/")
    assert r["status"] == 200 and "<html" in r["body"].lower()
    assert "stand-in" in r["body"].lower()          # standin payload: says what it is
    assert settings.web_host in r["san"]
    # serve -s: a deep link falls back to the app's index page, as the article's image does
    deep = probes.https_get(guest, settings.web_host, "/auth/login")
    assert deep["status"] == 200 and deep["body"] == r["body"]


def test_tls_fails_without_the_lab_root(guest, settings):
    """The lab root is a private test CA: the system store alone does not trust it... except
    inside the guest, where rc.pebble installs it; a client with an empty CA file must fail."""
    res = guest.run(f"curl -s -o /dev/null --cacert /dev/null https://{settings.api_host}/ping",
                    sudo=False, check=False)
    assert res.exited in (60, 77)


def test_challenge_path_is_served_locally_not_proxied(guest, paths, settings):
    from entelab.certs import dehydrated_conf
    wellknown = dehydrated_conf(settings).wellknown
    token = uuid.uuid4().hex
    guest.run(f"echo {token} > {wellknown}/{token} && chmod 644 {wellknown}/{token}")
    try:
        for host in (settings.api_host, settings.web_host):
            r = probes.https_get(guest, host, f"/.well-known/acme-challenge/{token}", scheme="http", port=80)
            assert r["status"] == 200 and r["body"].strip() == token
            r = probes.https_get(guest, host, f"/.well-known/acme-challenge/{token}")
            assert r["body"].strip() == token, "https challenge path must not reach the backend"
    finally:
        guest.run(f"rm -f {wellknown}/{token}")


def test_apache_adds_no_cors_headers_museum_echoes_the_origin_once(guest, settings):
    origin = f"https://{settings.web_host}"
    r = probes.https_get(guest, settings.api_host, "/ping", headers={"Origin": origin})
    acao = [v for k, v in r["headers"] if k.lower() == "access-control-allow-origin"]
    assert acao == [origin], "only Museum's own echo of the origin, once"
    r = probes.https_get(guest, settings.api_host, "/ping")
    assert not [v for k, v in r["headers"] if k.lower() == "access-control-allow-origin" and v == "*"]
