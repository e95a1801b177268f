"""The lab's catch-all mailbox (issue 14): every address @<domain> is delivered by
the VM's Postfix to one local mbox (vocab.CATCHALL_MBOX, templates/postfix/NOTES.md).

``read`` costs one SSH round trip: ``MBOX_PROGRAM`` (standard library only) runs in
the guest as root, parses the mbox with ``mailbox.mbox`` and answers a JSON list of
messages, oldest first. ``for_address`` filters them by recipient on the host;
``table`` / ``show`` print them for ``lab.mail``. Bodies and headers are passed
through the guest runner's redaction before they are printed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.utils import getaddresses, parsedate_to_datetime

from rich.markup import escape
from rich.table import Table

from . import vocab
from .errors import BadInput, LabError
from .guest import Guest
from .progress import console

# Runs in the guest (python3 -c, argv[1] = JSON {"path", "limit", "max_body"}); also run
# on the host by the tests. Prints one JSON line: a list of messages, oldest first.
MBOX_PROGRAM = r'''
import json, mailbox, sys
args = json.loads(sys.argv[1])
out = []
try:
    box = mailbox.mbox(args["path"], create=False)
    keys = list(box.keys())
except (FileNotFoundError, mailbox.NoSuchMailboxError):
    keys, box = [], None

def text_of(msg):
    part = msg
    if msg.is_multipart():
        part = next((p for p in msg.walk() if p.get_content_type() == "text/plain"
                     and not p.is_multipart()), None)
        if part is None:
            return ""
    data = part.get_payload(decode=True)
    if data is None:
        data = str(part.get_payload()).encode()
    return data.decode(part.get_content_charset() or "utf-8", errors="replace")

for key in keys[-int(args["limit"]):]:
    msg = box[key]
    def h(name):
        v = msg.get(name)
        return "" if v is None else " ".join(str(v).split())
    out.append({"from": h("From"), "to": h("To"), "cc": h("Cc"), "subject": h("Subject"),
                "date": h("Date"), "message_id": h("Message-ID"),
                "original_to": h("X-Original-To"), "delivered_to": h("Delivered-To"),
                "received": [" ".join(str(r).split()) for r in msg.get_all("Received") or []],
                "body": text_of(msg)[: int(args["max_body"])]})
print(json.dumps(out))
'''


@dataclass(frozen=True)
class Message:
    sender: str
    to: str
    subject: str
    date: str
    message_id: str
    body: str
    cc: str = ""
    original_to: str = ""
    delivered_to: str = ""
    received: list[str] = field(default_factory=list)

    def recipients(self) -> set[str]:
        """Every address the message was for (headers and Postfix's X-Original-To), lower case."""
        heads = [self.to, self.cc, self.original_to]
        return {addr.lower() for _, addr in getaddresses(heads) if addr}

    def when(self) -> str:
        try:
            return parsedate_to_datetime(self.date).strftime("%Y-%m-%d %H:%M:%S %z")
        except (TypeError, ValueError, IndexError):
            return self.date or "-"


def parse(answer: object) -> list[Message]:
    """The guest program's JSON answer -> messages (facts in, values out)."""
    if not isinstance(answer, list):
        raise LabError("the mailbox reader answered something that is not a list",
                       hint="./labctl lab.ssh --command 'sudo ls -l /var/mail'")
    out = []
    for m in answer:
        out.append(Message(sender=m.get("from", ""), to=m.get("to", ""), subject=m.get("subject", ""),
                           date=m.get("date", ""), message_id=m.get("message_id", ""),
                           body=m.get("body", ""), cc=m.get("cc", ""),
                           original_to=m.get("original_to", ""),
                           delivered_to=m.get("delivered_to", ""),
                           received=list(m.get("received", []))))
    return out


def read(guest: Guest, path: str = vocab.CATCHALL_MBOX, limit: int = 500,
         max_body: int = 20000) -> list[Message]:
    """The newest ``limit`` messages of the mbox in the VM, oldest first (one round trip)."""
    answer = guest.python(MBOX_PROGRAM, {"path": path, "limit": limit, "max_body": max_body},
                          sudo=True, name=f"read the mailbox {path}",
                          hint="./labctl lab.ssh --command 'sudo tail /var/log/maillog'")
    return [_redacted(guest, m) for m in parse(answer)]


def _redacted(guest: Guest, m: Message) -> Message:
    r = guest.redact
    return Message(sender=r(m.sender), to=r(m.to), subject=r(m.subject), date=m.date,
                   message_id=r(m.message_id), body=r(m.body), cc=r(m.cc),
                   original_to=r(m.original_to), delivered_to=r(m.delivered_to),
                   received=[r(x) for x in m.received])


def for_address(messages: list[Message], address: str) -> list[Message]:
    """The messages addressed to ``address`` (case ignored); all when it is empty."""
    if not address:
        return list(messages)
    want = address.lower()
    return [m for m in messages if want in m.recipients()]


def table(messages: list[Message], title: str) -> Table:
    t = Table(title=title)
    for col in ("#", "time", "from", "to", "subject"):
        t.add_column(col)
    for i, m in enumerate(messages, 1):
        t.add_row(str(i), escape(m.when()), escape(m.sender), escape(m.to), escape(m.subject))
    return t


def show(m: Message) -> None:
    for name, value in (("From", m.sender), ("To", m.to), ("Cc", m.cc), ("Subject", m.subject),
                        ("Date", m.date), ("Message-ID", m.message_id),
                        ("X-Original-To", m.original_to)):
        if value:
            console.print(f"[bold]{name}:[/] {escape(value)}")
    for r in m.received:
        console.print(f"[bold]Received:[/] {escape(r)}")
    console.print()
    console.print(escape(m.body), highlight=False)


def mail(guest: Guest, address: str = "", show_n: int = 0) -> list[Message]:
    """``lab.mail``: the table of the catch-all mailbox (or one address's mail);
    ``show_n`` prints message N of that table in full."""
    found = for_address(read(guest), address)
    what = f"mail for {address}" if address else "every message"
    console.print(table(found, f"catch-all mailbox {vocab.CATCHALL_MBOX}: {what}"))
    if not found:
        console.print(f"no mail{' for ' + escape(address) if address else ''} in "
                      f"{vocab.CATCHALL_MBOX} yet")
    if show_n:
        if not 1 <= show_n <= len(found):
            raise BadInput(f"--show {show_n}: there are {len(found)} messages in the table",
                           hint="pick a number from the '#' column")
        show(found[show_n - 1])
    return found
