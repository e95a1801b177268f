#!/usr/bin/env python3
"""Lab benchmark against the running VM: converge (first and no-change, with SSH
round trips) and one renewal-and-verify cycle measured inside the VM.

    .venv/bin/python bench/lab_bench.py        # needs `./labctl lab.up` first

"First converge" is simulated on the running VM by restoring the distribution's
state of the managed files first (removing the lab's files), so every file is
pushed again; prints a Markdown table and writes build/bench-lab.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from entelab import certs, converge, lab, state  # noqa: E402
from entelab.render import load_manifest  # noqa: E402
from entelab.settings import load_settings  # noqa: E402


def main() -> int:
    paths = state.paths(state.ROOT)
    settings = load_settings(paths.root)[0]
    guest = lab.guest(paths)
    rows = []
    whole = [e.path for e in load_manifest(paths) if e.kind == "file" and e.merge == "whole"
             and not e.path.startswith("/etc/postfix/") and not e.path.startswith("/etc/apache2/")]
    # make every non-service-critical managed file differ (content drift), then converge
    guest.run("for f in " + " ".join(whole) + "; do [ -f $f ] && echo '# drift' >> $f; done")
    first = converge.converge_with(guest, paths)
    rows.append((f"converge, {len(first.ops)} files changed", first.seconds, first.round_trips))
    again = converge.converge_with(guest, paths)
    rows.append(("converge, no change", again.seconds, again.round_trips))
    # renewal-and-verify cycle, timed inside the VM
    res = guest.run("s=$(date +%s.%N); /usr/local/sbin/ente-lab-acme-refresh --force >/dev/null 2>&1; "
                    "rc=$?; e=$(date +%s.%N); echo | openssl s_client -connect 127.0.0.1:443 -servername "
                    "$(hostname -d) 2>/dev/null | openssl x509 -noout -serial >/dev/null; "
                    "v=$(date +%s.%N); echo $rc $s $e $v")
    rc, s, e, v = res.stdout.split()
    rows.append(("renewal (dehydrated --force + hook reloads), in the VM", float(e) - float(s), 1))
    rows.append(("renewal + verify served serial, in the VM", float(v) - float(s), 1))
    serials = certs.renew_with(guest, paths, settings)["after"]
    print("| step | seconds | SSH round trips |\n|---|---|---|")
    for name, secs, rt in rows:
        print(f"| {name} | {secs:.1f} | {rt} |")
    print(f"\nrenewal exit {rc}; serials after a further renew: {serials}")
    (paths.build / "bench-lab.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
