"""Property test (hypothesis): hostile values for every settings key and every secret.

Each example sets one settings key (through a settings file, so the value arrives
exactly as generated) or one secret (in the secrets file) to a value built from
newlines, quotes, '$', backticks, control and Unicode characters, very long
strings, reserved account names, path tricks and wrong types, then renders as
lab.render does. Either:

- it is refused with SettingsError, and build/ and the secrets file are
  byte-for-byte and mode-for-mode unchanged; or
- every rendered file that changed passes the program that reads it (apache2 -t,
  postfix check, dnsmasq --test, visudo -c, docker-compose config, m4, YAML
  parse, bash -n), and every shell-sourced file, sourced by bash in an empty
  environment in a temporary directory, runs no command (a canary file never
  appears) and yields exactly the settings' values.

Any other exception fails the test. In CI the run is derandomized and small;
ENTE_LAB_HYPOTHESIS=deep runs a long randomized search.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import Tree, need
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_settings import snapshot
from test_template_apache import apache_t, server_root

from entelab import grammar, payload, render, state
from entelab import secrets as secrets_mod
from entelab.errors import SettingsError
from entelab.settings import DEFAULTS_FILE, load_settings

DEEP = os.environ.get("ENTE_LAB_HYPOTHESIS") == "deep"
MAX_EXAMPLES = int(os.environ.get("ENTE_LAB_HYPOTHESIS_EXAMPLES") or (3000 if DEEP else 150))
CANARY = "CANARY"


def _leaves(node: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_leaves(value, path + "."))
        else:
            out[path] = value
    return out


DEFAULTS = _leaves(yaml.safe_load(DEFAULTS_FILE.read_text()))
SETTING_KEYS = sorted(DEFAULTS)
SECRET_KEYS = sorted(secrets_mod.GENERATORS)

# Valid values at the edges of each grammar, to reach the "accepted" branch often.
EDGE: dict[str, list] = {
    "domain": ["a-1.b-2.lan", "x.y.z.lan", "0a.lan"],
    "api_host": ["ente.darkstar.lan", "api-1.x.lan"], "web_host": ["enteauth.darkstar.lan", "w.x.lan"],
    "mail_host": ["smtp.darkstar.lan", "mx-1.x.lan"],
    "mta": ["postfix", "sendmail"],
    "docker.network": ["net-1", "a.b", "ente.lan"],
    "paths.compose_dir": ["/srv2/a_b.c-d", "/opt/x.y/z_1"],
    "paths.data_dir": ["/srv/data_1", "/opt/ente.d/x-y"],
    "db.name": ["_x1", "a" * 63], "db.user": ["u_2", "_"],
    "smtp.username": ["u_1-x", "_lab", "mailer"], "acme.user": ["acme-1", "_acme"],
    "smtp.email": ["a.b+c%d_e-f@x-y.lan", "UPPER@Case.LAN"],
    "smtp.sender_name": ["O'Brien Ltd.", "a_b - c.d", "X"],
    "acme.contact": ["a.b+c%d_e-f@x-y.lan", "ops@darkstar.lan"],
    "acme.ca": ["https://127.0.0.1:14000/a~b/c", "https://pebble.lan/dir", "https://localhost"],
    "images.museum": ["registry.local:5000/a__b/c-d.e:T_1.x", "localhost/x@sha256:" + "0" * 64],
    "images.mc": ["a/b/c", "mc:1.0"],
    "vm.hostname": ["a", "a-b", "x9"],
    "ott": [["A.b+c@x.lan,000000", "me@home.lan,999999"], ["me@home.lan,012345"]],
    "admins": [[1, 2**63 - 1], [5551234567654321]],
    "smtp.encryption": ["", "tls", "ssl"], "vm.accel": ["kvm", "qemu"],
    "vm.provider": ["virtualbox"],
}
SECRET_EDGE = ["a" * 16, "._~-" * 4, "Z" * 128, "../../..", "abcdefgh"]
# A fixed valid value per secret (not GENERATORS: a derandomized run must repeat exactly).
SECRET_BASE = {
    "key_encryption": base64.b64encode(bytes(range(32))).decode(),
    "key_hash": base64.b64encode(bytes(range(64, 128))).decode(),
    "jwt_secret": base64.urlsafe_b64encode(bytes(range(200, 232))).decode(),
    "db_password": "Db0pass0word0Db0pass0word", "minio_key": "Minio0Key0Minio0Key0",
    "minio_secret": "Minio0Secret0Minio0Secret0Minio0Secret00",
    "sasl_password": "Sasl0Pass0Sasl0Pass0Sasl", "sasl_salt": "Salt0Salt0Salt00",
}

# Random values inside each grammar (entelab/grammar.py): what the grammar admits must
# render into files their programs accept.
_HOST = r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,5}[a-z0-9])?){1,3}"
_MAIL = r"[A-Za-z0-9_%+-]{1,6}(\.[A-Za-z0-9_%+-]{1,4}){0,2}@" + _HOST
_PATH = r"(/[A-Za-z0-9_][A-Za-z0-9._-]{0,8}){2,4}"
_ACCOUNT = r"[a-z_][a-z0-9_-]{0,12}"
_SECRET = r"[A-Za-z0-9._~-]{16,40}"
VALID_RE: dict[str, str] = {
    "domain": _HOST, "api_host": _HOST, "web_host": _HOST, "mail_host": _HOST,
    "docker.network": r"[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?(\.[a-z0-9]{1,5}){0,2}",
    "paths.compose_dir": _PATH, "paths.data_dir": _PATH,
    "smtp.username": _ACCOUNT, "acme.user": _ACCOUNT, "smtp.email": _MAIL, "acme.contact": _MAIL,
    "smtp.sender_name": r"[A-Za-z0-9]([A-Za-z0-9 ._'-]{0,20}[A-Za-z0-9.])?",
    "acme.ca": r"https://" + _HOST + r"(:[1-9][0-9]{0,3})?(/[A-Za-z0-9._~-]{0,8}){0,3}",
    "images.museum": r"([a-z0-9]{1,5}\.[a-z]{2,3}(:[1-9][0-9]{0,3})?/)?[a-z0-9]{1,5}([._-][a-z0-9]{1,3})?"
                     r"(/[a-z0-9]{1,5})?(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,8})?",
    "db.name": r"[a-z_][a-z0-9_]{0,20}", "db.user": r"[a-z_][a-z0-9_]{0,20}",
    "vm.hostname": r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?",
}

PIECES = ["\n", "\r\n", "'", '"', "$", "`", "$(touch CANARY)", "`touch CANARY`", "${HOME}",
          "\\", ";", "#", " ", "\t", ":", "/", "..", "../", ",", "=", "*", "&", "!", "%", "@",
          "\x00", "\x1b[31m", "\x7f", "\x85", "\u2028", "\ufeff", "é", "١", "５", "[red]", "[/b]",
          "{{ s }}", "{% x %}", "-o", "--", "\n[section]\n", "\nX=1\n", "}\n", "<b>"]
TRICKS = ["", " ", "/", "/etc", "/etc/", "/opt/../etc", "/opt/a:/b", "/opt/a b", "/root",
          "/home/vagrant", "-", "*", "~", "null", "yes", "0", "-1", "..", ".", "localhost",
          *sorted(grammar.RESERVED_ACCOUNTS)[:40]]
ALPHABET = st.characters(codec="utf-8", exclude_categories=("Cs",))


def _insert(args) -> object:
    base, piece, where = args
    text = base if isinstance(base, str) else str(base)
    pos = [0, len(text), len(text) // 2][where % 3]
    return text[:pos] + piece + text[pos:]


def values_for(key: str, base_values: list, valid=None):
    base = st.sampled_from(base_values)
    if valid is not None:
        base = st.one_of(base, valid)
    scalar = st.one_of(
        base,
        st.tuples(base, st.sampled_from(PIECES), st.integers(0, 2)).map(_insert),
        st.tuples(base, st.text(ALPHABET, min_size=1, max_size=4), st.integers(0, 2)).map(_insert),
        st.text(ALPHABET, max_size=30),
        st.sampled_from(TRICKS),
        base.map(lambda v: (str(v) * 3000)[:20000]),
        st.integers(-(2**70), 2**70), st.booleans(), st.none(),
        st.floats(allow_nan=True), st.lists(st.text(max_size=3), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    )
    if key in ("ott", "admins"):
        first = [v[0] for v in base_values if v]
        element = values_for("", first)
        return st.one_of(base, st.lists(element, min_size=1, max_size=3), scalar)
    return scalar


def _nested(key: str, value) -> dict:
    doc: dict = {}
    node = doc
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return doc


def _valid(key: str):
    regex = VALID_RE.get(key)
    return st.from_regex(regex, fullmatch=True) if regex else None


def setting_examples():
    """(kind, key, value, sendmail): with sendmail the value is tried with mta=sendmail."""
    return st.sampled_from(SETTING_KEYS).flatmap(
        lambda k: st.tuples(st.just("setting"), st.just(k),
                            values_for(k, [DEFAULTS[k], *EDGE.get(k, [])], _valid(k)),
                            st.booleans()))


def secret_examples():
    charset = {"db_password", "minio_key", "minio_secret", "sasl_password"}
    return st.sampled_from(SECRET_KEYS).flatmap(
        lambda k: st.tuples(st.just("secret"), st.just(k),
                            values_for(k, [SECRET_BASE[k], *SECRET_EDGE],
                                       st.from_regex(_SECRET, fullmatch=True) if k in charset
                                       else None),
                            st.just(False)))


# ------------------------------------------------------------------ the lab under test
class Lab:
    def __init__(self, base: Path, certdir: Path):
        self.base = base
        self.root = base / "checkout"
        self.root.mkdir()
        self.paths = state.LabPaths(root=self.root, lab_id="entelab-prop", home=base / "home",
                                    build=self.root / "build")
        self.settings_file = base / "hostile.yaml"
        self.certdir = certdir
        self.good_settings, _ = load_settings(self.root, local_file=base / "none.yaml")
        render.render_lab(self.paths, self.good_settings, quiet=True)
        self.good_secrets = self.paths.secrets.read_bytes()
        self.validated = 0
        self.dirty = False

    def reset(self) -> None:
        self.paths.secrets.write_bytes(self.good_secrets)
        self.paths.secrets.chmod(0o600)
        render.render_lab(self.paths, self.good_settings, quiet=True)
        self.dirty = False

    def tree(self, settings_) -> Tree:
        secrets, _ = secrets_mod.load_or_create(self.paths.secrets, dry_run=True)
        return Tree(root=self.paths.rendered, settings=settings_, secrets=secrets, entries={})


@pytest.fixture(scope="module")
def lab(lab_certs):
    base = Path(tempfile.mkdtemp(prefix="ente-lab-prop-"))
    try:
        yield Lab(base, lab_certs.certdir)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def check_rendered(lab: Lab, s, result: render.RenderResult) -> None:
    """Every changed file passes its reader; shell-sourced files run nothing."""
    changed = {e.path: e for e in result.entries if e.path in set(result.changed) and e.kind == "file"}
    if not changed:
        return
    lab.validated += 1
    tree = lab.tree(s)
    kinds = {e.validate for e in changed.values()}
    srcs = {e.src for e in changed.values()}
    work = Path(tempfile.mkdtemp(prefix="v-", dir=lab.base))
    try:
        if "apache" in kinds:
            conf = server_root(work / "apache", tree, lab.certdir, work / "acme")
            res = apache_t(conf)
            assert res.returncode == 0, res.stderr
        if "postfix" in kinds:
            d = work / "postfix"
            d.mkdir()
            for name in ("main.cf", "master.cf"):
                shutil.copy(tree.path(f"/etc/postfix/{name}"), d / name)
            res = run(need("postfix"), "-c", d, "check")
            assert res.returncode == 0 and res.stderr == "", res.stderr
        if "dnsmasq" in kinds:
            res = run(need("dnsmasq"), "--test", "-C", tree.path("/etc/dnsmasq.conf"))
            assert res.returncode == 0, res.stderr
        for e in changed.values():
            if e.validate == "sudoers":
                res = run(need("visudo"), "-cf", tree.path(e.path))
                assert res.returncode == 0, res.stdout + res.stderr
            if e.validate == "shell":
                res = run(need("bash"), "-n", tree.path(e.path))
                assert res.returncode == 0, res.stderr
            if e.path.endswith((".yaml", ".yml")):
                assert isinstance(yaml.safe_load(tree.text(e.path)), dict), e.path
            if e.src == "users/users.conf.j2":
                for line in tree.text(e.path).splitlines():
                    if line and not line.startswith("#"):
                        assert len(line.split(":")) in (9, 3), line
        if srcs & {"ente/docker-compose.yml.j2", "ente/env.j2"}:
            check_compose(tree, s, work)
        if srcs & {"dehydrated/config.j2", "dehydrated/acme.conf.j2"}:
            check_sourced(tree, s, work)
        if "sendmail/sendmail.mc.j2" in srcs:
            res = run(need("m4"), tree.path("/etc/mail/sendmail.mc"), cwd=work)
            assert res.returncode == 0 and res.stderr == "", res.stderr
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_compose(tree: Tree, s, work: Path) -> None:
    d = work / "compose"
    shutil.copytree(tree.path(s.paths.compose_dir), d)
    (d / "ente-git" / "web").mkdir(parents=True)
    (d / "ente-git" / "cli").mkdir(parents=True)
    res = run(need("docker-compose"), "--project-directory", d, "-f", d / "docker-compose.yml",
              "config", cwd=d, env={"PATH": "/usr/bin:/bin", "HOME": str(work)})
    assert res.returncode == 0 and "WARNING" not in res.stderr, res.stderr
    cfg = yaml.safe_load(res.stdout)
    museum = cfg["services"]["ente-museum"]
    assert museum["environment"]["ENTE_DB_PASSWORD"] == tree.secrets.db_password
    assert museum["environment"]["ENTE_KEY_ENCRYPTION"] == tree.secrets.key_encryption
    assert museum["image"] == payload.images_for(s)["museum"]
    assert museum["networks"][s.docker.network]["ipv4_address"] == s.docker.museum_ip
    assert (museum["environment"]["ENTE_INTERNAL_HARDCODED_OTT_EMAILS"] or "") == " ".join(s.ott)
    assert not list(d.glob(CANARY)) and not list(work.glob(CANARY))


def check_sourced(tree: Tree, s, work: Path) -> None:
    """Source each shell-sourced file with bash and sh in an empty environment."""
    d = work / "sourced"
    d.mkdir()
    expect = {"/etc/dehydrated/config": {"CA": s.acme.ca, "CONTACT_EMAIL": s.acme.contact},
              "/etc/ente-lab/acme.conf": {"ACME_USER": s.acme.user}}
    for dest, want in expect.items():
        script = '. "$1" || exit 9; printf "%s\\n" ' + " ".join(f'"${n}"' for n in want)
        for shell in ("bash", "sh"):
            res = run("env", "-i", need(shell), "-c", script, "x", tree.path(dest), cwd=d)
            assert res.returncode == 0, res.stderr
            assert res.stdout.split("\n")[:-1] == list(want.values()), (dest, shell)
    assert not list(d.iterdir()), f"sourcing ran a command: {list(d.iterdir())}"


def attempt(lab: Lab, kind: str, key: str, value, sendmail: bool = False) -> str:
    """Apply one hostile value and render; returns 'refused' or 'rendered'."""
    if lab.dirty:                    # a failed example left its value behind
        lab.reset()
    lab.dirty = True
    if kind == "setting":
        doc = _nested(key, value)
        if sendmail and key != "mta":
            doc["mta"] = "sendmail"
        if key.startswith("images."):    # image names reach the compose file with these payloads
            doc["stack"] = {"payload": "official"}
        lab.settings_file.write_text(yaml.safe_dump(doc, allow_unicode=True))
    else:
        data = yaml.safe_load(lab.good_secrets)
        data[key] = value
        lab.paths.secrets.write_text(yaml.safe_dump(data, allow_unicode=True))
        lab.paths.secrets.chmod(0o600)
        lab.settings_file.write_text("")
    before = snapshot(lab.root)
    try:
        s, _ = load_settings(lab.root, local_file=lab.settings_file)
        result = render.render_lab(lab.paths, s, quiet=True)
    except SettingsError as exc:
        assert snapshot(lab.root) == before, "a refused value changed a file"
        assert "Traceback" not in str(exc)
        if kind == "secret" and isinstance(value, str) and len(value) >= 4:
            assert value not in str(exc), "a secret was shown"
        lab.paths.secrets.write_bytes(lab.good_secrets)     # build/ is untouched
        lab.paths.secrets.chmod(0o600)
        lab.dirty = False
        return "refused"
    check_rendered(lab, s, result)
    lab.reset()
    return "rendered"


OUTCOMES: dict[str, int] = {"refused": 0, "rendered": 0}


@settings(max_examples=MAX_EXAMPLES, derandomize=not DEEP, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(example=st.one_of(setting_examples(), secret_examples()))
def test_hostile_value_is_refused_or_rendered_safely(lab, example):
    OUTCOMES[attempt(lab, *example)] += 1


def test_property_run_covered_both_outcomes(lab):
    """The property test reached both branches (runs after it, same module)."""
    if not any(OUTCOMES.values()):      # selected alone (-k): run the property test first
        test_hostile_value_is_refused_or_rendered_safely(lab)
    print(f"property test: {OUTCOMES}, {lab.validated} renders validated")
    assert OUTCOMES["refused"] > 0 and OUTCOMES["rendered"] > 0, OUTCOMES
    assert lab.validated > 0


@pytest.mark.parametrize("kind,key,value", [
    ("setting", "acme.contact", "$(touch CANARY)@darkstar.lan"),
    ("setting", "acme.ca", "https://localhost/`touch CANARY`"),
    ("setting", "paths.data_dir", "/opt/x:/etc"),
    ("setting", "smtp.sender_name", "a\nb"),
    ("setting", "smtp.username", "root"),
    ("secret", "db_password", "abc'$(touch CANARY)'0123456789"),
    ("secret", "key_encryption", "yvmG/RnzKrbCb9L3mgsmoxXr9H7i2Z4qlbT0mL"),
])
def test_known_hostile_values_are_refused(lab, kind, key, value):
    assert attempt(lab, kind, key, value) == "refused"


@pytest.mark.parametrize("kind,key,value", [
    ("setting", "acme.contact", "a.b+c%d_e-f@x-y.lan"),
    ("setting", "smtp.sender_name", "O'Brien Ltd."),
    ("setting", "paths.compose_dir", "/srv2/a_b.c-d"),
    ("setting", "mta", "sendmail"),
    ("setting", "ott", ["A.b+c@x.lan,000000", "me@home.lan,999999"]),
    ("secret", "db_password", "._~-" * 4),
])
def test_edge_values_render_and_pass_every_reader(lab, kind, key, value):
    before = lab.validated
    assert attempt(lab, kind, key, value) == "rendered"
    assert lab.validated == before + 1


def test_the_canary_check_can_fail(tmp_path):
    """check_sourced really detects a command run while sourcing."""
    class FakeTree:
        def path(self, dest):
            return tmp_path / dest.lstrip("/").replace("/", "_")
    for dest in ("/etc/dehydrated/config", "/etc/ente-lab/acme.conf"):
        FakeTree().path(dest).write_text('CA=x\nCONTACT_EMAIL=y\nACME_USER=$(touch CANARY)\n')

    class S:
        class acme:
            ca, contact, user = "x", "y", ""
    work = tmp_path / "w"
    work.mkdir()
    with pytest.raises(AssertionError, match="sourcing ran a command"):
        check_sourced(FakeTree(), S, work)  # type: ignore[arg-type]
