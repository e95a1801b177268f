"""Properties every rendered template must have: a header naming the article
section, secrets only in 0600 files, never the article's example secrets,
and the service.yaml metadata render.py relies on."""

from __future__ import annotations

import re

import pytest
import yaml

from entelab import secrets as secrets_mod
from entelab.render import TEMPLATES
from entelab.state import ROOT

SECTIONS_FILE = ROOT / "docs" / "article-sections.txt"
SECTIONS = {ln.strip() for ln in SECTIONS_FILE.read_text().splitlines()
            if ln.strip() and not ln.startswith("#")}


def _trees(rendered, rendered_sendmail):
    return [rendered, rendered_sendmail]


def test_every_template_starts_with_an_article_section_header(rendered, rendered_sendmail):
    for tree in _trees(rendered, rendered_sendmail):
        for e in tree.files():
            head = tree.text(e.path).splitlines()[:4]
            hit = next((ln for ln in head if "Article section" in ln), None)
            assert hit, f"{e.src} ({e.path}) has no 'Article section' header in its first lines"
            m = re.search(r'Article section "([^"]+)"', hit)
            assert m, f"{e.src}: header must quote the section name: {hit!r}"
            assert m.group(1) in SECTIONS, f"{e.src}: {m.group(1)!r} is not in {SECTIONS_FILE}"


def test_service_yaml_sections_are_article_sections():
    for spec in sorted(TEMPLATES.glob("*/service.yaml")):
        data = yaml.safe_load(spec.read_text()) or {}
        named = [data.get("section")] + [f.get("section") for f in data.get("files", [])]
        for name in filter(None, named):
            assert name in SECTIONS, f"{spec}: section {name!r} is not in {SECTIONS_FILE}"


def test_secrets_only_in_0600_files(rendered, rendered_sendmail):
    for tree in _trees(rendered, rendered_sendmail):
        values = [v for v in tree.secrets.values() if v] + [tree.secrets.sasl_password_hash]
        for e in tree.files():
            text = tree.text(e.path)
            if any(v in text for v in values):
                assert e.mode == "0600", f"{e.path} holds a secret but is {e.mode}"
        holders = {e.path for e in tree.files() if any(v in tree.text(e.path) for v in values)}
        assert f"{tree.settings.paths.compose_dir}/.env" in holders
        assert f"{tree.settings.paths.compose_dir}/museum.yaml" in holders


def test_the_articles_example_secrets_never_appear(rendered, rendered_sendmail):
    for tree in _trees(rendered, rendered_sendmail):
        for e in tree.files():
            text = tree.text(e.path)
            for example in secrets_mod.ARTICLE_EXAMPLES:
                assert example not in text, f"{e.path} contains an article example secret"


def test_service_specs():
    specs = sorted(TEMPLATES.glob("*/service.yaml"))
    assert {p.parent.name for p in specs} >= {"apache", "ente", "postfix", "sasl", "sendmail",
                                               "dnsmasq", "dehydrated", "sudoers", "users",
                                               "network"}
    for spec in specs:
        assert (spec.parent / "NOTES.md").is_file(), f"{spec.parent.name}: NOTES.md missing"
        data = yaml.safe_load(spec.read_text())
        for f in data.get("files", []):
            assert (spec.parent / f["src"]).is_file(), f"{spec}: {f['src']} missing"
            if f["dest"].endswith(".sh"):
                assert f.get("validate") == "shell" and f.get("mode") == "0755", f


@pytest.mark.parametrize("dest", [
    "/etc/apache2/sites-enabled/ente-api.conf", "/etc/apache2/sites-enabled/ente-web.conf",
    "/etc/apache2/sites-enabled/ente-http.conf", "/usr/local/docker-ente/Dockerfile.auth",
    "/usr/local/docker-ente/.env", "/usr/local/docker-ente/museum.yaml",
    "/usr/local/docker-ente/cli-config.yaml", "/usr/local/docker-ente/minio-provision.sh",
    "/usr/local/docker-ente/docker-compose.yml", "/etc/postfix/main.cf", "/etc/postfix/master.cf",
    "/etc/sasl2/smtpd.conf", "/etc/postfix/sasl/smtpd.conf", "/etc/dnsmasq.conf",
    "/etc/dehydrated/config", "/etc/dehydrated/domains.txt", "/etc/dehydrated/hook.sh",
    "/etc/sudoers.d/postfix_reload", "/etc/sudoers.d/apache_reload", "/etc/ente-lab/users.conf",
    "/etc/hosts", "/etc/networks", "/etc/resolv.conf"])
def test_every_file_of_the_setup_is_rendered(rendered, dest):
    assert dest in rendered.entries


def test_sendmail_variant_files(rendered_sendmail):
    for dest in ("/etc/mail/local-host-names", "/etc/mail/sendmail.mc", "/etc/sasl2/Sendmail.conf",
                 "/etc/sudoers.d/sendmail_reload"):
        assert dest in rendered_sendmail.entries
