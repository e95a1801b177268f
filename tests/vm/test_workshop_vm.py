"""Workshop mode in the VM (issue 17): an attendee types the Postfix step, and each
pitfall switch of issue 17 shows its failure, then the fix.

The Postfix step: ``lab.workshop.start postfix`` (here from the converged lab: the VM
tests bring the lab up plainly, so there is no workshop-base and start takes the
fallback path; workshop-base's own path is the last test), the corrected edits typed
as an attendee would (postconf -e, postconf -M/-P for master.cf, the hook's two sudo
lines, the sudoers files): check goes from "not done" to "done"; the article's
literal main.cf lines give "works, with pitfall tls_encrypt_main_cf"; AUTH without
TLS is "wrong" with its symptom; reset returns to the step; solve completes it.
Durations are written to <state dir>/logs/workshop-timings.json for
docs/workshop.md's table.

The switches: the six that touch different files share one converge of a variant of
the settings into a scratch build dir (as tests/vm/test_browser_vm.py does), each
symptom is shown, then the fix:
- missing_sudoers, tls_encrypt_main_cf, sasl_wrong_dir, wellknown_in_location,
  dashed_env_names, healthcheck_echo: the fix is the pristine snapshot, i.e. the lab
  converged with its own settings, proven so by a converge that changes nothing after
  the restore. The two whose fix needs Museum as the lab creates it are shown where
  that Museum is tested anyway: the hard-coded entry under the lab's names by
  tests/vm/test_museum_vm.py (on the Museum re-creation that module makes; a second
  one here would cost about a minute of CI), the lab's /ping check failing in an
  outage by tests/vm/test_stack_vm.py's PostgreSQL outage.
- compose_missing_quote: the converge refuses the file and keeps the live one.
The pristine snapshot is restored when a test fails half-way, or changed what a
converge does not give back.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import time
import uuid

import pytest
from labfix import MUSEUM_HEALTH_TEST, run_museum_health_check
from test_browser_vm import converge_with

from entelab import certs, converge, probes, stack, workshop, workshop_lab

pytestmark = pytest.mark.vm

TIMINGS: dict[str, float] = {}


@contextlib.contextmanager
def timed(name: str):
    t0 = time.monotonic()
    yield
    TIMINGS[name] = round(time.monotonic() - t0, 1)


@pytest.fixture(autouse=True)
def record_timings(paths):
    """After each test, what was timed so far: printed, and written for docs/workshop.md."""
    yield
    if TIMINGS:
        log = paths.logs / "workshop-timings.json"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(json.dumps(TIMINGS, indent=1))
        print(f"workshop timings (s): {TIMINGS}")


def verdicts(guest, paths, settings, *steps: str) -> dict[str, workshop.Verdict]:
    """What lab.workshop.check says (with steps: what ``--step`` says, their probes alone)."""
    f, ctx = workshop_lab.facts(guest, paths, settings, steps)
    return {v.step: v for v in workshop.check_all(f, ctx, steps)}


def attendee(guest, *commands: str) -> None:
    """Commands typed in the VM as root (lab.ssh, sudo -i)."""
    for cmd in commands:
        guest.run(cmd)


@contextlib.contextmanager
def back_to_pristine_on_failure(pristine, always: bool = False):
    ok = False
    try:
        yield
        ok = True
    finally:
        if always or not ok:
            pristine.restore()


# ------------------------------------------------------------------ the Postfix step
def corrected_edits(settings) -> list[str]:
    certdir = f"/etc/dehydrated/certs/{settings.domain}"
    user = settings.acme.user
    return [
        "postconf -e 'mynetworks_style = class' "
        f"'smtpd_tls_cert_file = {certdir}/fullchain.pem' 'smtpd_tls_key_file = {certdir}/privkey.pem' "
        "'smtpd_tls_security_level = may' 'smtpd_tls_auth_only = yes' "
        "'smtpd_recipient_restrictions = permit_sasl_authenticated,permit_mynetworks,reject_unauth_destination'",
        "postconf -M 'submission/inet=submission inet n - n - - smtpd'",
        "postconf -P 'submission/inet/syslog_name=postfix/submission' "
        "'submission/inet/smtpd_tls_security_level=encrypt' 'submission/inet/smtpd_sasl_auth_enable=yes'",
        # the article's two lines at the end of deploy_cert()
        "sed -i '/deploy_cert .*: done\"/i sudo /usr/sbin/apachectl -k graceful' /etc/dehydrated/hook.sh",
        "sed -i '/deploy_cert .*: done\"/i sudo /usr/sbin/postfix reload' /etc/dehydrated/hook.sh",
        f"printf '%s\\n' '{user} ALL=NOPASSWD: /usr/sbin/postfix reload' > /etc/sudoers.d/postfix_reload",
        f"printf '%s\\n' '{user} ALL=NOPASSWD: /usr/sbin/apachectl -k graceful' > /etc/sudoers.d/apache_reload",
        "chmod 0440 /etc/sudoers.d/postfix_reload /etc/sudoers.d/apache_reload",
        "visudo -c",
        "postfix check",
        "postfix reload",
    ]


@pytest.mark.budget(105)    # reference seconds (123 s at x1.19, 2026-12-01): tests/vm/conftest.py's time budget
def test_an_attendee_types_the_postfix_step(guest, paths, settings, pristine):
    with back_to_pristine_on_failure(pristine):
        with timed("start postfix"):
            workshop_lab.start(paths, settings, "postfix", lambda: guest)
        with timed("check"):
            v = verdicts(guest, paths, settings)
        assert v["postfix"].state == workshop.NOT_DONE, v["postfix"]
        assert v["postfix"].section == "Configuring Postfix"
        for name in workshop.steps_before("postfix"):
            if name != "administering":          # needs an account: settings.admins
                assert v[name].state == workshop.DONE, v[name]
        assert not guest.run("test -e /etc/sudoers.d/postfix_reload", check=False).ok

        with timed("type postfix (corrected)"):
            attendee(guest, *corrected_edits(settings))
        with timed("check --step postfix"):
            v = verdicts(guest, paths, settings, "postfix")
        assert v["postfix"].state == workshop.DONE, v["postfix"]

        # the article's literal main.cf lines: works, with the pitfall (and port 25 demands TLS)
        attendee(guest, "postconf -e 'smtpd_tls_security_level = encrypt' 'smtpd_sasl_auth_enable = yes' "
                        "'syslog_name = postfix/submission'", "postfix reload")
        f, ctx = workshop_lab.facts(guest, paths, settings, ["postfix"])
        post = workshop.BY_NAME["postfix"].check(f, ctx)
        assert post.state == workshop.PITFALL and "tls_encrypt_main_cf" in post.pitfalls, post
        assert "smtpd_tls_security_level = encrypt" in post.symptom
        assert f.smtp25["mail_plain"][0] == 530, f.smtp25

        # a wrong edit: AUTH without TLS on the submission port
        attendee(guest, "postconf -e 'smtpd_tls_security_level = may' 'smtpd_tls_auth_only = no' "
                        "'smtpd_sasl_auth_enable = no'",
                 "postconf -P 'submission/inet/smtpd_tls_security_level=none' "
                 "'submission/inet/smtpd_tls_auth_only=no'", "postfix reload")
        v = verdicts(guest, paths, settings, "postfix")
        assert v["postfix"].state == workshop.WRONG, v["postfix"]
        assert v["postfix"].symptom.startswith("AUTH offered before STARTTLS on 587"), v["postfix"]

        with timed("reset postfix"):
            workshop_lab.start(paths, settings, "postfix", lambda: guest)
        v = verdicts(guest, paths, settings, "postfix")
        assert v["postfix"].state == workshop.NOT_DONE, v["postfix"]

        with timed("solve postfix"):
            workshop_lab.solve(paths, settings, "postfix", guest)
        v = verdicts(guest, paths, settings, "postfix", "cors")
        assert v["postfix"].state == workshop.DONE, v["postfix"]
        assert v["cors"].state == workshop.DONE, v["cors"]
        # solved, the lab's files are the lab's again: a converge changes nothing
        assert converge.converge_with(guest, paths).ops == []


# ------------------------------------------------------------------ the switches: failure, then the fix
def post(guest, settings, path: str, body: dict) -> dict:
    # /users/ott answers once Museum has mailed the code (SMTP through socat to Postfix's
    # 587: a new smtpd, STARTTLS, AUTH): under TCG, right after a converge and a renewal,
    # that passed the probe's default 20 s once (2026-11-30); it took 5.5 s when idle
    return probes.https_get(guest, settings.api_host, path, method="POST", body=json.dumps(body),
                            headers={"X-Client-Package": "io.ente.auth.web",
                                     "Content-Type": "application/json"}, timeout=90)


def fresh(settings, what: str) -> str:
    return f"w-{what}-{uuid.uuid4().hex[:8]}@{settings.domain}"


HEALTH = "docker inspect --format '{{.State.Health.Status}}' ente-museum"


PROBE = "/var/lib/dehydrated/acme-challenges/entelab-probe"


def challenge_probe(guest, settings) -> dict:
    """What the CA's http-01 request for a token in the challenge directory gets: a
    file put there (answer "probe"), asked for on port 80, then removed."""
    guest.run(f"echo probe > {PROBE} && chmod 0644 {PROBE}")
    try:
        return probes.https_get(guest, settings.api_host, "/.well-known/acme-challenge/entelab-probe",
                                scheme="http", port=80)
    finally:
        guest.run(f"rm -f {PROBE}")


@pytest.mark.budget(175)    # reference seconds (180.1 s at x1.07-1.3, 2026-12-02): tests/vm/conftest.py's time budget
def test_six_pitfalls_on_one_converge_each_symptom_then_the_fix(guest, paths, settings, lab_secrets,
                                                               tmp_path, pristine):
    """Six switches that touch different files, on one converge (one Museum
    re-creation): each symptom; then the fix, which is the lab's own settings (the
    switches off): the pristine snapshot is the lab converged with them, and a converge
    of the lab's settings after the restore changes nothing, so the restored files are
    exactly what switching the six off converges to.

    missing_sudoers: a renewal writes a new certificate, the hook's `sudo -n` checks fail,
    Apache keeps serving the old one (Postfix hides it: a new smtpd reads the new file);
    fixed, the hook's deploy step reloads Apache. The renewal is the lab account's: its
    authorizations are still valid (rc.pebble: PEBBLE_AUTHZREUSE=100), so nothing is
    challenged and the well-known switch cannot stop it.
    tls_encrypt_main_cf: port 25 demands STARTTLS of every MTA (530); 587 as the article;
    fixed, a plain MAIL FROM on 25 is accepted.
    sasl_wrong_dir: smtpd.conf where Postfix does not read it: 535 on the right password
    while saslauthd itself says OK; fixed, 235.
    wellknown_in_location: the challenge path is proxied, so the CA's request for the
    token is answered by the proxied app and the issuance fails (for the API host alone,
    by a new account: see issuance_for_the_api_host_by_a_new_account); fixed, Apache
    serves the challenge directory at that URL again.
    dashed_env_names (issue 13): the article's dashed name for the hard-coded entry is
    ignored: Museum makes a random code and sends it by mail (which sasl_wrong_dir makes
    fail: an honoured entry is answered without any mail), and the fixed code is refused
    as wrong (401: a code is active, not that one). Its fix, the same entry under the
    lab's names honoured, is test_museum_vm.py::test_hardcoded_entry_registers_without_mail
    (on that module's Museum re-creation: a second one here would cost a minute).
    healthcheck_echo: Museum's configured check (`echo 1`, what dockerd runs every 10 s)
    passes while Museum cannot answer (PostgreSQL stopped), and Museum stays "healthy".
    Its fix, the lab's /ping check failing at once in the same outage, is
    test_stack_vm.py::test_ping_follows_postgres_down_and_back."""
    from test_renewal import forced, redeploy
    conf = certs.dehydrated_conf(settings)
    user, password = settings.smtp.username, lab_secrets.sasl_password
    code = "246810"
    with back_to_pristine_on_failure(pristine):
        dashed = fresh(settings, "dashed")
        with timed("six pitfalls: the converge that switches them on"):
            converge_with(guest, paths, tmp_path / "on",
                          ["pitfalls.tls_encrypt_main_cf=true",
                           "pitfalls.missing_sudoers=true", "pitfalls.dashed_env_names=true",
                           "pitfalls.healthcheck_echo=true", "pitfalls.wellknown_in_location=true",
                           "pitfalls.sasl_wrong_dir=true", f'ott=["{dashed},{code}"]'])
        # missing_sudoers (first: no smtpd on 587 has started since the converge's reload,
        # so the one this check starts is new and reads the new file)
        served = certs.served_serial(guest, settings.api_host, 443)
        with timed("six pitfalls: a forced renewal (missing_sudoers)"):
            res = forced(guest, settings)
        assert res.exited != 0 and "check FAILED: postfix check" in res.stdout, res.stdout
        new = certs.file_serial(guest, conf)
        assert new != served                                                     # a new certificate ...
        assert certs.served_serial(guest, settings.api_host, 443) == served       # ... Apache keeps the old
        # Postfix hides it: a new smtpd process reads the new file without any reload
        assert certs.served_serial(guest, settings.mail_host, 587, starttls=True) == new

        # tls_encrypt_main_cf and sasl_wrong_dir: one round trip of the workshop's probes
        with timed("six pitfalls: the Postfix probes"):
            f, _ = workshop_lab.facts(guest, paths, settings, ["postfix"])
        assert f.smtp25["mail_plain"][0] == 530, f.smtp25                 # "Must issue a STARTTLS"
        assert f.smtp587["auth_before_tls"][0] == 530, f.smtp587          # 587 as the article shows
        assert f.smtp587["login"][0] == 535, f.smtp587                     # the right password refused
        assert not guest.run("test -L /etc/postfix/sasl/smtpd.conf", check=False).ok
        ok = guest.run(f"testsaslauthd -s smtp -u {user} -p {shlex.quote(password)}", check=False).stdout
        assert ok.strip() == '0: OK "Success."'                           # saslauthd itself says OK

        # wellknown_in_location
        r = challenge_probe(guest, settings)
        assert not (r["status"] == 200 and r["body"].strip() == "probe"), r   # proxied, not served
        with timed("six pitfalls: a failing issuance by a new ACME account (wellknown_in_location)"):
            res = issuance_for_the_api_host_by_a_new_account(guest, settings)
        assert res.exited != 0, res.stdout
        assert "challenge is invalid" in res.stdout.lower(), res.stdout[-2000:]
        assert f"authorization for {settings.api_host}" in res.stdout, res.stdout[-2000:]
        # what the CA asked for (the token's URL on port 80) was answered by the proxied app
        assert "acme:error:unauthorized" in res.stdout, res.stdout[-2000:]
        assert f"http://{settings.api_host}:80/.well-known/acme-challenge/" in res.stdout, res.stdout[-2000:]

        # dashed names: silently ignored
        with timed("six pitfalls: Museum's checks (dashed_env_names, healthcheck_echo)"):
            stack.wait_healthy(guest, timeout=300)
            env = guest.run("docker exec ente-museum env").stdout
            assert "ENTE_INTERNAL_HARDCODED-OTT_EMAILS=" in env, env           # the article's name
            sent = post(guest, settings, "/users/ott", {"email": dashed, "purpose": "signup"})
            log = guest.run("docker logs ente-museum 2>&1").stdout             # re-created by the converge
            assert "returning hardcoded ott" not in log.lower()                 # silently ignored: ...
            assert sent["status"] == 500, sent                                  # ... a code to mail, which fails
            assert "failed to send mail" in log, log[-2000:]                  # (SMTP AUTH: sasl_wrong_dir)
            assert post(guest, settings, "/users/verify-email", {"email": dashed, "ott": code})["status"] == 401
            # echo 1: the check dockerd runs passes while Museum cannot answer
            assert json.loads(guest.run(MUSEUM_HEALTH_TEST).stdout) == ["CMD", "echo", "1"]
            guest.run("docker stop ente-postgres")
            assert probes.https_get(guest, settings.api_host, "/ping")["status"] != 200   # Museum cannot answer
            assert run_museum_health_check(guest) == 0                         # dockerd's check passes ...
            assert guest.run(HEALTH).stdout.strip() == "healthy"               # ... so it stays "healthy"

        # the fix: the switches off, i.e. the lab's own settings, as converged in the
        # pristine snapshot (PostgreSQL running, the certificate of lab.up)
        with timed("six pitfalls: the fix (the pristine snapshot restored)"):
            pristine.restore()
        with timed("six pitfalls: the fix's checks"):
            assert converge.converge_with(guest, paths).ops == []          # = switching the six off
            res = redeploy(guest, settings)              # the hook's deploy step, as a renewal runs it
            assert res.exited == 0 and "reloaded: apache" in res.stdout, res.stdout
            f, _ = workshop_lab.facts(guest, paths, settings, ["postfix"])
            assert f.smtp25["mail_plain"][0] == 250, f.smtp25
            assert f.smtp587["auth_before_tls"][0] == 530, f.smtp587       # 587 unchanged
            assert f.smtp587["login"][0] == 235, f.smtp587
            r = challenge_probe(guest, settings)
            assert r["status"] == 200 and r["body"].strip() == "probe", r # what the CA's request gets



def issuance_for_the_api_host_by_a_new_account(guest, settings):
    """An issuance for the API host's name alone, by a new ACME account (its key made
    and registered in the same dehydrated run: ``--accept-terms`` with no key in the
    account directory), into a scratch certificate directory: every name is challenged
    only by a new account (rc.pebble sets PEBBLE_AUTHZREUSE=100: the lab's own account's
    valid authorizations are reused, so its renewal would not be challenged at all), and
    one name is enough to show the CA's request being proxied (under TCG each
    authorization costs seconds). The lab's certificate, account and certs/ are not
    touched."""
    conf = certs.dehydrated_conf(settings)
    tmp = "/var/lib/dehydrated/entelab-test-account"
    guest.run(f"install -d -o {conf.user} -m 0700 {tmp} && "
              f"sed 's|^ACCOUNTDIR=.*|ACCOUNTDIR=\"{tmp}/accounts\"|' {conf.config} > {tmp}/config && "
              f"printf '%s\\n' 'KEYSIZE=\"2048\"' 'CERTDIR=\"{tmp}/certs\"' >> {tmp}/config && "
              f"chown {conf.user} {tmp}/config")
    try:
        return guest.run(f"sudo -n -u {conf.user} -H dehydrated -f {tmp}/config --cron --force "
                         f"--accept-terms --domain {settings.api_host} 2>&1", check=False)
    finally:
        guest.run(f"rm -rf {tmp}")


def test_compose_missing_quote_is_refused_and_the_live_file_kept(guest, paths, settings, tmp_path, pristine):
    compose = f"{settings.paths.compose_dir}/docker-compose.yml"
    before = guest.run(f"sha256sum {compose}").stdout
    with back_to_pristine_on_failure(pristine):
        from dataclasses import replace

        from entelab.render import render_lab
        from entelab.settings import load_settings
        variant_settings, _ = load_settings(paths.root, ["pitfalls.compose_missing_quote=true"])
        variant = replace(paths, build=tmp_path / "build")
        result = render_lab(variant, variant_settings, quiet=True)
        assert any("compose_missing_quote" in w for w in result.warnings)      # render says so
        res = converge.converge_with(guest, variant)
        assert compose in res.report.get("refused", {}), res.report
        assert "yaml" in res.report["refused"][compose].lower() or "could not find" in \
            res.report["refused"][compose].lower(), res.report["refused"][compose]
        assert guest.run(f"sha256sum {compose}").stdout == before                 # live file kept
        assert converge.converge_with(guest, paths).ok                             # the fix
        assert guest.run(f"sha256sum {compose}").stdout == before


# ------------------------------------------------------------------ lab.up --workshop's base (last: it is forgotten)
BASE_DONE = ["cors"]          # nothing to type unless a CORS pitfall switch is on
@pytest.mark.budget(124)
def test_workshop_base_is_taken_and_start_restores_it(guest, paths, settings, pristine):
    """What ``lab.up --workshop`` does after the boot (workshop_lab.make_base; here on the
    converged lab, CI's one VM): certificates issued, then every step left to do, saved as
    workshop-base. ``start`` restores it (nothing serves https yet: the certificate file is
    verified against the republished root instead), the first step is not done, and
    solving it serves that certificate."""
    from entelab import snapshot
    conf = certs.dehydrated_conf(settings)
    try:
        with timed("make workshop-base (lab.up --workshop after the boot)"):
            workshop_lab.make_base(guest, paths, settings)
        assert workshop.BASE_SNAPSHOT in snapshot.names(paths)
        with timed("start apache_proxy (restore workshop-base)"):
            workshop_lab.start(paths, settings, "apache_proxy", lambda: guest)
        v = verdicts(guest, paths, settings)
        done = sorted(n for n, x in v.items() if x.state == workshop.DONE)
        assert done == BASE_DONE, {n: (x.state, x.symptom) for n, x in v.items()}
        assert not guest.run(f"docker network inspect {settings.docker.network}", check=False).ok
        assert not guest.run(f"test -d {settings.paths.compose_dir}", check=False).ok
        assert certs.served_serial(guest, settings.api_host, 443) == "-"        # no TLS vhost yet
        workshop_lab.solve(paths, settings, "apache_proxy", guest)
        assert verdicts(guest, paths, settings, "apache_proxy")["apache_proxy"].state == workshop.DONE
        assert certs.served_serial(guest, settings.api_host, 443) == certs.file_serial(guest, conf)
    finally:
        if workshop.BASE_SNAPSHOT in snapshot.names(paths):
            snapshot.forget(paths, workshop.BASE_SNAPSHOT)
        pristine.restore()
