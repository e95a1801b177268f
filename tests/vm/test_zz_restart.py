"""One lab.down + lab.up cycle, last in the run (issues 3, 4 and 5).

The same VM comes back with its disk intact; the rc.d scripts bring every
service back at boot (one rc unit, as Slackware's rc.M); pebble restarted with
a new root and no accounts, yet the boot's forced re-issue (re-registration,
new certificate, the hook's reloads) succeeds, and host-side
clients verify the served certificate with the republished root. The Ente
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


def test_down_up_keeps_disk_restarts_services_and_renewals_work(guest, paths, settings):
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
        # pebble restarted: new marker, new root, republished to the host
        assert g2.run(f"cat {certs.PEBBLE_MARKER}").stdout != old_marker
        new_root = (paths.home / "acme-root.pem").read_text()
        assert new_root != old_root
        # the boot's forced renewal (ente-lab-acme-refresh from rc.M: pebble had no account
        # for dehydrated, so it re-registered and re-issued through the hook): both services
        # serve the new certificate, and the renewal log says the hook reloaded them
        conf = certs.dehydrated_conf(settings)
        served = {"apache": certs.served_serial(g2, settings.api_host, 443),
                  "postfix": certs.served_serial(g2, settings.mail_host, 587, starttls=True),
                  "file": certs.file_serial(g2, conf)}
        assert served["apache"] == served["postfix"] == served["file"] != old_serial, served
        boot_log = g2.run("journalctl -b -u rc-slackware.service --no-pager", check=False).stdout
        assert "ente-lab hook: reloaded: apache" in boot_log and "reloaded: postfix" in boot_log, \
            boot_log[-3000:]
        address = vm.state(paths)["address"]
        assert host_side_serial(paths, settings, address).upper() == served["file"].upper()
        # the old root no longer verifies it
        stale = paths.home / "stale-root.pem"
        stale.write_text(old_root)
        ctx = ssl.create_default_context(cafile=str(stale))
        with socket.create_connection((address, 443), timeout=20) as raw, \
                pytest.raises(ssl.SSLCertVerificationError):
            ctx.wrap_socket(raw, server_hostname=settings.api_host)
        stale.unlink()
        # Museum trusts the new root: a one-time code is still delivered (issue 14)
        from test_ott_mail_vm import ask_code, code_of
        code_of(ask_code(g2, settings, f"after-boot-{token[:8]}@{settings.domain}"))
