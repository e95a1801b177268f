"""One error model for the whole lab.

Every error the lab raises on purpose is a ``LabError``: a message, a ``hint``
(what to look at next: a command, or the log of the check that failed) and the
exit code ``task_bodies.run`` turns it into. Exit codes (the README lists them):

    0   ok
    1   a stage failed (``StageFailed``, ``HostCommandError``, ``GuestCommandError``,
        ``TemplateError``)
    2   bad input, nothing was changed (``SettingsError``)
    3   lab.diff found a pitfall of the article in production's files (``PitfallsFound``)
    70  internal error: a bug in the lab (the traceback goes to a log file)
    130 interrupted

Standard library only: the guest-side agent may import it too.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_PITFALL = 3
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

FIX_HINT = "fix it in settings.local.yaml or the --set option"


def tail(text: str, chars: int = 1500) -> str:
    """The last ``chars`` characters of ``text``, whole lines, stripped."""
    text = (text or "").strip()
    if len(text) <= chars:
        return text
    cut = text[-chars:]
    return "..." + cut[cut.find("\n"):] if "\n" in cut else "..." + cut


class LabError(Exception):
    """Base of every error the lab reports to the user."""

    exit_code = EXIT_FAILED
    label = "error"

    def __init__(self, message: str, hint: str = "", log: str | None = None):
        self.message = message
        self.hint = hint
        self.log = str(log) if log else None
        self.reported = False        # set once a stage has printed it
        super().__init__(message)


class SettingsError(LabError):
    """Invalid settings or secrets: every problem, one line each, key first.

    Raised before anything is written: the user fixes their input.
    """

    exit_code = EXIT_BAD_INPUT
    label = "error"

    def __init__(self, problems: list[str], hint: str = ""):
        self.problems = list(problems)
        msg = ("invalid settings:\n" + "\n".join(f"  - {p}" for p in self.problems)
               + f"\n  ({FIX_HINT}; nothing was written)")
        super().__init__(msg, hint=hint)


class BadInput(LabError):
    """A task argument that is not valid (an e-mail address, a number): refused
    before anything is done."""

    exit_code = EXIT_BAD_INPUT


class PitfallsFound(LabError):
    """lab.diff found at least one of the article's pitfalls on the production server
    (the report above lists them): a result, not a failure of the lab."""

    exit_code = EXIT_PITFALL
    label = "pitfalls found"


class TemplateError(LabError):
    """A template rendered something invalid: a bug in the lab, not in the settings."""

    label = "template bug"

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("a rendered file is invalid (a bug in the lab's templates, not in your "
                         "settings):\n" + "\n".join(f"  - {p}" for p in self.problems),
                         hint="report it with the lines above; `./labctl lab.render` shows the files")


class StageFailed(LabError):
    """A stage of a task failed; the message says what to look at next."""

    label = "failed"


class CommandError(LabError):
    """A command exited non-zero. Carries the (redacted) command, exit code, output tail."""

    where = "command"
    label = "failed"

    def __init__(self, cmd: str, exited: int, output: str = "", hint: str = "",
                 log: str | None = None):
        self.cmd = cmd
        self.exited = exited
        self.output = tail(output)
        where = f" (see {log})" if log else ""
        msg = f"{self.where}: `{cmd}` exited {exited}{where}"
        if self.output and not log:
            msg += ":\n" + self.output
        super().__init__(msg, hint=hint, log=log)


class HostCommandError(CommandError):
    where = "on the host"


class GuestCommandError(CommandError):
    where = "in the VM"
