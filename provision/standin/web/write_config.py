#!/usr/bin/python3
"""ente-lab STAND-IN helper: write the Auth web app stand-in's runtime config.

``write_config.py OUT.js`` writes ``window.ENTE_LAB = {"apiOrigin": ..., "standin": true};``
from ENTE_API_ORIGIN (what ghcr.io/ente/web reads at container start), else
NEXT_PUBLIC_ENTE_ENDPOINT (what the article bakes at build time), else
https://api.ente.io (upstream's default). The value is JSON with every character that could
end a string or a <script> element escaped (\\u003c, \\u2028, ...), so no value can break out.
"""

from __future__ import annotations

import json
import os
import sys

DEFAULT = "https://api.ente.io"


def api_origin(environ: dict[str, str] | os._Environ[str]) -> str:
    return environ.get("ENTE_API_ORIGIN") or environ.get("NEXT_PUBLIC_ENTE_ENDPOINT") or DEFAULT


def render(origin: str) -> str:
    data = json.dumps({"apiOrigin": origin, "standin": True}, ensure_ascii=True)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("'", "\\u0027")):
        data = data.replace(ch, esc)
    return f"window.ENTE_LAB = {data};\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: write_config.py OUT.js", file=sys.stderr)
        return 1
    text = render(api_origin(os.environ))
    tmp = argv[0] + ".tmp"
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write(text)
    os.replace(tmp, argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
