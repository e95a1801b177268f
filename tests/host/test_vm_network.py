"""The management network's address is checked before lab.up creates anything
(entelab/vm.py check_network_free): another libvirt network (another lab's) or a host
interface holding it makes vagrant-libvirt die half-way ("Network not found: no
network with matching name '<lab>-mgmt'"). Facts in (virsh XML, `ip -j addr`),
message out."""

from __future__ import annotations

import ipaddress
import json

import pytest

from entelab import lab, state, vm
from entelab.errors import SettingsError
from entelab.hostrun import Result


def N(s):
    return ipaddress.IPv4Network(s, strict=False)


MINE = N("192.168.121.0/24")


def other_lab(active=True, net="192.168.121.0/24", name="entelab-dab2b529-mgmt"):
    return vm.NetFact(name, N(net), active, "virbr1")


def test_a_free_address_passes():
    nets = [vm.NetFact("default", N("192.168.122.0/24"), True, "virbr0"),
            vm.NetFact("entelab-f2af6c09-mgmt", MINE, True, "virbr1")]      # our own
    addrs = [vm.IfFact("lo", N("127.0.0.1/8")), vm.IfFact("virbr1", N("192.168.121.1/24")),
             vm.IfFact("eth0", N("10.0.2.15/24"))]
    assert vm.network_conflicts(MINE, "entelab-f2af6c09-mgmt", nets, addrs) == ""


def test_another_labs_active_network_is_named_with_both_fixes():
    nets = [other_lab(), vm.NetFact("default", N("192.168.122.0/24"), False, "virbr0")]
    msg = vm.network_conflicts(MINE, "entelab-f2af6c09-mgmt", nets,
                               [vm.IfFact("virbr1", N("192.168.121.1/24"))],
                               avoid=[N("192.168.123.0/24")])
    assert msg.startswith("vm.management_network = '192.168.121.0/24': already taken")
    assert "libvirt network 'entelab-dab2b529-mgmt' (192.168.121.0/24, active)" in msg
    assert "entelab-dab2b529_default" in msg                    # the other lab's VM
    assert "lab.down" in msg and "net-destroy entelab-dab2b529-mgmt" in msg
    # the first /24 that no network, interface or the docker subnet holds
    assert "`vm.management_network: 192.168.124.0/24` in settings.local.yaml (free here)" in msg
    assert "host interface virbr1" not in msg                   # a libvirt bridge: said once


def test_an_inactive_network_is_undefined_not_destroyed():
    msg = vm.network_conflicts(MINE, "entelab-f2af6c09-mgmt", [other_lab(active=False)], [])
    assert "defined, inactive" in msg and "net-undefine entelab-dab2b529-mgmt" in msg
    assert "net-destroy" not in msg


def test_an_overlapping_host_interface_is_named():
    msg = vm.network_conflicts(MINE, "entelab-f2af6c09-mgmt", [],
                               [vm.IfFact("eth1", N("192.168.0.0/16"))])
    assert "host interface eth1 (192.168.0.0/16)" in msg
    assert "Free it" not in msg
    assert "192.168.N.0/24" in msg                              # no free /24 in 192.168/16


def test_facts_are_read_from_virsh_and_ip(monkeypatch):
    xml = {"entelab-a-mgmt": "<network><name>entelab-a-mgmt</name><bridge name='virbr3'/>"
                             "<ip address='192.168.121.1' netmask='255.255.255.0'/></network>",
           "other": "<network><name>other</name><bridge name='virbr4'/>"
                    "<ip address='10.9.0.1' prefix='16'/></network>",
           "v6only": "<network><name>v6only</name><ip family='ipv6' address='fd00::1' prefix='64'/>"
                     "</network>"}

    def virsh(*args, check=False, timeout=120):
        if args[0] == "net-list":
            return Result(list(args), 0, "\n".join(xml) + "\n\n")
        if args[0] == "net-dumpxml":
            return Result(list(args), 0, xml[args[1]])
        if args[0] == "net-info":
            return Result(list(args), 0, f"Name: {args[1]}\nActive:         "
                                         f"{'yes' if args[1] == 'other' else 'no'}\n")
        raise AssertionError(args)

    monkeypatch.setattr(vm, "virsh", virsh)
    assert vm.libvirt_networks() == [
        vm.NetFact("entelab-a-mgmt", N("192.168.121.0/24"), False, "virbr3"),
        vm.NetFact("other", N("10.9.0.0/16"), True, "virbr4"),
        vm.NetFact("v6only", None, False, "")]
    ip = [{"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
          {"ifname": "eth0", "addr_info": [{"family": "inet6", "local": "fe80::1", "prefixlen": 64},
                                           {"family": "inet", "local": "10.0.2.15", "prefixlen": 24}]}]
    monkeypatch.setattr(vm, "run", lambda argv, check=False: Result(argv, 0, json.dumps(ip)))
    assert vm.host_addresses() == [vm.IfFact("lo", N("127.0.0.0/8")), vm.IfFact("eth0", N("10.0.2.0/24"))]


def test_lab_up_refuses_before_anything_is_created(tmp_path, monkeypatch):
    from entelab.settings import load_settings
    root = tmp_path / "checkout"
    root.mkdir()
    monkeypatch.setenv("ENTE_LAB_HOME", str(tmp_path / "home"))
    p = state.paths(root)
    settings, _ = load_settings(root)
    done: list[str] = []
    monkeypatch.setattr(lab.host, "prepare", lambda paths: done.append("prepare"))
    monkeypatch.setattr(lab, "render_lab", lambda *a, **k: done.append("render"))
    monkeypatch.setattr(vm, "libvirt_networks", lambda: [other_lab()])
    monkeypatch.setattr(vm, "host_addresses", lambda: [])
    monkeypatch.setattr(vm, "up", lambda paths: done.append("vm.up"))
    with pytest.raises(SettingsError) as exc:
        lab.up(p, settings)
    assert done == ["prepare"]                                  # no render, no box, no VM
    assert "vm.management_network" in exc.value.message
    assert "nothing was written" in exc.value.message
