"""End to end: a sent message's List-Unsubscribe URL, POSTed as a mail client does to a
real `campaigns serve`, keeps that person out of the next send of that kind."""

from __future__ import annotations

import email.parser
import email.policy
import re
from pathlib import Path

import httpx2

from campaigns.purposes import Kind, Purpose
from mailer.schedule import send_now
from tests.conftest import Db
from tests.mailer.conftest import Inbox, add_people, new_campaign, smtp_settings
from tests.mailer.test_web_server import running_server


def test_one_click_from_a_received_message_stops_the_next_send(
    db: Db, inbox: tuple[Inbox, int], tmp_path: Path
) -> None:
    handler, port = inbox
    people = add_people(db, [{Purpose.PROMOTIONAL: "granted", Purpose.RESEARCH: "granted"}] * 3)
    conf = smtp_settings(db.settings, port)
    new_campaign(db, Kind.PROMOTIONAL, name="first")
    send_now(conf, db.engine, "first")
    leaver = people[1].email
    [raw] = [data for _f, rcpt, data in handler.received if rcpt == leaver]
    msg = email.parser.BytesParser(policy=email.policy.default).parsebytes(raw)
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    [url] = re.findall(r"<(https?://[^>]+)>", str(msg["List-Unsubscribe"]))

    with running_server(db, tmp_path) as server:
        # The message's URL names the configured public base; the server is on loopback.
        path = url.split("/u/", 1)[1]
        reply = httpx2.post(
            f"{server.base_url}/u/{path}",
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            follow_redirects=False,
            timeout=10,
        )
        assert reply.status_code == 200

    handler.received.clear()
    new_campaign(db, Kind.PROMOTIONAL, name="second")
    send_now(conf, db.engine, "second")
    assert set(handler.counts()) == {p.email for p in people} - {leaver}
    # Only the campaign's purpose was withdrawn: surveys still reach the person.
    handler.received.clear()
    new_campaign(db, Kind.SURVEY, name="survey")
    send_now(conf, db.engine, "survey")
    assert leaver in handler.counts()
