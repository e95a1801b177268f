#!/usr/bin/python3
"""ente-lab STAND-IN for the Ente CLI (ente-io/ente cli/): NOT Ente's CLI.

Reads config.yaml like upstream (ENTE_CLI_CONFIG_DIR, then ENTE_CLI_CONFIG_PATH, then
~/.ente, then the working directory; ``endpoint: api:``). Knows ``version``,
``account list`` (a JSON file in the data dir, /cli-data), and the names of the admin
commands, which need Museum's admin API the stand-in does not have: they exit 2.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

VERSION = "0.0.0-ente-lab-standin"
DEFAULT_ENDPOINT = "https://api.ente.io"
STANDIN_LINE = "ente-lab STAND-IN for the Ente CLI (not Ente's CLI; most commands are not implemented)"
NOT_IMPLEMENTED = 2

HELP = f"""{STANDIN_LINE}

Usage:
  ente [command]

Available Commands:
  version     Prints the current version (and the API endpoint in use)
  account     account list (account add: not implemented)
  admin       admin list-users / update-subscription (not implemented: no admin API in the stand-in)
  export      not implemented

Flags:
  -h, --help   help for ente

Config: config.yaml in $ENTE_CLI_CONFIG_DIR, $ENTE_CLI_CONFIG_PATH, ~/.ente or the working dir.
Accounts: accounts.json in $ENTE_CLI_DATA_DIR (default /cli-data)."""


def config_candidates(environ: dict[str, str] | os._Environ[str], cwd: Path) -> list[Path]:
    out = []
    for var in ("ENTE_CLI_CONFIG_DIR", "ENTE_CLI_CONFIG_PATH"):
        val = environ.get(var)
        if val:
            p = Path(val)
            # A path to the file itself is accepted too.
            out.append(p if p.suffix in (".yaml", ".yml") else p / "config.yaml")
    home = environ.get("HOME")
    if home:
        out.append(Path(home) / ".ente" / "config.yaml")
    out.append(cwd / "config.yaml")
    return out


def load_config(environ: Any = None, cwd: Path | None = None) -> tuple[dict, Path | None]:
    environ = os.environ if environ is None else environ
    for path in config_candidates(environ, cwd or Path.cwd()):
        if path.is_file():
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
            if not isinstance(data, dict):
                raise SystemExit(f"ente: {path}: not a YAML mapping")
            return data, path
    return {}, None


def endpoint(cfg: dict) -> str:
    ep = cfg.get("endpoint")
    api = ep.get("api") if isinstance(ep, dict) else None
    return str(api or DEFAULT_ENDPOINT)


def data_dir(environ: Any = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get("ENTE_CLI_DATA_DIR") or "/cli-data")


def not_implemented(upstream: str) -> int:
    print(f"ente: `{upstream}` is not implemented in the ente-lab stand-in: it needs Museum's API that the "
          "stand-in server does not have yet. Run it against the real ghcr.io/ente/server and Ente CLI.",
          file=sys.stderr)
    return NOT_IMPLEMENTED


def account_list() -> int:
    path = data_dir() / "accounts.json"
    try:
        accounts = json.loads(path.read_text())
    except FileNotFoundError:
        accounts = []
    except ValueError as e:
        print(f"ente: {path}: {e}", file=sys.stderr)
        return 1
    if not accounts:
        print("No accounts configured. Add one with `ente account add` (not implemented in the ente-lab stand-in).")
        return 0
    print(f"Configured accounts: {len(accounts)}")
    for acc in accounts:
        print("====================================")
        print(f"Email:     {acc.get('email', '')}")
        print(f"ID:        {acc.get('id', '')}")
        print(f"App:       {acc.get('app', '')}")
        print(f"ExportDir: {acc.get('exportDir', '')}")
    print("====================================")
    return 0


def flag_value(args: list[str], *names: str) -> str | None:
    for i, a in enumerate(args):
        for n in names:
            if a == n and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(n + "="):
                return a.split("=", 1)[1]
    return None


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(HELP)
        return 0
    if "-h" in argv or "--help" in argv:
        print(STANDIN_LINE)
        print(f"\nUsage:\n  ente {' '.join(a for a in argv if not a.startswith('-'))} [flags]")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "version":
        cfg, path = load_config()
        print(f"Version {VERSION} (ente-lab stand-in for the Ente CLI)")
        print(f"API endpoint: {endpoint(cfg)} (config: {path or 'none found, default'})")
        return 0
    if cmd == "account":
        sub = rest[0] if rest else ""
        if sub == "list":
            return account_list()
        if sub in ("add", "update", "get-token"):
            return not_implemented(f"ente account {sub}")
    if cmd == "admin":
        sub = rest[0] if rest else ""
        admin = flag_value(rest, "-a", "--admin-user")
        if sub == "list-users":
            if not admin:
                print("ente: admin list-users needs -a ADMIN_EMAIL", file=sys.stderr)
                return 1
            return not_implemented(f"ente admin list-users -a {admin}")
        if sub == "update-subscription":
            user = flag_value(rest, "-u", "--user")
            if not admin or not user:
                print("ente: admin update-subscription needs -a ADMIN_EMAIL -u USER_EMAIL", file=sys.stderr)
                return 1
            extra = " --no-limit" if "--no-limit" in rest else ""
            return not_implemented(f"ente admin update-subscription -a {admin} -u {user}{extra}")
        if sub:
            return not_implemented(f"ente admin {sub}")
    if cmd == "export":
        return not_implemented("ente export")
    print(f"ente: unknown command {' '.join(argv[:2])!r} for the ente-lab stand-in; see `ente --help`",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
