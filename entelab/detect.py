"""Pitfall detectors: one function per pitfall of ``entelab/pitfalls.py``, over file texts.

Each detector reads ``Files`` (production path -> text, plus the paths that exist but
could not be read) and returns ``Finding``s: the pitfall's name, the file, the line
number (1-based; 0 when the finding is about a file as a whole), the line itself and
a note. ``pitfall=False`` marks a finding that is information, not a pitfall (the
working CORS fix, a pitfall neutralised by it, a check that could not be made).
Pure functions of their input: the tests feed them snippets.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import yaml

HTTPD_DIR = "/etc/httpd"
MAIN_CF = "/etc/postfix/main.cf"
MASTER_CF = "/etc/postfix/master.cf"
SASL2_CONF = "/etc/sasl2/smtpd.conf"
POSTFIX_SASL_CONF = "/etc/postfix/sasl/smtpd.conf"
DOMAINS_TXT = "/etc/dehydrated/domains.txt"
HOOK = "/etc/dehydrated/hook.sh"
SUDOERS_DIR = "/etc/sudoers.d"


@dataclass
class Files:
    """The texts a detector may look at."""

    texts: dict[str, str]                          # readable files: path -> text
    unreadable: set[str] = field(default_factory=set)   # exist, not readable
    compose_dir: str = "/usr/local/docker-ente"

    def get(self, path: str) -> str | None:
        return self.texts.get(path)

    def exists(self, path: str) -> bool:
        return path in self.texts or path in self.unreadable

    def under(self, directory: str) -> list[tuple[str, str]]:
        prefix = directory.rstrip("/") + "/"
        return sorted((p, t) for p, t in self.texts.items() if p.startswith(prefix))

    @property
    def compose(self) -> str:
        return self.compose_dir.rstrip("/") + "/docker-compose.yml"

    @property
    def env(self) -> str:
        return self.compose_dir.rstrip("/") + "/.env"

    @property
    def museum(self) -> str:
        return self.compose_dir.rstrip("/") + "/museum.yaml"


@dataclass(frozen=True)
class Finding:
    name: str            # the pitfall's name in entelab/pitfalls.py
    path: str
    line: int            # 1-based; 0: the file as a whole
    excerpt: str
    note: str = ""
    pitfall: bool = True


def _lines(text: str) -> Iterable[tuple[int, str]]:
    """(number, line) of the lines that are not comments (``#``) or blank."""
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s and not s.startswith("#"):
            yield n, line


def _grep(files: Iterable[tuple[str, str]], pattern: re.Pattern, name: str, note: str = "",
          pitfall: bool = True) -> list[Finding]:
    out = []
    for path, text in files:
        for n, line in _lines(text):
            if pattern.search(line):
                out.append(Finding(name, path, n, line.strip(), note, pitfall))
    return out


# ------------------------------------------------------------------ Apache / CORS
CORS_SET = re.compile(r"^\s*Header\s+always\s+set\s+Access-Control-", re.I)
CORS_UNSET = re.compile(r"^\s*Header\s+unset\s+Access-Control-", re.I)
CORS_ALWAYS_UNSET = re.compile(r"^\s*Header\s+always\s+unset\s+Access-Control-Allow-Origin\b", re.I)


def cors_working_fix(f: Files) -> list[Finding]:
    return _grep(f.under(HTTPD_DIR), CORS_ALWAYS_UNSET, "cors_working_fix",
                 "the fix that works: Apache's always-table CORS headers are removed", pitfall=False)


def cors_article_headers(f: Files) -> list[Finding]:
    found = _grep(f.under(HTTPD_DIR), CORS_SET, "cors_article_headers")
    fixes = cors_working_fix(f)
    if found and fixes:
        where = f"{fixes[0].path}:{fixes[0].line}"
        return [Finding(x.name, x.path, x.line, x.excerpt,
                        f"neutralised by 'Header always unset' at {where}", pitfall=False) for x in found]
    return found


def cors_printed_fix(f: Files) -> list[Finding]:
    return _grep(f.under(HTTPD_DIR), CORS_UNSET, "cors_printed_fix",
                 "'Header unset' leaves Apache's 'always' headers in place")


WELLKNOWN = re.compile(r"""^\s*ProxyPass\s+["']?/\.well-known/?["']?\s+["']?!["']?\s*$""", re.I)
LOCATION_OPEN = re.compile(r"""^\s*<Location\s+["']?([^"'>\s]+)["']?\s*>""", re.I)
LOCATION_CLOSE = re.compile(r"^\s*</Location\s*>", re.I)
PROXYPASS = re.compile(r"^\s*ProxyPass\s+(\S+)", re.I)


def wellknown_in_location(f: Files) -> list[Finding]:
    """A vhost-level ``ProxyPass "/.well-known/" "!"`` while the proxy sits in
    ``<Location />`` (and no later ``<Location "/.well-known/...">`` excludes it)."""
    out = []
    for path, text in f.under(HTTPD_DIR):
        exclusions: list[tuple[int, str]] = []
        proxied_root = False
        own_location = False
        loc: str | None = None
        for n, line in _lines(text):
            m = LOCATION_OPEN.match(line)
            if m:
                loc = m.group(1)
                continue
            if LOCATION_CLOSE.match(line):
                loc = None
                continue
            if loc is None and WELLKNOWN.match(line):
                exclusions.append((n, line.strip()))
            elif loc == "/" and PROXYPASS.match(line) and PROXYPASS.match(line).group(1) != "!":  # type: ignore[union-attr]
                proxied_root = True
            elif (loc is not None and loc.startswith("/.well-known") and PROXYPASS.match(line)
                  and PROXYPASS.match(line).group(1).strip("\"'") == "!"):  # type: ignore[union-attr]
                own_location = True
        if proxied_root and not own_location:
            out += [Finding("wellknown_in_location", path, n, ex,
                            "ignored: the proxy inside <Location /> still takes /.well-known/")
                    for n, ex in exclusions]
    return out


# ------------------------------------------------------------------ Postfix / SASL / certificates
def _postconf(text: str) -> dict[str, tuple[int, str]]:
    """main.cf parameters (last one wins): name -> (line, value); continuation lines joined."""
    out: dict[str, tuple[int, str]] = {}
    last = ""
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0] in " \t" and last:
            ln, value = out[last]
            out[last] = (ln, value + " " + line.strip())
            continue
        if "=" in line:
            name, value = line.split("=", 1)
            last = name.strip()
            out[last] = (n, value.strip())
    return out


def tls_encrypt_main_cf(f: Files) -> list[Finding]:
    text = f.get(MAIN_CF)
    if text is None:
        return []
    conf = _postconf(text)
    if "smtpd_tls_security_level" in conf and conf["smtpd_tls_security_level"][1] == "encrypt":
        n = conf["smtpd_tls_security_level"][0]
        return [Finding("tls_encrypt_main_cf", MAIN_CF, n, text.splitlines()[n - 1].strip(),
                        "applies to port 25 too: every MTA must speak TLS")]
    return []


def sasl_wrong_dir(f: Files) -> list[Finding]:
    """SASL config only in /etc/sasl2/ while Postfix may read /etc/postfix/sasl/."""
    main = f.get(MAIN_CF)
    if not f.exists(SASL2_CONF) or f.exists(POSTFIX_SASL_CONF) or main is None:
        return []
    conf = _postconf(main)
    master = f.get(MASTER_CF) or ""
    in_master = re.search(r"(?m)^\s+-o\s+smtpd_sasl_auth_enable\s*=\s*yes\b", master)
    if conf.get("smtpd_sasl_auth_enable", (0, "no"))[1].lower() != "yes" and not in_master:
        return []
    path_conf = conf.get("cyrus_sasl_config_path", (0, ""))[1]
    if "/etc/sasl2" in path_conf:
        return []
    first = next((ln for _, ln in _lines(f.get(SASL2_CONF) or "")), "")
    return [Finding("sasl_wrong_dir", SASL2_CONF, 1 if first else 0, first.strip(),
                    f"no {POSTFIX_SASL_CONF} and no cyrus_sasl_config_path in main.cf: a Postfix "
                    "built to read /etc/postfix/sasl/ (Debian, Ubuntu) never sees this file")]


CERT_DIR = re.compile(r"/etc/dehydrated/certs/([^/\s]+)/")


def _museum_smtp_host(f: Files) -> str:
    text = f.get(f.museum)
    if text is None:
        return ""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        m = re.search(r"(?m)^smtp:\s*\n(?:[ \t]+.*\n)*?[ \t]+host:\s*[\"']?([^\"'\s#]+)", text)
        return m.group(1) if m else ""
    smtp = doc.get("smtp") if isinstance(doc, dict) else None
    host = smtp.get("host") if isinstance(smtp, dict) else None
    return str(host) if host else ""


def mail_cert_mismatch(f: Files) -> list[Finding]:
    """Postfix's certificate (dehydrated's, by directory name) does not list museum's smtp.host."""
    main = f.get(MAIN_CF)
    host = _museum_smtp_host(f)
    if main is None or not host:
        return []
    conf = _postconf(main)
    if "smtpd_tls_cert_file" not in conf:
        return []
    n, value = conf["smtpd_tls_cert_file"]
    m = CERT_DIR.search(value)
    if not m:
        return []
    cert = m.group(1)
    domains = f.get(DOMAINS_TXT)
    if domains is None:
        return [Finding("mail_cert_mismatch", MAIN_CF, n, main.splitlines()[n - 1].strip(),
                        f"cannot verify: {DOMAINS_TXT} not readable; the certificate must name {host}",
                        pitfall=False)]
    for _, line in _lines(domains):
        words = line.split("#")[0].split()
        alias = words[words.index(">") + 1] if ">" in words and words.index(">") + 1 < len(words) else ""
        names = [w for w in words if w != ">" and w != alias]
        if cert in (alias, names[0] if names else ""):
            if host in names:
                return []
            return [Finding("mail_cert_mismatch", MAIN_CF, n, main.splitlines()[n - 1].strip(),
                            f"certificate {cert} ({', '.join(names)}) does not name smtp.host {host}")]
    return [Finding("mail_cert_mismatch", MAIN_CF, n, main.splitlines()[n - 1].strip(),
                    f"no line of {DOMAINS_TXT} issues certificate {cert}; smtp.host is {host}")]


# ------------------------------------------------------------------ dehydrated / sudoers
# ``sudo CMD`` as the article writes it, or ``"${SUDO}" -n CMD`` as the lab's hook does
HOOK_SUDO = re.compile(r"""(?:^|\s)(?:sudo|"\$\{SUDO\}")\s+(?:-n\s+)?(/[^\s"]+(?:\s+[^;&|#"]*)?)""")


def _sudo_rules(f: Files) -> list[tuple[str, str]]:
    """(user, command) granted by the sudoers.d files ('ALL' for any command)."""
    rules = []
    for _, text in f.under(SUDOERS_DIR):
        for _, line in _lines(text):
            m = re.match(r"\s*(\S+)\s+[^=]+=\s*(?:\([^)]*\)\s*)?(.*)$", line)
            if not m or m.group(1).startswith(("Defaults", "Cmnd_Alias", "User_Alias")):
                continue
            cmds = re.sub(r"\b(NO)?(PASSWD|SETENV|EXEC):\s*", "", m.group(2))
            rules += [(m.group(1), " ".join(c.split())) for c in cmds.split(",") if c.strip()]
    return rules


def missing_sudoers(f: Files) -> list[Finding]:
    """Every ``sudo CMD`` the dehydrated hook runs needs a sudoers.d rule."""
    hook = f.get(HOOK)
    if hook is None:
        return []
    calls = [(n, line.strip(), " ".join(HOOK_SUDO.search(line).group(1).split()))  # type: ignore[union-attr]
             for n, line in _lines(hook) if HOOK_SUDO.search(line)]
    if not calls:
        return []
    unread = sorted(p for p in f.unreadable if p.startswith(SUDOERS_DIR + "/"))
    rules = _sudo_rules(f)
    out = []
    for n, line, cmd in calls:
        granted = any(c == "ALL" or c == cmd or (" " not in c and cmd.split()[0] == c)
                      for _, c in rules)
        if granted:
            continue
        if unread:
            out.append(Finding("missing_sudoers", HOOK, n, line,
                               f"cannot verify: {', '.join(unread)} not readable (--sudo)", pitfall=False))
        else:
            out.append(Finding("missing_sudoers", HOOK, n, line,
                               f"no rule in {SUDOERS_DIR}/ allows '{cmd}': the reload fails at renewal"))
    return out


# ------------------------------------------------------------------ docker-compose.yml / .env
DASHED_COMPOSE = re.compile(r"^\s*(?:-\s*)?[\"']?(ENTE_[A-Za-z0-9_]*-[A-Za-z0-9_-]*)[\"']?\s*[:=]")
DASHED_ENV = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*-[A-Za-z0-9_-]*)\s*=")


def dashed_env_names(f: Files) -> list[Finding]:
    files = [(p, t) for p, t in ((f.compose, f.get(f.compose)), (f.env, f.get(f.env))) if t is not None]
    out = []
    for path, text in files:
        pattern = DASHED_ENV if path == f.env else DASHED_COMPOSE
        for n, line in _lines(text):
            m = pattern.match(line)
            if m:
                out.append(Finding("dashed_env_names", path, n, line.strip(),
                                   f"{m.group(1)}: a name with '-' is silently ignored"))
    return out


HEALTH_ECHO = re.compile(r"""^\s*test:\s*\[\s*["']?CMD["']?\s*,\s*["']?echo["']?""", re.I)


def healthcheck_echo(f: Files) -> list[Finding]:
    text = f.get(f.compose)
    if text is None:
        return []
    return _grep([(f.compose, text)], HEALTH_ECHO, "healthcheck_echo",
                 "always healthy: depends_on service_healthy waits for nothing")


def _odd_quotes(line: str) -> bool:
    body = line.split(" #")[0]
    return body.count('"') % 2 == 1


def compose_missing_quote(f: Files) -> list[Finding]:
    text = f.get(f.compose)
    if text is None:
        return []
    try:
        yaml.safe_load(text)
        return []
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (YAML error at line {mark.line + 1})" if mark is not None else ""
    out = [Finding("compose_missing_quote", f.compose, n, line.strip(),
                   f"unbalanced double quote: not valid YAML{where}")
           for n, line in _lines(text) if _odd_quotes(line)]
    return out or [Finding("compose_missing_quote", f.compose, 0, "",
                           f"not valid YAML{where}; no unbalanced quote found", pitfall=False)]


# name -> detector, in the registry's order (tests: one per pitfall name)
DETECTORS: dict[str, Callable[[Files], list[Finding]]] = {
    "cors_article_headers": cors_article_headers,
    "cors_printed_fix": cors_printed_fix,
    "cors_working_fix": cors_working_fix,
    "mail_cert_mismatch": mail_cert_mismatch,
    "dashed_env_names": dashed_env_names,
    "missing_sudoers": missing_sudoers,
    "wellknown_in_location": wellknown_in_location,
    "tls_encrypt_main_cf": tls_encrypt_main_cf,
    "sasl_wrong_dir": sasl_wrong_dir,
    "healthcheck_echo": healthcheck_echo,
    "compose_missing_quote": compose_missing_quote,
}


# Where the lab's guest (Debian) keeps what the article's Slackware host has elsewhere:
# lab path prefix -> the production path prefix the detectors read.
LAB_TO_PRODUCTION = {"/etc/apache2/sites-enabled/": HTTPD_DIR + "/extra/"}


def from_lab(texts: dict[str, str], compose_dir: str = "/usr/local/docker-ente",
             unreadable: Iterable[str] = ()) -> Files:
    """``Files`` from the lab's own paths (a rendered tree, the VM's files): Apache's
    sites-enabled read as the production /etc/httpd/extra/; everything else as is."""
    def relabel(path: str) -> str:
        for lab, prod in LAB_TO_PRODUCTION.items():
            if path.startswith(lab):
                return prod + path[len(lab):]
        return path
    return Files({relabel(p): t for p, t in texts.items()}, {relabel(p) for p in unreadable},
                 compose_dir=compose_dir)


def detect(files: Files) -> list[Finding]:
    """Every finding of every detector, in the registry's order."""
    out: list[Finding] = []
    for fn in DETECTORS.values():
        out += fn(files)
    return out

