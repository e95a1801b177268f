"""Boot cuts (issue 11). rc.pebble's trust-store swap (the boot no longer runs a full
update-ca-certificates). Run natively against a temporary trust store: after a
start the root is in the bundle once, with its <name>.pem and hash links; after a
restart (new root) the old root is gone from the bundle and its hash link too, and
the other CAs are untouched."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from conftest import serve_under_new_ca
from test_rc_scripts import free_port, need, needs_root, pebble_env, pubtmp, rc  # noqa: F401

BEGIN = "-----BEGIN CERTIFICATE-----"


def make_ca(d: Path, cn: str) -> str:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={cn}", "-keyout", str(d / f"{cn}.key"),
                    "-out", str(d / f"{cn}.pem")], check=True, capture_output=True)
    return (d / f"{cn}.pem").read_text()


def hash_links(certs: Path, name: str) -> list[Path]:
    return [p for p in certs.iterdir() if p.is_symlink() and p.name[-2:-1] == "."
            and str(p.readlink()) == name]


@needs_root
def test_restart_swaps_the_root_in_the_trust_store(pubtmp: Path):  # noqa: F811
    need("/usr/bin/pebble", "openssl", "curl", "awk")
    certs = pubtmp / "certs"
    certs.mkdir()
    others = [make_ca(pubtmp, "other-a"), make_ca(pubtmp, "other-b")]
    bundle = certs / "ca-certificates.crt"
    bundle.write_text("".join(others))
    crt = pubtmp / "local" / "ente-lab-acme-root.crt"
    env = {
        **pebble_env(pubtmp, trust_crt=str(crt)),
        "TRUST_DIR": str(certs),
    }
    try:
        r = rc("rc.pebble", "start", env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "full update-ca-certificates" not in r.stdout + r.stderr
        root1 = crt.read_text()
        assert root1 == (pubtmp / "ente-lab" / "acme-root.pem").read_text()
        text = bundle.read_text()
        assert text.count(BEGIN) == 3 and root1.strip() in text
        assert all(o.strip() in text for o in others)
        assert (certs / "ente-lab-acme-root.pem").resolve() == crt
        assert len(hash_links(certs, "ente-lab-acme-root.pem")) == 1

        time.sleep(1.1)
        r = rc("rc.pebble", "restart", env)
        assert r.returncode == 0, r.stdout + r.stderr
        root2 = crt.read_text()
        assert root2 != root1
        text = bundle.read_text()
        assert root1.strip() not in text and root2.strip() in text
        assert text.count(BEGIN) == 3 and all(o.strip() in text for o in others)
        links = hash_links(certs, "ente-lab-acme-root.pem")
        assert len(links) == 1
        h = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(crt)],
                           capture_output=True, text=True, check=True).stdout.strip()
        assert links[0].name == f"{h}.0"
        # the intermediate pebble issues from verifies with the swapped store, both ways
        inter = str(pubtmp / "ente-lab" / "acme-intermediate.pem")
        for how in (["-CAfile", str(bundle)], ["-CApath", str(certs)]):
            v = subprocess.run(["openssl", "verify", *how, inter], capture_output=True, text=True)
            assert v.returncode == 0, v.stdout + v.stderr
    finally:
        rc("rc.pebble", "stop", env)


def test_rc_m_starts_docker_alongside_the_acme_refresh(tmp_path: Path):
    """The boot's ACME refresh and dockerd's start overlap (issue 11): each logs a
    begin, sleeps, logs an end; overlapping means each began before the other ended."""
    import os
    import shutil

    from test_rc_scripts import RC_D, SERVICES  # SERVICES: entelab.vocab's list
    d = tmp_path / "rc.d"
    d.mkdir()
    log = tmp_path / "calls.log"
    for s in SERVICES:
        body = f'echo "{s} $1" >> {log}\n'
        if s == "docker":
            body = f'echo "docker begin" >> {log}; sleep 1; echo "docker end" >> {log}\n'
        (d / f"rc.{s}").write_text("#!/bin/sh\n" + body)
        (d / f"rc.{s}").chmod(0o755)
    refresh = tmp_path / "refresh"
    refresh.write_text(f'#!/bin/sh\necho "refresh begin" >> {log}; echo "refresh args: $*" >> {log}; '
                       f'sleep 1; echo "refresh end" >> {log}\n')
    refresh.chmod(0o755)
    shutil.copy(RC_D / "rc.M", d / "rc.M")
    from entelab import vocab
    (d / "services").write_text("\n".join(sv.services_line for sv in vocab.SERVICES) + "\n")
    env = {**os.environ, "RC_DIR": str(d), "ACME_REFRESH": str(refresh),
           "SERVICES_FILE": str(d / "services")}
    r = subprocess.run([str(d / "rc.M"), "start"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "all enabled services started" in r.stdout
    calls = log.read_text().splitlines()
    assert calls[:5] == [f"{s} start" for s in ("dnsmasq", "saslauthd", "postfix", "pebble", "httpd")]
    pos = {c: i for i, c in enumerate(calls)}
    assert pos["docker begin"] < pos["refresh end"] and pos["refresh begin"] < pos["docker end"]
    # the stack comes after docker, both in the background of the refresh
    assert pos["docker end"] < pos["ente start"]
    assert "refresh args: --boot" in pos          # dehydrated --cron only when something is due
    # empty RC_BACKGROUND: strictly in order, refresh last
    log.unlink()
    r = subprocess.run([str(d / "rc.M"), "start"], env={**env, "RC_BACKGROUND": ""},
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert log.read_text().splitlines()[-6:] == ["docker begin", "docker end", "ente start",
                                                 "refresh begin", "refresh args: --boot", "refresh end"]


REFRESH = Path(__file__).resolve().parents[2] / "provision/guest/overlay/usr/local/sbin/ente-lab-acme-refresh"


@needs_root
def test_refresh_after_a_pebble_restart_keeps_the_account_key(pubtmp: Path):  # noqa: F811
    """Real pebble and dehydrated, natively: the refresh after a pebble restart
    registers the *same* account key again (no new 4096-bit key at every boot), and
    the new registration works (dehydrated --account talks to the account URL)."""
    import os
    need("/usr/bin/pebble", "dehydrated", "openssl", "curl", "sudo")
    pebble = pebble_env(pubtmp)
    base = pubtmp / "dehydrated"
    base.mkdir()
    (base / "domains.txt").write_text("")
    config = base / "config"
    config.write_text(f'CA="https://{pebble["PEBBLE_LISTEN"]}/dir"\n'
                      f'CURL_OPTS="--cacert {pubtmp}/etc-pebble/tls/ca.pem"\n'
                      f'BASEDIR="{base}"\nDOMAINS_TXT="{base}/domains.txt"\n'
                      f'WELLKNOWN="{pubtmp}/wk"\nCHALLENGETYPE="http-01"\nKEYSIZE="2048"\n')
    conf = pubtmp / "acme.conf"
    conf.write_text(f"ACME_USER=root\nBASEDIR={base}\nWELLKNOWN={pubtmp}/wk\n"
                    f"CHAINCACHE={pubtmp}/chains\nSTATEDIR={pubtmp}/state\n")
    env = {**os.environ, "ACME_CONF": str(conf), "PEBBLE_MARKER": pebble["PEBBLE_MARKER"],
           "ACME_REFRESH_LOCK": str(pubtmp / "refresh.lock"),
           "ACME_REFRESH_DONE": str(pubtmp / "refresh.done"),
           "ACME_CRON_DONE": str(pubtmp / "cron.done")}

    def refresh():
        r = subprocess.run([str(REFRESH)], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout + r.stderr

    def account_files():
        keys = list((base / "accounts").glob("*/account_key.pem"))
        assert len(keys) == 1, list((base / "accounts").rglob("*"))
        d = keys[0].parent
        return (keys[0].read_text(), (d / "registration_info.json").read_text(),
                (d / "account_id.json").read_text(), sorted(p.name for p in d.iterdir()))

    try:
        assert rc("rc.pebble", "start", pebble).returncode == 0
        out = refresh()
        assert "registering root again" in out and "keeping the account key" not in out
        key1, reg1, id1, names1 = account_files()
        time.sleep(1.1)
        assert rc("rc.pebble", "restart", pebble).returncode == 0
        out = refresh()
        assert "keeping the account key" in out and "Generating account key" not in out
        key2, reg2, id2, names2 = account_files()
        assert key2 == key1 and names2 == names1 == ["account_id.json", "account_key.pem",
                                                     "registration_info.json"]
        assert "Registering account key" in out
        a = subprocess.run(["dehydrated", "-f", str(config), "--account"], capture_output=True,
                           text=True, timeout=120)
        assert a.returncode == 0, a.stdout + a.stderr
        assert "Done" in a.stdout
    finally:
        rc("rc.pebble", "stop", pebble)


@needs_root
def test_a_retired_root_stays_trusted_while_a_served_certificate_chains_to_it(pubtmp: Path):  # noqa: F811
    """The boot cut (issue 11), natively with a real pebble: after a restart the previous
    root stays in the bundle, the containers' copy and the trust store (its own file and
    links) while a served certificate chains to it, and only then; a root that nothing
    chains to goes at once. Museum is restarted ('rc.ente trust') only when a root is
    added, not when a retired one leaves."""
    need("/usr/bin/pebble", "openssl", "curl", "awk")
    certs = pubtmp / "certs"
    certs.mkdir()
    others = [make_ca(pubtmp, "other-a")]
    bundle = certs / "ca-certificates.crt"
    bundle.write_text("".join(others))
    crt = pubtmp / "local" / "ente-lab-acme-root.crt"
    retained = pubtmp / "local" / "ente-lab-acme-root-retained-1.crt"
    served = pubtmp / "served"
    served.mkdir()
    trust_log = pubtmp / "trust.log"
    stub = pubtmp / "rc.ente"
    stub.write_text(f"#!/bin/sh\necho \"$*\" >> {trust_log}\n")
    stub.chmod(0o755)
    env = {**pebble_env(pubtmp, trust_crt=str(crt)), "TRUST_DIR": str(certs),
           "SERVED_CERTS": str(served), "RC_ENTE": str(stub)}
    lab = pubtmp / "ente-lab"
    published = lab / "acme-root.pem"
    container = lab / "ca" / "acme-root.pem"

    def trusts() -> int:
        return len(trust_log.read_text().splitlines()) if trust_log.exists() else 0

    def verify(*how: str, d: Path) -> bool:
        v = subprocess.run(["openssl", "verify", "-no-CAstore", *how, "-untrusted",
                            str(d / "chain.pem"), str(d / "cert.pem")], capture_output=True)
        return v.returncode == 0

    try:
        r = rc("rc.pebble", "start", env)
        assert r.returncode == 0, r.stdout + r.stderr
        root1 = published.read_text()
        assert root1.count(BEGIN) == 1 and trusts() == 1
        # the last pebble's root (old) anchors the served certificate; root1 anchors nothing
        old_pem, d = serve_under_new_ca(served)
        old = old_pem.decode()
        published.write_text(old + root1)
        time.sleep(1.1)
        r = rc("rc.pebble", "restart", env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Keeping the retired ACME root" in r.stdout
        text = published.read_text()
        root2 = crt.read_text()
        assert root2 not in (root1, old)
        assert text == root2 + old, "current root first, then the kept one; root1 is gone"
        assert container.read_text() == text and trusts() == 2
        assert retained.read_text() == old
        store = bundle.read_text()
        assert store.count(BEGIN) == 3 and old.strip() in store and root2.strip() in store
        assert root1.strip() not in store and others[0].strip() in store
        assert (certs / "ente-lab-acme-root-retained-1.pem").resolve() == retained
        assert len(hash_links(certs, "ente-lab-acme-root-retained-1.pem")) == 1
        for how in (["-CAfile", str(bundle), "-no-CApath"], ["-CApath", str(certs), "-no-CAfile"],
                    ["-CAfile", str(published), "-no-CApath"]):
            assert verify(*how, d=d), how
        # a renewal replaced the certificate (nothing chains to old any more): reload drops it
        _, d2 = serve_under_new_ca(pubtmp / "elsewhere")
        for f in ("cert.pem", "chain.pem"):
            (d / f).write_bytes((d2 / f).read_bytes())
        r = rc("rc.pebble", "reload", env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert published.read_text() == root2 == container.read_text()
        assert trusts() == 2, "a root leaving the bundle does not restart Museum"
        assert not retained.exists() and not (certs / "ente-lab-acme-root-retained-1.pem").exists()
        assert not hash_links(certs, "ente-lab-acme-root-retained-1.pem")
        store = bundle.read_text()
        assert store.count(BEGIN) == 2 and old.strip() not in store
        assert not verify("-CAfile", str(bundle), "-no-CApath", d=served / "lab.example")
    finally:
        rc("rc.pebble", "stop", env)
