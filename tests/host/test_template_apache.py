"""Apache vhosts (article: "Apache reverse proxy configuration") checked by the
real Apache 2.4: syntax in a throw-away server root, then a live server on
127.0.0.1 high ports proving the ACME path is served locally while the rest
is proxied (the article's own vhost proxies the challenge: see deviations)."""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import load, need, render_into, running_apache

MODULES = ["mpm_event", "authz_core", "alias", "mime", "dir", "proxy", "proxy_http",
           "proxy_wstunnel", "ssl", "socache_shmcb", "headers", "http2", "remoteip"]
SITES = ["/etc/apache2/sites-enabled/ente-api.conf", "/etc/apache2/sites-enabled/ente-web.conf",
         "/etc/apache2/sites-enabled/ente-http.conf"]


def server_root(base: Path, tree, certdir: Path, acme_dir: Path, ports=None) -> Path:
    """A minimal httpd.conf loading only what the vhosts need, then the
    rendered vhosts. With ports=(http, https) the *:80/*:443 vhosts are moved
    to those ports (the only textual change)."""
    base.mkdir(parents=True, exist_ok=True)
    loads = "\n".join(f"LoadModule {m}_module /usr/lib/apache2/modules/mod_{m}.so" for m in MODULES)
    includes = []
    for dest in SITES:
        text = tree.text(dest)
        if ports:
            text = text.replace("<VirtualHost *:80>", f"<VirtualHost *:{ports[0]}>")
            text = text.replace("<VirtualHost *:443>", f"<VirtualHost *:{ports[1]}>")
        site = base / Path(dest).name
        site.write_text(text)
        includes.append(f"Include {site}")
    listen = (f"Listen 127.0.0.1:{ports[0]}\nListen 127.0.0.1:{ports[1]}" if ports
              else "Listen 127.0.0.1:80\nListen 127.0.0.1:443")
    conf = base / "httpd.conf"
    conf.write_text(f"""\
ServerRoot "{base}"
ServerName localhost
DefaultRuntimeDir "{base}"
PidFile "{base}/httpd.pid"
ErrorLog "{base}/error.log"
LogLevel warn proxy:info
{loads}
User nobody
Group nogroup
{listen}
TypesConfig /etc/mime.types
SSLSessionCache "shmcb:{base}/ssl_scache(512000)"
DocumentRoot "{base}"
Define ENTE_LAB_CERTDIR {certdir}
Define ENTE_LAB_ACME_DIR {acme_dir}
{chr(10).join(includes)}
""")
    return conf


def apache_t(conf: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([need("apache2"), "-f", str(conf), "-t", *extra],
                          capture_output=True, text=True)


def test_syntax_ok_with_certificate(rendered, lab_certs, tmp_path):
    conf = server_root(tmp_path / "srv", rendered, lab_certs.certdir, tmp_path / "acme")
    res = apache_t(conf)
    assert res.returncode == 0, res.stderr
    assert "Syntax OK" in res.stderr
    vhosts = apache_t(conf, "-D", "DUMP_VHOSTS")
    assert vhosts.returncode == 0, vhosts.stderr
    s = rendered.settings
    port443 = vhosts.stdout.split("*:443")[1].split("*:80")[0] if "*:443" in vhosts.stdout else ""
    assert s.api_host in port443 and s.web_host in port443, vhosts.stdout
    for name in s.cert_names:
        assert f"namevhost {name} " in vhosts.stdout


def test_first_boot_without_certificate_still_starts(rendered, tmp_path):
    """No certificate yet: the TLS vhosts are skipped, port 80 stays up."""
    empty = tmp_path / "no-cert-yet"
    empty.mkdir()
    conf = server_root(tmp_path / "srv", rendered, empty, tmp_path / "acme")
    res = apache_t(conf, "-D", "DUMP_VHOSTS")
    assert res.returncode == 0, res.stderr
    assert "*:443" not in res.stdout
    assert f"namevhost {rendered.settings.api_host} " in res.stdout     # the port-80 one


def test_vhost_facts(rendered):
    s = rendered.settings
    api = rendered.text(SITES[0])
    web = rendered.text(SITES[1])
    for text, port in ((api, s.ports.museum), (web, s.ports.web)):
        assert "Access-Control" not in re.sub(r"#.*", "", text)
        assert f'ProxyPass "http://127.0.0.1:{port}/"' in text
        assert f'ProxyPassReverse "http://127.0.0.1:{port}/"' in text
        assert "ProxyPreserveHost On" in text
        assert 'RequestHeader set X-Forwarded-Proto "https"' in text
        assert 'RequestHeader set X-Forwarded-Port "443"' in text
        assert f"/etc/dehydrated/certs/{s.domain}" in text
        # the exclusion is its own <Location>, after <Location />
        assert text.index("<Location />") < text.index('<Location "/.well-known/acme-challenge/">')
        assert '"/.well-known/" "!"' not in re.sub(r"#.*", "", text)
    assert f"ServerName {s.api_host}" in api and f"ServerName {s.web_host}" in web
    for entry in (rendered.entries[d] for d in SITES):
        assert (entry.validate, entry.reload, entry.mode) == ("apache", "httpd", "0644")


# --------------------------------------------------------------------------- live

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Backend(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def do_GET(self):  # noqa: N802
        Backend.seen.append({"path": self.path, "headers": dict(self.headers)})
        body = json.dumps({"message": "pong", "id": "backend"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        # Museum echoes the Origin itself; the proxy must not add another one.
        self.send_header("Access-Control-Allow-Origin", self.headers.get("Origin", "*"))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([need("curl"), "-sS", "-D", "-", "--max-time", "10", *args],
                          capture_output=True, text=True)


def live_server_root(base: Path, tree, certdir: Path, ports: tuple[int, int]) -> Path:
    """``server_root`` in ``base/srv`` for a live Apache on ``ports`` (http, https), with
    dehydrated's challenge directory ``base/acme-challenges`` holding the token ``tok3n``.
    Apache's children run as nobody: ``base`` and the files are made world-readable."""
    os.chmod(base, 0o755)
    acme = base / "acme-challenges"
    acme.mkdir(mode=0o755)
    (acme / "tok3n").write_text("tok3n.thumbprint")
    os.chmod(acme / "tok3n", 0o644)
    conf = server_root(base / "srv", tree, certdir, acme, ports=ports)
    os.chmod(base / "srv", 0o755)
    return conf


@pytest.fixture
def live_apache(lab_secrets, lab_certs):
    backend_port, http_port, https_port = free_port(), free_port(), free_port()
    tree = render_into(Path(tempfile.mkdtemp(prefix="entelab-apache-tree-")),
                       load([f"ports.museum={backend_port}"]), lab_secrets)
    base = Path(tempfile.mkdtemp(prefix="entelab-apache-"))
    conf = live_server_root(base, tree, lab_certs.certdir, (http_port, https_port))

    Backend.seen = []
    with running_apache(conf, https_port, Backend, backend_port, [base, tree.root]):
        yield tree.settings, http_port, https_port, lab_certs.ca_pem


def test_live_challenge_local_and_rest_proxied(live_apache):
    s, http_port, https_port, ca = live_apache
    host = s.api_host
    tls = ["--cacert", str(ca), "--resolve", f"{host}:{https_port}:127.0.0.1"]

    challenge = curl(*tls, f"https://{host}:{https_port}/.well-known/acme-challenge/tok3n")
    assert challenge.returncode == 0, challenge.stderr
    assert challenge.stdout.startswith("HTTP/") and " 200" in challenge.stdout.splitlines()[0]
    assert challenge.stdout.endswith("tok3n.thumbprint")
    assert Backend.seen == [], "the ACME challenge was proxied to the backend"

    ping = curl(*tls, "-H", "Origin: https://enteauth.example", f"https://{host}:{https_port}/ping")
    assert ping.returncode == 0, ping.stderr
    assert '"message": "pong"' in ping.stdout
    assert len(Backend.seen) == 1
    req = Backend.seen[0]
    headers = {k.lower(): v for k, v in req["headers"].items()}
    assert req["path"] == "/ping"
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-forwarded-port"] == "443"
    assert headers["host"].split(":")[0] == host                   # ProxyPreserveHost
    acao = [line.lower().strip() for line in ping.stdout.splitlines()
            if line.lower().startswith("access-control-")]
    assert acao == ["access-control-allow-origin: https://enteauth.example"]   # only Museum's


def test_live_port80_serves_challenge_and_redirects(live_apache):
    s, http_port, _, _ = live_apache
    for name in s.cert_names:
        res = curl("-H", f"Host: {name}", f"http://127.0.0.1:{http_port}/.well-known/acme-challenge/tok3n")
        assert res.stdout.endswith("tok3n.thumbprint"), res.stdout
        res = curl("-H", f"Host: {name}", f"http://127.0.0.1:{http_port}/users/ott")
        first = res.stdout.splitlines()[0]
        assert " 301" in first, res.stdout
        assert f"Location: https://{name}/users/ott" in res.stdout
    assert Backend.seen == []
