"""Converge: facts in, operations out; the guest agent stages and validates.

The plan tests are data (pyinfra style). The agent tests run the real guest
code against a throw-away root with the real validators of this host
(apache2 -t, postfix check, visudo, dnsmasq --test).
"""

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from recording import RecordingConnection

from entelab import agent, converge, vocab
from entelab.guest import Guest
from entelab.render import MANAGED_BEGIN, MANAGED_END, Entry
from entelab.vocab import Action, Op


def entry(path, data=b"x\n", **kw):
    kw.setdefault("mode", "0644")
    return Entry(path=path, owner="root", group="root", service="t", src="t/x.j2",
                 reload=kw.pop("reload", "none"), sha256=hashlib.sha256(data).hexdigest(), **kw)


def fact(data=b"x\n", mode="0644", owner="root", group="root"):
    return {"type": "file", "sha256": hashlib.sha256(data).hexdigest(), "mode": mode,
            "owner": owner, "group": group}


def test_already_converged_expects_no_operations():
    entries = [entry("/etc/a"), entry("/etc/b", b"y\n", mode="0600"),
               Entry(path="/etc/l", mode="0777", owner="root", group="root", service="t", src="",
                     reload="none", kind="link", target="/etc/a")]
    facts = {"/etc/a": fact(), "/etc/b": fact(b"y\n", "0600"), "/etc/l": {"type": "link", "target": "/etc/a"}}
    assert converge.plan(entries, facts) == []


@pytest.mark.parametrize("facts,action", [
    ({"/etc/a": {"type": "missing"}}, "write"),
    ({"/etc/a": fact(b"old\n")}, "write"),
    ({"/etc/a": fact(mode="0600")}, "attrs"),
    ({"/etc/a": fact(owner="nobody")}, "attrs"),
    ({"/etc/a": {"type": "link", "target": "/x"}}, "write"),
])
def test_only_what_differs(facts, action):
    ops = converge.plan([entry("/etc/a", reload="httpd", validate="apache")], facts)
    assert [o.action.value for o in ops] == [action]
    assert ops[0].reload == "httpd"
    assert ops[0].validate == ("none" if action == "attrs" else "apache")


@pytest.mark.parametrize("kind,facts,actions", [
    ("dir", {"type": "missing"}, ["mkdir"]),
    ("dir", {"type": "dir", "mode": "0700", "owner": "postgres", "group": "postgres"}, ["attrs"]),
    ("datadir", {"type": "missing"}, ["mkdir"]),
    # PostgreSQL's entrypoint owns its data dir: converge never takes it back
    ("datadir", {"type": "dir", "mode": "0700", "owner": "postgres", "group": "postgres"}, []),
])
def test_container_owned_dir_is_created_never_reowned(kind, facts, actions):
    e = Entry(path="/opt/d/postgres-data", mode="0755", owner="root", group="root", service="ente",
              src="", reload="none", kind=kind)
    assert [o.action.value for o in converge.plan([e], {e.path: facts})] == actions


def test_block_compares_only_the_block():
    block = f"{MANAGED_BEGIN}\nnameserver 127.0.0.1\n{MANAGED_END}\n".encode()
    e = entry("/etc/resolv.conf", block, merge="block")
    assert converge.plan([e], {"/etc/resolv.conf": fact(block, mode="0600")}) == []
    ops = converge.plan([e], {"/etc/resolv.conf": {"type": "missing"}})
    assert ops[0].action == "merge-block" and ops[0].top is True


def test_merge_block_keeps_other_lines():
    block = f"{MANAGED_BEGIN}\nA\n{MANAGED_END}\n"
    merged = agent.merge_block("127.0.0.1 localhost\n", block, top=False)
    assert merged == "127.0.0.1 localhost\n" + block
    again = agent.merge_block(merged + "# mine\n", block.replace("A", "B"), top=False)
    assert again == "127.0.0.1 localhost\n" + block.replace("A", "B") + "# mine\n"
    assert agent.merge_block("nameserver 10.0.0.1\n", block, top=True).startswith(MANAGED_BEGIN)


def test_facts_extract_block_hash(tmp_path):
    block = f"{MANAGED_BEGIN}\nA\n{MANAGED_END}\n"
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hosts").write_text("127.0.0.1 localhost\n" + block + "::1 x\n")
    f = agent.facts([{"path": "/etc/hosts", "merge": "block"}], str(tmp_path))["/etc/hosts"]
    assert f["sha256"] == hashlib.sha256(block.encode()).hexdigest()
    assert agent.facts([{"path": "/etc/nope", "merge": "whole"}], str(tmp_path))["/etc/nope"] == {"type": "missing"}


def _apply(tmp_path, root, files: dict[str, tuple[bytes, str, str]], reloads: bool = False):
    """files: path -> (data, validate, reload). Bundle + agent apply (no reloads unless asked)."""
    rendered = tmp_path / "rendered"
    entries = []
    for path, (data, validate, reload) in files.items():
        dest = rendered / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        entries.append(entry(path, data, validate=validate, reload=reload))
    ops = converge.plan(entries, agent.facts([{"path": e.path, "merge": e.merge} for e in entries], str(root)))
    bdir = tmp_path / "bundle"
    shutil.rmtree(bdir, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(converge.bundle(ops, rendered))) as tar:
        tar.extractall(bdir)
    return ops, agent.apply(bdir, root=root, reload=reloads)


VHOST_OK = b"<VirtualHost *:8081>\n  ServerName ok.lan\n  ProxyPass / http://127.0.0.1:8180/\n</VirtualHost>\n"
VHOST_BAD = b"<VirtualHost *:8081>\n  ServerName ok.lan\n  ProxyPasss / http://127.0.0.1:8180/\n</VirtualHost>\n"


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    shutil.copytree("/etc/apache2", r / "etc/apache2", symlinks=True)
    for mod in ("proxy", "proxy_http"):
        for ext in ("load", "conf"):
            src = Path(f"/etc/apache2/mods-available/{mod}.{ext}")
            link = r / f"etc/apache2/mods-enabled/{mod}.{ext}"
            if src.exists() and not link.exists():
                link.symlink_to(f"../mods-available/{mod}.{ext}")
    shutil.copytree("/etc/postfix", r / "etc/postfix", symlinks=True)
    return r


def test_broken_apache_file_never_replaces_live(tmp_path, root):
    live = root / "etc/apache2/sites-enabled/ente.conf"
    _, report = _apply(tmp_path, root, {"/etc/apache2/sites-enabled/ente.conf": (VHOST_OK, "apache", "httpd")})
    assert report["refused"] == {} and report["would_reload"] == ["httpd"]
    assert report["reloaded"] == [], "nothing ran: reload=False reports would_reload only"
    assert live.read_bytes() == VHOST_OK
    _, report = _apply(tmp_path, root, {"/etc/apache2/sites-enabled/ente.conf": (VHOST_BAD, "apache", "httpd")})
    assert "/etc/apache2/sites-enabled/ente.conf" in report["refused"]
    assert "ProxyPasss" in report["refused"]["/etc/apache2/sites-enabled/ente.conf"]
    assert report["reloaded"] == []
    assert live.read_bytes() == VHOST_OK


def test_broken_postfix_refused_others_installed(tmp_path, root):
    main_cf = (root / "etc/postfix/main.cf").read_bytes()
    bad = main_cf + b"\nsmtpd_tls_security_level = sometimes\nbogus line without equals\n"
    _, report = _apply(tmp_path, root, {
        "/etc/postfix/main.cf": (bad, "postfix", "postfix"),
        "/etc/sudoers.d/ok": (b"dehydrated_user ALL=NOPASSWD: /usr/sbin/postfix reload\n", "sudoers", "none"),
    })
    assert list(report["refused"]) == ["/etc/postfix/main.cf"]
    assert (root / "etc/postfix/main.cf").read_bytes() == main_cf
    assert (root / "etc/sudoers.d/ok").exists()
    assert "postfix" not in report["reloaded"]


@pytest.mark.parametrize("path,bad,kind", [
    ("/etc/sudoers.d/x", b"dehydrated_user ALL=NOPASSWD /usr/sbin/postfix reload\n", "sudoers"),
    ("/etc/dnsmasq.conf", b"listen-adress=127.0.0.1\n", "dnsmasq"),
    ("/etc/dehydrated/hook.sh", b"#!/bin/sh\nif then fi\n", "shell"),
])
def test_other_validators_refuse(tmp_path, root, path, bad, kind):
    _, report = _apply(tmp_path, root, {path: (bad, kind, "none")})
    assert path in report["refused"]
    assert not (root / path.lstrip("/")).exists()


def test_second_apply_is_a_no_op(tmp_path, root):
    files = {"/etc/sudoers.d/ok": (b"root ALL=(ALL) ALL\n", "sudoers", "none")}
    ops, _ = _apply(tmp_path, root, files)
    assert ops
    ops, report = _apply(tmp_path, root, files)
    assert ops == [] and report["installed"] == []


def test_bundle_contains_only_planned_files(tmp_path):
    rendered = tmp_path / "r"
    (rendered / "etc").mkdir(parents=True)
    (rendered / "etc/a").write_text("a")
    (rendered / "etc/b").write_text("b")
    ops = [Op("/etc/a", Action.WRITE, "0644", "root", "root"),
           Op("/etc/b", Action.ATTRS, "0644", "root", "root")]
    with tarfile.open(fileobj=io.BytesIO(converge.bundle(ops, rendered))) as tar:
        names = sorted(tar.getnames())
    assert names == ["agent.py", "agent_users.py", "agent_validate.py", "files/etc/a", "plan.json",
                     "vocab.py"]
    with tarfile.open(fileobj=io.BytesIO(converge.bundle(ops, rendered))) as tar:
        plan = json.loads(tar.extractfile("plan.json").read())
    assert [Op.from_dict(d) for d in plan["ops"]] == ops


def test_no_change_costs_one_round_trip(tmp_path):
    from entelab import state
    p = state.paths(tmp_path)
    p.build.mkdir()
    e = entry("/etc/a")
    p.manifest.write_text(json.dumps({"files": [e.__dict__]}))
    rec = RecordingConnection(lambda cmd: json.dumps({"/etc/a": fact()}))
    result = converge.converge_with(Guest(rec), p)
    assert result.ops == [] and result.round_trips == 1
    assert len(rec.commands) == 1 and rec.puts == [], "already converged: facts only, no commands"


# ---------------------------------------------------------------- the vocabulary is enforced
def _bundle_dir(tmp_path, raw_ops):
    bdir = tmp_path / "bundle"
    (bdir / "files/etc").mkdir(parents=True)
    (bdir / "files/etc/x").write_text("x\n")
    (bdir / "plan.json").write_text(json.dumps({"ops": raw_ops}))
    return bdir


@pytest.mark.parametrize("field,value,message", [
    ("action", "chmod", "unknown action 'chmod'"),
    ("validate", "nginx", "unknown validator 'nginx'"),
    ("reload", "apache2", "unknown reload 'apache2'"),
])
def test_agent_refuses_unknown_kinds_and_installs_nothing(tmp_path, field, value, message):
    good = Op("/etc/x", Action.WRITE, "0644", "root", "root").to_dict()
    bad = {**good, "path": "/etc/y", field: value}
    root = tmp_path / "root"
    report = agent.apply(_bundle_dir(tmp_path, [good, bad]), root=root, reload=False)
    assert message in report["refused"]["/etc/y"]
    assert report["installed"] == [] and not (root / "etc/x").exists()


def test_unimplemented_reload_is_reported_skipped_not_reloaded(tmp_path, monkeypatch):
    monkeypatch.setitem(vocab.NOT_IMPLEMENTED, vocab.Reload.ENTE_STACK, "not started by the lab yet")
    op = Op("/etc/x", Action.WRITE, "0644", "root", "root", reload=vocab.Reload.ENTE_STACK).to_dict()
    report = agent.apply(_bundle_dir(tmp_path, [op]), root=tmp_path / "root", reload=True)
    assert report["installed"] == ["write /etc/x"]
    assert report["reloaded"] == [] and "ente-stack" in report["skipped"]


def test_facts_program_runs_standalone_with_its_vocabulary(tmp_path):
    """What Guest.python ships for facts works in a bare interpreter (no entelab on the path)."""
    import base64
    import subprocess
    import sys
    (tmp_path / "f").write_text("hello\n")
    payload = base64.b64encode(json.dumps([{"path": str(tmp_path / "f"), "merge": "whole"}]).encode())
    res = subprocess.run([sys.executable, "-I", "-c", converge.FACTS_PROGRAM, "facts", payload.decode()],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)[str(tmp_path / "f")]["sha256"] == hashlib.sha256(b"hello\n").hexdigest()


@pytest.mark.parametrize("running,expect", [(False, "skipped"), (True, "reloaded")])
def test_stack_reload_only_when_the_stack_runs(tmp_path, running, expect):
    """converge re-creates what changed in a running stack (rc.ente reload) but never
    starts a stopped one: lab.up starts it after the certificates."""
    root = tmp_path / "root"
    rc_d = root / "etc/rc.d"
    rc_d.mkdir(parents=True)
    log = tmp_path / "calls"
    (rc_d / "rc.ente").write_text(f'#!/bin/sh\necho "$1" >> {log}\n'
                                  f'[ "$1" = status ] && exit {0 if running else 3}\nexit 0\n')
    (rc_d / "rc.ente").chmod(0o755)
    op = Op("/etc/x", Action.WRITE, "0644", "root", "root", reload=vocab.Reload.ENTE_STACK).to_dict()
    report = agent.apply(_bundle_dir(tmp_path, [op]), root=root, reload=True)
    calls = log.read_text().split()
    if expect == "skipped":
        assert "ente-stack" in report["skipped"] and report["reloaded"] == []
        assert calls == ["status"]
    else:
        assert report["reloaded"] == ["ente-stack"] and "start" not in calls
        assert calls == ["status", "reload", "status"]     # asked once before: not again in _reload


@pytest.mark.parametrize("files,checked", [
    # main.cf passed 'postfix check' on its staged copy: rc.postfix is told, and skips its own
    ({"/etc/postfix/main.cf": "postfix"}, "1"),
    # a file that asks for the Postfix reload but was not checked by Postfix: the full reload
    ({"/etc/postfix/main.cf": "postfix", "/etc/postfix/sasl/smtpd.conf": "none"}, ""),
])
def test_postfix_reload_is_told_when_the_agent_checked_its_files(tmp_path, root, files, checked):
    """The agent's validator ran ``postfix check`` on a copy of exactly the files it
    installs: rc.postfix reload gets POSTFIX_CHECKED=1 and does not run it again (4-5 s
    under TCG); any Postfix file the check did not cover leaves the script's own check on."""
    rc_d = root / "etc/rc.d"
    rc_d.mkdir(parents=True)
    log = tmp_path / "calls"
    (rc_d / "rc.postfix").write_text(f'#!/bin/sh\necho "$1 ${{POSTFIX_CHECKED:-}}" >> {log}\nexit 0\n')
    (rc_d / "rc.postfix").chmod(0o755)
    main_cf = (root / "etc/postfix/main.cf").read_bytes() + b"\nsmtpd_tls_auth_only = yes\n"
    data = {"/etc/postfix/main.cf": main_cf, "/etc/postfix/sasl/smtpd.conf": b"pwcheck_method: saslauthd\n"}
    _, report = _apply(tmp_path, root, {p: (data[p], v, "postfix") for p, v in files.items()}, reloads=True)
    assert report["refused"] == {} and report["reloaded"] == ["postfix"], report
    assert [c.strip() for c in log.read_text().splitlines() if not c.startswith("status")] == \
        [f"reload {checked}".strip()]


@pytest.mark.parametrize("changed,recreate", [
    (["/usr/local/docker-ente/museum.yaml"], ["ente-museum"]),
    (["/usr/local/docker-ente/.env"], []),             # compose sees .env changes itself
    (["/usr/local/docker-ente/museum.yaml", "/usr/local/docker-ente/cli-config.yaml"],
     ["ente-cli", "ente-museum"]),
])
def test_bind_mounted_stack_files_name_the_services_to_recreate(tmp_path, changed, recreate):
    """museum.yaml is a bind mount compose's config hash does not see: converge names
    the services to re-create; a .env change is left to docker-compose up -d."""
    root = tmp_path / "root"
    rc_d = root / "etc/rc.d"
    rc_d.mkdir(parents=True)
    log = tmp_path / "calls"
    (rc_d / "rc.ente").write_text(f'#!/bin/sh\necho "$@" >> {log}\nexit 0\n')
    (rc_d / "rc.ente").chmod(0o755)
    bdir = tmp_path / "bundle"
    ops = []
    for path in changed:
        f = bdir / "files" / path.lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("x\n")
        ops.append(Op(path, Action.WRITE, "0600", "root", "root", reload=vocab.Reload.ENTE_STACK).to_dict())
    (bdir / "plan.json").write_text(json.dumps({"ops": ops}))
    report = agent.apply(bdir, root=root, reload=True)
    assert report["reloaded"] == ["ente-stack"]
    assert [c for c in log.read_text().splitlines() if c != "status"] == [" ".join(["reload", *recreate])]
