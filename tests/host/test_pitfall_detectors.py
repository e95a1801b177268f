"""Pitfall detectors as data: fixture snippets in, findings (name, path, line) out.

One case per pitfall with the article's literal text, one with the lab's (or the fixed)
text giving no finding, and the whole production stand-in (tests/host/fixtures/production)
giving every pitfall. No SSH here: test_proddiff.py reads the same tree through sshd.
"""

from __future__ import annotations

from pathlib import Path

import conftest  # noqa: F401 - shared fixtures
import pytest

from entelab import detect
from entelab.detect import Files

STANDIN = Path(__file__).parent / "fixtures" / "production"
CD = "/usr/local/docker-ente"
COMPOSE = f"{CD}/docker-compose.yml"
ENV = f"{CD}/.env"
MUSEUM = f"{CD}/museum.yaml"
VHOST = "/etc/httpd/extra/ente.darkstar.lan.conf"
HTTPD = "/etc/httpd/httpd.conf"
MAIN_CF = "/etc/postfix/main.cf"
HOOK = "/etc/dehydrated/hook.sh"

ARTICLE_VHOST = """\
<VirtualHost *:443>
ProxyPass "/.well-known/" "!"
<Location />
  ProxyPass "http://127.0.0.1:8180/"
  ProxyPassReverse "http://127.0.0.1:8180/"
</Location>
</VirtualHost>
"""
LAB_VHOST = """\
<VirtualHost *:443>
  <Location />
    ProxyPass "http://127.0.0.1:8180/"
  </Location>
  <Location "/.well-known/acme-challenge/">
    ProxyPass !
  </Location>
</VirtualHost>
"""
CORS_SET = 'Header always set Access-Control-Allow-Origin "*"\nHeader always set Access-Control-Max-Age "600"\n'
CORS_PRINTED = "<VirtualHost *:443>\nHeader unset Access-Control-Allow-Origin\n</VirtualHost>\n"
CORS_WORKING = "<VirtualHost *:443>\nHeader always unset Access-Control-Allow-Origin\n</VirtualHost>\n"
MAIN_ARTICLE = """\
myhostname = smtp.darkstar.lan
smtpd_tls_cert_file = /etc/dehydrated/certs/darkstar.lan/fullchain.pem
smtpd_tls_security_level = encrypt
smtpd_sasl_auth_enable = yes
"""
MAIN_LAB = """\
# smtpd_tls_security_level = encrypt   (a comment is not a setting)
smtpd_tls_cert_file = /etc/dehydrated/certs/darkstar.lan/fullchain.pem
smtpd_tls_security_level = may
smtpd_sasl_auth_enable = yes
"""
MUSEUM_SMTP = "smtp:\n  host: smtp.darkstar.lan\n  port: 587\n"
HOOK_ARTICLE = """\
deploy_cert() {
    # uses 'sudo' to reload the Apache configuration:
    sudo /usr/sbin/apachectl -k graceful
    sudo /usr/sbin/postfix reload
}
"""
SUDO_ARTICLE = "dehydrated_user ALL=NOPASSWD: /usr/sbin/postfix reload\n"
SUDO_APACHE = "dehydrated_user ALL=NOPASSWD: /usr/sbin/apachectl -k graceful\n"
COMPOSE_ARTICLE = """\
services:
  ente-museum:
    healthcheck:
      test: [ "CMD", "echo", "1" ]
    environment:
      ENTE_INTERNAL_HARDCODED-OTT_EMAILS: ${ENTE_HARDCODED_OTT_EMAIL}
      ENTE_S3_B2-EU-CEN_KEY: ${ENTE_MINIO_KEY}
      ENTE_DB_USER: ${ENTE_DB_USER}
  ente-minio-provision:
    entrypoint: ["sh", "/provision.sh", "${ENTE_MINIO_KEY}", ${ENTE_MINIO_SECRET}"]
"""
COMPOSE_FIXED = """\
services:
  ente-museum:
    healthcheck:
      test: ["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1:8080/ping"]
    environment:
      ENTE_INTERNAL_HARDCODED_OTT_EMAILS: ${ENTE_HARDCODED_OTT_EMAIL}
      ENTE_S3_B2_EU_CEN_KEY: ${ENTE_MINIO_KEY}
  ente-minio-provision:
    entrypoint: ["sh", "/provision.sh", "${ENTE_MINIO_KEY}", "${ENTE_MINIO_SECRET}"]
"""

# (pitfall, files, expected [(path, line, is_pitfall)])
CASES = [
    ("cors_article_headers", {HTTPD: CORS_SET}, [(HTTPD, 1, True), (HTTPD, 2, True)]),
    ("cors_article_headers", {HTTPD: CORS_SET, VHOST: CORS_WORKING}, [(HTTPD, 1, False), (HTTPD, 2, False)]),
    ("cors_article_headers", {HTTPD: CORS_SET.replace("Header", "# Header"), VHOST: LAB_VHOST}, []),
    ("cors_printed_fix", {HTTPD: CORS_SET, VHOST: CORS_PRINTED}, [(VHOST, 2, True)]),
    ("cors_printed_fix", {HTTPD: CORS_SET, VHOST: CORS_WORKING}, []),
    ("cors_working_fix", {VHOST: CORS_WORKING}, [(VHOST, 2, False)]),
    ("cors_working_fix", {VHOST: CORS_PRINTED}, []),
    ("wellknown_in_location", {VHOST: ARTICLE_VHOST}, [(VHOST, 2, True)]),
    ("wellknown_in_location", {VHOST: LAB_VHOST}, []),
    ("wellknown_in_location", {VHOST: ARTICLE_VHOST.replace("</VirtualHost>", LAB_VHOST.split("\n", 4)[4])}, []),
    ("tls_encrypt_main_cf", {MAIN_CF: MAIN_ARTICLE}, [(MAIN_CF, 3, True)]),
    ("tls_encrypt_main_cf", {MAIN_CF: MAIN_LAB}, []),
    ("sasl_wrong_dir", {MAIN_CF: MAIN_ARTICLE, "/etc/sasl2/smtpd.conf": "pwcheck_method: saslauthd\n"},
     [("/etc/sasl2/smtpd.conf", 1, True)]),
    ("sasl_wrong_dir", {MAIN_CF: MAIN_ARTICLE, "/etc/sasl2/smtpd.conf": "pwcheck_method: saslauthd\n",
                        "/etc/postfix/sasl/smtpd.conf": "pwcheck_method: saslauthd\n"}, []),
    ("sasl_wrong_dir", {MAIN_CF: MAIN_ARTICLE + "cyrus_sasl_config_path = /etc/sasl2\n",
                        "/etc/sasl2/smtpd.conf": "pwcheck_method: saslauthd\n"}, []),
    ("mail_cert_mismatch", {MAIN_CF: MAIN_ARTICLE, MUSEUM: MUSEUM_SMTP,
                            "/etc/dehydrated/domains.txt": "darkstar.lan ente.darkstar.lan\n"},
     [(MAIN_CF, 2, True)]),
    ("mail_cert_mismatch", {MAIN_CF: MAIN_ARTICLE, MUSEUM: MUSEUM_SMTP,
                            "/etc/dehydrated/domains.txt": "darkstar.lan smtp.darkstar.lan ente.darkstar.lan\n"},
     []),
    ("mail_cert_mismatch", {MAIN_CF: MAIN_ARTICLE, MUSEUM: MUSEUM_SMTP}, [(MAIN_CF, 2, False)]),
    ("mail_cert_mismatch", {MAIN_CF: MAIN_ARTICLE, MUSEUM: "db:\n  host: x\n"}, []),
    ("missing_sudoers", {HOOK: HOOK_ARTICLE, "/etc/sudoers.d/postfix_reload": SUDO_ARTICLE}, [(HOOK, 3, True)]),
    ("missing_sudoers", {HOOK: HOOK_ARTICLE, "/etc/sudoers.d/postfix_reload": SUDO_ARTICLE,
                         "/etc/sudoers.d/apache_reload": SUDO_APACHE}, []),
    ("dashed_env_names", {COMPOSE: COMPOSE_ARTICLE}, [(COMPOSE, 6, True), (COMPOSE, 7, True)]),
    ("dashed_env_names", {COMPOSE: COMPOSE_FIXED, ENV: "ENTE_DB_USER=x\n"}, []),
    ("dashed_env_names", {ENV: "ENTE_KEY-HASH=x\n"}, [(ENV, 1, True)]),
    ("healthcheck_echo", {COMPOSE: COMPOSE_ARTICLE}, [(COMPOSE, 4, True)]),
    ("healthcheck_echo", {COMPOSE: COMPOSE_FIXED}, []),
    ("compose_missing_quote", {COMPOSE: COMPOSE_ARTICLE}, [(COMPOSE, 10, True)]),
    ("compose_missing_quote", {COMPOSE: COMPOSE_FIXED}, []),
]


@pytest.mark.parametrize(("name", "texts", "expected"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_detector(name, texts, expected):
    found = detect.DETECTORS[name](Files(texts))
    assert [(f.path, f.line, f.pitfall) for f in found] == expected
    assert all(f.name == name and f.excerpt == texts[f.path].splitlines()[f.line - 1].strip()
               for f in found)


def test_unreadable_sudoers_is_not_called_missing():
    files = Files({HOOK: HOOK_ARTICLE}, unreadable={"/etc/sudoers.d/postfix_reload"})
    found = detect.missing_sudoers(files)
    assert found and not any(f.pitfall for f in found)
    assert all("cannot verify" in f.note for f in found)


def test_one_detector_per_registry_name():
    names = {"cors_article_headers", "cors_printed_fix", "cors_working_fix", "mail_cert_mismatch",
             "dashed_env_names", "missing_sudoers", "wellknown_in_location", "tls_encrypt_main_cf",
             "sasl_wrong_dir", "healthcheck_echo", "compose_missing_quote"}
    assert set(detect.DETECTORS) == names
    try:
        from entelab import pitfalls
    except ImportError:
        return
    assert set(detect.DETECTORS) == set(pitfalls.PITFALLS)


def _tree(root: Path) -> dict[str, str]:
    return {"/" + str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "README.md"}


def test_the_standin_tree_has_every_pitfall():
    found = detect.detect(Files(_tree(STANDIN)))
    pitfalls = {f.name for f in found if f.pitfall}
    assert pitfalls == set(detect.DETECTORS) - {"cors_working_fix"}


def test_the_lab_rendering_has_no_pitfall(rendered):
    """The lab's own files (Debian paths mapped to the Slackware ones) give no pitfall."""
    texts = {}
    for entry in rendered.files():
        path = entry.path.replace("/etc/apache2/sites-enabled/", "/etc/httpd/extra/")
        texts[path] = rendered.text(entry.path)
    texts["/etc/postfix/sasl/smtpd.conf"] = texts["/etc/sasl2/smtpd.conf"]    # the lab's link
    found = detect.detect(Files(texts, compose_dir=rendered.settings.paths.compose_dir))
    assert [f for f in found if f.pitfall] == []
