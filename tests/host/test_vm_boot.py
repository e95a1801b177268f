"""lab.up of a halted VM (entelab/vm.py): `virsh start` + SSH at the lease's address
when nothing `vagrant up` reads changed since its last run, else `vagrant up`; lab.down
as an ACPI shutdown through libvirt. Facts in (virsh answers, files), commands out."""

from __future__ import annotations

import json

import pytest

from entelab import progress, state, vm
from entelab.hostrun import Result

LEASE = (" Name       MAC address          Protocol     Address\n"
         "-------------------------------------------------------\n"
         " vnet0      52:54:00:aa:bb:cc    ipv4         192.168.121.77/24\n")


@pytest.fixture
def lab(tmp_path, monkeypatch):
    root = tmp_path / "checkout"
    (root / "build").mkdir(parents=True)
    (root / "Vagrantfile").write_text("# Vagrantfile\n")
    (root / "build" / "vagrant.json").write_text('{"memory": 4096}\n')
    monkeypatch.setenv("ENTE_LAB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ENTE_LAB_ACCEL", raising=False)
    p = state.paths(root)
    state.ensure_dirs(p)
    vm.ssh_config_cache(p).write_text(json.dumps(
        {"user": "vagrant", "host": "192.168.121.50", "port": 22, "keyfile": "/k"}) + "\n")
    facts = {"domstate": "shut off", "net-info": "Name: x\nActive:         no\n", "net-ok": True,
             "lease": LEASE}
    calls: list[tuple] = []

    def virsh(*args, check=False, timeout=120):
        calls.append(("virsh",) + args)
        if args[0] == "domstate":
            return Result(list(args), 0, facts["domstate"] + "\n")
        if args[0] == "net-info":
            return Result(list(args), 0 if facts["net-ok"] else 1, facts["net-info"])
        if args[0] == "domifaddr":
            return Result(list(args), 0, facts["lease"])
        if args[0] == "start":
            facts["domstate"] = "running"
        if args[0] == "shutdown":
            facts["domstate"] = "shut off"
        return Result(list(args), 0)

    def vagrant(paths, *args, **kw):
        calls.append(("vagrant",) + args)
        return Result(list(args), 0)

    class FakeGuest:
        def __init__(self, host):
            self.host = host

        @classmethod
        def connect(cls, paths, timeout=30, **kw):
            calls.append(("ssh", json.loads(vm.ssh_config_cache(paths).read_text())["host"]))
            return cls(None)

        def run(self, cmd, **kw):
            return Result(cmd, 0, "darkstar\n")

        def __enter__(self):
            return self

        def __exit__(self, *a):
            pass

    from entelab import guest as guest_mod
    monkeypatch.setattr(vm, "virsh", virsh)
    monkeypatch.setattr(vm, "vagrant", vagrant)
    monkeypatch.setattr(vm, "ensure_pool", lambda p: None)
    monkeypatch.setattr(vm, "_clean_leftovers", lambda p: None)
    monkeypatch.setattr(vm, "provider", lambda p: "libvirt")
    monkeypatch.setattr(vm, "libvirt_up", lambda: True)
    monkeypatch.setattr(guest_mod, "Guest", FakeGuest)
    monkeypatch.setattr(progress.console, "_width", 250)
    return p, facts, calls


def kinds(calls):
    return [c[:2] for c in calls if c[0] in ("vagrant", "ssh") or c[1] in ("start", "net-start", "shutdown")]


def test_first_up_goes_through_vagrant_and_records_its_inputs(lab):
    p, facts, calls = lab
    vm.up(p)
    assert kinds(calls) == [("vagrant", "up")]
    assert json.loads(vm.last_up_file(p).read_text())["inputs"] == vm.up_inputs(p)
    assert not vm.ssh_config_cache(p).exists()          # Vagrant is asked for the address again


def test_unchanged_inputs_boot_with_virsh_start_and_ssh_at_the_new_lease(lab):
    p, facts, calls = lab
    vm.last_up_file(p).write_text(json.dumps({"inputs": vm.up_inputs(p)}))
    vm.up(p)
    # the lab network was down: started first; then the domain; SSH at the lease's address
    assert kinds(calls) == [("virsh", "net-start"), ("virsh", "start"), ("ssh", "192.168.121.77")]
    assert json.loads(vm.ssh_config_cache(p).read_text())["host"] == "192.168.121.77"


def test_an_active_network_is_left_alone(lab):
    p, facts, calls = lab
    facts["net-info"] = "Name: x\nActive:         yes\n"
    vm.last_up_file(p).write_text(json.dumps({"inputs": vm.up_inputs(p)}))
    vm.up(p)
    assert kinds(calls) == [("virsh", "start"), ("ssh", "192.168.121.77")]


@pytest.mark.parametrize("change", ["memory", "accel", "network gone", "no ssh cache", "no record"])
def test_anything_changed_goes_through_vagrant_up(lab, monkeypatch, change):
    p, facts, calls = lab
    vm.last_up_file(p).write_text(json.dumps({"inputs": vm.up_inputs(p)}))
    if change == "memory":
        p.vagrant_json.write_text('{"memory": 8192}\n')
    elif change == "accel":
        monkeypatch.setenv("ENTE_LAB_ACCEL", "kvm")
    elif change == "network gone":
        facts["net-ok"] = False
    elif change == "no ssh cache":
        vm.ssh_config_cache(p).unlink()
    else:
        vm.last_up_file(p).unlink()
    vm.up(p)
    assert kinds(calls) == [("vagrant", "up")]


def test_down_is_an_acpi_shutdown_and_keeps_the_ssh_settings(lab):
    p, facts, calls = lab
    facts["domstate"] = "running"
    vm.down(p)
    assert kinds(calls) == [("virsh", "shutdown")]
    assert facts["domstate"] == "shut off" and vm.ssh_config_cache(p).exists()
