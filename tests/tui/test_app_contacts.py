"""Contacts in the UI: search, the consent ledger, an operator's change, erasure."""

from __future__ import annotations

import pytest

from campaigns import consent, contacts, suppression
from campaigns.db import session_scope
from campaigns.purposes import Purpose
from tests.tui.conftest import Env, add_contact, settle, type_into, wait_until
from tui.screens.confirm import ConfirmScreen
from tui.screens.consent_change import ConsentChangeScreen
from tui.screens.contact_detail import ContactDetailScreen
from tui.screens.contacts import ContactsScreen
from tui.widgets.consent_history import ConsentHistory
from tui.widgets.contact_table import ContactTable

pytestmark = pytest.mark.anyio


def _people(env: Env) -> None:
    add_contact(env.engine, "anna@example.com", "Anna Meyer", Purpose.PROMOTIONAL, Purpose.RESEARCH)
    add_contact(env.engine, "ben@example.com", "Ben Okafor", Purpose.PROMOTIONAL)
    add_contact(env.engine, "chloe@example.fr", "Chloé Silva", Purpose.RESEARCH, country="FR")


async def test_consent_change_from_the_contact_screen_is_in_the_ledger(env: Env) -> None:
    _people(env)
    app = env.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("c")
        screen = app.screen
        assert isinstance(screen, ContactsScreen)
        await settle(pilot)
        table = screen.query_one(ContactTable)
        assert table.row_count == 3
        await type_into(pilot, "#search", "meyer")
        await wait_until(pilot, lambda: table.row_count == 1, what="the search")
        await pilot.press("enter")  # from the search field to the results
        await pilot.press("enter")  # open the contact
        await settle(pilot)
        detail = app.screen
        assert isinstance(detail, ContactDetailScreen) and detail.email == "anna@example.com"
        assert detail.query_one(ConsentHistory).row_count == 2

        await pilot.press("g")
        dialog = app.screen
        assert isinstance(dialog, ConsentChangeScreen)
        # A note is required, and so is the purpose.
        await pilot.press("down", "enter")  # the second purpose: market research
        await type_into(pilot, "#note", " ")
        await pilot.press("enter")
        assert "note is required" in str(dialog.query_one("#consent-error").render())
        await type_into(pilot, "#note", "letter")
        await pilot.press("enter")
        await settle(pilot)
        assert app.screen is detail
        assert detail.query_one(ConsentHistory).row_count == 3

    with session_scope(env.engine) as s:
        anna = contacts.get(s, "anna@example.com")
        last = consent.history(s, anna.id or 0)[-1]
        assert last.purpose == "research" and last.granted is False
        assert last.source == "operator:tester" and last.note == "letter"
        assert last.policy_version == env.settings.policy_version
        assert anna.research == "withdrawn" and anna.promotional == "granted"


async def test_filters_by_consent_and_country(env: Env) -> None:
    _people(env)
    app = env.app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("c")
        await settle(pilot)
        screen = app.screen
        table = screen.query_one(ContactTable)
        screen.query_one("#purpose").value = "research"  # type: ignore[attr-defined]
        await wait_until(pilot, lambda: table.row_count == 2, what="the consent filter")
        await type_into(pilot, "#country", "fr")
        await wait_until(pilot, lambda: table.row_count == 1, what="the country filter")
        assert table.selected == "chloe@example.fr"


async def test_erase_asks_first_and_keeps_only_the_hash(env: Env) -> None:
    _people(env)
    app = env.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        app.push_screen(ContactDetailScreen("ben@example.com"))
        await settle(pilot)
        await pilot.press("d")
        confirm = app.screen
        assert isinstance(confirm, ConfirmScreen)
        question = str(confirm.query_one("#question").render())
        assert "keyed hash of the address" in question and "suppression list" in question
        # Backing out changes nothing.
        await pilot.press("escape")
        await settle(pilot)
        with session_scope(env.engine) as s:
            assert contacts.find(s, "ben@example.com") is not None
        await pilot.press("d")
        await pilot.press("y")
        await settle(pilot)
        assert not isinstance(app.screen, ContactDetailScreen)

    with session_scope(env.engine) as s:
        assert contacts.find(s, "ben@example.com") is None
        assert suppression.suppression_of(s, "BEN@example.com") == "erased"
