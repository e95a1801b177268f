"""Render engine: all-or-nothing, idempotent, manifest, and the secret/mode guard."""

import json
import stat

import pytest

from entelab import render, state
from entelab.errors import TemplateError
from entelab.settings import load_settings


@pytest.fixture
def lab(empty_checkout):
    return empty_checkout, state.paths(empty_checkout)


def test_second_render_changes_nothing(lab, capsys):
    root, paths = lab
    s, _ = load_settings(root)
    first = render.render_lab(paths, s)
    assert first.changed and first.secrets_generated
    mtimes = {p: p.stat().st_mtime_ns for p in paths.build.rglob("*") if p.is_file()}
    capsys.readouterr()
    second = render.render_lab(paths, s)
    assert second.unchanged
    assert "render: no change" in capsys.readouterr().out
    assert mtimes == {p: p.stat().st_mtime_ns for p in paths.build.rglob("*") if p.is_file()}


def test_setting_change_touches_only_affected_files(lab):
    root, paths = lab
    render.render_lab(paths, load_settings(root)[0], quiet=True)
    s2, _ = load_settings(root, ["docker.museum_ip=172.21.200.9"])
    result = render.render_lab(paths, s2, quiet=True)
    assert "/etc/hosts" in result.changed
    assert "/etc/resolv.conf" not in result.changed
    assert "172.21.200.9" in (paths.rendered / "etc/hosts").read_text()


def test_manifest_and_vagrant_json(lab):
    root, paths = lab
    s, _ = load_settings(root, ["vm.memory=3072"])
    render.render_lab(paths, s, quiet=True)
    manifest = json.loads(paths.manifest.read_text())
    assert manifest["lab_id"] == paths.lab_id
    by_path = {e["path"]: e for e in manifest["files"]}
    hosts = by_path["/etc/hosts"]
    assert hosts["merge"] == "block" and hosts["reload"] == "dnsmasq"
    import hashlib
    data = (paths.rendered / "etc/hosts").read_bytes()
    assert hosts["sha256"] == hashlib.sha256(data).hexdigest()
    vj = json.loads(paths.vagrant_json.read_text())
    assert vj["memory"] == 3072 and vj["lab_id"] == paths.lab_id and vj["hostname"] == "darkstar"


def test_stale_rendered_files_are_removed(lab):
    root, paths = lab
    render.render_lab(paths, load_settings(root)[0], quiet=True)
    stale = paths.rendered / "etc/old.conf"
    stale.write_text("x")
    result = render.render_lab(paths, load_settings(root)[0], quiet=True)
    assert result.removed == ["/etc/old.conf"] and not stale.exists()


def _fake_templates(tmp_path, monkeypatch, spec, body):
    tdir = tmp_path / "templates" / "svc"
    tdir.mkdir(parents=True)
    (tdir / "service.yaml").write_text(spec)
    (tdir / "f.j2").write_text(body)
    monkeypatch.setattr(render, "TEMPLATES", tmp_path / "templates")


def test_secret_in_world_readable_file_is_refused(lab, tmp_path, monkeypatch):
    root, paths = lab
    _fake_templates(tmp_path, monkeypatch,
                    "files:\n  - {src: f.j2, format: lines, dest: /etc/x.conf, mode: '0644'}\n",
                    "password={{ secrets.db_password }}\n")
    with pytest.raises(TemplateError, match="holds a secret but has mode 0644; must be 0600"):
        render.render_lab(paths, load_settings(root)[0], quiet=True)
    assert not paths.build.exists() and not paths.secrets.exists()


def test_undefined_variable_fails_before_writing(lab, tmp_path, monkeypatch):
    root, paths = lab
    _fake_templates(tmp_path, monkeypatch, "files:\n  - {src: f.j2, format: lines, dest: /etc/x.conf}\n",
                    "{{ s.no_such_key }}\n")
    with pytest.raises(TemplateError, match="templates/svc/f.j2: .*no_such_key"):
        render.render_lab(paths, load_settings(root)[0], quiet=True)
    assert not paths.build.exists()


def test_secret_file_private_in_build(lab, tmp_path, monkeypatch):
    root, paths = lab
    _fake_templates(tmp_path, monkeypatch,
                    "files:\n  - {src: f.j2, format: lines, dest: /etc/x.conf, mode: '0600'}\n",
                    "password={{ secrets.db_password }}\n")
    render.render_lab(paths, load_settings(root)[0], quiet=True)
    f = paths.rendered / "etc/x.conf"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.secrets.stat().st_mode) == 0o600


def test_render_output_never_prints_secrets(lab, capsys):
    root, paths = lab
    render.render_lab(paths, load_settings(root)[0])
    out = capsys.readouterr().out
    from entelab import secrets as secrets_mod
    s, _ = secrets_mod.load_or_create(paths.secrets)
    assert not any(v in out for v in s.values())


def test_vagrant_json_change_is_not_reported_as_no_change(lab, capsys):
    root, paths = lab
    render.render_lab(paths, load_settings(root)[0], quiet=True)
    capsys.readouterr()
    result = render.render_lab(paths, load_settings(root, ["vm.memory=3072"])[0])
    out = capsys.readouterr().out
    assert not result.unchanged and result.changed == []
    assert result.host_changed == [str(paths.vagrant_json)]
    assert "render: no change" not in out and "render: 0 changed" in out
    assert f"updated{paths.vagrant_json}" in "".join(out.split())      # rich may wrap it
    assert json.loads(paths.vagrant_json.read_text())["memory"] == 3072


def test_settings_table_shows_values_literally(tmp_path):
    from rich.console import Console
    s, _ = load_settings(tmp_path, local_file=tmp_path / "none.yaml")
    s.smtp.sender_name = "[red]x[/b]"          # as if a grammar let it through
    console = Console(record=True, width=200)
    console.print(render.settings_table(s))
    assert "[red]x[/b]" in console.export_text()
