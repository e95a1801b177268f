"""The top-level Vagrantfile: real `vagrant validate`, and the settings it derives.

Each test works on a copy of the Vagrantfile in a temporary checkout, so the real
build/vagrant.json is never touched. ``_effective`` loads the Vagrantfile with a
stand-in ``Vagrant.configure`` that records every setting (plain Ruby, no VM).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from entelab.state import ROOT, lab_id

RECORDER = r'''
require "json"
class Rec
  attr_reader :calls
  def initialize; @calls = {}; end
  def method_missing(name, *args, **kw, &blk)
    key = name.to_s
    if key.end_with?("=")
      @calls[key.chomp("=")] = args.first
      return
    end
    if blk
      sub = Rec.new
      blk.call(sub)
      @calls["#{key}:#{args.first}"] = sub.calls
      return
    end
    return (@calls[key] ||= Rec.new) if args.empty? && kw.empty?
    (@calls[key + "()"] ||= []) << (args + (kw.empty? ? [] : [kw]))
    nil
  end
  def respond_to_missing?(*) = true
  def to_json(*a) = calls.to_json(*a)
end
module Vagrant
  def self.configure(_v)
    cfg = Rec.new
    yield cfg
    puts JSON.generate(cfg)
  end
end
load ARGV[0]
'''


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    root.mkdir()
    shutil.copy(ROOT / "Vagrantfile", root / "Vagrantfile")
    (root / "entelab").mkdir()
    shutil.copy(ROOT / "entelab" / "settings.defaults.yaml", root / "entelab" / "settings.defaults.yaml")
    return root


def _env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VAGRANT_", "ENTE_LAB_"))}
    env.update(VAGRANT_HOME=str(tmp_path / "vagrant.d"), VAGRANT_CHECKPOINT_DISABLE="1",
               VAGRANT_NO_COLOR="1", **extra)
    return env


def _validate(root: Path, tmp_path: Path, *args: str, **env) -> subprocess.CompletedProcess:
    vagrant = shutil.which("vagrant")
    if not vagrant:
        pytest.fail("vagrant is not installed; run `invoke host.prepare`")
    return subprocess.run([vagrant, "validate", *args], cwd=root, env=_env(tmp_path, **env),
                          capture_output=True, text=True, timeout=120)


def _write_json(root: Path, data) -> None:
    (root / "build").mkdir(exist_ok=True)
    text = data if isinstance(data, str) else json.dumps(data)
    (root / "build" / "vagrant.json").write_text(text)


def _effective(root: Path, tmp_path: Path, **env) -> dict:
    script = tmp_path / "rec.rb"
    script.write_text(RECORDER)
    out = subprocess.run(["ruby", str(script), str(root / "Vagrantfile")], cwd=root,
                         env=_env(tmp_path, **env), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["vm"]


LAB = {"lab_id": "entelab-12345678", "state_dir": "/srv/lab", "hostname": "nova",
       "memory": 3072, "cpus": 1, "accel": "auto", "provider": "libvirt",
       "management_network": "192.168.150.0/24", "box": "ente-lab/debian12-entelab-12345678"}


def test_validate_without_settings_json(checkout, tmp_path):
    out = _validate(checkout, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "validated successfully" in out.stdout


def test_validate_with_settings_json(checkout, tmp_path):
    _write_json(checkout, LAB)
    out = _validate(checkout, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_virtualbox_branch_validates(checkout, tmp_path):
    _write_json(checkout, {**LAB, "provider": "virtualbox"})
    # VirtualBox is not installed here: validate the configuration, not the provider.
    out = _validate(checkout, tmp_path, "--ignore-provider")
    assert out.returncode == 0, out.stdout + out.stderr
    # its provider block still has to load and carry the lab's values
    vb = _effective(checkout, tmp_path)
    assert vb["box"] == "debian/bookworm64"
    assert vb["provider:virtualbox"]["memory"] == 3072
    assert vb["provider:virtualbox"]["name"] == "entelab-12345678"


def test_bad_json_fails_clearly(checkout, tmp_path):
    _write_json(checkout, '{"memory": 4096,')
    out = _validate(checkout, tmp_path)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "vagrant.json is not valid JSON" in text and "lab.render" in text


def test_bad_values_fail_clearly(checkout, tmp_path):
    _write_json(checkout, {**LAB, "memory": 1024, "provider": "hyperv"})
    out = _validate(checkout, tmp_path)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "memory must be an integer >= 2048" in text
    assert "provider must be libvirt or virtualbox" in text


def test_defaults_follow_the_checkout(checkout, tmp_path):
    cfg = _effective(checkout, tmp_path)
    lid = lab_id(checkout)
    lv = cfg["provider:libvirt"]
    assert lv["storage_pool_name"] == lid
    assert lv["default_prefix"] == lid + "_"
    assert lv["management_network_name"] == lid + "-mgmt"
    assert lv["management_network_address"] == "192.168.121.0/24"
    assert cfg["box"] == f"ente-lab/debian12-{lid}"
    assert lv["memory"] == 4096 and lv["cpus"] == 2
    assert lv["serial()"][0][0]["source"]["path"] == f"/var/lib/ente-lab/{lid}/logs/console.log"


def test_settings_json_drives_libvirt(checkout, tmp_path):
    _write_json(checkout, LAB)
    cfg = _effective(checkout, tmp_path)
    lv = cfg["provider:libvirt"]
    assert cfg["hostname"] == "nova" and cfg["boot_timeout"] == 900
    assert cfg["synced_folder()"][0] == [".", "/vagrant", {"disabled": True}]
    assert cfg["box"] == LAB["box"]
    assert (lv["memory"], lv["cpus"]) == (3072, 1)
    assert lv["storage_pool_name"] == "entelab-12345678"
    assert lv["management_network_address"] == "192.168.150.0/24"
    assert lv["uri"] == "qemu:///system"
    assert (lv["graphics_type"], lv["video_type"]) == ("none", "none")


def test_acceleration_choice(checkout, tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    _write_json(checkout, {**LAB, "state_dir": str(state_dir)})
    lv = _effective(checkout, tmp_path)["provider:libvirt"]
    assert (lv["driver"], lv["cpu_mode"], lv["cpu_model"]) == ("qemu", "custom", "qemu64")
    (state_dir / "accel").write_text("kvm\n")
    assert _effective(checkout, tmp_path)["provider:libvirt"]["driver"] == "kvm"
    lv = _effective(checkout, tmp_path, ENTE_LAB_ACCEL="qemu")["provider:libvirt"]
    assert lv["driver"] == "qemu" and lv["cpu_model"] == "qemu64"
    (state_dir / "accel").write_text("qemu\n")
    assert _effective(checkout, tmp_path, ENTE_LAB_ACCEL="kvm")["provider:libvirt"]["driver"] == "kvm"
    _write_json(checkout, {**LAB, "state_dir": str(state_dir), "accel": "kvm"})
    assert _effective(checkout, tmp_path)["provider:libvirt"]["driver"] == "kvm"


def test_defaults_come_from_the_python_defaults_file(checkout, tmp_path):
    """One copy of the VM defaults: change it and a plain Vagrantfile load follows."""
    defaults = checkout / "entelab" / "settings.defaults.yaml"
    defaults.write_text(defaults.read_text().replace("memory: 4096", "memory: 5120")
                        .replace("hostname: darkstar", "hostname: vega"))
    cfg = _effective(checkout, tmp_path)
    assert cfg["hostname"] == "vega" and cfg["provider:libvirt"]["memory"] == 5120


def test_missing_defaults_file_is_a_clear_error(checkout, tmp_path):
    (checkout / "entelab" / "settings.defaults.yaml").unlink()
    with pytest.raises(AssertionError, match="cannot read the VM defaults"):
        _effective(checkout, tmp_path)
