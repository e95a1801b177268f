"""One lab.down + lab.up cycle, last in the run (issues 3, 4 and 5).

The same VM comes back with its disk intact; the rc.d scripts bring every
service back at boot (one rc unit, as Slackware's rc.M); pebble restarted with
a new root and no accounts. The boot registers dehydrated's account again (and runs
no `dehydrated --cron`: nothing is due) and keeps serving the certificate it had
(as a Let's Encrypt one outlives a reboot): the lab keeps trusting the retired root it chains to, host-side clients and
Museum verify it. A forced renewal after the boot then goes through the new
pebble and the hook's reloads, and the retired root leaves the bundle. The Ente
stack comes back with the boot and answers /ping through Apache.
"""

import socket
import ssl
import uuid

import pytest

from entelab import certs, health, lab, probes, stack, vm

pytestmark = pytest.mark.vm


def host_side_serial(paths, settings, address: str) -> str:
    """Connect from the host to the VM's address (the lab's own network) on 443."""
    ctx = ssl.create_default_context(cafile=str(paths.home / "acme-root.pem"))
    with socket.create_connection((address, 443), timeout=20) as raw, \
            ctx.wrap_socket(raw, server_hostname=settings.api_host) as tls:
        return tls.getpeercert()["serialNumber"]


@pytest.mark.budget(266, keep=True)    # the run's one halt and boot: always run, last
def test_down_up_keeps_disk_restarts_services_and_renewals_work(guest, paths, settings, pristine):
    # from the run's pristine snapshot: the stack as docker-compose left it (stamped) and
    # the certificates as the first `dehydrated --cron` left them (stamped), so the boot's
    # rc.ente and ACME refresh have nothing to redo, whatever the tests before this one did
    pristine.restore()
    token = uuid.uuid4().hex
    guest.run(f"echo {token} > ~/persist-check && sync", sudo=False)
    # a Museum user row, kept in PostgreSQL's data dir on the VM's disk
    uid = int(token[:12], 16)
    psql = (f"docker exec ente-postgres psql -U {settings.db.user} -d {settings.db.name} -At -c ")
    guest.run(psql + f"\"INSERT INTO users (user_id, email, email_hash, creation_time) "
              f"VALUES ({uid}, 'restart@{settings.domain}', '{token}', 0)\" && sync")
    old_marker = guest.run(f"cat {certs.PEBBLE_MARKER}").stdout
    old_root = (paths.home / "acme-root.pem").read_text()
    old_serial = certs.served_serial(guest, settings.api_host, 443)
    guest.run("/etc/rc.d/rc.ente start")   # stamps the stack if the snapshot's stamp is missing
    guest.close()

    vm.down(paths)
    assert vm.domain_state(paths) == "shut off"
    lab.up(paths, settings)
    assert vm.domain_state(paths) == "running"

    with lab.guest(paths) as g2:
        assert g2.run("cat ~/persist-check", sudo=False).stdout.strip() == token
        # every service came back through rc-slackware.service at boot
        assert set(health.services(g2).values()) == {"running"}, health.services(g2)
        assert g2.run("systemctl is-active rc-slackware.service", sudo=False).stdout.strip() == "active"
        # the Ente stack came back at boot (rc.ente after rc.docker), healthy, and answers
        assert stack.problems(stack.containers(g2)) == []
        assert "pong" in probes.https_get(g2, settings.api_host, "/ping")["body"]
        assert g2.run(psql + f"\"SELECT email FROM users WHERE user_id = {uid}\"").stdout.strip() \
            == f"restart@{settings.domain}"
        # pebble restarted: new marker, new issuing root, republished to the host with the
        # retired root the served certificate still chains to
        assert g2.run(f"cat {certs.PEBBLE_MARKER}").stdout != old_marker
        bundle = (paths.home / "acme-root.pem").read_text()
        assert not bundle.startswith(old_root) and bundle.endswith(old_root), bundle
        # the boot registered the account again and re-issued nothing: both services
        # serve the certificate they had, and it verifies from the host
        conf = certs.dehydrated_conf(settings)
        served = {"apache": certs.served_serial(g2, settings.api_host, 443),
                  "postfix": certs.served_serial(g2, settings.mail_host, 587, starttls=True),
                  "file": certs.file_serial(g2, conf)}
        assert served["apache"] == served["postfix"] == served["file"] == old_serial, served
        boot_log = g2.run("journalctl -b -u rc-slackware.service --no-pager", check=False).stdout
        assert "registering" in boot_log and "retired root kept): no re-issue" in boot_log, \
            boot_log[-3000:]
        assert "Keeping the retired ACME root" in boot_log, boot_log[-3000:]
        # the boot's cuts: dockerd restored the unchanged stack, so rc.ente did not run
        # docker-compose up -d again; lab.up did not run the boot's ACME refresh again
        assert "Ente stack already up" in boot_log and "docker-compose up -d in" not in boot_log, \
            boot_log[-3000:]
        # ...and the boot's refresh registered only: no certificate due, nothing changed
        assert "not run at boot" in boot_log and "dehydrated --cron (renew" not in boot_log, \
            boot_log[-3000:]
        refreshed = int(g2.run("stat -c %Y /run/ente-lab/acme-refresh.done").stdout)
        booted = int(g2.run("date -d \"$(systemctl show rc-slackware.service -p ActiveEnterTimestamp "
                            "--value)\" +%s").stdout)
        assert refreshed <= booted, (refreshed, booted)
        address = vm.state(paths)["address"]
        assert host_side_serial(paths, settings, address).upper() == old_serial.upper()
        # Museum trusts the retired root (its CA dir has the bundle): a code is delivered
        from test_ott_mail_vm import ask_code, code_of
        code_of(ask_code(g2, settings, f"after-boot-{token[:8]}@{settings.domain}"))

        # renewals after a boot: a forced one through the new pebble and the hook
        r = certs.renew_with(g2, paths, settings)
        assert r["after"]["apache"] == r["after"]["postfix"] == r["after"]["file"] != old_serial, r
        assert "ente-lab hook: reloaded: apache" in r["output"] and "reloaded: postfix" in r["output"]
        # the retired root left the bundle (nothing chains to it), on the host and in the VM
        new_root = (paths.home / "acme-root.pem").read_text()
        assert new_root.count("BEGIN CERTIFICATE") == 1 and new_root == bundle[:len(new_root)]
        assert g2.read("/etc/ente-lab/acme-root.pem") == new_root
        assert host_side_serial(paths, settings, address).upper() == r["after"]["file"].upper()
        # the old root no longer verifies what is served
        stale = paths.home / "stale-root.pem"
        stale.write_text(old_root)
        ctx = ssl.create_default_context(cafile=str(stale))
        with socket.create_connection((address, 443), timeout=20) as raw, \
                pytest.raises(ssl.SSLCertVerificationError):
            ctx.wrap_socket(raw, server_hostname=settings.api_host)
        stale.unlink()
        # Museum trusts the new root (loaded at boot): a code is still delivered (issue 14)
        code_of(ask_code(g2, settings, f"after-renewal-{token[:8]}@{settings.domain}"))
