"""Converge against the real VM (issue 4): modes/owners, idempotence, refusal."""

import pytest
from labfix import variant_build  # noqa: F401

from entelab import converge, probes
from entelab.render import load_manifest

pytestmark = pytest.mark.vm


def test_converged_files_have_manifest_modes_and_owners(guest, paths):
    converge.converge_with(guest, paths)   # lab.up converged already; this settles any drift
    entries = [e for e in load_manifest(paths) if e.kind == "file" and e.merge == "whole"]
    assert entries, "the manifest lists whole files"
    out = guest.run("stat -c '%n %a %U %G' " + " ".join(e.path for e in entries)).stdout
    seen = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    for e in entries:
        assert seen[e.path] == [format(int(e.mode, 8), "o"), e.owner, e.group], e.path


def test_second_converge_changes_nothing_in_one_round_trip(guest, paths):
    converge.converge_with(guest, paths)
    result = converge.converge_with(guest, paths)
    assert result.ops == []
    assert result.report == {}
    assert result.round_trips == 1


def test_mode_drift_is_repaired_without_reload(guest, paths, settings):
    env = f"{settings.paths.compose_dir}/.env"
    guest.run(f"chmod 0644 {env}")
    result = converge.converge_with(guest, paths)
    assert [(o.path, o.action) for o in result.ops] == [(env, "attrs")]
    assert result.report["reloaded"] == []
    assert guest.run(f"stat -c %a {env}").stdout.strip() == "600"


def _apache_answers(guest) -> bool:
    return guest.run("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1/.well-known/acme-challenge/none",
              check=False).stdout.strip() in ("404", "200", "403")


@pytest.mark.parametrize("kind", ["apache", "postfix"])
def test_broken_file_refused_live_kept_service_answers(guest, paths, settings, tmp_path, kind):
    entries = load_manifest(paths)
    target = next(e for e in entries if e.validate == kind and e.merge == "whole")
    before = guest.run(f"sha256sum {target.path}").stdout.split()[0]
    breaker = {"apache": lambda t: t + "\nThisIsNotAnApacheDirective on\n",
               "postfix": lambda t: t + "\nthis line is not a parameter\n"}[kind]
    broken = variant_build(paths, tmp_path / "broken", target.path, breaker)
    result = converge.converge_with(guest, broken)
    assert target.path in result.report["refused"]
    assert {"apache": "httpd", "postfix": "postfix"}[kind] not in result.report["reloaded"]
    assert guest.run(f"sha256sum {target.path}").stdout.split()[0] == before
    if kind == "apache":
        assert _apache_answers(guest)
    else:
        assert "STARTTLS" in probes.smtp_session(guest, settings.mail_host, starttls=False)["ehlo_plain"]
    # a fixed file (a harmless comment added) goes in, and reloads its service
    fixed = variant_build(paths, tmp_path / "fixed", target.path, lambda t: t + "\n# rehearsal comment\n")
    result = converge.converge_with(guest, fixed)
    assert result.report["refused"] == {}
    assert {"apache": "httpd", "postfix": "postfix"}[kind] in result.report["reloaded"]
    assert "# rehearsal comment" in guest.run(f"tail -2 {target.path}").stdout
    # and back to the lab's own file
    result = converge.converge_with(guest, paths)
    assert result.report["refused"] == {}
    assert guest.run(f"sha256sum {target.path}").stdout.split()[0] == before
