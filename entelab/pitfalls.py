"""The article's pitfalls: one registry, read by settings, templates, tasks and docs.

Each ``Pitfall`` names a mistake the article prints (or leads a reader into), what
a reader sees, why, and the fix. ``switch=True`` marks the ones the lab can switch
on (settings ``pitfalls.<name>: true``): the templates then render the article's
literal text, marked with ``# ente-lab pitfall <name> (lab.explain <name>)``.
``cors_working_fix`` is in the registry but is not a pitfall: it is the fix that
works when the article's CORS lines cannot be removed.

``lab.explain NAME`` prints ``explain(NAME)``, ``lab.pitfalls`` the ``table``;
docs/pitfalls.md says the same. ``lab.status`` finds the pitfalls live in the VM
by their marker comments (``marked``).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass

from rich.table import Table

from .errors import BadInput


@dataclass(frozen=True)
class Pitfall:
    name: str            # key under `pitfalls:` in settings
    title: str
    section: str         # the article section header, as listed in docs/article-sections.txt
    article_text: str    # what the article literally prints (short)
    symptom: str
    cause: str
    fix: str
    deviation: int | None   # row number in docs/deviations.md, or None
    switch: bool         # True when a settings switch exists


CORS_SET_LINES = (
    'Header always set Access-Control-Allow-Origin "*"',
    'Header always set Access-Control-Allow-Headers "Authorization"',
    'Header always set Access-Control-Allow-Methods "GET"',
    'Header always set Access-Control-Expose-Headers "Content-Security-Policy, Location"',
    'Header always set Access-Control-Max-Age "600"',
)
CORS_UNSET_LINES = (
    "Header unset Access-Control-Allow-Origin",
    "Header unset Access-Control-Allow-Headers",
    "Header unset Access-Control-Allow-Methods",
    "Header unset Access-Control-Expose-Headers",
)
CORS_ALWAYS_UNSET_LINES = tuple(ln.replace("Header unset", "Header always unset")
                                for ln in CORS_UNSET_LINES)
WIDTH = 88           # explain's lines (wrapped here, printed unwrapped)
# every line a switch renders carries this comment (on the line before it: Apache and
# Postfix have no end-of-line comments)
MARKER = "# ente-lab pitfall"
MARKED = re.compile(r"# ente-lab pitfall ([a-z_]+) \(lab\.explain \1\)")
# at most one of these may be on (each renders the article's set lines)
CORS_SWITCHES = ("cors_article_headers", "cors_printed_fix", "cors_working_fix")
# the other switches that change docker-compose.yml (refused beside compose_missing_quote,
# which makes docker-compose refuse the whole file)
COMPOSE_SWITCHES = ("dashed_env_names", "healthcheck_echo")
# The article's literal lines the switches render (tests compare the templates with these)
DASHED_ENV_LINES = (
    "ENTE_INTERNAL_HARDCODED-OTT_EMAILS: ${ENTE_HARDCODED_OTT_EMAIL}",
    "ENTE_S3_B2-EU-CEN_KEY: ${ENTE_MINIO_KEY}",
    "ENTE_S3_B2-EU-CEN_SECRET: ${ENTE_MINIO_SECRET}",
    "ENTE_S3_WASABI-EU-CENTRAL-2-V3_KEY: ${ENTE_MINIO_KEY}",
    "ENTE_S3_WASABI-EU-CENTRAL-2-V3_SECRET: ${ENTE_MINIO_SECRET}",
    "ENTE_S3_SCW-EU-FR-V3_KEY: ${ENTE_MINIO_KEY}",
    "ENTE_S3_SCW-EU-FR-V3_SECRET: ${ENTE_MINIO_SECRET}",
)
HEALTHCHECK_ECHO_LINE = 'test: [ "CMD", "echo", "1" ]'
MISSING_QUOTE_LINE = 'entrypoint: ["sh", "/provision.sh", "${ENTE_MINIO_KEY}", ${ENTE_MINIO_SECRET}"]'
TLS_MAIN_CF_LINES = ("smtpd_tls_security_level = encrypt", "smtpd_sasl_auth_enable = yes",
                     "syslog_name = postfix/submission")
WELLKNOWN_LINE = 'ProxyPass "/.well-known/" "!"'


def _p(**kw) -> Pitfall:
    return Pitfall(**kw)


_ALL = (
    _p(name="cors_article_headers",
       title="The article's five Access-Control-* lines in the API vhost",
       section="CORS",
       article_text='Header always set Access-Control-Allow-Origin "*" (and -Headers, -Methods, '
                    "-Expose-Headers, -Max-Age)",
       symptom="The web app says 'Network Error' at signup; the browser console reports a CORS "
               "error: the response carries two Access-Control-Allow-Origin values. The "
               "POST is never sent (the article: the input 'never reached' Museum).",
       cause="Museum sets its own CORS headers. Apache's `Header always set` adds its own "
             "(`*`, `Authorization`, `GET`) beside them, so the preflight answer has duplicate "
             "Access-Control-Allow-Origin and does not allow X-Client-Package.",
       fix="Remove the five lines from every configuration that reaches the Ente vhosts; if "
           "they must stay (a global config), add `Header always unset Access-Control-...` "
           "after them (cors_working_fix).",
       deviation=3, switch=True),
    _p(name="cors_printed_fix",
       title="The article's printed fix: Header unset Access-Control-...",
       section="CORS",
       article_text="Header unset Access-Control-Allow-Origin (and -Headers, -Methods, "
                    "-Expose-Headers)",
       symptom="Still 'Network Error' in the browser with the fix the article prints in place: "
               "the preflight still fails on X-Client-Package.",
       cause="`Header unset` works on the normal header table only: it removes Museum's "
             "headers and leaves Apache's `always` ones (`*`, `Authorization`, `GET`).",
       fix="Use `Header always unset Access-Control-...` after the set lines "
           "(cors_working_fix), or remove the set lines.",
       deviation=3, switch=True),
    _p(name="cors_working_fix",
       title="Not a pitfall: Header always unset after the article's set lines",
       section="CORS",
       article_text="(not printed; the article's set lines followed by "
                    "Header always unset Access-Control-...)",
       symptom="None: signup works. This switch exists to show the fix beside the two "
               "pitfalls.",
       cause="`Header always unset` clears the `always` table Apache's set lines wrote; "
             "Museum's own CORS headers pass through alone.",
       fix="This is the fix (or remove the set lines, which is what the lab does by default).",
       deviation=3, switch=True),
    _p(name="mail_cert_mismatch",
       title="Postfix serves a certificate that does not name smtp.host",
       section="Configuring Postfix",
       article_text="smtpd_tls_cert_file = /etc/dehydrated/certs/darkstar.lan/fullchain.pem",
       symptom="Signup says the code was not sent; Museum's log shows the STARTTLS handshake "
               "failing host name verification (certificate is valid for ..., not smtp.<domain>); "
               "no mail arrives.",
       cause="Museum (Go's net/smtp) verifies the MTA's certificate against smtp.host. The "
             "article's main.cf names the dehydrated certificate of the domain, which works "
             "only when that certificate lists the mail host; here Postfix serves the web "
             "host's certificate, which does not.",
       fix="Point smtpd_tls_cert_file/smtpd_tls_key_file at a certificate whose names "
           "include smtp.host (the lab's one certificate lists every lab name: domains.txt).",
       deviation=26, switch=True),
    _p(name="dashed_env_names",
       title="Dashed ENTE_ names in docker-compose.yml",
       section="docker-compose.yml",
       article_text="ENTE_INTERNAL_HARDCODED-OTT_EMAILS: ${ENTE_HARDCODED_OTT_EMAIL}",
       symptom="The hard-coded one-time code is not accepted; Museum sends (or fails to send) "
               "a mail instead. Nothing in the logs says the variable was ignored.",
       cause="Museum maps `ENTE_` + the museum.yaml key with `.` and `-` turned into `_`; "
             "a name with a dash never matches and is silently ignored.",
       fix="Use underscores: ENTE_INTERNAL_HARDCODED_OTT_EMAILS.",
       deviation=5, switch=True),
    _p(name="missing_sudoers",
       title="The sudoers line the hook needs is missing",
       section="Configuring Postfix",
       article_text="dehydrated_user ALL=NOPASSWD: /usr/sbin/postfix reload",
       symptom="Renewal writes a new certificate, but Apache keeps serving the old one "
               "(until it is reloaded by hand) and the hook reports a failure. Postfix looks "
               "fine: each new smtpd process reads the certificate file when it starts.",
       cause="dehydrated runs as a non-root user; without a sudoers rule for each reload "
             "command (the article lists only `postfix reload`, not `apachectl -k graceful`) "
             "the hook's sudo calls fail.",
       fix="A sudoers rule for every command the hook runs with sudo (postfix reload and "
           "check, apachectl -k graceful).",
       deviation=21, switch=True),
    _p(name="wellknown_in_location",
       title='Vhost-level ProxyPass "/.well-known/" "!" with the proxy under <Location />',
       section="Apache reverse proxy configuration",
       article_text='ProxyPass "/.well-known/" "!"',
       symptom="Certificate issuance fails: the CA's http-01 challenge request gets Museum's "
               "(or the web app's) 404.",
       cause="Apache ignores the vhost-level exclusion when the proxy is configured inside "
             "<Location />: the challenge request is proxied too.",
       fix='<Location "/.well-known/acme-challenge/"> ProxyPass ! </Location> after '
           "<Location />, with an Alias to dehydrated's WELLKNOWN directory.",
       deviation=1, switch=True),
    _p(name="tls_encrypt_main_cf",
       title="smtpd_tls_security_level = encrypt in main.cf",
       section="Configuring Postfix",
       article_text="smtpd_tls_security_level = encrypt",
       symptom="Port 587 behaves as the article shows, but port 25 refuses mail from any MTA "
               "that does not speak TLS, and every log line says postfix/submission.",
       cause="main.cf settings apply to every smtpd, port 25 included.",
       fix="Put smtpd_tls_security_level=encrypt, smtpd_sasl_auth_enable=yes and "
           "syslog_name=postfix/submission as -o options on the submission line in master.cf.",
       deviation=17, switch=True),
    _p(name="sasl_wrong_dir",
       title="SASL config read from the wrong directory",
       section="Configuring SASL",
       article_text="/etc/sasl2/smtpd.conf",
       symptom="SMTP AUTH answers 535 (authentication failed) for the right password; "
               "testsaslauthd says OK.",
       cause="Debian's Postfix reads its SASL config from /etc/postfix/sasl/, not "
             "/etc/sasl2/; without it every mechanism is offered and saslauthd is not used.",
       fix="Link /etc/postfix/sasl/smtpd.conf to /etc/sasl2/smtpd.conf and put postfix "
           "in group sasl.",
       deviation=20, switch=True),
    _p(name="healthcheck_echo",
       title="Museum's healthcheck echo 1",
       section="docker-compose.yml",
       article_text='test: [ "CMD", "echo", "1" ]',
       symptom="The web app starts before Museum answers; the first requests fail.",
       cause="`echo 1` is always healthy, so `depends_on: condition: service_healthy` "
             "waits for nothing.",
       fix="A healthcheck that asks Museum: wget/curl http://127.0.0.1:8080/ping.",
       deviation=8, switch=True),
    _p(name="compose_missing_quote",
       title="The compose line with the missing quote",
       section="docker-compose.yml",
       article_text='entrypoint: ["sh", "/provision.sh", "${ENTE_MINIO_KEY}", '
                    '${ENTE_MINIO_SECRET}"]',
       symptom="docker-compose refuses the file (a YAML parse error) and nothing starts.",
       cause="The opening quote of the last argument is missing: not valid YAML as printed.",
       fix='Quote it: "${ENTE_MINIO_SECRET}".',
       deviation=6, switch=True),
)

PITFALLS: dict[str, Pitfall] = {p.name: p for p in _ALL}
# in the registry (and switchable) but not a mistake: the fix that works
NOT_PITFALLS: frozenset[str] = frozenset({"cors_working_fix"})
SWITCHES: tuple[str, ...] = tuple(p.name for p in _ALL if p.switch)


def marker(name: str) -> str:
    """The comment above each line the switch ``name`` renders."""
    return f"{MARKER} {name} (lab.explain {name})"


def marked(text: str) -> list[str]:
    """The known pitfall names whose marker comment appears in ``text``, registry order."""
    found = set(MARKED.findall(text))
    return [name for name in PITFALLS if name in found]


def _unknown(name: str) -> BadInput:
    return BadInput(f"unknown pitfall {name[:60]!r}; known: {', '.join(PITFALLS)}",
                    hint="./labctl lab.pitfalls lists them with their article sections")


def get(name: str) -> Pitfall:
    try:
        return PITFALLS[name]
    except KeyError:
        raise _unknown(name) from None


def explain(name: str) -> str:
    """What ``lab.explain NAME`` prints. An unknown name -> ``BadInput`` naming the known ones."""
    p = get(name)
    row = (f"docs/deviations.md row {p.deviation}" if p.deviation is not None else "none")
    if p.switch:
        how = (f"pitfalls.{p.name}: true in settings.local.yaml (or --set "
               f"pitfalls.{p.name}=true), then ./labctl lab.converge; false turns it off")
    else:
        how = "no switch yet"
    fields = [("article section", p.section), ("the article prints", p.article_text),
              ("symptom", p.symptom), ("cause", p.cause), ("fix", p.fix),
              ("deviation", row), ("switch", how), ("more", "docs/pitfalls.md")]
    lines = [f"{p.name}: {p.title}"]
    for label, text in fields:
        lines += textwrap.wrap(f"{label}: {text}", width=WIDTH, initial_indent="  ",
                               subsequent_indent="      ", break_on_hyphens=False,
                               break_long_words=False)
    return "\n".join(lines)


def table(on: Iterable[str]) -> Table:
    """Every pitfall: name, article section, switch (on / off / none: no switch yet)."""
    on = set(on)
    out = Table(title="the article's pitfalls (./labctl lab.explain NAME)")
    for col in ("name", "section", "switch", "deviation"):
        out.add_column(col)
    for p in PITFALLS.values():
        state = ("[bold red]on[/]" if p.name in on else "off") if p.switch else "none"
        name = p.name + (" (the fix, not a pitfall)" if p.name in NOT_PITFALLS else "")
        out.add_row(name, p.section, state, str(p.deviation) if p.deviation is not None else "-")
    return out
