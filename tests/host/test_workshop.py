"""Workshop mode (issue 17) as data: the steps in the article's order, which manifest
entries each owns, the one converge that brings the VM to a step's start (starting
states checked by the real postfix, bash and visudo), and every check: facts in ->
verdict out, from "converged lab: every step done" to each step's not done, wrong
(with its symptom) and works-with-pitfall."""
# ruff: noqa: E501  (the CASES table: one case per line pair)

from __future__ import annotations

import dataclasses
import py_compile
import subprocess
from pathlib import Path

import conftest
import pytest
from conftest import load, need

from entelab import render, task_bodies, workshop
from entelab.errors import BadInput
from entelab.workshop import DONE, NOT_DONE, PITFALL, WRONG, Facts

REPO = Path(__file__).resolve().parents[2]
ADMIN = 5551234567654321


@pytest.fixture(scope="module")
def lab(lab_secrets):
    settings = load([f"admins=[{ADMIN}]"])
    rendered = render.render_tree(settings, lab_secrets, "t")
    return settings, rendered, workshop.context(settings, rendered)


def converged_facts(rendered, settings, lab_secrets) -> Facts:
    """What a converged lab shows: the rendered files in place, every probe answering."""
    f = Facts()
    for e, data in rendered:
        if e.kind == "file":
            text = data.decode()
            if e.merge == "block":      # a shared file: the distribution's lines around the block
                text = "127.0.0.1 localhost\n" + text if e.path == "/etc/hosts" else text
            f.files[e.path] = text
        elif e.kind == "link":
            f.links[e.path] = e.target
        elif e.kind in ("dir", "datadir"):
            f.dirs[e.path] = True
    f.postconf = {"mynetworks_style": "class", "smtpd_tls_security_level": "may"}
    f.master = ["smtp/inet", "submission/inet", "pickup/unix"]
    f.smtp587 = {"ehlo_plain": "PIPELINING\nSIZE 10240000\nSTARTTLS\n8BITMIME",
                 "auth_before_tls": [530, "5.7.0 Must issue a STARTTLS command first"],
                 "ehlo_tls": "PIPELINING\nAUTH PLAIN LOGIN\n8BITMIME", "login": [235, "ok"]}
    f.users = {settings.smtp.username: True}
    f.saslauthd = {"running": True, "test": '0: OK "Success."'}
    d = settings.docker
    f.network = {"subnet": d.subnet, "gateway": d.gateway, "ip_range": d.ip_range}
    f.containers = {n: {"state": "running", "health": "healthy" if n in ("ente-museum", "ente-postgres") else "",
                        "ip": d.museum_ip if n == "ente-museum" else ""} for n in workshop.STACK}
    f.compose_config = {"ok": True, "output": ""}
    f.apache_configtest = {"ok": True, "output": "Syntax OK"}
    f.https = {"api_ping": {"status": 200, "body": '{"message":"pong"}', "acao": []},
               "api_preflight": {"status": 204, "body": "", "acao": [f"https://{settings.web_host}"]}}
    f.dns = {f"ente-museum.{d.network}": [d.museum_ip]}
    f.services = {"dnsmasq": True, "saslauthd": True, "postfix": True}
    return f


@pytest.fixture
def facts(lab, lab_secrets) -> Facts:
    settings, rendered, _ = lab
    return converged_facts(rendered, settings, lab_secrets)


def verdict(facts, lab, step) -> workshop.Verdict:
    return workshop.BY_NAME[step].check(facts, lab[2])


# ------------------------------------------------------------------ the steps
def test_steps_in_the_articles_order_with_real_sections():
    assert workshop.STEP_NAMES == (
        "apache_proxy", "docker_network", "directories", "web_image", "env_file", "compose_files",
        "run_server", "administering", "museum_ip", "name_mapping", "dnsmasq", "sasl", "mail_user",
        "postfix", "cors")
    sections = {ln.strip() for ln in (REPO / "docs/article-sections.txt").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")}
    for step in workshop.STEPS:
        assert step.section in sections, step.name
        assert step.title and step.types


@pytest.mark.parametrize("name", ["nope", "", "POSTFIX", "x" * 300])
def test_unknown_step_lists_the_known_ones(name, capsys):
    with pytest.raises(BadInput) as err:
        workshop.get(name)
    assert "known, in the article's order: apache_proxy, docker_network" in err.value.message
    assert err.value.message.endswith("postfix, cors")
    with pytest.raises(SystemExit) as ex:
        task_bodies.run(task_bodies.workshop_solve, step=name)
    assert ex.value.code == 2
    assert "Traceback" not in capsys.readouterr().out


def test_ownership_is_derived_from_the_manifest(lab):
    _, rendered, _ = lab
    owners = {e.path: workshop.owner(e) for e, _ in rendered}
    for e, _ in rendered:
        assert sum(step.owns(e) for step in workshop.STEPS) <= 1, e.path
    plumbing = sorted(p for p, o in owners.items() if o is None)
    assert plumbing == sorted(["/etc/apache2/sites-enabled/ente-http.conf", "/etc/dehydrated/config",
                               "/etc/dehydrated/domains.txt", "/etc/ente-lab/acme.conf", "/etc/dnsmasq.conf",
                               "/etc/postfix/ente-lab-catchall.regexp", "/etc/ente-lab/users.conf"])
    assert owners["/etc/postfix/main.cf"] == owners["/etc/dehydrated/hook.sh"] == "postfix"
    assert owners["/etc/sudoers.d/postfix_reload"] == owners["/etc/sudoers.d/apache_reload"] == "postfix"
    assert owners["/etc/postfix/sasl/smtpd.conf"] == "sasl"
    assert owners["/usr/local/docker-ente/.env"] == "env_file"
    assert owners["/etc/ente-lab/stack.conf"] == "docker_network"
    assert owners["/opt/dockerfiles/ente/postgres-data"] == "directories"


# ------------------------------------------------------------------ plans
def test_every_step_done_is_the_lab_itself(lab):
    settings, rendered, _ = lab
    plan = workshop.plan_for(rendered, workshop.STEP_NAMES, settings)
    assert [dataclasses.asdict(e) for e in plan.entries] == [dataclasses.asdict(e) for e, _ in rendered]
    assert plan.texts == {e.path: d for e, d in rendered}
    assert plan.undo == [] and plan.force == frozenset({workshop.USERS_CONF})
    d = settings.docker
    assert plan.after == [
        f"docker network inspect {d.network} >/dev/null 2>&1 || docker network create --driver=bridge "
        f"--subnet={d.subnet} --ip-range={d.ip_range} --gateway={d.gateway} {d.network}",
        "/etc/rc.d/rc.ente status >/dev/null 2>&1 || /etc/rc.d/rc.ente start"]


def test_start_of_the_postfix_step(lab, tmp_path):
    settings, rendered, _ = lab
    plan = workshop.plan_for(rendered, workshop.steps_before("postfix"), settings)
    by = {e.path: e for e in plan.entries}
    texts = {e.path: d for e, d in rendered}
    for path in ("/etc/sasl2/smtpd.conf", "/usr/local/docker-ente/.env", "/etc/hosts"):
        assert plan.texts[path] == texts[path] and by[path].kind == "file"
    assert by["/etc/postfix/sasl/smtpd.conf"].kind == "link"
    for path in ("/etc/sudoers.d/postfix_reload", "/etc/sudoers.d/apache_reload"):
        assert by[path].kind == "absent"
    assert plan.undo == [] and plan.force == frozenset({workshop.USERS_CONF})
    main = plan.texts["/etc/postfix/main.cf"].decode()
    assert "\nsmtpd_tls_cert_file=/etc/ssl/certs/ssl-cert-snakeoil.pem\n" in main
    assert "\nsmtpd_tls_security_level=may\n" in main
    assert "\nmynetworks_style" not in main and "\nsmtpd_recipient_restrictions" not in main
    assert "default_transport = error:" in main          # the lab's isolation stays
    assert by["/etc/postfix/main.cf"].sha256 == workshop._sha(plan.texts["/etc/postfix/main.cf"])
    master = plan.texts["/etc/postfix/master.cf"].decode()
    assert workshop.DEBIAN_SUBMISSION in master and "\nsubmission inet" not in master
    hook = plan.texts["/etc/dehydrated/hook.sh"].decode()
    assert "postfix reload" not in hook.replace("# ... and uses 'sudo' to reload the Postfix", "")
    assert "deploy_cert() {" in hook
    # the real programs read the starting state
    d = tmp_path / "postfix"
    d.mkdir()
    (d / "main.cf").write_bytes(plan.texts["/etc/postfix/main.cf"])
    (d / "master.cf").write_bytes(plan.texts["/etc/postfix/master.cf"])
    (d / "ente-lab-catchall.regexp").write_bytes(plan.texts["/etc/postfix/ente-lab-catchall.regexp"])
    res = subprocess.run([need("postfix"), "-c", str(d), "check"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    services = subprocess.run([need("postconf"), "-c", str(d), "-M"], capture_output=True, text=True).stdout
    assert "submission" not in services and services.startswith("smtp")
    (tmp_path / "hook.sh").write_bytes(plan.texts["/etc/dehydrated/hook.sh"])
    assert subprocess.run(["bash", "-n", str(tmp_path / "hook.sh")]).returncode == 0


def test_start_of_the_first_step_leaves_only_plumbing(lab):
    settings, rendered, _ = lab
    plan = workshop.plan_for(rendered, [], settings)
    kinds = {e.path: e.kind for e in plan.entries}
    assert kinds["/etc/apache2/sites-enabled/ente-api.conf"] == "absent"
    assert kinds["/etc/apache2/sites-enabled/ente-http.conf"] == "file"
    assert kinds["/usr/local/docker-ente/docker-compose.yml"] == "absent"
    assert "/opt/dockerfiles/ente" not in kinds                     # directories: left alone
    assert plan.texts["/etc/hosts"] == workshop.EMPTY_BLOCK.encode()
    dirs = [e.path for e, _ in rendered if e.service == "ente" and e.kind in ("dir", "datadir")]
    deepest_first = sorted(dirs, key=lambda p: (-p.count("/"), p))
    assert "/opt/dockerfiles/ente" in dirs and len(dirs) > 2
    assert plan.undo == ["id -u verification >/dev/null 2>&1 && userdel -r verification >/dev/null 2>&1; true",
                         "docker ps -aq --filter label=com.docker.compose.project=ente | "
                         "xargs -r docker rm -f >/dev/null 2>&1; true",
                         f"for d in {' '.join(deepest_first)}; do rmdir \"$d\" 2>/dev/null; done; true",
                         "docker network rm ente.lan >/dev/null 2>&1 || true"]
    assert plan.force == frozenset()


def test_a_plan_with_a_pitfall_switched_on_keeps_it(lab_secrets):
    settings = load(["pitfalls.tls_encrypt_main_cf=true"])
    rendered = render.render_tree(settings, lab_secrets, "t")
    plan = workshop.plan_for(rendered, workshop.STEP_NAMES, settings)
    assert b"smtpd_tls_security_level = encrypt" in plan.texts["/etc/postfix/main.cf"]


def test_write_tree_holds_what_converge_bundles(lab, tmp_path):
    from entelab import converge
    settings, rendered, _ = lab
    plan = workshop.plan_for(rendered, workshop.steps_before("sasl"), settings)
    workshop.write_tree(plan, tmp_path)
    ops = converge.plan(plan.entries, {})
    data = converge.bundle(ops, tmp_path)
    assert data and (tmp_path / "etc/postfix/main.cf").read_bytes() == plan.texts["/etc/postfix/main.cf"]
    removes = {o.path for o in ops if o.action.value == "remove"}
    assert removes == set()                      # nothing there to remove (empty facts)
    ops = converge.plan(plan.entries, {"/etc/sasl2/smtpd.conf": {"type": "file", "sha256": "x"}})
    assert "/etc/sasl2/smtpd.conf" in {o.path for o in ops if o.action.value == "remove"}


# ------------------------------------------------------------------ checks: facts in, verdicts out
def test_converged_lab_every_step_done(facts, lab):
    verdicts = workshop.check_all(facts, lab[2])
    assert [(v.step, v.state, v.symptom) for v in verdicts] == [(n, DONE, "") for n in workshop.STEP_NAMES]
    assert all(v.section == workshop.SECTION[v.step] for v in verdicts)


def test_nothing_done_yet(lab):
    verdicts = {v.step: v for v in workshop.check_all(Facts(), lab[2])}
    for name in ("apache_proxy", "docker_network", "directories", "web_image", "env_file",
                 "compose_files", "run_server", "administering", "museum_ip", "name_mapping",
                 "dnsmasq", "sasl", "mail_user", "postfix"):
        assert verdicts[name].state == NOT_DONE, verdicts[name]
        assert verdicts[name].symptom
    assert verdicts["postfix"].symptom == "no submission service in master.cf: nothing listens on 587"


def _change(facts: Facts, path: str, fn) -> Facts:
    facts.files[path] = fn(facts.files[path])
    return facts


# step -> [(a change of the converged facts, expected state, text in the symptom, pitfalls)]
API = "/etc/apache2/sites-enabled/ente-api.conf"
D = "/usr/local/docker-ente"
CASES = {
    "apache_proxy": [
        (lambda f: _change(f, API, lambda t: t.replace("127.0.0.1:8180", "127.0.0.1:8080")), WRONG,
         "proxies to 127.0.0.1:8080; the backend listens on 127.0.0.1:8180", ()),
        (lambda f: _change(f, API, lambda t: t.replace('<Location "/.well-known/acme-challenge/">\n    ProxyPass !\n  </Location>',
                                                       '').replace("<Proxy *>", 'ProxyPass "/.well-known/" "!"\n  <Proxy *>')),
         PITFALL, 'ProxyPass "/.well-known/" "!"', ("wellknown_in_location",)),
        (lambda f: dataclasses.replace(f, apache_configtest={"ok": False, "output": "AH00526: Syntax error on line 3"}),
         WRONG, "apachectl configtest fails: AH00526", ()),
    ],
    "docker_network": [
        (lambda f: dataclasses.replace(f, network={"subnet": "172.22.0.0/16", "gateway": "172.22.0.1"}),
         WRONG, "ente.lan has subnet 172.22.0.0/16", ()),
    ],
    "directories": [
        (lambda f: dataclasses.replace(f, dirs={**f.dirs, "/opt/dockerfiles/ente/minio-data": False}),
         NOT_DONE, "missing: /opt/dockerfiles/ente/minio-data", ()),
    ],
    "web_image": [
        (lambda f: _change(f, f"{D}/Dockerfile.auth", lambda t: t.replace("https://ente.darkstar.lan", "http://localhost:8080")),
         WRONG, "bakes http://localhost:8080 into the web app", ()),
    ],
    "env_file": [
        (lambda f: _change(f, f"{D}/.env", lambda t: t.replace("ENTE_JWT_SECRET=", "#")), NOT_DONE,
         "lacks ENTE_JWT_SECRET", ()),
        (lambda f: _change(f, f"{D}/.env", lambda t: t + "ENTE_INTERNAL_HARDCODED-OTT_EMAILS=x\n"), PITFALL,
         "ENTE_INTERNAL_HARDCODED-OTT_EMAILS", ("dashed_env_names",)),
    ],
    "compose_files": [
        (lambda f: _change(f, f"{D}/docker-compose.yml", lambda t: t.replace('"${ENTE_MINIO_SECRET}"]', '${ENTE_MINIO_SECRET}"]')),
         WRONG, "docker-compose refuses", ("compose_missing_quote",)),
        (lambda f: _change(f, f"{D}/docker-compose.yml", lambda t: t.replace(
            "ENTE_INTERNAL_HARDCODED_OTT_EMAILS", "ENTE_INTERNAL_HARDCODED-OTT_EMAILS")), PITFALL,
         "ENTE_INTERNAL_HARDCODED-OTT_EMAILS", ("dashed_env_names",)),
        (lambda f: _change(f, f"{D}/docker-compose.yml", lambda t: t.replace(
            'test: ["CMD-SHELL", "wget', 'test: [ "CMD", "echo", "1" ]\n      #')), PITFALL,
         'test: [ "CMD", "echo", "1" ]', ("healthcheck_echo",)),
        (lambda f: dataclasses.replace(f, compose_config={"ok": False, "output": "ERROR: Network ente.lan declared as external, but could not be found"}),
         WRONG, "Network ente.lan declared as external", ()),
    ],
    "run_server": [
        (lambda f: dataclasses.replace(f, containers={**f.containers, "ente-museum": {"state": "running", "health": "unhealthy", "ip": ""}}),
         WRONG, "ente-museum: running unhealthy", ()),
        (lambda f: dataclasses.replace(f, https={**f.https, "api_ping": {"status": 502, "body": ""}}),
         WRONG, "/ping answers 502 through Apache", ()),
    ],
    "administering": [
        (lambda f: _change(f, f"{D}/museum.yaml", lambda t: t.replace(f"- {ADMIN}", "").replace("admins:\n", "admins: []\n")),
         NOT_DONE, "no account id in museum.yaml internal.admins", ()),
    ],
    "museum_ip": [
        (lambda f: dataclasses.replace(f, containers={**f.containers, "ente-museum": {"state": "running", "health": "healthy", "ip": "172.21.0.130"}}),
         WRONG, "ente-museum has 172.21.0.130, not 172.21.0.5", ()),
    ],
    "name_mapping": [
        (lambda f: _change(f, "/etc/hosts", lambda t: t.replace("172.21.0.5    ente-museum", "172.21.0.6    ente-museum")),
         WRONG, "/etc/hosts maps ente-museum to 172.21.0.6", ()),
        (lambda f: _change(f, "/etc/networks", lambda t: t.replace("ente.lan   172.21", "")), NOT_DONE,
         "/etc/networks lacks 'ente.lan   172.21'", ()),
    ],
    "dnsmasq": [
        (lambda f: dataclasses.replace(f, dns={}), WRONG, "answers NXDOMAIN, not 172.21.0.5", ()),
        (lambda f: dataclasses.replace(f, services={"dnsmasq": False}), NOT_DONE, "dnsmasq is not running", ()),
    ],
    "sasl": [
        (lambda f: _change(f, "/etc/sasl2/smtpd.conf", lambda t: t.replace("PLAIN LOGIN", "PLAIN LOGIN CRAM-MD5")),
         WRONG, "mech_list is PLAIN LOGIN CRAM-MD5", ()),
        (lambda f: dataclasses.replace(f, links={}), PITFALL, "no /etc/postfix/sasl/smtpd.conf", ("sasl_wrong_dir",)),
        (lambda f: dataclasses.replace(f, saslauthd={"running": False}), NOT_DONE, "saslauthd is not running", ()),
    ],
    "mail_user": [
        (lambda f: dataclasses.replace(f, users={"verification": False}), NOT_DONE, "no system user verification", ()),
        (lambda f: dataclasses.replace(f, saslauthd={"running": True, "test": '0: NO "authentication failed"'}),
         WRONG, 'answers 0: NO "authentication failed": set that password with passwd verification', ()),
    ],
    "postfix": [
        # the wrong edit: AUTH without TLS (smtpd_tls_auth_only=no, no TLS on submission)
        (lambda f: dataclasses.replace(f, smtp587={"ehlo_plain": "PIPELINING\nAUTH PLAIN LOGIN\nSTARTTLS",
                                                   "auth_before_tls": [334, "VXNlcm5hbWU6"]}),
         WRONG, "AUTH offered before STARTTLS on 587", ()),
        (lambda f: dataclasses.replace(f, smtp587={**f.smtp587, "ehlo_plain": "PIPELINING\n8BITMIME"}),
         WRONG, "no STARTTLS on 587", ()),
        (lambda f: dataclasses.replace(f, smtp587={**f.smtp587, "ehlo_tls": "PIPELINING"}),
         WRONG, "no AUTH after STARTTLS on 587", ()),
        (lambda f: dataclasses.replace(f, links={}, smtp587={**f.smtp587, "login": [535, "5.7.8 Error: authentication failed"]}),
         WRONG, "535 on the right password for verification", ("sasl_wrong_dir",)),
        (lambda f: dataclasses.replace(f, smtp587={"error": "[Errno 111] Connection refused"}),
         WRONG, "port 587: [Errno 111] Connection refused", ()),
        (lambda f: dataclasses.replace(f, postconf={}), NOT_DONE, "main.cf lacks mynetworks_style = class", ()),
        (lambda f: _change(f, "/etc/dehydrated/hook.sh", workshop.start_hook), NOT_DONE,
         "deploy_cert does not reload Postfix", ()),
        # the article's literal main.cf lines
        (lambda f: _change(f, "/etc/postfix/main.cf", lambda t: t.replace(
            "smtpd_tls_security_level = may", "smtpd_tls_security_level = encrypt")),
         PITFALL, "smtpd_tls_security_level = encrypt", ("tls_encrypt_main_cf",)),
        # the article's sudoers line alone, with the article's hook lines
        (lambda f: _change(_change(f, "/etc/sudoers.d/apache_reload", lambda t: "# none\n"), "/etc/dehydrated/hook.sh",
                           lambda t: t), PITFALL, "/usr/sbin/apachectl -k graceful", ("missing_sudoers",)),
        (lambda f: _change(f, "/etc/postfix/main.cf", lambda t: t.replace(
            "/etc/dehydrated/certs/darkstar.lan/fullchain.pem", "/etc/dehydrated/certs/enteauth.darkstar.lan/fullchain.pem")),
         WRONG, "smtp.host is smtp.darkstar.lan: Museum's STARTTLS check will fail", ("mail_cert_mismatch",)),
    ],
    "cors": [
        (lambda f: _change(f, API, lambda t: t.replace("</VirtualHost>", 'Header always set Access-Control-Allow-Origin "*"\n</VirtualHost>')),
         WRONG, "the browser's signup fails with 'Network Error'", ("cors_article_headers",)),
        (lambda f: dataclasses.replace(f, https={**f.https, "api_preflight": {"status": 204, "acao": ["*", "https://x"]}}),
         WRONG, "carries 2 Access-Control-Allow-Origin values", ()),
    ],
}


@pytest.mark.parametrize("step,i", [(s, i) for s, cases in CASES.items() for i in range(len(cases))])
def test_check_cases(step, i, facts, lab):
    change, state, text, pitfalls_ = CASES[step][i]
    v = verdict(change(facts), lab, step)
    assert (v.state, v.pitfalls) == (state, pitfalls_), v
    assert text in v.symptom, v.symptom
    assert v.section == workshop.BY_NAME[step].section


class Unread(dict):
    """In place of a probe's Facts field that a step's check does not run: any read fails."""

    def __init__(self, field: str):
        super().__init__()
        self.field = field

    def _read(self, *args, **kwargs):
        raise AssertionError(f"the check read Facts.{self.field}, which none of its Step.probes fills")

    __getitem__ = get = __contains__ = __iter__ = __len__ = __bool__ = keys = items = values = _read


@pytest.mark.parametrize("step,i", [(s, i) for s, cases in CASES.items() for i in range(len(cases))])
def test_a_steps_probes_are_all_its_check_reads(step, i, facts, lab):
    """lab.workshop.check --step STEP runs only STEP's probes: every case of every check
    gives the same verdict when the other probes' facts are unreadable."""
    change, *_ = CASES[step][i]
    full = change(facts)
    want = verdict(full, lab, step)
    unread = set(workshop.PROBES) - set(workshop.probes_for([step]))
    part = dataclasses.replace(full, **{field: Unread(field) for p in unread for field in workshop.PROBES[p]})
    assert verdict(part, lab, step) == want


def test_probes_for_steps():
    assert workshop.probes_for([]) == tuple(workshop.PROBES)
    assert workshop.probes_for(["postfix"]) == ("smtp587", "smtp25")
    assert workshop.probes_for(["web_image", "directories"]) == ()
    assert set(workshop.probes_for(["run_server", "cors"])) == {"docker", "https"}
    with pytest.raises(BadInput, match="unknown workshop step"):
        workshop.probes_for(["nope"])
    fields = {f.name for f in dataclasses.fields(Facts)}
    assert {x for fs in workshop.PROBES.values() for x in fs} <= fields
    assert all(set(s.probes) <= set(workshop.PROBES) for s in workshop.STEPS)


def test_facts_program_runs_only_the_probes_asked_for(tmp_path, lab):
    """The program itself (on this machine, as root in the VM): with the probe `users`
    alone, no SMTP, docker, https or DNS probe runs and their keys are absent."""
    import json
    import subprocess
    import sys
    settings, rendered, ctx = lab
    (tmp_path / "hosts").write_text("127.0.0.1 localhost\n")
    args = workshop.facts_args(settings, ctx, [], "pw", probes=["users"])
    args.update(files=[str(tmp_path / "hosts"), str(tmp_path / "missing")], globs=[], dirs=[str(tmp_path)],
                users=["root"], cafile=str(tmp_path / "none.pem"))
    out = subprocess.run([sys.executable, "-c", workshop.FACTS_PROGRAM, json.dumps(args)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    answer = json.loads(out)
    assert answer["users"] == {"root": True}
    assert answer["files"] == {str(tmp_path / "hosts"): "127.0.0.1 localhost\n", str(tmp_path / "missing"): None}
    assert answer["dirs"] == {str(tmp_path): True}
    for key in ("smtp587", "smtp25", "saslauthd", "services", "network", "containers", "compose_config",
                "apache_configtest", "https", "dns"):
        assert key not in answer, key


def test_every_step_has_cases():
    assert set(CASES) | {"cors"} >= set(workshop.STEP_NAMES) - {"cors"}
    assert set(CASES) == set(workshop.STEP_NAMES)


def test_the_article_literally_on_the_postfix_step(facts, lab):
    """The attendee types the article's Postfix section as printed: main.cf's encrypt, the
    hook's two sudo lines, the article's one sudoers line: works, with two pitfalls."""
    f = _change(facts, "/etc/postfix/main.cf",
                lambda t: t.replace("smtpd_tls_security_level = may", "smtpd_tls_security_level = encrypt"))
    f = _change(f, "/etc/dehydrated/hook.sh", lambda t: workshop.start_hook(t).replace(
        '  log "deploy_cert ${domain}: done"',
        "  sudo /usr/sbin/apachectl -k graceful\n  sudo /usr/sbin/postfix reload\n"
        '  log "deploy_cert ${domain}: done"'))
    f.files["/etc/sudoers.d/postfix_reload"] = "dehydrated_user ALL=NOPASSWD: /usr/sbin/postfix reload\n"
    f.files["/etc/sudoers.d/apache_reload"] = None
    v = verdict(f, lab, "postfix")
    assert v.state == PITFALL and v.pitfalls == ("tls_encrypt_main_cf", "missing_sudoers"), v
    assert v.label == "works, with pitfall tls_encrypt_main_cf, missing_sudoers"


# ------------------------------------------------------------------ the facts program
def test_facts_program_compiles_and_its_answer_maps_to_facts(tmp_path, lab, lab_secrets):
    settings, rendered, ctx = lab
    src = tmp_path / "facts.py"
    src.write_text(workshop.FACTS_PROGRAM)
    py_compile.compile(str(src), doraise=True)
    args = workshop.facts_args(settings, ctx, [e for e, _ in rendered], "pw")
    assert "/etc/postfix/main.cf" in args["files"] and "/etc/apache2/sites-enabled/*" in args["globs"]
    assert args["dirs"] == list(ctx.dirs)
    f = workshop.facts_from({"files": {"/etc/hosts": "x"}, "unknown_key": 1, "network": None})
    assert f.files == {"/etc/hosts": "x"} and f.network is None


def test_context_reads_the_rendered_tree(lab):
    _, _, ctx = lab
    assert "ENTE_DB_PASSWORD" in ctx.env_names and "MUSEUM_IPV4_ADDRESS" in ctx.env_names
    assert "/usr/local/docker-ente/docker-compose.yml" in ctx.compose_files
    assert "/opt/dockerfiles/ente/postgres-data" in ctx.dirs


def test_conftest_is_the_shared_one():
    assert conftest.load is load


# ------------------------------------------------------------------ against a recorded guest
@pytest.fixture
def lab_paths(empty_checkout):
    from entelab import state
    paths = state.paths(empty_checkout)
    state.ensure_dirs(paths)
    render.render_lab(paths, load([f"admins=[{ADMIN}]"]), quiet=True)
    return paths


def test_check_is_one_round_trip_and_prints_the_table(lab_paths, lab, capsys):
    import json

    from recording import RecordingConnection

    from entelab import secrets as secrets_mod
    from entelab import workshop_lab
    from entelab.guest import Guest
    settings = load([f"admins=[{ADMIN}]"])
    pairs = workshop_lab.rendered_pairs(lab_paths)
    sec = secrets_mod.load_or_create(lab_paths.secrets, dry_run=True)[0]
    f = converged_facts(pairs, settings, sec)
    f.smtp587 = {**f.smtp587, "ehlo_plain": "PIPELINING\nAUTH PLAIN LOGIN\nSTARTTLS"}
    rec = RecordingConnection(lambda cmd: json.dumps(dataclasses.asdict(f)))
    verdicts = workshop_lab.check(lab_paths, settings, Guest(rec))
    assert len(rec.commands) == 1 and rec.commands[0].startswith("sudo -n sh -c")
    states = {v.step: v.state for v in verdicts}
    assert states["postfix"] == WRONG and states["sasl"] == DONE
    assert {v.step: v for v in verdicts}["postfix"].symptom.startswith("AUTH offered before STARTTLS on 587")
    out = capsys.readouterr().out
    assert "ente-lab workshop" in out and "postfix" in out and "wrong" in out and "AUTH" in out
    # --step postfix: that row alone, still one round trip
    rec2 = RecordingConnection(lambda cmd: json.dumps(dataclasses.asdict(f)))
    only = workshop_lab.check(lab_paths, settings, Guest(rec2), ["postfix"])
    assert [(v.step, v.state) for v in only] == [("postfix", WRONG)] and len(rec2.commands) == 1
    out = capsys.readouterr().out
    assert "postfix" in out and "apache_proxy" not in out and "docker_network" not in out


def test_solve_converges_the_step_alone(lab_paths, capsys):
    import io
    import json
    import tarfile

    from recording import RecordingConnection

    from entelab import workshop_lab
    from entelab.guest import Guest
    report = {"installed": [], "refused": {}, "reloaded": ["postfix"], "reload_failed": {}, "skipped": {}}
    rec = RecordingConnection(lambda cmd: json.dumps(report) if "agent.py apply" in cmd else "{}")
    workshop_lab.solve(lab_paths, load([f"admins=[{ADMIN}]"]), "postfix", Guest(rec))
    with tarfile.open(fileobj=io.BytesIO((lab_paths.build / "workshop/bundle.tar.gz").read_bytes())) as tar:
        plan = json.loads(tar.extractfile("plan.json").read())      # type: ignore[union-attr]
        names = tar.getnames()
    paths = sorted(op["path"] for op in plan["ops"])
    assert paths == ["/etc/dehydrated/hook.sh", "/etc/postfix/main.cf", "/etc/postfix/master.cf",
                     "/etc/sudoers.d/apache_reload", "/etc/sudoers.d/postfix_reload"]
    assert "files/etc/postfix/main.cf" in names
    # mail_user: users.conf forced even when the VM already has it
    rec2 = RecordingConnection(lambda cmd: json.dumps(report) if "agent.py apply" in cmd else json.dumps(
        {workshop.USERS_CONF: {"type": "file", "sha256": "same?"}}))
    workshop_lab.solve(lab_paths, load([f"admins=[{ADMIN}]"]), "mail_user", Guest(rec2))
    with tarfile.open(fileobj=io.BytesIO((lab_paths.build / "workshop/bundle.tar.gz").read_bytes())) as tar:
        plan = json.loads(tar.extractfile("plan.json").read())      # type: ignore[union-attr]
    assert [op["path"] for op in plan["ops"]] == [workshop.USERS_CONF]
    assert plan["ops"][0]["reload"] == "users"
    # administering: nothing to converge
    rec3 = RecordingConnection()
    workshop_lab.solve(lab_paths, load([f"admins=[{ADMIN}]"]), "administering", Guest(rec3))
    assert rec3.commands == [] and "nothing to converge" in capsys.readouterr().out


def test_workshop_tasks_through_invoke(tmp_path):
    import os
    import sys
    env = {**os.environ, "COLUMNS": "200", "ENTE_LAB_HOME": str(tmp_path / "home")}
    run = [sys.executable, "-m", "invoke"]
    listed = subprocess.run([*run, "--list"], cwd=REPO, env=env, capture_output=True, text=True)
    for t in ("lab.workshop.start", "lab.workshop.check", "lab.workshop.solve", "lab.workshop.reset",
              "lab.workshop.steps"):
        assert t in listed.stdout
    bad = subprocess.run([*run, "lab.workshop.start", "postfx"], cwd=REPO, env=env, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stdout + bad.stderr
    assert "unknown workshop step 'postfx'" in " ".join(bad.stdout.split())
    bad = subprocess.run([*run, "lab.workshop.check", "--step", "postfix", "--step", "postfx"], cwd=REPO,
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stdout + bad.stderr
    assert "unknown workshop step 'postfx'" in " ".join(bad.stdout.split())
    steps = subprocess.run([*run, "lab.workshop.steps"], cwd=REPO, env=env, capture_output=True, text=True)
    assert steps.returncode == 0 and "mail_user" in steps.stdout and "Create the mail user" in steps.stdout
