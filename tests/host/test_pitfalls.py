"""The pitfall switches (issue 15): settings in, rendered lines out.

Every switch on renders the article's literal lines, each under its marker
comment; every switch off renders the files byte for byte as a lab that never
had them; the real programs (apache2 -t, a live Apache, postfix check) read
the switched files; bad settings and unknown names are refused with a clear
message and no traceback.
"""

from __future__ import annotations

import http.server
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import load, need, render_into, running_apache

from entelab import pitfalls, render, task_bodies
from entelab.errors import BadInput, SettingsError
from entelab.settings import Pitfalls

API = "/etc/apache2/sites-enabled/ente-api.conf"
MAIN_CF = "/etc/postfix/main.cf"
DOMAINS = "/etc/dehydrated/domains.txt"
WEB = "/etc/apache2/sites-enabled/ente-web.conf"
HTTP = "/etc/apache2/sites-enabled/ente-http.conf"
COMPOSE = "/usr/local/docker-ente/docker-compose.yml"
MUSEUM = "/usr/local/docker-ente/museum.yaml"
APACHE_SUDO = "/etc/sudoers.d/apache_reload"
POSTFIX_SUDO = "/etc/sudoers.d/postfix_reload"
SASL2 = "/etc/sasl2/smtpd.conf"
SASL_LINK = "/etc/postfix/sasl/smtpd.conf"
REPO = Path(__file__).resolve().parents[2]

SET = list(pitfalls.CORS_SET_LINES)
UNSET = list(pitfalls.CORS_UNSET_LINES)
ALWAYS_UNSET = list(pitfalls.CORS_ALWAYS_UNSET_LINES)

# settings in -> (file, the lines the switch renders, in order) out
CASES = {
    "cors_article_headers": {API: SET},
    "cors_printed_fix": {API: SET + UNSET},
    "cors_working_fix": {API: SET + ALWAYS_UNSET},
    "mail_cert_mismatch": {
        MAIN_CF: ["smtpd_tls_cert_file = /etc/dehydrated/certs/enteauth.darkstar.lan/fullchain.pem",
                  "smtpd_tls_key_file = /etc/dehydrated/certs/enteauth.darkstar.lan/privkey.pem"],
        DOMAINS: ["enteauth.darkstar.lan"],
    },
    "dashed_env_names": {COMPOSE: list(pitfalls.DASHED_ENV_LINES), MUSEUM: ["emails: []"]},
    "missing_sudoers": {APACHE_SUDO: ["# (no rule for /usr/sbin/apachectl -k graceful)"],
                        POSTFIX_SUDO: ["# (no rule for /usr/sbin/postfix check)"]},
    "wellknown_in_location": {
        API: [pitfalls.WELLKNOWN_LINE], WEB: [pitfalls.WELLKNOWN_LINE],
        HTTP: [pitfalls.WELLKNOWN_LINE, "<Location />", 'ProxyPass "http://127.0.0.1:8180/"',
               'ProxyPassReverse "http://127.0.0.1:8180/"', "</Location>",
               pitfalls.WELLKNOWN_LINE, "<Location />", 'ProxyPass "http://127.0.0.1:3322/"',
               'ProxyPassReverse "http://127.0.0.1:3322/"', "</Location>"]},
    "tls_encrypt_main_cf": {MAIN_CF: list(pitfalls.TLS_MAIN_CF_LINES)},
    "sasl_wrong_dir": {SASL2: ["# (no link /etc/postfix/sasl/smtpd.conf -> /etc/sasl2/smtpd.conf)"]},
    "healthcheck_echo": {COMPOSE: [pitfalls.HEALTHCHECK_ECHO_LINE]},
    "compose_missing_quote": {COMPOSE: [pitfalls.MISSING_QUOTE_LINE]},
}


def files(overrides=()) -> dict[str, bytes]:
    settings = load(list(overrides))
    return {e.path: data for e, data in render.render_tree(settings, _secrets(), lab_id="t")}


_SECRETS: list = []


def _secrets():
    if not _SECRETS:
        from entelab import secrets as secrets_mod
        # generated once, kept in memory: nothing of them stays in /tmp
        with tempfile.TemporaryDirectory(prefix="entelab-pitfall-secrets-") as d:
            _SECRETS.append(secrets_mod.load_or_create(Path(d) / "s.yaml")[0])
    return _SECRETS[0]


@pytest.fixture(scope="module")
def default_files() -> dict[str, bytes]:
    return files()


def marked_lines(text: str, name: str) -> list[str]:
    """The lines right under the marker comment of ``name``, stripped."""
    lines = text.splitlines()
    return [lines[i + 1].strip() for i, ln in enumerate(lines[:-1])
            if ln.strip() == pitfalls.marker(name)]


# ------------------------------------------------------------------ the registry
def test_registry_names_and_switches():
    assert list(pitfalls.PITFALLS) == [
        "cors_article_headers", "cors_printed_fix", "cors_working_fix", "mail_cert_mismatch",
        "dashed_env_names", "missing_sudoers", "wellknown_in_location", "tls_encrypt_main_cf",
        "sasl_wrong_dir", "healthcheck_echo", "compose_missing_quote"]
    assert pitfalls.SWITCHES == tuple(CASES) == tuple(Pitfalls.model_fields)
    for name, p in pitfalls.PITFALLS.items():
        assert p.name == name and p.title and p.article_text and p.symptom and p.cause and p.fix


def test_registry_sections_and_deviation_rows_exist():
    sections = {ln.strip() for ln in (REPO / "docs/article-sections.txt").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")}
    rows = {int(m) for m in re.findall(r"^\| (\d+) \|", (REPO / "docs/deviations.md").read_text(), re.M)}
    numbers = re.findall(r"^\| (\d+) \|", (REPO / "docs/deviations.md").read_text(), re.M)
    assert len(numbers) == len(set(numbers)), "a deviation row number is used twice"
    doc = (REPO / "docs/pitfalls.md").read_text()
    for p in pitfalls.PITFALLS.values():
        assert p.section in sections, p.name
        assert p.deviation is None or p.deviation in rows, p.name
        assert f"`{p.name}`" in doc, f"docs/pitfalls.md does not describe {p.name}"


def test_article_text_of_the_cors_lines():
    """The lines as the article prints them (section "CORS")."""
    assert SET[0] == 'Header always set Access-Control-Allow-Origin "*"'
    assert SET[4] == 'Header always set Access-Control-Max-Age "600"'
    assert len(SET) == 5 and len(UNSET) == 4
    assert ALWAYS_UNSET[0] == "Header always unset Access-Control-Allow-Origin"


# ------------------------------------------------------------------ rendered lines
@pytest.mark.parametrize("name", list(CASES))
def test_switch_on_renders_the_lines_each_under_its_marker(name, default_files):
    on = files([f"pitfalls.{name}=true"])
    expected = CASES[name]
    changed = sorted(p for p in on if on[p] != default_files.get(p))
    assert changed == sorted(expected), "the switch changed other files"
    for path, lines in expected.items():
        text = on[path].decode()
        assert marked_lines(text, name) == lines
        # every line the switch adds is a marker, a comment or a marked line
        added = [ln for ln in text.splitlines() if ln not in default_files[path].decode().splitlines()]
        for ln in added:
            assert ln.lstrip().startswith("#") or ln.strip() in lines, ln
        # no other switch's marker
        assert pitfalls.marked(text) == [name]


@pytest.mark.parametrize("name", list(CASES))
def test_switch_off_again_is_byte_identical(name, default_files):
    assert files([f"pitfalls.{name}=true", f"pitfalls.{name}=false"]) == default_files


def test_every_switch_off_by_default_and_no_marker(default_files):
    assert load().pitfalls.on == []
    for path, data in default_files.items():
        assert pitfalls.MARKER.encode() not in data, path
        assert not re.search(rb"^\s*Header\b.*Access-Control", data, re.M), path


def test_cors_lines_sit_inside_the_api_vhost_only(default_files):
    on = files(["pitfalls.cors_working_fix=true"])
    api = on[API].decode()
    vhost = api.split("<VirtualHost *:443>")[1].split("</VirtualHost>")[0]
    for line in SET + ALWAYS_UNSET:
        assert f"\n  {line}\n" in vhost
    assert vhost.index(SET[-1]) < vhost.index(ALWAYS_UNSET[0])    # unset after set
    web = "/etc/apache2/sites-enabled/ente-web.conf"
    assert on[web] == default_files[web]


def test_mail_cert_mismatch_lineage_has_no_mail_name():
    on = files(["pitfalls.mail_cert_mismatch=true"])
    s = load()
    lines = [ln.split() for ln in on[DOMAINS].decode().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == s.cert_names                       # the lab's one certificate, unchanged
    assert lines[1] == [s.web_host] and s.mail_host not in lines[1]
    main = on[MAIN_CF].decode()
    assert f"/etc/dehydrated/certs/{lines[1][0]}/fullchain.pem" in main   # that lineage's dir


# ------------------------------------------------------------------ real programs
@pytest.mark.parametrize("name", ["cors_article_headers", "cors_printed_fix", "cors_working_fix"])
def test_apache_accepts_the_switched_vhosts(name, lab_secrets, lab_certs, tmp_path):
    from test_template_apache import apache_t, server_root
    tree = render_into(tmp_path / "root", load([f"pitfalls.{name}=true"]), lab_secrets)
    conf = server_root(tmp_path / "srv", tree, lab_certs.certdir, tmp_path / "acme")
    res = apache_t(conf)
    assert res.returncode == 0 and "Syntax OK" in res.stderr, res.stderr


def test_postfix_accepts_the_switched_main_cf(lab_secrets, tmp_path):
    from test_template_postfix import confdir
    tree = render_into(tmp_path / "root", load(["pitfalls.mail_cert_mismatch=true"]), lab_secrets)
    d = confdir(tree, tmp_path)
    res = subprocess.run([need("postfix"), "-c", str(d), "check"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    res = subprocess.run([need("postconf"), "-c", str(d), "-h", "smtpd_tls_cert_file"],
                         capture_output=True, text=True)
    assert res.stdout.strip() == f"/etc/dehydrated/certs/{tree.settings.web_host}/fullchain.pem"


class Museumish(http.server.BaseHTTPRequestHandler):
    """Answers like Museum's CORS middleware: echoes the Origin."""

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Access-Control-Allow-Origin", self.headers.get("Origin", "*"))
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


# switch -> the Access-Control-Allow-Origin values a browser receives through Apache
EXPECTED_ACAO = {
    None: ["https://web.example"],                             # Museum's only
    "cors_article_headers": ["https://web.example", "*"],      # duplicate: the browser refuses
    "cors_printed_fix": ["*"],                                 # Museum's removed, Apache's kept
    "cors_working_fix": ["https://web.example"],               # Museum's only again
}


@pytest.mark.parametrize("name", list(EXPECTED_ACAO), ids=[str(n) for n in EXPECTED_ACAO])
def test_live_apache_cors_headers(name, lab_secrets, lab_certs):
    """A live Apache in front of a Museum-like backend: the headers deviation 3 describes."""
    from test_template_apache import curl, free_port, server_root
    backend_port, http_port, https_port = free_port(), free_port(), free_port()
    overrides = [f"ports.museum={backend_port}"] + ([f"pitfalls.{name}=true"] if name else [])
    tree = render_into(Path(tempfile.mkdtemp(prefix="entelab-pitfall-tree-")), load(overrides),
                       lab_secrets)
    base = Path(tempfile.mkdtemp(prefix="entelab-pitfall-apache-"))
    os.chmod(base, 0o755)
    conf = server_root(base / "srv", tree, lab_certs.certdir, base / "acme",
                       ports=(http_port, https_port))
    with running_apache(conf, https_port, Museumish, backend_port, [base, tree.root]):
        host = tree.settings.api_host
        res = curl("--cacert", str(lab_certs.ca_pem), "--resolve", f"{host}:{https_port}:127.0.0.1",
                   "-H", "Origin: https://web.example", f"https://{host}:{https_port}/users/ott")
        assert res.returncode == 0, res.stderr
        headers = [ln.split(":", 1) for ln in res.stdout.splitlines() if ":" in ln]
        acao = [v.strip() for k, v in headers if k.lower() == "access-control-allow-origin"]
        assert sorted(acao) == sorted(EXPECTED_ACAO[name]), res.stdout
        allow_headers = [v.strip() for k, v in headers if k.lower() == "access-control-allow-headers"]
        assert allow_headers == (["Authorization"] if name in ("cors_article_headers",
                                                               "cors_printed_fix") else [])


# ------------------------------------------------------------------ settings refused
@pytest.mark.parametrize("overrides,expected", [
    (["pitfalls.cors_article_headers=true", "pitfalls.cors_printed_fix=true"],
     "pitfalls.cors_article_headers, pitfalls.cors_printed_fix: only one of the CORS switches"),
    (["pitfalls.cors_printed_fix=true", "pitfalls.cors_working_fix=true"],
     "pitfalls.cors_printed_fix, pitfalls.cors_working_fix: only one of the CORS switches"),
    (["pitfalls.cors_article_headers=true", "pitfalls.cors_printed_fix=true",
      "pitfalls.cors_working_fix=true"],
     "pitfalls.cors_article_headers, pitfalls.cors_printed_fix, pitfalls.cors_working_fix: only one"),
    (["pitfalls.cors_headers=true"],
     "pitfalls.cors_headers: unknown setting; did you mean 'pitfalls.cors_article_headers'?"),
    (["pitfalls.nope=true"], "pitfalls.nope: unknown setting (known here: cors_article_headers, "
                             "cors_printed_fix, cors_working_fix, mail_cert_mismatch, dashed_env_names, "
                             "missing_sudoers, wellknown_in_location, tls_encrypt_main_cf, "
                             "sasl_wrong_dir, healthcheck_echo, compose_missing_quote)"),
    (["pitfalls.compose_missing_quote=true", "pitfalls.healthcheck_echo=true"],
     "pitfalls.compose_missing_quote, pitfalls.healthcheck_echo: docker-compose refuses the whole file"),
    (["pitfalls.compose_missing_quote=true", "pitfalls.dashed_env_names=true"],
     "pitfalls.compose_missing_quote, pitfalls.dashed_env_names: docker-compose refuses"),
    (["pitfalls.wellknown_in_location=true", "pitfalls.mail_cert_mismatch=true"],
     "pitfalls.wellknown_in_location, pitfalls.mail_cert_mismatch: the mail certificate pitfall"),
    (["pitfalls.tls_encrypt_main_cf=true", "mta=sendmail"],
     "pitfalls.tls_encrypt_main_cf: needs mta: postfix"),
    (["pitfalls.sasl_wrong_dir=true", "mta=sendmail"], "pitfalls.sasl_wrong_dir: needs mta: postfix"),
    (["pitfalls.mail_cert_mismatch=on please"], "pitfalls.mail_cert_mismatch = 'on please': wrong type"),
    (["pitfalls.cors_printed_fix=1"], "pitfalls.cors_printed_fix = 1: wrong type"),
    (["pitfalls=[cors_printed_fix]"], "pitfalls = ['cors_printed_fix']: wrong type"),
    (["pitfalls.mail_cert_mismatch=true", "mta=sendmail"],
     "pitfalls.mail_cert_mismatch: needs mta: postfix"),
    (["pitfalls.mail_cert_mismatch=true", "web_host=darkstar.lan"],
     "pitfalls.mail_cert_mismatch: web_host = 'darkstar.lan' is the domain"),
])
def test_bad_pitfall_settings_are_refused(overrides, expected):
    with pytest.raises(SettingsError) as err:
        load(overrides)
    assert expected in err.value.message, err.value.message
    assert "nothing was written" in err.value.message


def test_unknown_key_in_the_local_file_is_refused(tmp_path):
    from entelab import settings as settings_mod
    local = tmp_path / "settings.local.yaml"
    local.write_text("pitfalls:\n  cors_printed_fix: true\n  mail_cert_mismatc: true\n")
    with pytest.raises(SettingsError) as err:
        settings_mod.load_settings(tmp_path, local_file=local)
    assert "pitfalls.mail_cert_mismatc: unknown setting; did you mean " \
           "'pitfalls.mail_cert_mismatch'?" in err.value.message


def test_switches_read_from_the_local_file(tmp_path):
    from entelab import settings as settings_mod
    local = tmp_path / "settings.local.yaml"
    local.write_text("pitfalls:\n  cors_printed_fix: true\n  mail_cert_mismatch: true\n")
    s, _ = settings_mod.load_settings(tmp_path, local_file=local)
    assert s.pitfalls.on == ["cors_printed_fix", "mail_cert_mismatch"]


# ------------------------------------------------------------------ lab.explain / lab.pitfalls
def exit_code(fn, **kw) -> int:
    with pytest.raises(SystemExit) as err:
        task_bodies.run(fn, **kw)
    return err.value.code


@pytest.mark.parametrize("name", list(pitfalls.PITFALLS))
def test_explain_every_pitfall(name):
    text = pitfalls.explain(name)
    p = pitfalls.PITFALLS[name]
    flat = " ".join(text.split())
    assert text.startswith(f"{name}: {p.title}")
    for part in (p.section, p.article_text, p.symptom, p.cause, p.fix):
        assert " ".join(part.split()) in flat
    assert (f"docs/deviations.md row {p.deviation}" in flat) == (p.deviation is not None)
    assert (f"--set pitfalls.{name}=true" in flat) == p.switch
    assert all(len(ln) <= pitfalls.WIDTH for ln in text.splitlines()[1:])


@pytest.mark.parametrize("name", ["nope", "", "CORS_PRINTED_FIX", "x" * 500, "[red]x[/]"])
def test_explain_unknown_name_names_the_known_ones(name, capsys):
    with pytest.raises(BadInput) as err:
        pitfalls.explain(name)
    assert "known: cors_article_headers, cors_printed_fix" in err.value.message
    assert exit_code(task_bodies.explain, name=name) == 2
    out = capsys.readouterr().out
    assert "unknown pitfall" in out and "Traceback" not in out and "lab.pitfalls" in out


def test_explain_and_pitfalls_tasks_through_invoke(tmp_path):
    env = {**os.environ, "ENTE_LAB_SETTINGS": str(tmp_path / "s.yaml"), "COLUMNS": "200"}
    (tmp_path / "s.yaml").write_text("pitfalls:\n  mail_cert_mismatch: true\n")
    run = [sys.executable, "-m", "invoke"]
    ok = subprocess.run([*run, "lab.explain", "cors_printed_fix"], cwd=REPO, env=env,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("cors_printed_fix: ") and "row 3" in ok.stdout
    bad = subprocess.run([*run, "lab.explain", "cors"], cwd=REPO, env=env, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stdout + bad.stderr
    assert "unknown pitfall 'cors'; known: cors_article_headers" in " ".join(bad.stdout.split())
    table = subprocess.run([*run, "lab.pitfalls"], cwd=REPO, env=env, capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    rows = {ln.split("│")[1].strip(): [c.strip() for c in ln.split("│")[2:4]]
            for ln in table.stdout.splitlines() if ln.count("│") >= 4}
    assert rows["mail_cert_mismatch"] == ["Configuring Postfix", "on"]
    assert rows["cors_article_headers"] == ["CORS", "off"]
    assert rows["healthcheck_echo"] == ["docker-compose.yml", "off"]


def test_marked_finds_markers_in_any_text():
    text = "\n".join([pitfalls.marker("cors_printed_fix"), "x", "# ente-lab pitfall bogus (lab.explain bogus)",
                      "  " + pitfalls.marker("mail_cert_mismatch")])
    assert pitfalls.marked(text) == ["cors_printed_fix", "mail_cert_mismatch"]
    assert pitfalls.marked("") == []


def test_status_rows():
    """lab.status: the switches on in the settings, and the ones live in the VM."""
    from entelab import lab
    assert lab._pitfalls_row([]) == "none"
    assert "cors_printed_fix" in lab._pitfalls_row(["cors_printed_fix"])
    assert "unknown" in lab._pitfalls_row(None)


def test_status_finds_the_pitfalls_live_in_the_vm(tmp_path, monkeypatch):
    """lab.status greps the lab's files in the VM (the manifest's list) for the markers:
    here the command runs with the real grep against a rendered tree standing in for the VM."""
    from recording import RecordingConnection

    from entelab import lab, state
    from entelab.guest import Guest
    monkeypatch.setenv("ENTE_LAB_HOME", str(tmp_path / "home"))
    (tmp_path / "checkout").mkdir()
    paths = state.paths(tmp_path / "checkout")
    state.ensure_dirs(paths)
    settings = load(["pitfalls.cors_printed_fix=true", "pitfalls.mail_cert_mismatch=true"])
    render.render_lab(paths, settings, quiet=True)
    vm_root = paths.rendered

    def answer(cmd: str):
        if "grep -h -o -E" not in cmd:
            return ""
        head, _, files = cmd.partition(" -- ")
        files = files.replace(" 2>/dev/null || true", "")
        local = " ".join(f"{vm_root}{f}" for f in files.split())
        res = subprocess.run(f"{head} -- {local} 2>/dev/null || true", shell=True,
                             capture_output=True, text=True)
        return res.stdout

    rec = RecordingConnection(answer)
    assert lab.pitfalls_in_vm(Guest(rec), paths) == ["cors_printed_fix", "mail_cert_mismatch"]
    assert len(rec.commands) == 1 and MAIN_CF in rec.commands[0] and API in rec.commands[0]
