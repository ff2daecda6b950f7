"""Per-recipient message building: compiled once vs rendered per recipient.

    .venv/bin/python bench/render_message.py [--recipients 10000] [--naive 200]

Ours: `compile_campaign` once, then `CompiledCampaign.build` per recipient. Naive: per
recipient, Jinja2 + Markdown render, premailer, then an `EmailMessage` serialised. Both
make the same multipart/alternative message with a personalised body and subject.
Prints µs per message and the ratio.
"""

from __future__ import annotations

import argparse
import logging
import time
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import jinja2
import premailer
from markdown_it import MarkdownIt
from markupsafe import Markup

from campaigns.config import Settings
from campaigns.models import Campaign
from mailer.message import Recipient
from mailer.render import EMAIL_TEMPLATES, compile_campaign
from mailer.tokens import TokenKind, TokenSigner

BODY = """# Spring sale, {{ first_name | default("friend") }}!

Everything in the shop in **{{ contact.attributes.city | default("your town") }}** is
up to 50% off this week. Come and see [our new collection](https://shop.example/spring),
or reply to this email if you have a question.

- free delivery over 40 €
- returns within 30 days
- gift wrapping on request

> "Best shop in town" — a happy customer

See you soon,
the Test Shop team
"""
SETTINGS = Settings(
    data_dir=Path("/nonexistent"),
    secret_key="bench-key",
    public_url="https://news.shop.example",
    return_domain="ret.shop.example",
    sender="Test Shop <news@shop.example>",
    brand_name="Test Shop",
    postal_address="Test Shop, 1 Test Street, Testville",
)
CAMPAIGN = Campaign(
    id=1,
    name="Spring sale",
    kind="promotional",
    subject="{{ first_name | default('Hello') }}, our spring sale is on",
    preheader="Up to 50% off everything",
    body=BODY,
)
SIGNER = TokenSigner(["bench-key"])


def recipients(n: int) -> list[Recipient]:
    names = ["Ann Lee", "Zoë Ångström", "Bob O'Brien", "山田 太郎", "Chloé Martin"]
    return [
        Recipient(i, f"person{i}@example.org", names[i % 5], {"city": f"Town {i % 97}"})
        for i in range(n)
    ]


def ours(people: list[Recipient]) -> float:
    compiled = compile_campaign(CAMPAIGN, SETTINGS, signer=SIGNER)
    size = 0
    start = time.perf_counter()
    for person in people:
        size += len(compiled.build(person))
        compiled.envelope_from(person)
    elapsed = time.perf_counter() - start
    print(f"  average message size {size / len(people):,.0f} bytes")
    return elapsed / len(people)


def naive(people: list[Recipient]) -> float:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(EMAIL_TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )
    md = MarkdownIt("commonmark", {"html": False})
    start = time.perf_counter()
    for p in people:
        first = p.name.split(" ")[0]
        contact = {"name": p.name, "first_name": first, "attributes": p.attributes}
        body = env.from_string(BODY).render(first_name=first, contact=contact)
        token = SIGNER.sign(TokenKind.UNSUBSCRIBE, p.contact_id, 1)
        url = f"{SETTINGS.public_url}/u/{token}"
        common = {
            "brand": SETTINGS.brand_name,
            "postal_address": SETTINGS.postal_address,
            "policy_url": "",
            "unsubscribe_url": url,
            "subject": f"{first}, our spring sale is on",
            "preheader": CAMPAIGN.preheader,
        }
        html = env.get_template("promotional.html").render(common, body=Markup(md.render(body)))
        html = premailer.Premailer(html, allow_network=False, disable_validation=True).transform()
        text = env.get_template("promotional.txt").render(common, body=body)
        msg = EmailMessage()
        msg["From"] = SETTINGS.sender
        msg["To"] = f"{p.name} <{p.email}>"
        msg["Subject"] = common["subject"]
        msg["List-Unsubscribe"] = f"<{url}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        msg.set_content(text)
        msg.add_alternative(html, subtype="html")
        msg.as_bytes(policy=SMTP)
    return (time.perf_counter() - start) / len(people)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--naive", type=int, default=200)
    args = parser.parse_args()
    logging.getLogger("CSSUTILS").setLevel(logging.CRITICAL)
    print(f"compiled once, built per recipient ({args.recipients:,} recipients):")
    fast = ours(recipients(args.recipients))
    print(f"  {fast * 1e6:,.1f} µs/message")
    print(f"naive: render + premailer + EmailMessage per recipient ({args.naive:,}):")
    slow = naive(recipients(args.naive))
    print(f"  {slow * 1e6:,.1f} µs/message")
    print(f"ratio: compiled path is {slow / fast:,.0f}× faster")


if __name__ == "__main__":
    main()
