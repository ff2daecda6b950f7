"""Reasons read from a server's reply (DESIGN.md §4): cases an outside probe found, each
with the group a person reading the reply would give it."""

from __future__ import annotations

import pytest

from campaigns.bounce_reasons import GROUP
from mailer.reasons import reason_for


@pytest.mark.parametrize(
    ("reply", "group"),
    [
        # Names are not words: a local part, a host or a URL never decides the reason.
        ("550 5.1.1 <scampbell@example.com>... User unknown", "address"),
        ("550 5.1.1 <bookworm@example.com>... User unknown", "address"),
        ('550 5.1.1 <"spam trap"@example.com>... User unknown', "address"),
        ("host mx1.spamexperts.example [192.0.2.1]: 550 5.1.1 No such user", "address"),
        ("550 5.1.1 User unknown, see https://help.example/phishing-and-spam", "address"),
        (
            "554 delivery error: dd This user doesn't have a yahoo.com account (scam@yahoo.com)",
            "address",
        ),
        # ... but a blocklist zone, even in a URL, is what the block says.
        ("553 http://www.spamhaus.org/query/bl?ip=192.0.2.222", "sender"),
        (
            "550 5.7.1 Service unavailable; client [192.0.2.1] blocked using zen.spamhaus.org",
            "sender",
        ),
        # Words that blame us win over address words in the same reply.
        (
            "550 5.1.1 <x@example.com>: Recipient address rejected: undeliverable address: host "
            "mx[192.0.2.1] said: 554 5.7.1 Rejected: IP on blacklist",
            "sender",
        ),
        (
            "550 5.7.1 Recipient address rejected: user unknown; client blocked using "
            "zen.spamhaus.org",
            "sender",
        ),
        # Postfix's access map (5.7.1) refuses us; Exchange Online's 5.4.1 is a missing mailbox.
        ("554 5.7.1 <x@example.com>: Recipient address rejected: Access denied", "sender"),
        ("550 5.4.1 Recipient address rejected: Access denied. AS(201806281)", "address"),
        # A refusal of the message, not the address.
        ("521 5.2.1 AOL will not accept delivery of this message", "sender"),
        # RFC 7504: the host takes no mail at all.
        ("521 5.3.2 System not accepting network messages", "address"),
    ],
)
def test_the_group_of_a_reply(reply: str, group: str) -> None:
    assert GROUP[reason_for(text=reply)].value == group


def test_a_delayed_report_never_makes_an_address_dead() -> None:
    assert GROUP[reason_for("5.1.1", "", action="delayed")].value == "transient"
    assert GROUP[reason_for("5.2.2", "", action="delayed")].value == "mailbox"
