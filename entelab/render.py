"""Render: settings + secrets -> every file of the setup, under build/rootfs/.

Each service lives in ``templates/<service>/``: its Jinja2 templates, a
``service.yaml`` that says where each file goes (path, mode, owner, which
service reloads when it changes, how converge validates it) and ``NOTES.md``.
Rendering is all-or-nothing: everything is rendered in memory first, and only
then written, and only files whose content changed are touched. The manifest
(build/manifest.json) is what converge pushes.

Every value reaches a file through the escaper of that file's format
(``format:`` in service.yaml): YAML files through the ``yaml`` filter (a YAML
emitter), docker-compose.yml through ``compose`` (YAML, and ``$`` doubled
against Compose's interpolation), .env through ``env`` (a restricted, quoted
form docker-compose 1.29 and Compose v2 read alike), shell-sourced files
through ``sh`` (shlex.quote), Postfix regexp tables through ``regexp`` (a
literal inside a POSIX ERE between ``/`` delimiters). Formats without safe escaping (Apache, Postfix,
dnsmasq, sudoers, hosts ...) only get values whose grammar is safe there
(entelab/grammar.py); tests/host/test_template_escaping.py enforces both.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import yaml
from rich.table import Table
from rich.text import Text

from . import payload, stack, vocab
from . import secrets as secrets_mod
from .errors import TemplateError
from .progress import info, warn
from .settings import Settings
from .state import ROOT, LabPaths, default_box_name

TEMPLATES = ROOT / "templates"
MANAGED_BEGIN = vocab.BLOCK_BEGIN
MANAGED_END = vocab.BLOCK_END
RELOADS = {r.value for r in vocab.Reload}
VALIDATORS = {v.value for v in vocab.Validator}
# format -> the filter every interpolated value must go through ("" = none exists:
# only grammar-safe values may appear; see tests/host/test_template_escaping.py)
FORMATS = {"yaml": "yaml", "compose": "compose", "env": "env", "shell": "sh",
           "apache": "", "postfix": "", "dnsmasq": "", "sudoers": "", "hosts": "", "users": "",
           "m4": "", "lines": "", "dockerfile": "", "sasl": "",
           "regexp": "regexp"}
# What a .env value may hold: read identically by docker-compose 1.29 (python-dotenv,
# with interpolation) and Compose v2 inside single quotes: no quote, '$', '\\', '#',
# newline or other control character.
ENV_VALUE = re.compile(r"[A-Za-z0-9 _.,:/@%+=~-]*", re.ASCII)
# Control characters never belong in a rendered text file (tab and newline aside).
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x80-\x9f\u2028\u2029]")


class UnsafeValue(ValueError):
    """A value no escaping makes safe in its file format (a grammar is too lax: a lab bug)."""


def yaml_scalar(value: Any) -> str:
    """One YAML scalar on one line: an integer as is, a string double-quoted by PyYAML's
    emitter (every special or non-ASCII character escaped)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise UnsafeValue(f"yaml: not a string or an integer: {type(value).__name__}")
    text = yaml.safe_dump([value], default_style='"', default_flow_style=True,
                          width=1 << 30, allow_unicode=False).strip()
    if not (text.startswith("[") and text.endswith("]")) or "\n" in text:
        raise UnsafeValue(f"yaml: cannot emit {value[:40]!r} on one line")
    return text[1:-1]


def compose_scalar(value: Any) -> str:
    """A YAML scalar for docker-compose.yml: '$' doubled so Compose never interpolates it."""
    return yaml_scalar(value.replace("$", "$$") if isinstance(value, str) else value)


def env_value(value: Any) -> str:
    """A .env value: single-quoted, of a character set with no special meaning to either
    Compose's .env reader (refused otherwise: there is no common escape)."""
    text = str(value)
    if isinstance(value, bool) or not ENV_VALUE.fullmatch(text) or len(text) > 4096:
        raise UnsafeValue(f"env: {text[:40]!r}... has characters a .env value cannot carry "
                          "the same way for docker-compose 1.29 and Compose v2")
    return f"'{text}'"


def shell_word(value: Any) -> str:
    """One shell word (POSIX sh and bash), quoted with shlex.quote."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise UnsafeValue(f"sh: not a string: {type(value).__name__}")
    text = str(value)
    if "\0" in text:
        raise UnsafeValue("sh: a NUL byte cannot be quoted")
    return shlex.quote(text)


# What a literal inside a Postfix regexp: table pattern may hold (regexp_table(5)):
# printable ASCII with no space (it would end the pattern) and no '/' (the delimiter).
REGEXP_LITERAL = re.compile(r"[!-.0-~]{1,253}", re.ASCII)
ERE_SPECIAL = set(".[]()*+?{}|^$\\")


def regexp_literal(value: Any) -> str:
    """A value matched literally in a Postfix ``regexp:`` table pattern (POSIX ERE):
    every ERE metacharacter backslash-escaped; space, '/', control and non-ASCII
    characters refused (no escape keeps the pattern on its line and in its slashes)."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise UnsafeValue(f"regexp: not a string: {type(value).__name__}")
    if not REGEXP_LITERAL.fullmatch(value):
        raise UnsafeValue(f"regexp: {value[:40]!r} has characters a Postfix regexp pattern "
                          "cannot carry (space, '/', control or non-ASCII)")
    return "".join("\\" + c if c in ERE_SPECIAL else c for c in value)


@dataclass
class Entry:
    path: str                 # absolute path in the VM
    mode: str                 # octal string, e.g. "0600"
    owner: str
    group: str
    service: str              # templates/<service>
    src: str                  # template file, relative to templates/
    reload: str               # what must reload/restart when it changes
    merge: str = "whole"      # whole file, or a managed "block" in a shared file
    validate: str = "none"    # how converge checks a staged copy
    section: str = ""         # the article section it implements
    sha256: str = ""
    kind: str = "file"        # file, link, dir, datadir (a dir its container owns) or
                              # absent (a file or link that must not exist: converge removes it)
    target: str = ""          # for links


@dataclass
class RenderResult:
    entries: list[Entry]
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    host_changed: list[str] = field(default_factory=list)   # build/manifest.json, vagrant.json
    warnings: list[str] = field(default_factory=list)
    secrets_generated: bool = False

    @property
    def unchanged(self) -> bool:
        return not (self.changed or self.removed or self.host_changed or self.secrets_generated)


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["yaml"] = yaml_scalar
    env.filters["compose"] = compose_scalar
    env.filters["env"] = env_value
    env.filters["sh"] = shell_word
    env.filters["regexp"] = regexp_literal
    return env


def context(settings: Settings, secrets: secrets_mod.Secrets, lab_id: str = "") -> dict:
    return {
        "s": settings,
        "img": payload.images_for(settings),
        "stack_images": sorted(set(payload.images_for(settings).values())),
        "stack_services": stack.SERVICES,
        "archive": payload.GUEST_ARCHIVE,
        "builds": payload.builds_web_images(settings),
        "secrets": secrets,
        "lab_id": lab_id,
        "managed_begin": MANAGED_BEGIN,
        "managed_end": MANAGED_END,
        "catchall": vocab.CATCHALL_USER,
    }


def _services() -> list[tuple[str, dict]]:
    out = []
    for spec in sorted(TEMPLATES.glob("*/service.yaml")):
        out.append((spec.parent.name, yaml.safe_load(spec.read_text()) or {}))
    return out


# A pitfall switch that renders a file its format check would refuse: (switch, format)
# -> what render says instead of refusing (the lab's own validation lets it through
# only while the switch is on; converge's real validator still refuses it in the VM).
ALLOWED_BROKEN = {("compose_missing_quote", "compose"):
                  "pitfall compose_missing_quote is on: {src} is not valid YAML (the article's "
                  "missing quote); rendered anyway, docker-compose will refuse it "
                  "(./labctl lab.explain compose_missing_quote)"}


def allowed_broken(settings: Settings, fmt: str, problems: list[str]) -> list[str]:
    """What to say instead of ``problems`` (a file that does not parse) when a switched-on
    pitfall renders it so on purpose; [] when the problems stand."""
    if not problems or not all("does not parse" in p for p in problems):
        return []
    return [why for (name, f), why in ALLOWED_BROKEN.items()
            if f == fmt and getattr(settings.pitfalls, name)]


def render_tree(settings: Settings, secrets: secrets_mod.Secrets,
                lab_id: str = "", notes: list[str] | None = None) -> list[tuple[Entry, bytes]]:
    """Render every file in memory. Raises TemplateError on any template problem.
    ``notes`` receives what a switched-on pitfall let through (ALLOWED_BROKEN)."""
    env = _env()
    ctx = context(settings, secrets, lab_id)
    rendered: list[tuple[Entry, bytes]] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    for service, spec in _services():
        section = spec.get("section", "")
        for f in spec.get("files", []):
            when = f.get("when")
            if when and not env.compile_expression(when)(**ctx):
                continue
            src = f"{service}/{f['src']}"
            fmt = f.get("format", "")
            try:
                dest = env.from_string(f["dest"]).render(**ctx)
                text = env.get_template(src).render(**ctx)
            except jinja2.TemplateError as exc:
                problems.append(f"templates/{src}: {exc}")
                continue
            except UnsafeValue as exc:
                problems.append(f"templates/{src}: {exc}")
                continue
            entry = Entry(path=dest, mode=str(f.get("mode", "0644")), owner=f.get("owner", "root"),
                          group=f.get("group", "root"), service=service, src=src,
                          reload=f.get("reload", "none"), merge=f.get("merge", "whole"),
                          validate=f.get("validate", "none"), section=f.get("section", section))
            data = text.encode()
            entry.sha256 = hashlib.sha256(data).hexdigest()
            problems += _entry_problems(entry, text, _uses_secrets(env, src), seen)
            found = _format_problems(entry, fmt, text)
            allowed = allowed_broken(settings, fmt, found)
            if allowed:
                if notes is not None:
                    notes += [why.format(src=entry.path) for why in allowed]
            else:
                problems += found
            rendered.append((entry, data))
        for d in spec.get("dirs", []):
            dest = env.from_string(d["dest"]).render(**ctx)
            entry = Entry(path=dest, mode=str(d.get("mode", "0755")), owner=d.get("owner", "root"),
                          group=d.get("group", "root"), service=service, src="", reload="none",
                          kind="datadir" if d.get("container_owned") else "dir",
                          section=d.get("section", section))
            entry.sha256 = hashlib.sha256(b"dir").hexdigest()
            problems += _entry_problems(entry, "", False, seen)
            rendered.append((entry, b""))
        for link in spec.get("links", []):
            when = link.get("when")
            if when and not env.compile_expression(when)(**ctx):
                continue
            dest = env.from_string(link["dest"]).render(**ctx)
            target = env.from_string(link["target"]).render(**ctx)
            entry = Entry(path=dest, mode="0777", owner="root", group="root", service=service,
                          src="", reload=link.get("reload", "none"), kind="link", target=target,
                          section=section)
            entry.sha256 = hashlib.sha256(f"link:{target}".encode()).hexdigest()
            rendered.append((entry, b""))
        for gone in spec.get("absent", []):
            when = gone.get("when")
            if when and not env.compile_expression(when)(**ctx):
                continue
            dest = env.from_string(gone["dest"]).render(**ctx)
            entry = Entry(path=dest, mode="0000", owner="root", group="root", service=service,
                          src="", reload=gone.get("reload", "none"), kind="absent",
                          section=gone.get("section", section))
            entry.sha256 = hashlib.sha256(b"absent").hexdigest()
            problems += _entry_problems(entry, "", False, seen)
            rendered.append((entry, b""))
    if problems:
        raise TemplateError(problems)
    return rendered


DEST = re.compile(r"(?:/[A-Za-z0-9_.][A-Za-z0-9._-]*)+", re.ASCII)


def _format_problems(e: Entry, fmt: str, text: str) -> list[str]:
    """Checks of a rendered file by its format, in memory (the real programs run in the
    tests and in converge): known format, no control characters, YAML that parses."""
    if fmt not in FORMATS:
        return [f"templates/{e.src}: format {fmt!r} unknown; one of {sorted(FORMATS)}"]
    out = []
    m = CONTROL.search(text)
    if m:
        line = text.count("\n", 0, m.start()) + 1
        out.append(f"templates/{e.src}: control character {m.group()!r} on line {line}")
    if fmt in ("yaml", "compose"):
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            return [*out, f"templates/{e.src}: rendered YAML does not parse: {exc}"]
        if not isinstance(doc, dict):
            out.append(f"templates/{e.src}: rendered YAML is not a mapping")
    return out


def _uses_secrets(env: jinja2.Environment, src: str) -> bool:
    """Whether template ``src`` (or a template it imports or includes) reads ``secrets``.

    Decided from the template, not by looking for secret values in the output: a
    user's secret may happen to equal a word of some file (a salt 'dehydrated')."""
    assert env.loader is not None
    seen: set[str] = set()
    todo = [src]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        source = env.loader.get_source(env, name)[0]
        ast = env.parse(source)
        if "secrets" in jinja2.meta.find_undeclared_variables(ast):
            return True
        todo += [t for t in jinja2.meta.find_referenced_templates(ast) if t]
    return False


def _entry_problems(e: Entry, text: str, uses_secrets: bool, seen: dict) -> list[str]:
    out = []
    if not DEST.fullmatch(e.path) or "/../" in e.path + "/":
        out.append(f"templates/{e.src}: destination {e.path!r} is not an absolute, safe path")
    if e.path in seen:
        out.append(f"templates/{e.src}: destination {e.path} also written by templates/{seen[e.path]}")
    seen[e.path] = e.src
    if e.reload not in RELOADS:
        out.append(f"templates/{e.src}: reload {e.reload!r} unknown; one of {sorted(RELOADS)}")
    if e.validate not in VALIDATORS:
        out.append(f"templates/{e.src}: validate {e.validate!r} unknown; one of {sorted(VALIDATORS)}")
    if uses_secrets and int(e.mode, 8) & 0o077:
        out.append(f"templates/{e.src}: holds a secret but has mode {e.mode}; must be 0600")
    if e.merge == "block" and not (MANAGED_BEGIN in text and MANAGED_END in text):
        out.append(f"templates/{e.src}: merge: block needs the managed_begin/managed_end markers")
    return out


def vagrant_settings(settings: Settings, paths: LabPaths) -> dict:
    """What the Vagrantfile needs (it falls back to defaults without this file)."""
    return {
        "lab_id": paths.lab_id,
        "state_dir": str(paths.home),
        "hostname": settings.vm.hostname,
        "domain": settings.domain,
        "memory": settings.vm.memory,
        "cpus": settings.vm.cpus,
        "accel": settings.vm.accel,
        "provider": settings.vm.provider,
        "management_network": settings.vm.management_network,
        "box": default_box_name(paths.lab_id),
    }


def _write_if_changed(path: Path, data: bytes, mode: int = 0o644) -> bool:
    if path.is_file() and not path.is_symlink() and path.read_bytes() == data:
        if (path.stat().st_mode & 0o777) != mode:
            path.chmod(mode)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".ente-lab-tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    tmp.replace(path)
    return True


def render_lab(paths: LabPaths, settings: Settings, rotate: bool = False,
               quiet: bool = False) -> RenderResult:
    """Validate, render in memory, then write only what changed. Idempotent.

    Bad settings or secrets raise SettingsError, a template bug TemplateError,
    both before anything is written (the secrets file's mode included).
    """
    secrets, generated = secrets_mod.load_or_create(paths.secrets, rotate=rotate, dry_run=True)
    notes: list[str] = []
    rendered = render_tree(settings, secrets, paths.lab_id, notes)   # raises before any write
    result = RenderResult(entries=[e for e, _ in rendered], secrets_generated=generated,
                          warnings=notes)
    if generated:
        secrets_mod.write(paths.secrets, secrets)
    else:
        warning = secrets_mod.mode_warning(paths.secrets)
        if warning:
            result.warnings.append(warning)
    root = paths.rendered
    wanted = set()
    for entry, data in rendered:
        target = root / entry.path.lstrip("/")
        if entry.kind == "absent":          # not in the tree: removed below when there
            continue
        wanted.add(target)
        if entry.kind in ("dir", "datadir"):
            if not target.is_dir():
                target.mkdir(parents=True)
                result.changed.append(entry.path)
            continue
        if entry.kind == "link":
            if not (target.is_symlink() and str(target.readlink()) == entry.target):
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.is_symlink() or target.exists():
                    target.unlink()
                target.symlink_to(entry.target)
                result.changed.append(entry.path)
            continue
        # build/ copies are private to root: they may hold secrets
        if _write_if_changed(target, data, 0o600 if int(entry.mode, 8) & 0o077 == 0 else 0o644):
            result.changed.append(entry.path)
    if root.exists():
        for existing in sorted(root.rglob("*")):
            if (existing.is_file() or existing.is_symlink()) and existing not in wanted:
                existing.unlink()
                result.removed.append("/" + str(existing.relative_to(root)))
    manifest = json.dumps({"lab_id": paths.lab_id, "files": [asdict(e) for e in result.entries]},
                          indent=2, sort_keys=True) + "\n"
    if _write_if_changed(paths.manifest, manifest.encode()):
        result.host_changed.append(str(paths.manifest))
    vj = json.dumps(vagrant_settings(settings, paths), indent=2, sort_keys=True) + "\n"
    if _write_if_changed(paths.vagrant_json, vj.encode()):
        result.host_changed.append(str(paths.vagrant_json))
    if not quiet:
        _report(result, paths)
    return result


def _report(result: RenderResult, paths: LabPaths) -> None:
    for w in result.warnings:
        warn(w)
    if result.secrets_generated:
        info(f"secrets generated into {str(paths.secrets)} (mode 0600; values not shown)")
    if result.unchanged:
        info(f"render: no change ({len(result.entries)} files up to date in {str(paths.rendered)})")
        return
    for p in result.changed:
        info(f"  changed  {p}")
    for p in result.removed:
        info(f"  removed  {p}")
    for p in result.host_changed:
        info(f"  updated  {p}")
    info(f"render: {len(result.changed)} changed, {len(result.removed)} removed, "
         f"{len(result.entries)} files in {str(paths.rendered)}; "
         f"manifest {str(paths.manifest)}")


def load_manifest(paths: LabPaths) -> list[Entry]:
    data = json.loads(paths.manifest.read_text())
    return [Entry(**e) for e in data["files"]]


def settings_table(settings: Settings) -> Table:
    table = Table(title="ente-lab settings (effective)")
    table.add_column("key")
    table.add_column("value")

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            shown = repr(value) if isinstance(value, str) and not value else str(value)
            table.add_row(Text(prefix), Text(shown))     # Text: never read as console markup

    walk("", settings.model_dump())
    return table


