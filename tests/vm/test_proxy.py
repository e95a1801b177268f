"""The proxy path (issue 5): Apache + TLS from the lab CA in front of 127.0.0.1 backends.

Until the stack issue lands, the backends are minimal echo servers the test
starts in the guest on the API and web ports; they answer with the request
headers they saw, plus a Museum-like CORS header of their own.
"""

import json
import uuid

import pytest
from labfix import variant_build  # noqa: F401

from entelab import probes

pytestmark = pytest.mark.vm

ECHO = r'''
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"backend": sys.argv[2], "path": self.path,
                           "headers": dict(self.headers.items())}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        origin = self.headers.get("Origin")
        if origin:  # like Museum: echo the origin
            self.send_header("Access-Control-Allow-Origin", origin)
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
'''


@pytest.fixture(scope="module")
def backends(guest, settings):
    pids = [guest.spawn_python(ECHO, [str(port), name])
            for port, name in ((settings.ports.museum, "api"), (settings.ports.web, "web"))]
    guest.run(f"for i in $(seq 50); do curl -s 127.0.0.1:{settings.ports.museum} >/dev/null && "
              f"curl -s 127.0.0.1:{settings.ports.web} >/dev/null && exit 0; sleep 0.2; done; exit 1", sudo=False)
    yield
    guest.run("kill " + " ".join(pids), sudo=False, check=False)


def test_api_host_proxies_to_museum_port_with_verified_tls(guest, settings, backends):
    r = probes.https_get(guest, settings.api_host, "/ping")
    assert r["status"] == 200
    seen = json.loads(r["body"])
    assert seen["backend"] == "api" and seen["path"] == "/ping"
    assert settings.api_host in r["san"]
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-forwarded-port"] == "443"
    assert headers["host"] == settings.api_host          # ProxyPreserveHost


def test_web_host_proxies_to_web_port(guest, settings, backends):
    r = probes.https_get(guest, settings.web_host, "/")
    assert json.loads(r["body"])["backend"] == "web"
    assert settings.web_host in r["san"]


def test_tls_fails_without_the_lab_root(guest, settings, backends):
    """The lab root is a private test CA: the system store alone does not trust it... except
    inside the guest, where rc.pebble installs it; a client with an empty CA file must fail."""
    res = guest.run(f"curl -s -o /dev/null --cacert /dev/null https://{settings.api_host}/ping",
                    sudo=False, check=False)
    assert res.exited in (60, 77)


def test_challenge_path_is_served_locally_not_proxied(guest, paths, settings, backends):
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


def test_apache_adds_no_cors_headers(guest, settings, backends):
    r = probes.https_get(guest, settings.api_host, "/users/ott",
                         headers={"Origin": f"https://{settings.web_host}"})
    acao = [v for k, v in r["headers"] if k.lower().startswith("access-control-")]
    assert acao == [f"https://{settings.web_host}"], "only the backend's own CORS header, once"
    r = probes.https_get(guest, settings.api_host, "/ping")
    assert not [k for k, _ in r["headers"] if k.lower().startswith("access-control-")]
