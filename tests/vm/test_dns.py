"""Name service (issue 5): dnsmasq answers from /etc/hosts and /etc/networks."""

import pytest

from entelab import probes

pytestmark = pytest.mark.vm


def test_museum_name_resolves_to_its_fixed_address(guest, settings):
    assert probes.resolve(guest, f"ente-museum.{settings.docker.network}") == [settings.docker.museum_ip]


@pytest.mark.parametrize("attr", ["api_host", "web_host", "mail_host", "domain"])
def test_lab_names_resolve_through_dnsmasq(guest, settings, attr):
    assert probes.resolve(guest, getattr(settings, attr)), f"{attr} did not resolve"


def test_unknown_names_are_not_forwarded(guest, settings):
    res = guest.run(f"dig +time=2 +tries=1 @127.0.0.1 nosuchhost.{settings.domain}", sudo=False, check=False)
    assert "status: NXDOMAIN" in res.stdout
    res = guest.run("dig +time=2 +tries=1 @127.0.0.1 example.com", sudo=False, check=False)
    assert "ANSWER: 0" in res.stdout or "REFUSED" in res.stdout or "NXDOMAIN" in res.stdout


def test_guest_resolver_points_at_dnsmasq(guest, settings):
    first = guest.run("grep -m1 '^nameserver' /etc/resolv.conf", sudo=False).stdout.split()
    assert first == ["nameserver", "127.0.0.1"]
    assert guest.run(f"getent hosts ente-museum.{settings.docker.network}", sudo=False).stdout.split()[0] \
        == settings.docker.museum_ip
