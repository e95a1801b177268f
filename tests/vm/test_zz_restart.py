"""One lab.down + lab.up cycle, last in the run (issues 3, 4 and 5).

The same VM comes back with its disk intact; the rc.d scripts bring every
service back at boot (one rc unit, as Slackware's rc.M); pebble restarted with
a new root and no accounts, yet a forced renewal succeeds, and host-side
clients verify the served certificate with the republished root.
"""

import socket
import ssl
import uuid

import pytest

from entelab import certs, connection, lab, verify, vm
from labfix import sh

pytestmark = pytest.mark.vm


def host_side_serial(paths, settings, address: str) -> str:
    """Connect from the host to the VM's address (the lab's own network) on 443."""
    ctx = ssl.create_default_context(cafile=str(paths.home / "acme-root.pem"))
    with socket.create_connection((address, 443), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname=settings.api_host) as tls:
            return tls.getpeercert()["serialNumber"]


def test_down_up_keeps_disk_restarts_services_and_renewals_work(conn, paths, settings):
    token = uuid.uuid4().hex
    conn.run(f"echo {token} > ~/persist-check && sync", hide=True)
    old_marker = sh(conn, f"cat {certs.PEBBLE_MARKER}").stdout
    old_root = (paths.home / "acme-root.pem").read_text()
    conn.close()

    vm.down(paths)
    assert vm.domain_state(paths) == "shut off"
    lab.up(paths, settings)
    assert vm.domain_state(paths) == "running"

    with connection.connect(paths, refresh=True) as c2:
        assert c2.run("cat ~/persist-check", hide=True).stdout.strip() == token
        # every service came back through rc-slackware.service at boot
        assert set(verify.services(c2).values()) == {"running"}, verify.services(c2)
        assert c2.run("systemctl is-active rc-slackware.service", hide=True).stdout.strip() == "active"
        # pebble restarted: new marker, new root, republished to the host
        assert sh(c2, f"cat {certs.PEBBLE_MARKER}").stdout != old_marker
        new_root = (paths.home / "acme-root.pem").read_text()
        assert new_root != old_root
        # a forced renewal still works and both services serve the new certificate
        r = certs.renew_with(c2, paths)
        assert r["after"]["apache"] == r["after"]["postfix"] == r["after"]["file"] != r["before"]["apache"]
        address = vm.state(paths)["address"]
        assert host_side_serial(paths, settings, address).upper() == r["after"]["file"].upper()
        # the old root no longer verifies it
        stale = paths.home / "stale-root.pem"
        stale.write_text(old_root)
        ctx = ssl.create_default_context(cafile=str(stale))
        with socket.create_connection((address, 443), timeout=20) as raw:
            with pytest.raises(ssl.SSLCertVerificationError):
                ctx.wrap_socket(raw, server_hostname=settings.api_host)
        stale.unlink()
