"""Fabric connections to the lab VM.

Address, user, port and key come from python-vagrant (``user_hostname_port()``
and ``keyfile()``); asking Vagrant costs ~7 s, so the answer is cached in the
lab's run dir (``vm.ssh_info``) and dropped whenever the VM is brought up,
halted or destroyed.
"""

from __future__ import annotations

from fabric import Config, Connection

from . import vm
from .state import LabPaths


def connect(paths: LabPaths, refresh: bool = False, timeout: int = 30) -> Connection:
    info = vm.ssh_info(paths, refresh=refresh)
    return Connection(
        host=info["host"], user=info["user"], port=info["port"],
        connect_timeout=timeout,
        connect_kwargs={"key_filename": [info["keyfile"]], "look_for_keys": False,
                        "allow_agent": False, "banner_timeout": timeout,
                        "auth_timeout": timeout},
        inline_ssh_env=True,
        # never mirror our stdin (pytest, CI with no stdin) into remote commands
        config=Config(overrides={"run": {"in_stream": False}}),
    )


def check(paths: LabPaths) -> str:
    """Connect (refreshing a stale cache once) and return the VM's hostname."""
    try:
        with connect(paths) as c:
            return c.run("hostname", hide=True).stdout.strip()
    except Exception:  # noqa: BLE001 - stale address after a re-up: ask Vagrant again
        with connect(paths, refresh=True) as c:
            return c.run("hostname", hide=True).stdout.strip()
