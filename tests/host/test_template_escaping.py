"""Every value reaches a rendered file through its format's escaper.

The templates are parsed with Jinja's own parser. In a file whose format has an
escaper (service.yaml ``format:`` -> render.FORMATS), every ``{{ ... }}`` must
end with that filter, unless it only holds grammar-safe values (host names, IP
addresses, ports, account names: values whose grammar admits nothing but
``[a-z0-9._-]`` and digits). In a format with no escaping at all (Apache,
Postfix, dnsmasq, sudoers, ...) only grammar-safe values may appear. The
filters themselves are tested against the programs that read the files.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml
from conftest import need
from jinja2 import nodes

from entelab import render
from entelab.render import FORMATS, TEMPLATES

# Values whose grammar (entelab/grammar.py) admits only [a-z0-9._-], digits, '/'
# in a CIDR, or a constant: safe as they are in every format of the lab.
GRAMMAR_SAFE = {
    "s.domain", "s.api_host", "s.web_host", "s.mail_host", "s.cert_names", "s.mta",
    "s.ports.museum", "s.ports.web", "s.ports.minio_api", "s.ports.minio_console",
    "s.ports.postgres", "s.docker.network", "s.docker.subnet", "s.docker.ip_range",
    "s.docker.gateway", "s.docker.museum_ip", "s.docker_network_prefix", "s.vm.hostname",
    "s.acme.user", "s.smtp.username", "s.smtp.port", "s.db.name", "s.db.user", "s.admins",
    "s.postfix.message_size_limit",   # an int by its grammar (message_size)
    "lab_id", "managed_begin", "managed_end", "catchall",
}
# Per format, a few more: users.conf is split on ':' only, and a crypt hash has none.
EXTRA_SAFE = {"users": {"secrets.sasl_password_hash"}}


def _ref(node: nodes.Node) -> str | None:
    """'s.ports.web' for Getattr(Getattr(Name(s), ports), web); None otherwise."""
    parts = []
    while isinstance(node, nodes.Getattr):
        parts.append(node.attr)
        node = node.node
    if isinstance(node, nodes.Name):
        return ".".join([node.name, *reversed(parts)])
    return None


def _names_in(expr: nodes.Node) -> list[str]:
    """Every reference (dotted) an expression reads."""
    out = []
    for node in [expr, *expr.find_all((nodes.Getattr, nodes.Name))]:
        ref = _ref(node)
        if ref is not None:
            out.append(ref)
    # a Getattr chain also yields its inner parts: keep only the longest of each chain
    return [r for r in out if not any(o != r and o.startswith(r + ".") for o in out)]


def problems_in(source: str, fmt: str, name: str = "<template>") -> list[str]:
    """What in ``source`` (a template of format ``fmt``) interpolates a value unescaped."""
    env = render._env()
    tree = env.parse(source)
    escaper = FORMATS[fmt]
    safe = GRAMMAR_SAFE | EXTRA_SAFE.get(fmt, set())
    loops: dict[str, list[str] | None] = {}     # loop variable -> what it iterates over
    params: set[str] = set()
    for loop in tree.find_all(nodes.For):
        targets = [t.name for t in [loop.target, *loop.target.find_all(nodes.Name)]
                   if isinstance(t, nodes.Name)]
        iterated = None if isinstance(loop.iter, (nodes.List, nodes.Tuple, nodes.Const)) \
            else _names_in(loop.iter)
        for t in targets:
            loops[t] = iterated
    for macro in tree.find_all(nodes.Macro):
        params |= {a.name for a in macro.args}   # checked at the call sites (also Outputs)
    callables = {m.name for m in tree.find_all(nodes.Macro)}
    for imp in tree.find_all(nodes.FromImport):
        callables |= {n if isinstance(n, str) else n[-1] for n in imp.names}
    out = []
    for output in tree.find_all(nodes.Output):
        for expr in output.nodes:
            if isinstance(expr, nodes.TemplateData):
                continue
            if escaper and isinstance(expr, nodes.Filter) and expr.name == escaper:
                continue
            for ref in _names_in(expr):
                root = ref.split(".")[0]
                if ref in safe or root in params or root in callables or root == "loop":
                    continue
                if root in loops and "." not in ref:
                    iterated = loops[root]
                    if iterated is None or all(r in safe for r in iterated):
                        continue
                where = f"line {expr.lineno}"
                need = f"'| {escaper}'" if escaper else "a grammar-safe value (no escaping exists)"
                out.append(f"{name} ({fmt}) {where}: {ref} needs {need}")
    return out


def _templates():
    for spec_path in sorted(TEMPLATES.glob("*/service.yaml")):
        spec = yaml.safe_load(spec_path.read_text())
        for f in spec.get("files", []):
            yield f"{spec_path.parent.name}/{f['src']}", f.get("format")


TEMPLATE_FORMATS = sorted(set(_templates()))


def test_every_template_has_a_known_format():
    assert TEMPLATE_FORMATS
    for src, fmt in TEMPLATE_FORMATS:
        assert fmt in FORMATS, f"templates/{src}: format {fmt!r}; one of {sorted(FORMATS)}"


@pytest.mark.parametrize("src,fmt", TEMPLATE_FORMATS, ids=[s for s, _ in TEMPLATE_FORMATS])
def test_template_interpolates_only_escaped_or_grammar_safe_values(src, fmt):
    source = (TEMPLATES / src).read_text()
    assert problems_in(source, fmt, src) == []
    # the macros a template imports are checked with the importing template's format
    for imp in nodes.Template.find_all(render._env().parse(source), nodes.FromImport):
        imported = imp.template.value
        assert problems_in((TEMPLATES / imported).read_text(), fmt, imported) == []


@pytest.mark.parametrize("fmt,source,expected", [
    ("yaml", "name: {{ s.smtp.sender_name }}\n", "s.smtp.sender_name needs '| yaml'"),
    ("yaml", "name: {{ s.smtp.sender_name | upper }}\n", "s.smtp.sender_name needs '| yaml'"),
    ("env", "X='{{ secrets.db_password }}'\n", "secrets.db_password needs '| env'"),
    ("shell", 'CA="{{ s.acme.ca }}"\n', "s.acme.ca needs '| sh'"),
    ("compose", "image: {{ s.images.museum | yaml }}\n", "s.images.museum needs '| compose'"),
    ("apache", "ServerAdmin {{ s.acme.contact }}\n", "s.acme.contact needs a grammar-safe value"),
    ("sudoers", "{% for p in s.paths %}{{ p }}{% endfor %}\n", "p needs a grammar-safe value"),
    ("postfix", "x = {{ s.smtp.sender_name | yaml }}\n", "s.smtp.sender_name needs a grammar-safe"),
    ("users", "{{ secrets.sasl_password }}\n", "secrets.sasl_password needs a grammar-safe"),
])
def test_the_check_catches_an_unescaped_value(fmt, source, expected):
    found = problems_in(source, fmt)
    assert len(found) == 1 and expected in found[0], found


def test_the_check_accepts_escaped_and_safe_values():
    assert problems_in("a: {{ s.smtp.sender_name | yaml }}\nb: {{ s.ports.web }}\n", "yaml") == []
    assert problems_in("{% for n in s.cert_names %}ServerName {{ n }}\n{% endfor %}", "apache") == []


# ------------------------------------------------------------------ the filters themselves
HOSTILE = ["plain", "", "a b", "it's", 'say "hi"', "$HOME", "${X:-y}", "$(touch CANARY)",
           "`touch CANARY`", "back\\slash", "new\nline", "tab\there", "#comment", "a: b", "- x",
           "[1, 2]", "{a: 1}", "*alias", "&anchor", "!tag", "yes", "no", "null", "~", "0123",
           "1e3", "0x1F", "é ü 😀", "\x1b[31m", "\u2028", "trailing ", " leading", "%percent",
           "@at", "'", '"', "\\", "x" * 500]


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_yaml_filter_round_trips(value):
    text = f"k: {render.yaml_scalar(value)}\n"
    assert "\n" not in text[:-1]
    assert yaml.safe_load(text) == {"k": value}


def test_yaml_filter_integers_and_refusals():
    assert yaml.safe_load(f"k: {render.yaml_scalar(5551234567654321)}") == {"k": 5551234567654321}
    for bad in (None, True, 1.5, ["a"], {"a": 1}):
        with pytest.raises(render.UnsafeValue):
            render.yaml_scalar(bad)


def test_compose_filter_keeps_dollar_literal(tmp_path):
    values = ["$HOME", "${X:-y}", "a$$b", "plain", "it's", "$(touch CANARY)"]
    doc = "services:\n  s:\n    image: busybox\n    environment:\n" + "".join(
        f"      V{i}: {render.compose_scalar(v)}\n" for i, v in enumerate(values))
    (tmp_path / "docker-compose.yml").write_text(doc)
    res = subprocess.run([need("docker-compose"), "config"], cwd=tmp_path, capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    env = yaml.safe_load(res.stdout)["services"]["s"]["environment"]
    # `config` prints the file re-escaped ('$' as '$$'): undo that once to get the value
    assert [env[f"V{i}"].replace("$$", "$") for i in range(len(values))] == values
    assert not (tmp_path / "CANARY").exists()


@pytest.mark.parametrize("value", [v for v in HOSTILE if "\0" not in v])
def test_shell_filter_round_trips_and_runs_nothing(value, tmp_path):
    script = tmp_path / "conf"
    script.write_text(f"V={render.shell_word(value)}\n")
    for shell in ("bash", "sh"):
        res = subprocess.run(["env", "-i", shell, "-c", '. ./conf; printf %s "$V"'],
                             cwd=tmp_path, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        assert res.stdout == value
    assert not (tmp_path / "CANARY").exists()


def test_env_filter_allows_only_what_both_compose_readers_agree_on(tmp_path):
    ok = ["plain", "", "a b c", "me@home.lan,012345 you@x.org,987654", "k+/=", "a-b_c.d~e",
          "172.21.0.5"]
    for bad in ["it's", 'say "hi"', "$HOME", "a#b", "back\\slash", "new\nline", "`x`", "é"]:
        with pytest.raises(render.UnsafeValue):
            render.env_value(bad)
    (tmp_path / ".env").write_text("".join(f"V{i}={render.env_value(v)}\n" for i, v in enumerate(ok)))
    doc = "services:\n  s:\n    image: busybox\n    environment:\n" + "".join(
        f"      V{i}: ${{V{i}}}\n" for i in range(len(ok)))
    (tmp_path / "docker-compose.yml").write_text(doc)
    res = subprocess.run([need("docker-compose"), "config"], cwd=tmp_path, capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    env = yaml.safe_load(res.stdout)["services"]["s"]["environment"]
    assert [env[f"V{i}"] or "" for i in range(len(ok))] == ok


def test_shell_filter_refuses_a_nul_byte():
    """No shell word can hold a NUL: the filter refuses it instead of quoting it."""
    with pytest.raises(render.UnsafeValue, match="NUL"):
        render.shell_word("a\0b")
