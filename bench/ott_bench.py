#!/usr/bin/env python3
"""OTT mail benchmark against the running lab (issue 14): the time from
``POST /users/ott`` (through Apache, as the app sends it) to the mail in the lab's
catch-all mailbox, for N fresh addresses; prints the median and the spread.

    .venv/bin/python bench/ott_bench.py [-n 10]     # needs `./labctl lab.up` first

Each sample runs inside the VM in one program (no SSH round trip in the timing):
POST over verified TLS to the API host on the guest's loopback, then the mbox is
polled every 50 ms until a message to that address appears. The path measured is
Museum -> STARTTLS + SASL on 587 -> Postfix -> local delivery. Fresh addresses in
the lab's domain; they stay in Museum's users table (a pristine restore drops them).
Writes build/bench-ott.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import textwrap
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from entelab import lab, probes, state, vocab  # noqa: E402
from entelab.settings import load_settings  # noqa: E402

SAMPLE = probes._PRELUDE + textwrap.dedent("""
    import time
    host, email, mbox = ARGS["host"], ARGS["email"], ARGS["mbox"]
    def size():
        try:
            with open(mbox, "rb") as f:
                return f.seek(0, 2)
        except FileNotFoundError:
            return 0
    start_size = size()
    body = json.dumps({"email": email, "purpose": "signup"})
    t0 = time.monotonic()
    conn = http.client.HTTPSConnection(host, 443, context=ctx(), timeout=30)
    conn.request("POST", "/users/ott", body=body, headers={
        "Content-Type": "application/json", "X-Client-Package": "io.ente.auth.web"})
    status = conn.getresponse().status
    t_api = time.monotonic() - t0
    needle = ("To: " + email).encode()
    found = None
    while status == 200 and time.monotonic() - t0 < 60:
        try:
            with open(mbox, "rb") as f:
                f.seek(start_size)
                if needle in f.read():
                    found = time.monotonic() - t0
                    break
        except FileNotFoundError:     # no mail delivered yet at all
            pass
        time.sleep(0.05)
    print(json.dumps({"status": status, "api_s": t_api, "mail_s": found}))
""")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=10)
    n = ap.parse_args().n
    paths = state.paths(state.ROOT)
    settings = load_settings(paths.root)[0]
    guest = lab.guest(paths)
    samples = []
    for i in range(n):
        email = f"bench-{uuid.uuid4().hex[:10]}@{settings.domain}"
        r = guest.python(SAMPLE, {"host": settings.api_host, "email": email,
                                  "mbox": vocab.CATCHALL_MBOX}, sudo=True, name="OTT sample")
        if r["status"] != 200 or r["mail_s"] is None:
            print(f"sample {i + 1}: FAILED {r}", file=sys.stderr)
            return 1
        samples.append(r)
        print(f"sample {i + 1:2}/{n}: API answered in {r['api_s']:.2f} s, "
              f"mail in the mailbox after {r['mail_s']:.2f} s")
    mail = sorted(s["mail_s"] for s in samples)
    api = sorted(s["api_s"] for s in samples)
    print(f"\n| measure (n={n}) | median | min | max |\n|---|---|---|---|")
    print(f"| POST /users/ott answered | {statistics.median(api):.2f} s | {api[0]:.2f} s | {api[-1]:.2f} s |")
    print(f"| POST -> mail in the mailbox | {statistics.median(mail):.2f} s | {mail[0]:.2f} s | {mail[-1]:.2f} s |")
    out = paths.root / "build" / "bench-ott.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"samples": samples, "median_mail_s": statistics.median(mail)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
