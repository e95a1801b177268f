"""Lab state dir, lab id, host facts and the acceleration choice (no VM, no root changes)."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from entelab import accel, daemons, host, state, vm


def test_lab_id_is_stable_per_checkout_and_differs_between_checkouts(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    assert state.lab_id(a) == state.lab_id(a)
    assert state.lab_id(a) != state.lab_id(b)
    assert re.fullmatch(r"entelab-[0-9a-f]{8}", state.lab_id(a))
    # a symlinked path to the same checkout is the same lab
    (tmp_path / "link").symlink_to(a)
    assert state.lab_id(tmp_path / "link") == state.lab_id(a)


def test_state_dir_default_and_override(tmp_path, monkeypatch):
    monkeypatch.delenv("ENTE_LAB_HOME", raising=False)
    p = state.paths(tmp_path)
    assert p.home == state.STATE_BASE / p.lab_id
    monkeypatch.setenv("ENTE_LAB_HOME", str(tmp_path / "elsewhere"))
    p = state.paths(tmp_path)
    assert p.home == tmp_path / "elsewhere"
    assert p.vagrant_home == p.home / "vagrant.d" and p.pool == p.home / "pool"


def test_ensure_dirs_makes_tree_traversable(tmp_path, monkeypatch):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    monkeypatch.setenv("ENTE_LAB_HOME", str(private / "lab"))
    p = state.paths(tmp_path)
    state.ensure_dirs(p)
    for d in (p.vagrant_home, p.pool, p.run, p.logs, p.box_cache):
        assert d.is_dir()
    assert private.stat().st_mode & stat.S_IXOTH, "libvirt-qemu must traverse every parent"
    assert p.home.stat().st_mode & stat.S_IXOTH


def test_libvirt_object_names_carry_lab_id(tmp_path):
    p = state.paths(tmp_path)
    assert vm.domain_name(p).startswith(p.lab_id + "_")
    assert vm.network_name(p) == p.lab_id + "-mgmt"


def test_debian_detection(tmp_path):
    deb = tmp_path / "deb"
    deb.write_text('PRETTY_NAME="Debian GNU/Linux 12"\nID=debian\n')
    ubu = tmp_path / "ubu"
    ubu.write_text('ID=ubuntu\nID_LIKE=debian\n')
    mint = tmp_path / "mint"
    mint.write_text('ID=linuxmint\nID_LIKE="ubuntu debian"\n')
    fed = tmp_path / "fed"
    fed.write_text('ID=fedora\n')
    assert host.is_debian_like(deb) and host.is_debian_like(ubu) and host.is_debian_like(mint)
    assert not host.is_debian_like(fed)


def test_missing_packages_reports_unknown_package():
    assert host.missing_packages(["ente-lab-no-such-package"]) == ["ente-lab-no-such-package"]
    assert host.missing_packages(["dpkg"]) == []


def test_other_systems_message_names_every_tool():
    for tool in ("qemu", "libvirt", "dnsmasq", "vagrant-libvirt", "mmdebstrap", "iptables"):
        assert tool in host.OTHER_SYSTEMS


def test_restore_without_record_touches_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTE_LAB_HOME", str(tmp_path / "lab"))
    p = state.paths(tmp_path)
    state.ensure_dirs(p)
    stopped = []
    monkeypatch.setattr(daemons, "stop", lambda pid, name, timeout=20: stopped.append(pid))
    host.restore(p)
    assert stopped == []


def test_accel_env_overrides_cache_and_probe(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTE_LAB_HOME", str(tmp_path / "lab"))
    p = state.paths(tmp_path)
    state.ensure_dirs(p)
    booted = []
    monkeypatch.setattr(accel, "trial_boot", lambda *a, **k: booted.append(a) or True)
    accel.cache_file(p).write_text("qemu\n")
    monkeypatch.setenv(accel.ENV, "kvm")
    assert accel.probe(p) == "kvm"
    monkeypatch.delenv(accel.ENV)
    assert accel.probe(p) == "qemu", "the cached answer is used"
    assert booted == [], "neither the override nor the cache may boot anything"
    assert accel.describe(p) == "qemu (probed)"


def test_accel_probe_result_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTE_LAB_HOME", str(tmp_path / "lab"))
    monkeypatch.delenv(accel.ENV, raising=False)
    p = state.paths(tmp_path)
    state.ensure_dirs(p)
    (tmp_path / "vmlinuz").write_text("k")
    (tmp_path / "initrd.img").write_text("i")
    monkeypatch.setattr(accel, "kvm_device_usable", lambda: True)
    monkeypatch.setattr(daemons, "kvm_usable_by_qemu_user", lambda: True)
    monkeypatch.setattr(accel, "_kernel_and_initrd",
                        lambda _p: (tmp_path / "vmlinuz", tmp_path / "initrd.img"))
    calls = []
    monkeypatch.setattr(accel, "trial_boot", lambda *a, **k: calls.append(k["accel"]) or False)
    assert accel.probe(p) == "qemu"
    assert accel.cache_file(p).read_text().strip() == "qemu"
    assert accel.probe(p) == "qemu"
    assert calls == ["kvm"], "one trial boot, then the cache"
    monkeypatch.setattr(accel, "trial_boot", lambda *a, **k: True)
    assert accel.probe(p, refresh=True) == "kvm"


def test_trial_boot_sees_marker_and_times_out(tmp_path, monkeypatch):
    """The real reader loop, with a fake 'qemu' that prints (or never prints) the marker."""
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text('#!/bin/sh\necho "[ 1.0] Linux version"\n'
                    'if [ "$2" = kvm ]; then sleep 30; fi\necho "[ 2.0] Run /init as init process"\n'
                    'sleep 30\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert accel.trial_boot(Path("k"), Path("i"), accel="tcg", timeout=10) is True
    log = tmp_path / "probe.log"
    assert accel.trial_boot(Path("k"), Path("i"), accel="kvm", timeout=1.5, log=log) is False
    assert "Linux version" in log.read_text()


def test_kvm_access_for_qemu_user(tmp_path):
    import grp
    import os
    import pwd
    dev = tmp_path / "kvm"
    assert daemons.kvm_usable_by_qemu_user(dev, "root") is None, "no device: no answer"
    dev.write_text("")
    me = pwd.getpwuid(os.getuid()).pw_name
    dev.chmod(0o600)
    assert daemons.kvm_usable_by_qemu_user(dev, me) is True
    assert daemons.kvm_usable_by_qemu_user(dev, "ente-lab-no-such-user") is False
    nobody = "nobody"
    dev.chmod(0o660)
    in_group = nobody in grp.getgrgid(dev.stat().st_gid).gr_mem
    assert daemons.kvm_usable_by_qemu_user(dev, nobody) is in_group
    dev.chmod(0o666)
    assert daemons.kvm_usable_by_qemu_user(dev, nobody) is True


def test_libvirtd_masks_kvm_only_when_qemu_user_cannot_use_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTE_LAB_HOME", str(tmp_path / "lab"))
    p = state.paths(tmp_path)
    state.ensure_dirs(p)
    pid = p.run / "libvirtd.pid"
    monkeypatch.setattr(daemons, "kvm_usable_by_qemu_user", lambda: False)
    conf = tmp_path / "qemu.conf"
    conf.write_text("# stock\n")
    monkeypatch.setattr(daemons, "QEMU_CONF", conf)
    cmd = daemons.daemon_command(p, "libvirtd", pid)
    assert cmd[0] == "unshare" and "/dev/kvm" in cmd[6] and cmd[-2:] == ["-p", str(pid)]
    assert (p.run / "kvm-masked").stat().st_mode & 0o777 == 0
    assert (p.run / "qemu.conf").read_text().rstrip().endswith("namespaces = []")
    assert str(daemons.QEMU_CONF) in cmd
    assert daemons.daemon_command(p, "virtlogd", pid)[1:] == ["-d", "-p", str(pid)]
    for usable in (True, None):
        monkeypatch.setattr(daemons, "kvm_usable_by_qemu_user", lambda u=usable: u)
        assert daemons.daemon_command(p, "libvirtd", pid)[0].endswith("libvirtd")


def test_apt_install_blocks_daemon_starts_and_cleans_up(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTE_LAB_HOME", str(tmp_path / "lab"))
    p = state.paths(tmp_path)
    state.ensure_dirs(p)
    policy = tmp_path / "policy-rc.d"
    monkeypatch.setattr(host, "POLICY_RC_D", policy)
    seen = []

    def fake_run(cmd, log=None, env=None, **kw):
        seen.append((cmd[:2], policy.exists() and policy.read_text().strip().endswith("exit 101"),
                     env.get("DEBIAN_FRONTEND")))
        return 0

    monkeypatch.setattr(host, "run", fake_run)
    host._apt_install(p, ["vagrant"])
    assert [s[0] for s in seen] == [["apt-get", "update"], ["apt-get", "install"]]
    assert all(blocked and fe == "noninteractive" for _, blocked, fe in seen)
    assert not policy.exists(), "the policy-rc.d prepare created is removed again"
    policy.write_text("#!/bin/sh\nexit 101\n# the admin's own\n")
    host._apt_install(p, ["vagrant"])
    assert policy.read_text().endswith("# the admin's own\n"), "a pre-existing policy-rc.d is kept"


def test_prepare_dry_run_changes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ENTE_LAB_HOME", str(tmp_path / "lab"))
    p = state.paths(tmp_path)
    monkeypatch.setattr(host, "missing_packages", lambda *a: ["vagrant", "mmdebstrap"])
    monkeypatch.setattr(host, "is_debian_like", lambda *a: True)
    monkeypatch.setattr(host, "systemd_is_init", lambda: False)
    monkeypatch.setattr(daemons, "daemon_running", lambda name: False)
    monkeypatch.setattr(host, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError(a)))
    host.prepare(p, dry_run=True)
    out = capsys.readouterr().out
    assert "would apt-get install: vagrant mmdebstrap" in out
    assert "would start: virtlogd" in out and "would start: libvirtd" in out
    assert not host.record_file(p).exists()


def test_prepare_on_other_systems_says_what_to_install(tmp_path, monkeypatch, capsys):
    from entelab.errors import StageFailed
    monkeypatch.setenv("ENTE_LAB_HOME", str(tmp_path / "lab"))
    p = state.paths(tmp_path)
    monkeypatch.setattr(host, "missing_packages", lambda *a: ["vagrant"])
    monkeypatch.setattr(host, "is_debian_like", lambda *a: False)
    with pytest.raises(StageFailed, match="non-Debian"):
        host.prepare(p)
    assert "vagrant-libvirt" in capsys.readouterr().out
