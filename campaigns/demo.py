"""Demo data for `campaigns demo`: a few hundred people with mixed consent, one
campaign of each kind. Made through the same consent functions as real data, so
every state has its ledger event."""

from __future__ import annotations

import random
import unicodedata

from sqlalchemy import Engine, func
from sqlmodel import select

from campaigns import campaign, consent, suppression
from campaigns.db import session_scope
from campaigns.models import Contact, ContactTag
from campaigns.purposes import Kind, Purpose, SuppressionReason

FIRST = ["Anna", "Ben", "Chloé", "Dmitri", "Eva", "Farid", "Greta", "Hiro", "Ines", "Jonas"]
LAST = ["Meyer", "Okafor", "Silva", "Novak", "Berg", "Kowalski", "Haddad", "Lund", "Rossi"]
PLACES = [("DE", "Berlin"), ("DE", "Hamburg"), ("FR", "Lyon"), ("NL", "Utrecht"), ("GB", "Leeds")]
TAGS = ["newsletter", "vip", "events", "outdoor", "kitchen"]

BODIES = {
    Kind.PROMOTIONAL: (
        "Winter sale",
        "Ten days of winter prices",
        "Hello {{ contact.name }},\n\nOur **winter sale** starts today: up to 30% off "
        "coats and boots until Sunday.\n\n[See the offers](https://shop.example.com/sale)",
    ),
    Kind.SURVEY: (
        "Customer survey",
        "Five minutes to tell us how we did",
        "Hello {{ contact.name }},\n\nWould you tell us how your last order went? "
        "The survey takes five minutes and is anonymous.",
    ),
    Kind.THIRD_PARTY_OFFER: (
        "Partner offer: cooking class",
        "A cooking class from our partner Kitchenworks",
        "Hello {{ contact.name }},\n\nOur partner **Kitchenworks** offers our customers "
        "a free first cooking class this month.",
    ),
}


def seed(engine: Engine, *, policy_version: str, people: int = 300, seed_value: int = 7) -> bool:
    """Fill an empty database; returns False (and does nothing) if it has contacts."""
    rnd = random.Random(seed_value)
    with session_scope(engine) as s:
        if s.exec(select(func.count()).select_from(Contact)).one():
            return False
        for i in range(people):
            first, last = rnd.choice(FIRST), rnd.choice(LAST)
            country, city = rnd.choice(PLACES)
            # Addresses in plain ASCII: the demo's people must all be mailable.
            local = unicodedata.normalize("NFKD", f"{first}.{last}").encode("ascii", "ignore")
            email = f"{local.decode().lower()}{i}@example.{country.lower()}"
            c = Contact(
                email=email,
                email_key=email.lower(),
                name=f"{first} {last}",
                city=city,
                country=country,
                attributes={"loyalty": rnd.choice(["bronze", "silver", "gold"])},
            )
            s.add(c)
            s.flush()
            for tag in rnd.sample(TAGS, rnd.randint(0, 2)):
                s.add(ContactTag(contact_id=c.id or 0, tag=tag))
            for purpose, chance in (
                (Purpose.PROMOTIONAL, 0.7),
                (Purpose.RESEARCH, 0.4),
                (Purpose.THIRD_PARTY, 0.15),
            ):
                if rnd.random() < chance:
                    consent.record(
                        s,
                        c,
                        purpose,
                        granted=True,
                        source="form:demo-signup",
                        policy_version=policy_version,
                    )
                    if rnd.random() < 0.1:
                        consent.record(
                            s,
                            c,
                            purpose,
                            granted=False,
                            source="unsubscribe-page",
                            policy_version=policy_version,
                        )
            if rnd.random() < 0.03:
                suppression.suppress(s, email, SuppressionReason.HARD_BOUNCE, source="bounce")
        for kind, (name, subject, body) in BODIES.items():
            campaign.create(
                s,
                kind=kind,
                name=name,
                subject=subject,
                body=body,
                sponsor="Kitchenworks GmbH" if kind is Kind.THIRD_PARTY_OFFER else "",
                survey_url="https://survey.example.com/s/2026" if kind is Kind.SURVEY else "",
            )
    return True
