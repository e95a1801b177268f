"""A recording stand-in for the SSH transport under the real guest runner.

``Guest(RecordingConnection(answer))`` runs the lab's real guest-side code
paths without a VM: every command is recorded and answered by ``answer(cmd)``
(a string for stdout, or ``(exit, stdout, stderr)``). Facts in, commands out.
"""

from __future__ import annotations

import base64
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Reply:
    exited: int
    stdout: str
    stderr: str


class RecordingConnection:
    def __init__(self, answer: Callable[[str], object] = lambda cmd: ""):
        self.answer = answer
        self.commands: list[str] = []
        self.puts: list[tuple[str, str]] = []

    def run(self, cmd: str, **_kw: object) -> Reply:
        self.commands.append(cmd)
        out = self.answer(cmd)
        if isinstance(out, tuple):
            return Reply(*out)
        return Reply(0, str(out), "")

    def put(self, local: str, remote: str) -> None:
        self.puts.append((local, remote))

    def close(self) -> None:
        pass

    def decoded(self) -> list[str]:
        """The commands with base64-shipped Python programs' arguments made readable."""
        out = []
        for cmd in self.commands:
            for word in shlex.split(cmd) if "base64" in cmd else []:
                if re.fullmatch(r"[A-Za-z0-9+/=]{40,}", word):
                    cmd = cmd.replace(word, base64.b64decode(word).decode(errors="replace")[:60])
            out.append(cmd)
        return out
