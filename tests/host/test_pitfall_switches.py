"""The seven pitfall switches of issue 17, beyond the data checks of test_pitfalls.py:
the real programs read the switched files (apache2 -t and a live Apache, postfix check,
visudo, docker-compose config), the production detectors (entelab/detect.py) find
exactly the switch in the rendered tree, and the link ``sasl_wrong_dir`` removes goes
through converge's plan and the agent.
"""

from __future__ import annotations

import http.server
import subprocess
import tempfile
from pathlib import Path

import conftest
import pytest
from conftest import load, need, render_into, running_apache

from entelab import agent, converge, detect, pitfalls, render
from entelab.errors import TemplateError
from entelab.vocab import Action

NEW = ("dashed_env_names", "missing_sudoers", "wellknown_in_location", "tls_encrypt_main_cf",
       "sasl_wrong_dir", "healthcheck_echo", "compose_missing_quote")
D = "/usr/local/docker-ente"
SASL_LINK = "/etc/postfix/sasl/smtpd.conf"


def tree_for(tmp_path: Path, lab_secrets, *overrides: str) -> conftest.Tree:
    return render_into(tmp_path / "root", load(list(overrides)), lab_secrets)


def lab_files(tree: conftest.Tree) -> detect.Files:
    """The rendered tree as the detectors read a server (the link read as its target)."""
    texts = {}
    for path, e in tree.entries.items():
        if e.kind == "file":
            texts[path] = tree.text(path)
        elif e.kind == "link":
            texts[path] = tree.text(e.target)
    return detect.from_lab(texts, tree.settings.paths.compose_dir)


def test_every_issue17_pitfall_has_a_switch():
    assert set(NEW) <= set(pitfalls.SWITCHES)
    assert all(pitfalls.PITFALLS[n].switch for n in pitfalls.PITFALLS)


# ------------------------------------------------------------------ detectors
def test_the_plain_lab_has_no_pitfall_for_the_detectors(rendered):
    found = [f for f in detect.detect(lab_files(rendered)) if f.pitfall]
    assert found == [], found


@pytest.mark.parametrize("name", NEW)
def test_the_detectors_find_exactly_the_switch(name, lab_secrets, tmp_path):
    tree = tree_for(tmp_path, lab_secrets, f"pitfalls.{name}=true", "ott=[\"me@home.lan,123456\"]")
    found = {f.name for f in detect.detect(lab_files(tree)) if f.pitfall}
    assert found == {name}


# ------------------------------------------------------------------ Apache
def test_apache_accepts_the_wellknown_switch(lab_secrets, lab_certs, tmp_path):
    from test_template_apache import apache_t, server_root
    tree = tree_for(tmp_path, lab_secrets, "pitfalls.wellknown_in_location=true")
    conf = server_root(tmp_path / "srv", tree, lab_certs.certdir, tmp_path / "acme")
    res = apache_t(conf)
    assert res.returncode == 0 and "Syntax OK" in res.stderr, res.stderr


class Backend(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self):  # noqa: N802
        Backend.seen.append(self.path)
        self.send_response(404)
        self.send_header("Content-Length", "9")
        self.end_headers()
        self.wfile.write(b"not found")

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("on", [False, True], ids=["plain", "wellknown_in_location"])
def test_live_apache_challenge_on_port_80(on, lab_secrets, lab_certs):
    """The CA's http-01 request for the API name: served from dehydrated's directory by
    the lab; proxied to the backend (its 404) with the article's lines."""
    from test_template_apache import curl, free_port, live_server_root
    backend_port, http_port, https_port = free_port(), free_port(), free_port()
    overrides = [f"ports.museum={backend_port}"] + (["pitfalls.wellknown_in_location=true"] if on else [])
    base = Path(tempfile.mkdtemp(prefix="entelab-wellknown-"))
    tree = render_into(base / "tree", load(overrides), lab_secrets)
    conf = live_server_root(base, tree, lab_certs.certdir, (http_port, https_port))
    Backend.seen = []
    with running_apache(conf, http_port, Backend, backend_port, [base]):
        host = tree.settings.api_host
        res = curl("-H", f"Host: {host}", f"http://127.0.0.1:{http_port}/.well-known/acme-challenge/tok3n")
        assert res.returncode == 0, res.stderr
        status = res.stdout.splitlines()[0]
        if on:
            assert " 404" in status and Backend.seen == ["/.well-known/acme-challenge/tok3n"], res.stdout
        else:
            assert " 200" in status and res.stdout.endswith("tok3n.thumbprint") and Backend.seen == []


# ------------------------------------------------------------------ Postfix / SASL
def postconf(tree: conftest.Tree, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    from test_template_postfix import confdir
    d = confdir(tree, tmp_path)
    check = subprocess.run([need("postfix"), "-c", str(d), "check"], capture_output=True, text=True)
    assert check.returncode == 0 and check.stderr == "", check.stderr
    return subprocess.run([need("postconf"), "-c", str(d), *args], capture_output=True, text=True)


def test_postfix_reads_the_articles_main_cf_lines(lab_secrets, tmp_path):
    tree = tree_for(tmp_path, lab_secrets, "pitfalls.tls_encrypt_main_cf=true")
    res = postconf(tree, tmp_path, "-h", "smtpd_tls_security_level", "smtpd_sasl_auth_enable",
                   "syslog_name")
    assert res.stdout.split() == ["encrypt", "yes", "postfix/submission"], res.stderr
    # the submission service keeps its own -o options: the change is main.cf's (port 25 too)
    smtp = subprocess.run([need("postconf"), "-c", str(tmp_path / "postfix"), "-P", "smtp/inet/"],
                          capture_output=True, text=True)
    assert smtp.stdout.strip() == ""


def test_sasl_wrong_dir_drops_the_link_and_converge_removes_it(lab_secrets, tmp_path):
    plain = render.render_tree(load(), lab_secrets, "t")
    on = render.render_tree(load(["pitfalls.sasl_wrong_dir=true"]), lab_secrets, "t")
    link = [e for e, _ in plain if e.path == SASL_LINK]
    gone = [e for e, _ in on if e.path == SASL_LINK]
    assert [e.kind for e in link] == ["link"] and [e.kind for e in gone] == ["absent"]
    assert gone[0].reload == "postfix"
    # facts in -> a REMOVE op out; no op once it is gone
    ops = converge.plan(gone, {SASL_LINK: {"type": "link", "target": "/etc/sasl2/smtpd.conf"}})
    assert [(o.path, o.action) for o in ops] == [(SASL_LINK, Action.REMOVE)]
    assert converge.plan(gone, {SASL_LINK: {"type": "missing"}}) == []
    # the agent removes the link in a scratch root (never a directory)
    root = tmp_path / "root"
    (root / "etc/postfix/sasl").mkdir(parents=True)
    (root / "etc/postfix/sasl/smtpd.conf").symlink_to("/etc/sasl2/smtpd.conf")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    import json
    (bundle / "plan.json").write_text(json.dumps({"ops": [o.to_dict() for o in ops]}))
    report = agent.apply(bundle, root=root, reload=False)
    assert not (root / "etc/postfix/sasl/smtpd.conf").is_symlink()
    assert report["would_reload"] == ["postfix"] and report["refused"] == {}
    (root / "etc/postfix/sasl/smtpd.conf").mkdir()
    agent.apply(bundle, root=root, reload=False)
    assert (root / "etc/postfix/sasl/smtpd.conf").is_dir()


# ------------------------------------------------------------------ sudoers
def test_visudo_accepts_the_missing_sudoers_files_and_the_hook_lacks_rules(lab_secrets, tmp_path):
    tree = tree_for(tmp_path, lab_secrets, "pitfalls.missing_sudoers=true")
    for name in ("apache_reload", "postfix_reload"):
        res = subprocess.run([need("visudo"), "-cf", str(tree.path(f"/etc/sudoers.d/{name}"))],
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
    missing = {f.excerpt.split("-n ")[-1].split(" ||")[0] for f in
               detect.missing_sudoers(lab_files(tree))}
    assert missing == {"/usr/sbin/apachectl -k graceful", "/usr/sbin/postfix check"}


# ------------------------------------------------------------------ docker-compose.yml
def compose_config(tree: conftest.Tree, tmp_path: Path) -> subprocess.CompletedProcess:
    from test_template_ente import compose_config as run
    return run(tree, tmp_path)


@pytest.mark.parametrize("name", ["dashed_env_names", "healthcheck_echo"])
def test_docker_compose_accepts_the_switched_file(name, lab_secrets, tmp_path):
    tree = tree_for(tmp_path, lab_secrets, f"pitfalls.{name}=true")
    res = compose_config(tree, tmp_path)
    assert res.returncode == 0, res.stderr
    if name == "dashed_env_names":
        assert "ENTE_INTERNAL_HARDCODED-OTT_EMAILS" in res.stdout
        assert "hardcoded-ott:\n    # Pitfall" in tree.text(f"{D}/museum.yaml")
    else:
        assert "- echo" in res.stdout


def test_docker_compose_refuses_the_missing_quote(lab_secrets, tmp_path):
    tree = tree_for(tmp_path, lab_secrets, "pitfalls.compose_missing_quote=true")
    res = compose_config(tree, tmp_path)
    assert res.returncode != 0
    assert "yaml" in (res.stderr + res.stdout).lower(), res.stderr


def test_render_lets_the_missing_quote_through_only_with_the_switch(lab_secrets):
    notes: list[str] = []
    render.render_tree(load(["pitfalls.compose_missing_quote=true"]), lab_secrets, "t", notes)
    assert len(notes) == 1 and "compose_missing_quote is on" in notes[0] and "lab.explain" in notes[0]
    broken = ["templates/ente/docker-compose.yml.j2: rendered YAML does not parse: ..."]
    assert render.allowed_broken(load(), "compose", broken) == []
    assert render.allowed_broken(load(["pitfalls.compose_missing_quote=true"]), "compose", broken)
    assert render.allowed_broken(load(["pitfalls.compose_missing_quote=true"]), "yaml", broken) == []
    other = ["templates/ente/docker-compose.yml.j2: control character '\\x01' on line 3"]
    assert render.allowed_broken(load(["pitfalls.compose_missing_quote=true"]), "compose", other) == []


def test_render_lab_says_so(lab_secrets, empty_checkout, monkeypatch):
    from entelab import state
    paths = state.paths(empty_checkout)
    state.ensure_dirs(paths)
    result = render.render_lab(paths, load(["pitfalls.compose_missing_quote=true"]), quiet=True)
    assert any("compose_missing_quote" in w for w in result.warnings)
    assert render.render_lab(paths, load(), quiet=True).warnings == []


def test_a_broken_compose_without_the_switch_is_still_refused(lab_secrets, monkeypatch):
    """The allowance is the switch's alone: the same broken text with the switch off fails."""
    orig = render._format_problems

    def broken(e, fmt, text):
        return orig(e, fmt, text.replace('"${ENTE_MINIO_SECRET}"]', '${ENTE_MINIO_SECRET}"]'))
    monkeypatch.setattr(render, "_format_problems", broken)
    with pytest.raises(TemplateError):
        render.render_tree(load(), lab_secrets, "t")
