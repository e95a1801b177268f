"""Render: settings + secrets -> every file of the setup, under build/rootfs/.

Each service lives in ``templates/<service>/``: its Jinja2 templates, a
``service.yaml`` that says where each file goes (path, mode, owner, which
service reloads when it changes, how converge validates it) and ``NOTES.md``.
Rendering is all-or-nothing: everything is rendered in memory first, and only
then written, and only files whose content changed are touched. The manifest
(build/manifest.json) is what converge pushes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jinja2
import yaml
from rich.table import Table

from . import secrets as secrets_mod
from . import vocab
from .errors import TemplateError
from .progress import info
from .settings import Settings
from .state import ROOT, LabPaths, default_box_name

TEMPLATES = ROOT / "templates"
MANAGED_BEGIN = vocab.BLOCK_BEGIN
MANAGED_END = vocab.BLOCK_END
RELOADS = {r.value for r in vocab.Reload}
VALIDATORS = {v.value for v in vocab.Validator}


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
    kind: str = "file"        # file, link or dir
    target: str = ""          # for links


@dataclass
class RenderResult:
    entries: list[Entry]
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    secrets_generated: bool = False

    @property
    def unchanged(self) -> bool:
        return not (self.changed or self.removed or self.secrets_generated)


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["yaml_str"] = lambda v: json.dumps(str(v))  # JSON strings are valid YAML
    return env


def context(settings: Settings, secrets: secrets_mod.Secrets, lab_id: str = "") -> dict:
    return {
        "s": settings,
        "secrets": secrets,
        "lab_id": lab_id,
        "managed_begin": MANAGED_BEGIN,
        "managed_end": MANAGED_END,
    }


def _services() -> list[tuple[str, dict]]:
    out = []
    for spec in sorted(TEMPLATES.glob("*/service.yaml")):
        out.append((spec.parent.name, yaml.safe_load(spec.read_text()) or {}))
    return out


def render_tree(settings: Settings, secrets: secrets_mod.Secrets,
                lab_id: str = "") -> list[tuple[Entry, bytes]]:
    """Render every file in memory. Raises TemplateError on any template problem."""
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
            dest = env.from_string(f["dest"]).render(**ctx)
            src = f"{service}/{f['src']}"
            try:
                text = env.get_template(src).render(**ctx)
            except jinja2.TemplateError as exc:
                problems.append(f"templates/{src}: {exc}")
                continue
            entry = Entry(path=dest, mode=str(f.get("mode", "0644")), owner=f.get("owner", "root"),
                          group=f.get("group", "root"), service=service, src=src,
                          reload=f.get("reload", "none"), merge=f.get("merge", "whole"),
                          validate=f.get("validate", "none"), section=f.get("section", section))
            data = text.encode()
            entry.sha256 = hashlib.sha256(data).hexdigest()
            problems += _entry_problems(entry, text, secrets, seen)
            rendered.append((entry, data))
        for d in spec.get("dirs", []):
            dest = env.from_string(d["dest"]).render(**ctx)
            entry = Entry(path=dest, mode=str(d.get("mode", "0755")), owner=d.get("owner", "root"),
                          group=d.get("group", "root"), service=service, src="", reload="none",
                          kind="dir", section=d.get("section", section))
            entry.sha256 = hashlib.sha256(b"dir").hexdigest()
            problems += _entry_problems(entry, "", secrets, seen)
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
    if problems:
        raise TemplateError(problems)
    return rendered


def _entry_problems(e: Entry, text: str, secrets, seen: dict) -> list[str]:
    out = []
    if not e.path.startswith("/"):
        out.append(f"templates/{e.src}: destination {e.path!r} is not absolute")
    if e.path in seen:
        out.append(f"templates/{e.src}: destination {e.path} also written by templates/{seen[e.path]}")
    seen[e.path] = e.src
    if e.reload not in RELOADS:
        out.append(f"templates/{e.src}: reload {e.reload!r} unknown; one of {sorted(RELOADS)}")
    if e.validate not in VALIDATORS:
        out.append(f"templates/{e.src}: validate {e.validate!r} unknown; one of {sorted(VALIDATORS)}")
    if any(v and v in text for v in secrets.values()) and int(e.mode, 8) & 0o077:
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
    """Validate, render in memory, then write only what changed. Idempotent."""
    secrets, generated = secrets_mod.load_or_create(paths.secrets, rotate=rotate, dry_run=True)
    rendered = render_tree(settings, secrets, paths.lab_id)     # raises before any write
    if generated:
        secrets_mod.write(paths.secrets, secrets)
    result = RenderResult(entries=[e for e, _ in rendered], secrets_generated=generated)
    root = paths.rendered
    wanted = set()
    for entry, data in rendered:
        target = root / entry.path.lstrip("/")
        wanted.add(target)
        if entry.kind == "dir":
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
    _write_if_changed(paths.manifest, manifest.encode())
    vj = json.dumps(vagrant_settings(settings, paths), indent=2, sort_keys=True) + "\n"
    _write_if_changed(paths.vagrant_json, vj.encode())
    if not quiet:
        _report(result, paths)
    return result


def _report(result: RenderResult, paths: LabPaths) -> None:
    if result.secrets_generated:
        info(f"secrets generated into {paths.secrets} (mode 0600; values not shown)")
    if result.unchanged:
        info(f"render: no change ({len(result.entries)} files up to date in {paths.rendered})")
        return
    for p in result.changed:
        info(f"  changed  {p}")
    for p in result.removed:
        info(f"  removed  {p}")
    info(f"render: {len(result.changed)} changed, {len(result.removed)} removed, "
         f"{len(result.entries)} files in {paths.rendered}; manifest {paths.manifest}")


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
            table.add_row(prefix, repr(value) if isinstance(value, str) and not value else str(value))

    walk("", settings.model_dump())
    return table


