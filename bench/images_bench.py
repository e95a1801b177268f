#!/usr/bin/env python3
"""Stand-in images benchmark and smoke check on the HOST (issue 12). Never touches the VM.

    .venv/bin/python bench/images_bench.py [--cold] [--standin DIR]

Builds the stand-in rootfs (``--cold``: drop the cached base tar first, so
mmdebstrap runs), times the cached append of the programs, then starts a private
dockerd (its own data-root/exec-root/socket under WORK, no iptables), runs the
guest script ``ente-lab-images load`` against it (import + thin builds), a
second ``load`` (no-op), the smoke checks (postgres 15 initdb + start,
pg_isready, socat, node/serve, python3 psycopg2/yaml), measures the image sizes
and the data-root (option b: /var/lib/docker pre-filled at box build time) and
``save``; stops dockerd and cleans up. Needs root and Debian's docker.io on the
host (testing only). ``--standin``: the programs (default provision/standin/ if
present, else the test fixture). Prints a Markdown table; writes build/bench-images.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from entelab import images, state  # noqa: E402
from entelab.hostrun import run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORK = Path("/var/lib/ente-lab-imgtest")
SCRIPT = ROOT / "provision" / "guest" / "overlay" / "usr" / "local" / "sbin" / "ente-lab-images"
DOCKER = "/usr/bin/docker"          # Debian's 20.10 client, as in the guest


def timed(fn):
    start = time.monotonic()
    out = fn()
    return out, time.monotonic() - start


def du_mb(path: Path) -> float:
    return int(run(["du", "-sxb", path]).stdout.split()[0]) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--standin", type=Path)
    args = ap.parse_args()
    src = args.standin or next(d for d in (ROOT / "provision" / "standin",
                                           ROOT / "tests" / "host" / "fixtures" / "standin") if d.exists())
    checkout = WORK / "checkout"                     # a checkout whose provision/standin is src
    shutil.rmtree(checkout, ignore_errors=True)
    shutil.copytree(src, checkout / "provision" / "standin", symlinks=True)
    os.environ.setdefault("ENTE_LAB_HOME", str(WORK / "home"))
    p = state.paths(checkout)
    state.ensure_dirs(p)
    log = p.logs / "images-build.log"
    res: dict = {"standin_src": str(src)}

    base = images.base_file(p)
    if args.cold and base.exists():
        base.unlink()
    if not base.exists():
        _, res["mmdebstrap_cold_s"] = timed(lambda: images.build_base(base, log))
    res["base_tar_mb"] = base.stat().st_size / 1e6
    digest = images.recipe_hash(checkout)
    out = images.tar_file(p, digest)
    out.unlink(missing_ok=True)
    _, res["append_s"] = timed(lambda: images.build(p))
    res["standin_tar_mb"] = out.stat().st_size / 1e6

    # a private dockerd
    d = WORK / "docker"
    sock = f"unix://{d}/docker.sock"
    d.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(d / "data", ignore_errors=True)
    dockerd = ["dockerd", "--iptables=false", "--ip-masq=false", f"--data-root={d}/data",
               f"--exec-root={d}/exec", f"--pidfile={d}/dockerd.pid", "-H", sock]
    run(["sh", "-c", 'setsid "$@" >"$0" 2>&1 </dev/null &', str(d / "dockerd.log"), *dockerd])
    docker = [DOCKER, "-H", sock]
    try:
        for _ in range(150):
            if run([*docker, "info"], check=False).ok:
                break
            time.sleep(0.2)
        else:
            raise SystemExit(f"dockerd did not answer; see {d / 'dockerd.log'}")
        imgdir = WORK / "images"
        shutil.rmtree(imgdir, ignore_errors=True)
        imgdir.mkdir()
        os.link(out, imgdir / out.name)
        shutil.copy(images.manifest_file(p, digest), imgdir / "manifest.json")
        env = dict(os.environ, IMAGES_DIR=str(imgdir), DOCKER=f"{DOCKER} -H {sock}")
        guest = lambda *a: run([sys.executable, SCRIPT, *a], env=env)  # noqa: E731
        r, res["load_first_s"] = timed(lambda: guest("load"))
        print(r.stdout)
        r, res["load_again_s"] = timed(lambda: guest("load"))
        print(r.stdout)
        print(guest("status").stdout)
        res["status"] = json.loads(guest("status", "--json").stdout)
        res["system_df"] = run([*docker, "system", "df"]).stdout
        print(res["system_df"])
        res["base_image_mb"] = int(run([*docker, "image", "inspect", "-f", "{{.Size}}",
                                        res["status"]["images"][0]["image"]]).stdout) / 1e6
        res["data_root_mb"] = du_mb(d / "data")
        res["overlay2_mb"] = du_mb(d / "data" / "overlay2")
        # smoke checks
        chk = {}
        for name, argv in {
            "pg_isready": ["ente-lab/postgres:15", "pg_isready", "--version"],
            "postgres": ["ente-lab/postgres:15", "postgres", "--version"],
            "socat": ["ente-lab/socat:1", "-V"],
            "serve": ["--entrypoint", "serve", "ente-lab/auth-web-standin:lab", "--version"],
            "node": ["ente-lab/auth-web-standin:lab", "node", "-e", "console.log(process.version)"],
            "python": ["ente-lab/cli-standin:lab", "python3", "-c",
                       "import psycopg2, yaml; print(psycopg2.__version__, yaml.__version__)"],
            "links": ["ente-lab/cli-standin:lab", "sh", "-c",
                      "ls -l /usr/local/bin && ls /app /opt/ente-lab-standin"],
            "museum": ["ente-lab/museum-standin:lab"],
        }.items():
            r = run([*docker, "run", "--rm", "--network", "none", *argv], check=False)
            chk[name] = r.output.splitlines()[:12]
            assert r.ok and "WARN" not in r.output, (name, r.output)
        # postgres 15 really runs: official-style init (placeholder entrypoint) then a query
        run([*docker, "rm", "-f", "pgtest"], check=False)
        _, res["pg_first_start_s"] = timed(lambda: run(
            [*docker, "run", "-d", "--name", "pgtest", "--network", "none", "ente-lab/postgres:15"]))
        for _ in range(100):
            r = run([*docker, "exec", "pgtest", "pg_isready", "-U", "postgres"], check=False)
            if r.ok:
                break
            time.sleep(0.3)
        chk["pg_ready"] = r.output.splitlines()
        assert r.ok, run([*docker, "logs", "pgtest"], check=False).output
        chk["pg_query"] = run([*docker, "exec", "pgtest", "psql", "-U", "postgres", "-Atc",
                               "select version()"]).output.splitlines()
        chk["pg_stop"] = run([*docker, "stop", "pgtest"]).output.splitlines()
        run([*docker, "rm", "pgtest"])
        res["checks"] = chk
        _, res["save_s"] = timed(lambda: guest("save", str(WORK / "all-images.tar")))
        res["save_archive_mb"] = (WORK / "all-images.tar").stat().st_size / 1e6
        (WORK / "all-images.tar").unlink()
    finally:
        pid = (d / "dockerd.pid").read_text().strip() if (d / "dockerd.pid").exists() else ""
        if pid:
            run(["kill", pid], check=False)
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.2)
        run(["umount", f"{d}/exec/netns/default"], check=False)
        run(["ip", "link", "delete", "docker0"], check=False)
    print(json.dumps({k: v for k, v in res.items() if k not in ("status", "checks")}, indent=2))
    for name, lines in res["checks"].items():
        print(f"{name}: {' | '.join(lines)}")
    (ROOT / "build").mkdir(exist_ok=True)
    (ROOT / "build" / "bench-images.json").write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
