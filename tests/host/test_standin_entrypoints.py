"""The stand-ins' shell entrypoints, the Ente CLI stand-in and the web stand-in's config.js.

Shell scripts: dash's parser and shellcheck (the image's /bin/sh is dash). The web
config must keep any API origin value inside its JS string: node evaluates the file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need

from entelab.state import ROOT

STANDIN = ROOT / "provision" / "standin"
SCRIPTS = [STANDIN / "postgres" / "docker-entrypoint.sh", STANDIN / "web" / "auth-web-standin.sh"]
PROGRAMS = {   # /usr/local/bin name -> file (the image's symlinks)
    "museum": "museum/museum.py", "minio": "minio/minio.py", "mc": "mc/mc.py", "ente": "cli/ente.py",
    "docker-entrypoint.sh": "postgres/docker-entrypoint.sh", "auth-web-standin": "web/auth-web-standin.sh",
}
ENTE = STANDIN / "cli" / "ente.py"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_parse_in_dash_and_pass_shellcheck(script):
    dash = need("dash")
    r = subprocess.run([dash, "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([need("shellcheck"), "-s", "sh", "-S", "style", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_programs_run_through_a_symlink_like_the_image(name, tmp_path):
    """/usr/local/bin/<name> -> the file: executable, right interpreter, finds its neighbours."""
    target = STANDIN / PROGRAMS[name]
    first = target.read_text().splitlines()[0]
    assert first in ("#!/usr/bin/python3", "#!/bin/sh"), first
    assert os.access(target, os.X_OK)
    link = tmp_path / name
    link.symlink_to(target)
    if target.suffix != ".py":
        return   # the shell entrypoints start servers; their behaviour is tested elsewhere
    # Run with this venv's python (psycopg2/yaml there), through the symlink path.
    r = subprocess.run([sys.executable, str(link), "--help"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert "stand-in" in r.stdout.lower()


# ------------------------------------------------------------------ Ente CLI stand-in
def ente(tmp_path: Path, *args: str, env: dict | None = None, cwd: Path | None = None):
    base = {k: v for k, v in os.environ.items() if not k.startswith("ENTE_CLI")}
    base.update({"HOME": str(tmp_path / "home"), "ENTE_CLI_DATA_DIR": str(tmp_path / "cli-data")})
    base.update(env or {})
    return subprocess.run([sys.executable, str(ENTE), *args], capture_output=True, text=True, timeout=20,
                          env=base, cwd=cwd or tmp_path)


def cfg(path: Path, api: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'endpoint:\n  api: "{api}"\n')
    return path


def test_cli_config_lookup_order(tmp_path):
    cfg(tmp_path / "dir" / "config.yaml", "http://from-dir:8080")
    cfg(tmp_path / "path" / "config.yaml", "http://from-path:8080")
    cfg(tmp_path / "home" / ".ente" / "config.yaml", "http://from-home:8080")
    cfg(tmp_path / "cwd" / "config.yaml", "http://from-cwd:8080")
    both = {"ENTE_CLI_CONFIG_DIR": str(tmp_path / "dir"), "ENTE_CLI_CONFIG_PATH": str(tmp_path / "path")}
    cases = [
        (both, "http://from-dir:8080"),
        ({"ENTE_CLI_CONFIG_PATH": str(tmp_path / "path")}, "http://from-path:8080"),
        ({"ENTE_CLI_CONFIG_DIR": str(tmp_path / "nowhere")}, "http://from-home:8080"),
    ]
    for env, want in cases:
        r = ente(tmp_path, "version", env=env, cwd=tmp_path / "cwd")
        assert r.returncode == 0, r.stderr
        assert f"API endpoint: {want}" in r.stdout, (env, r.stdout)
        assert "stand-in" in r.stdout
    (tmp_path / "home" / ".ente" / "config.yaml").unlink()
    assert "http://from-cwd:8080" in ente(tmp_path, "version", cwd=tmp_path / "cwd").stdout
    assert "https://api.ente.io" in ente(tmp_path, "version", cwd=tmp_path).stdout


def test_cli_help_accounts_and_admin_commands(tmp_path):
    for args in (["--help"], ["admin", "list-users", "--help"], ["account", "list", "-h"]):
        r = ente(tmp_path, *args)
        assert r.returncode == 0
        assert "STAND-IN" in r.stdout.splitlines()[0], args

    r = ente(tmp_path, "account", "list")
    assert r.returncode == 0 and r.stdout.startswith("No accounts configured")
    (tmp_path / "cli-data").mkdir()
    (tmp_path / "cli-data" / "accounts.json").write_text(json.dumps(
        [{"email": "admin@ente-lab.example", "id": 1580559962386438, "app": "auth", "exportDir": "/data"}]))
    r = ente(tmp_path, "account", "list")
    assert "Configured accounts: 1" in r.stdout and "admin@ente-lab.example" in r.stdout

    r = ente(tmp_path, "admin", "list-users", "-a", "admin@ente-lab.example")
    assert r.returncode == 2
    assert "`ente admin list-users -a admin@ente-lab.example` is not implemented in the ente-lab stand-in" in r.stderr
    r = ente(tmp_path, "admin", "update-subscription", "-a", "admin@x", "-u", "user@x", "--no-limit")
    assert r.returncode == 2
    assert "`ente admin update-subscription -a admin@x -u user@x --no-limit` is not implemented" in r.stderr
    assert ente(tmp_path, "admin", "list-users").returncode == 1      # missing -a
    r = ente(tmp_path, "frobnicate")
    assert r.returncode == 1 and "unknown command" in r.stderr


# ------------------------------------------------------------------ web stand-in
HOSTILE = [
    "https://api.ente-lab.example",
    'x"; alert(1); "',
    "</script><script>alert(1)</script>",
    "a\\\"b'c`${x}`\nnew line\u2028\u2029 end",
    "\u00e9\U0001f600",
]


def web_config(tmp_path: Path, env: dict) -> str:
    out = tmp_path / "app"
    base = {k: v for k, v in os.environ.items() if k not in ("ENTE_API_ORIGIN", "NEXT_PUBLIC_ENTE_ENDPOINT")}
    r = subprocess.run(["sh", str(STANDIN / "web" / "auth-web-standin.sh"), "--write-config-only"],
                       env={**base, **env, "ENTE_LAB_WEB_DIR": str(out)}, capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 0, r.stderr
    assert (out / "index.html").read_text().count("ente-lab stand-in for the Ente Auth web app") == 1
    return (out / "ente-lab-config.js").read_text()


def evaluate(js: str) -> dict:
    node = need("node")
    r = subprocess.run([node, "-e", "global.window = {}; eval(require('fs').readFileSync(0, 'utf8'));"
                        "process.stdout.write(JSON.stringify({cfg: window.ENTE_LAB, keys: Object.keys(window)}))"],
                       input=js, capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("origin", HOSTILE)
def test_web_config_keeps_any_origin_inside_the_string(tmp_path, origin):
    js = web_config(tmp_path, {"ENTE_API_ORIGIN": origin})
    assert "</" not in js and "\n" not in js.rstrip("\n") and "\u2028" not in js
    got = evaluate(js)
    assert got == {"cfg": {"apiOrigin": origin, "standin": True}, "keys": ["ENTE_LAB"]}


def test_web_config_origin_source_order(tmp_path):
    both = {"ENTE_API_ORIGIN": "https://runtime.example", "NEXT_PUBLIC_ENTE_ENDPOINT": "https://baked.example"}
    assert evaluate(web_config(tmp_path, both))["cfg"]["apiOrigin"] == "https://runtime.example"
    baked = {"NEXT_PUBLIC_ENTE_ENDPOINT": "https://baked.example"}
    assert evaluate(web_config(tmp_path, baked))["cfg"]["apiOrigin"] == "https://baked.example"
    assert evaluate(web_config(tmp_path, {}))["cfg"]["apiOrigin"] == "https://api.ente.io"
