"""Stand-in images (entelab/images.py): recipe hash, image list, thin Dockerfiles,
the appended tar and the guest script. Fast: no mmdebstrap, no Docker (the Docker
checks are bench/images_bench.py, see docs/benchmarks.md "Stand-in images").
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from entelab import box, images
from entelab.errors import StageFailed
from entelab.state import ROOT

FIXTURE = ROOT / "tests" / "host" / "fixtures" / "standin"
SCRIPT = ROOT / "provision" / "guest" / "overlay" / "usr" / "local" / "sbin" / "ente-lab-images"
BIN = Path(sys.executable).parent


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A checkout whose provision/standin/ holds the placeholder programs."""
    root = tmp_path / "checkout"
    shutil.copytree(FIXTURE, root / "provision" / "standin", symlinks=True)
    return root


# ------------------------------------------------------------------ recipe hash
def test_hash_stable_and_independent_of_location(checkout, tmp_path):
    other = tmp_path / "elsewhere"
    shutil.copytree(checkout, other, symlinks=True)
    assert images.recipe_hash(checkout) == images.recipe_hash(other)
    assert len(images.recipe_hash(checkout)) == 64


def test_program_edit_changes_hash_but_not_base(checkout):
    before, base = images.recipe_hash(checkout), images.base_hash()
    prog = checkout / "provision" / "standin" / "museum" / "museum.py"
    prog.write_text(prog.read_text() + "# edited\n")
    assert images.recipe_hash(checkout) != before
    assert images.base_hash() == base, "a program change must not rebuild the rootfs"


def test_program_mode_and_new_file_change_hash(checkout):
    before = images.recipe_hash(checkout)
    prog = checkout / "provision" / "standin" / "mc" / "mc.py"
    prog.chmod(0o644)
    after_mode = images.recipe_hash(checkout)
    assert after_mode != before
    (checkout / "provision" / "standin" / "web" / "app" / "new.js").write_text("x\n")
    assert images.recipe_hash(checkout) not in (before, after_mode)


def test_package_change_changes_both_hashes(checkout, monkeypatch):
    before, base = images.recipe_hash(checkout), images.base_hash()
    monkeypatch.setattr(images, "PACKAGES", [*images.PACKAGES, "htop"])
    assert images.base_hash() != base
    assert images.recipe_hash(checkout) != before
    monkeypatch.setattr(images, "PACKAGES", list(reversed(images.PACKAGES[:-1])))
    assert images.recipe_hash(checkout) == before, "order of the package list must not matter"


def test_serve_version_changes_base_hash(monkeypatch):
    base = images.base_hash()
    monkeypatch.setattr(images, "SERVE_VERSION", "0.0.1")
    assert images.base_hash() != base


def test_unrelated_files_do_not_change_hash(checkout):
    before = images.recipe_hash(checkout)
    (checkout / "README.md").write_text("docs\n")
    (checkout / "provision" / "box").mkdir()
    (checkout / "provision" / "box" / "x.sh").write_text("true\n")
    assert images.recipe_hash(checkout) == before


def test_box_recipe_follows_the_images_recipe(checkout):
    """The box bakes the tar in: a program change must give a new box."""
    before = box.recipe_hash(checkout)
    prog = checkout / "provision" / "standin" / "cli" / "ente.py"
    prog.write_text(prog.read_text() + "# edited\n")
    assert box.recipe_hash(checkout) != before


# ------------------------------------------------------------------ image list
EXPECTED = {
    "ente-lab/postgres:15": False, "ente-lab/socat:1": False,
    "ente-lab/museum-standin:lab": True, "ente-lab/minio-standin:lab": True,
    "ente-lab/mc-standin:lab": True, "ente-lab/auth-web-standin:lab": True,
    "ente-lab/cli-standin:lab": True,
}


def test_manifest_lists_the_seven_images_and_the_lazy_postgres_17():
    man = images.manifest("abcdef012345")
    eager = {i["name"]: i["standin"] for i in man["images"] if not i["lazy"]}
    assert eager == EXPECTED
    assert [i["name"] for i in man["images"] if i["lazy"]] == ["ente-lab/postgres:17"]
    for img in man["images"]:
        assert ("standin" in img["name"]) == img["standin"], img["name"]
    assert man["base"] == "ente-lab/standin-base:abcdef012345"
    assert man["tar"] == "standin-abcdef012345.tar"
    assert man["bases"] == {"ente-lab/standin-base:abcdef012345": "standin-abcdef012345.tar",
                            "ente-lab/postgres17-base:abcdef012345": "postgres17-abcdef012345.tar"}
    pg17 = next(i for i in man["images"] if i["name"] == "ente-lab/postgres:17")
    assert pg17["base"] == "ente-lab/postgres17-base:abcdef012345"
    json.dumps(man)      # the guest reads it as JSON


def test_default_images_leave_the_lazy_one_out():
    assert images.default_images()["postgres"] == "ente-lab/postgres:15"
    assert images.postgres_images() == {15: "ente-lab/postgres:15", 17: "ente-lab/postgres:17"}


def test_postgres_17_recipe_is_trixie_without_jit_or_perl():
    r = images.base_recipe("postgres17")
    assert r["suite"] == "trixie" and all(" trixie" in m for m in r["mirrors"])
    assert "postgresql-17" in r["packages"] and "util-linux" in r["packages"]   # setpriv
    assert {"libllvm*", "libz3-*", "perl"} <= set(r["purge_globs"])
    assert "/usr/lib/postgresql/17/lib/bitcode" in r["trim"]
    assert r["ids"] == [100, 102]           # the 15 image's postgres uid/gid
    assert images.base_hash("postgres17") != images.base_hash()
    with pytest.raises(ValueError):
        images.base_recipe("nope")


def test_standin_base_hash_ignores_the_postgres_17_recipe(monkeypatch, checkout):
    base, recipe = images.base_hash(), images.recipe_hash(checkout)
    monkeypatch.setattr(images, "PG17_PACKAGES", [*images.PG17_PACKAGES, "htop"])
    assert images.base_hash() == base, "a PG 17 change must not rebuild the stand-in rootfs"
    assert images.recipe_hash(checkout) != recipe, "but it is a new box"


def test_sibling_tars(tmp_path):
    got = images.sibling_tars(tmp_path / "standin-abcdef012345.tar")
    assert [p.name for p in got] == ["standin-abcdef012345.tar", "postgres17-abcdef012345.tar"]


def test_postgres_17_tar_gets_the_entrypoint_only(checkout, tmp_path):
    base, out = tmp_path / "base.tar", tmp_path / "out.tar"
    _fake_base(base)
    images.append_programs(base, checkout / "provision" / "standin", out, links=images.PG17_LINKS, web=False)
    with tarfile.open(out) as tar:
        names = {m.name.removeprefix("./") for m in tar.getmembers()}
    assert "usr/local/bin/docker-entrypoint.sh" in names and "usr/local/bin/museum" not in names
    assert not any(n.startswith("app") for n in names)


def _instructions(dockerfile: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in dockerfile.splitlines():
        word, _, rest = line.partition(" ")
        out.setdefault(word, []).append(rest)
    return out


def test_thin_dockerfiles_are_metadata_only():
    allowed = {"FROM", "ENTRYPOINT", "CMD", "ENV", "WORKDIR", "LABEL", "STOPSIGNAL"}
    for img in images.IMAGES:
        ins = _instructions(img.dockerfile("abcdef012345"))
        assert set(ins) <= allowed and "RUN" not in ins, img.name
        repo = "ente-lab/postgres17-base" if img.lazy else "ente-lab/standin-base"
        assert ins["FROM"] == [f"{repo}:abcdef012345"]
        labels = " ".join(ins["LABEL"])
        assert 'org.ente-lab.base="abcdef012345"' in labels
        assert f'org.ente-lab.standin="{"true" if img.standin else "false"}"' in labels
        if img.standin:
            assert f'org.ente-lab.description="ente-lab stand-in for {img.upstream}"' in labels


@pytest.mark.parametrize("name, entrypoint, cmd", [
    ("ente-lab/postgres:15", ["docker-entrypoint.sh"], ["postgres"]),
    ("ente-lab/postgres:17", ["docker-entrypoint.sh"], ["postgres"]),
    ("ente-lab/socat:1", ["socat"], None),
    ("ente-lab/museum-standin:lab", ["museum"], None),
    ("ente-lab/minio-standin:lab", ["minio"], ["server", "/data"]),
    ("ente-lab/mc-standin:lab", ["mc"], None),
    ("ente-lab/auth-web-standin:lab", None, ["auth-web-standin"]),
    ("ente-lab/cli-standin:lab", None, ["/bin/sh"]),
])
def test_entrypoint_and_cmd(name, entrypoint, cmd):
    img = next(i for i in images.IMAGES if i.name == name)
    ins = _instructions(img.dockerfile("h"))
    assert [json.loads(x) for x in ins.get("ENTRYPOINT", [])] == ([entrypoint] if entrypoint else [])
    assert [json.loads(x) for x in ins.get("CMD", [])] == ([cmd] if cmd else [])


def test_postgres_and_web_metadata():
    pg = _instructions(images.IMAGES[0].dockerfile("h"))
    assert pg["STOPSIGNAL"] == ["SIGINT"]
    assert 'PGDATA="/var/lib/postgresql/data"' in pg["ENV"]
    assert any(e.startswith('PATH="/usr/lib/postgresql/15/bin:') for e in pg["ENV"])
    assert 'PG_MAJOR="15"' in pg["ENV"]
    pg17 = _instructions(next(i for i in images.IMAGES if i.name.endswith(":17")).dockerfile("h"))
    assert pg17["STOPSIGNAL"] == ["SIGINT"] and 'PG_MAJOR="17"' in pg17["ENV"]
    assert any(e.startswith('PATH="/usr/lib/postgresql/17/bin:') for e in pg17["ENV"])
    web = _instructions(next(i for i in images.IMAGES if "auth-web" in i.name).dockerfile("h"))
    assert web["ENV"] == ['PORT="3322"', 'NO_UPDATE_CHECK="1"'] and web["WORKDIR"] == ["/app"]
    museum = _instructions(next(i for i in images.IMAGES if "museum" in i.name).dockerfile("h"))
    assert museum["WORKDIR"] == ["/"]


# ------------------------------------------------------------------ appended tar
def _fake_base(path: Path) -> None:
    with tarfile.open(path, "w") as tar:
        for d in ("./usr", "./usr/local", "./usr/local/bin", "./etc"):
            ti = tarfile.TarInfo(d)
            ti.type = tarfile.DIRTYPE
            tar.addfile(ti)
        data = b"base\n"
        ti = tarfile.TarInfo("./etc/os-release")
        ti.size = len(data)
        tar.addfile(ti, io.BytesIO(data))


def test_append_programs(checkout, tmp_path):
    base, out = tmp_path / "base.tar", tmp_path / "out.tar"
    _fake_base(base)
    images.append_programs(base, checkout / "provision" / "standin", out)
    assert not out.with_suffix(".partial").exists()
    with tarfile.open(out) as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
        assert "etc/os-release" in members, "the base is kept"
        for rel in images.LINKS.values():
            m = members[f"opt/ente-lab-standin/{rel}"]
            assert m.isfile() and m.mode & 0o111, rel
            assert m.uid == 0 and m.gid == 0
        assert not members["opt/ente-lab-standin/minio/s3sig.py"].mode & 0o111
        for name, rel in images.LINKS.items():
            link = members[f"usr/local/bin/{name}"]
            assert link.issym() and link.linkname == f"/opt/ente-lab-standin/{rel}"
        assert set(images.LINKS) == {"museum", "minio", "mc", "ente", "docker-entrypoint.sh",
                                     "auth-web-standin"}
        assert members["app/index.html"].isfile()
        got = tar.extractfile(members["opt/ente-lab-standin/museum/museum.py"]).read()
        assert got == (checkout / "provision" / "standin" / "museum" / "museum.py").read_bytes()


def test_append_refuses_missing_programs(checkout, tmp_path):
    base = tmp_path / "base.tar"
    _fake_base(base)
    (checkout / "provision" / "standin" / "mc" / "mc.py").unlink()
    with pytest.raises(StageFailed, match="mc/mc.py"):
        images.append_programs(base, checkout / "provision" / "standin", tmp_path / "out.tar")
    assert not (tmp_path / "out.tar").exists()


def test_box_ships_tar_and_manifest_into_the_guest_dir():
    src = (ROOT / "entelab" / "box.py").read_text()
    assert "images.GUEST_DIR" in src and "manifest.json" in src
    assert images.GUEST_DIR == "/var/lib/ente-lab/images"


# ------------------------------------------------------------------ guest script
def test_guest_script_is_ruff_clean():
    res = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", "--stdin-filename",
                          "ente-lab-images.py", "-"], input=SCRIPT.read_text(), capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert SCRIPT.read_text().startswith("#!/usr/bin/python3\n")
    assert SCRIPT.stat().st_mode & 0o111


def test_guest_script_ruff_check_can_fail():
    bad = SCRIPT.read_text() + "\nimport os\n"
    res = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", "--stdin-filename",
                          "ente-lab-images.py", "-"], input=bad, capture_output=True, text=True)
    assert res.returncode == 1


FAKE_DOCKER = r"""#!/usr/bin/env python3
import json, os, sys
state = os.environ["FAKE_STATE"]
db = json.load(open(state)) if os.path.exists(state) else {}
with open(state + ".log", "a") as fh:
    fh.write(" ".join(sys.argv[1:]) + "\n")
cmd = sys.argv[1:]
if cmd[:2] == ["image", "inspect"]:
    out = [db[n] for n in cmd[2:] if n in db]
    print(json.dumps(out))
    sys.exit(0 if len(out) == len(cmd[2:]) else 1)
if cmd[0] == "import":
    db[cmd[-1]] = {"Id": "sha256:b", "Size": 1, "RepoTags": [cmd[-1]], "Config": {"Labels": None}}
elif cmd[0] == "build":
    df = sys.stdin.read()
    base = [l.split('"')[3] for l in df.splitlines() if l.startswith("LABEL")][0]
    name = cmd[cmd.index("-t") + 1]
    db[name] = {"Id": "sha256:" + name, "Size": 1, "RepoTags": [name],
                "Config": {"Labels": {"org.ente-lab.base": base}}}
json.dump(db, open(state, "w"))
"""


def test_guest_load_is_idempotent(tmp_path):
    """Against a fake docker: imports + builds once, then does nothing."""
    imgdir = tmp_path / "images"
    imgdir.mkdir()
    (imgdir / "manifest.json").write_text(json.dumps(images.manifest("abcdef012345")))
    (imgdir / "standin-abcdef012345.tar").write_bytes(b"")
    (imgdir / "postgres17-abcdef012345.tar").write_bytes(b"")
    fake = tmp_path / "docker"
    fake.write_text(FAKE_DOCKER)
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "IMAGES_DIR": str(imgdir), "DOCKER": str(fake),
           "FAKE_STATE": str(tmp_path / "db.json")}
    run = lambda *a: subprocess.run([sys.executable, str(SCRIPT), *a], env=env,  # noqa: E731
                                    capture_output=True, text=True)
    first = run("load")
    assert first.returncode == 0, first.stderr
    calls = (tmp_path / "db.json.log").read_text().splitlines()
    assert sum(c.startswith("import ") for c in calls) == 1
    assert sum(c.startswith("build ") for c in calls) == 7
    second = run("load")
    assert second.returncode == 0 and "nothing to do" in second.stdout
    calls2 = (tmp_path / "db.json.log").read_text().splitlines()
    assert not [c for c in calls2[len(calls):] if c.startswith(("import", "build"))]
    status = json.loads(run("status", "--json").stdout)
    assert [r["image"] for r in status["images"] if not r["current"]] == ["ente-lab/postgres:17"]
    assert len(status["images"]) == 8
    # a stale image (another base) is rebuilt, without a new import
    db = json.loads((tmp_path / "db.json").read_text())
    db["ente-lab/mc-standin:lab"]["Config"]["Labels"]["org.ente-lab.base"] = "old"
    (tmp_path / "db.json").write_text(json.dumps(db))
    assert run("load").returncode == 0
    calls3 = (tmp_path / "db.json.log").read_text().splitlines()[len(calls2):]
    assert [c for c in calls3 if c.startswith(("import", "build"))] == \
        ["build --quiet -t ente-lab/mc-standin:lab -"]
    assert run("bogus").returncode == 2
    # the lazy image: only by name, importing its own base once
    assert run("load", "ente-lab/nope:1").returncode == 1
    lazy = run("load", "ente-lab/postgres:17")
    assert lazy.returncode == 0, lazy.stderr
    calls4 = (tmp_path / "db.json.log").read_text().splitlines()[len(calls2) + len(calls3):]
    assert [c for c in calls4 if c.startswith(("import", "build"))] == [
        "import --message ente-lab rootfs abcdef012345 "
        f"{imgdir}/postgres17-abcdef012345.tar ente-lab/postgres17-base:abcdef012345",
        "build --quiet -t ente-lab/postgres:17 -"]
    assert "nothing to do" in run("load", "ente-lab/postgres:17").stdout


def test_appended_tar_has_no_duplicate_paths(checkout, tmp_path):
    """docker import refuses a tar with a path twice: dirs the base has are not re-added."""
    base, out = tmp_path / "base.tar", tmp_path / "out.tar"
    with tarfile.open(base, "w") as tar:
        for d in ("./", "./opt", "./usr", "./usr/local", "./usr/local/bin"):
            ti = tarfile.TarInfo(d)
            ti.type = tarfile.DIRTYPE
            tar.addfile(ti)
    images.append_programs(base, checkout / "provision" / "standin", out)
    with tarfile.open(out) as tar:
        names = [m.name.removeprefix("./").rstrip("/") for m in tar.getmembers()]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_program_may_not_replace_a_base_file(checkout, tmp_path):
    base = tmp_path / "base.tar"
    with tarfile.open(base, "w") as tar:
        ti = tarfile.TarInfo("./usr/local/bin/museum")
        tar.addfile(ti, io.BytesIO(b""))
    with pytest.raises(StageFailed, match="/usr/local/bin/museum"):
        images.append_programs(base, checkout / "provision" / "standin", tmp_path / "out.tar")
    assert not (tmp_path / "out.tar").exists() and not (tmp_path / "out.partial").exists()


def test_postgres_socket_dir_owned_by_the_base_postgres_user(checkout, tmp_path):
    base, out = tmp_path / "base.tar", tmp_path / "out.tar"
    with tarfile.open(base, "w") as tar:
        data = b"root:x:0:0:root:/root:/bin/sh\npostgres:x:101:104::/var/lib/postgresql:/bin/sh\n"
        ti = tarfile.TarInfo("./etc/passwd")
        ti.size = len(data)
        tar.addfile(ti, io.BytesIO(data))
    images.append_programs(base, checkout / "provision" / "standin", out)
    with tarfile.open(out) as tar:
        run_pg = tar.getmember("./run/postgresql")
    assert run_pg.isdir() and (run_pg.uid, run_pg.gid) == (101, 104) and run_pg.mode == 0o3777
