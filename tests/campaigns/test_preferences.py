"""A recipient's own preferences (DESIGN.md §3 "Unsubscribe endpoint"), through the
functions the web handlers call: viewing changes nothing, one-click withdraws the
campaign's purpose, the form stops one kind, everything, or keeps the ticked kinds.
Only a link from a message really sent to the person reaches them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlmodel import Session, select

from campaigns import consent, preferences, suppression
from campaigns.models import Campaign, ConsentEvent, Contact, Delivery, Suppression
from campaigns.preferences import Action, ChoiceError, PreferencesView
from campaigns.purposes import Purpose, SuppressionReason
from tests.conftest import Db

P, R, T = Purpose.PROMOTIONAL, Purpose.RESEARCH, Purpose.THIRD_PARTY


def _person(db: Db, email: str, grants: frozenset[Purpose] = frozenset()) -> int:
    with db.session() as s:
        c = Contact(email=email, email_key=email.lower())
        s.add(c)
        s.flush()
        for purpose in sorted(grants):
            consent.record(s, c, purpose, granted=True, source="form:signup", policy_version="1")
        s.commit()
        assert c.id is not None
        return c.id


def _sent(db: Db, cid: int, kind: str = "promotional", name: str = "") -> int:
    """A campaign of `kind` really sent to contact `cid`; its id."""
    with db.session() as s:
        k = Campaign(name=name or f"{kind} to {cid}", kind=kind, subject="Hello")
        s.add(k)
        s.flush()
        assert k.id is not None
        s.add(Delivery(campaign_id=k.id, contact_id=cid, status="sent"))
        s.commit()
        return k.id


def _events(db: Db, cid: int) -> list[tuple[str, bool, str, int | None, str]]:
    with db.session() as s:
        stmt = select(ConsentEvent).where(ConsentEvent.contact_id == cid).order_by(ConsentEvent.id)  # type: ignore[arg-type]
        return [
            (e.purpose, e.granted, e.source, e.campaign_id, e.policy_version) for e in s.exec(stmt)
        ]


def _states(db: Db, cid: int) -> tuple[str, str, str, str | None]:
    with db.session() as s:
        c = s.get(Contact, cid)
        assert c is not None
        return c.promotional, c.research, c.third_party, c.suppressed


def _apply(db: Db, cid: int, kid: int, action: str, keep: set[str] = set()) -> PreferencesView:  # noqa: B006
    with db.session() as s:
        v = preferences.apply(
            s,
            cid,
            kid,
            action=action,  # type: ignore[arg-type]
            keep=keep,  # type: ignore[arg-type]
            policy_version="v9",
        )
        s.commit()
    assert v is not None
    return v


def test_view_shows_what_the_person_receives_and_changes_nothing(db: Db) -> None:
    cid = _person(db, "Anna@Example.com", frozenset({P, R}))
    kid = _sent(db, cid, "survey", "Q3 survey")
    before = _events(db, cid)
    with db.session() as s:
        v = preferences.view(s, cid, kid)
        s.commit()
    assert v == PreferencesView(
        contact_id=cid,
        campaign_id=kid,
        campaign_name="Q3 survey",
        campaign_purpose=Purpose.RESEARCH,
        states={P: "granted", R: "granted", T: "none"},
        suppressed=None,
        changed=False,
    )
    assert v.granted == {P, R} and v.receives == {P, R}
    # A campaign of a kind this version cannot read names no purpose.
    odd = _sent(db, cid, "newsletter", "Odd")
    with db.session() as s:
        v = preferences.view(s, cid, odd)
    assert v is not None and (v.campaign_name, v.campaign_purpose) == ("Odd", None)
    assert _events(db, cid) == before
    assert _states(db, cid) == ("granted", "granted", "none", None)


def test_a_suppressed_person_is_shown_to_receive_nothing(db: Db) -> None:
    cid = _person(db, "bounced@example.com", frozenset({P, T}))
    kid = _sent(db, cid, "third_party_offer", "Partner")
    with db.session() as s:
        suppression.suppress(s, "bounced@example.com", SuppressionReason.HARD_BOUNCE)
        s.commit()
        v = preferences.view(s, cid, kid)
    assert v is not None
    assert v.campaign_purpose is Purpose.THIRD_PARTY
    assert v.suppressed == "hard_bounce"
    # What they agreed to is still shown (the boxes); none of it reaches them.
    assert v.granted == {P, T} and v.receives == frozenset()


def test_links_of_no_real_message_reach_nobody(db: Db) -> None:
    cid = _person(db, "v@example.com", frozenset({P}))
    sent = _sent(db, cid)
    with db.session() as s:
        never = Campaign(name="Never sent to v", kind="promotional", subject="Hi")
        s.add(never)
        s.commit()
        assert never.id is not None
        never_id = never.id
    stranger = _person(db, "w@example.com", frozenset({P}))
    with db.session() as s:
        # A campaign that never went to this person, a contact the campaign never went
        # to, an unknown contact, an unknown campaign, and test sends (contact 0).
        for c, k in ((cid, never_id), (stranger, sent), (cid + 1000, sent), (cid, sent + 1000)):
            assert preferences.view(s, c, k) is None
            assert preferences.one_click(s, c, k, "v9") is False
            for action in Action:
                assert preferences.apply(s, c, k, action=action, policy_version="v9") is None
        assert preferences.one_click(s, 0, sent, "v9") is False
        s.commit()
    assert _states(db, cid) == ("granted", "none", "none", None)
    assert _states(db, stranger) == ("granted", "none", "none", None)
    assert len(_events(db, cid)) == 1 and len(_events(db, stranger)) == 1


def test_one_click_withdraws_the_campaigns_purpose_once_or_every_purpose(db: Db) -> None:
    cid = _person(db, "s@example.com", frozenset({P, R}))
    kid = _sent(db, cid, "survey")
    for _ in range(2):
        with db.session() as s:
            assert preferences.one_click(s, cid, kid, "v9") is True
            s.commit()
    assert _events(db, cid)[2:] == [("research", False, "one-click", kid, "v9")]
    assert _states(db, cid) == ("granted", "withdrawn", "none", None)
    # Should the campaign's kind be unreadable, the person asked for less mail, never
    # more: every purpose is withdrawn.
    odd = _person(db, "odd@example.com", frozenset({P}))
    odd_kid = _sent(db, odd, "newsletter")
    with db.session() as s:
        assert preferences.one_click(s, odd, odd_kid, "v9") is True
        s.commit()
    assert _events(db, odd)[1:] == [
        ("promotional", False, "one-click", odd_kid, "v9"),
        ("research", False, "one-click", odd_kid, "v9"),
        ("third_party", False, "one-click", odd_kid, "v9"),
    ]
    assert _states(db, odd) == ("withdrawn", "withdrawn", "withdrawn", None)


def test_stop_this_kind(db: Db) -> None:
    cid = _person(db, "a@example.com", frozenset({P, R}))
    kid = _sent(db, cid, "promotional", "Sale")
    v = _apply(db, cid, kid, "stop_kind")
    assert v.changed is True
    assert v.states == {P: "withdrawn", R: "granted", T: "none"} and v.receives == {R}
    assert (v.contact_id, v.campaign_id, v.campaign_name) == (cid, kid, "Sale")
    assert _events(db, cid)[2:] == [("promotional", False, "unsubscribe-page", kid, "v9")]
    again = _apply(db, cid, kid, Action.STOP_KIND)
    assert again.changed is False and len(_events(db, cid)) == 3


def test_a_choice_that_cannot_apply_is_refused_and_changes_nothing(db: Db) -> None:
    cid = _person(db, "odd@example.com", frozenset({P}))
    kid = _sent(db, cid, "newsletter")
    with db.session() as s, pytest.raises(ChoiceError):
        preferences.apply(s, cid, kid, action=Action.STOP_KIND, policy_version="v9")
    with db.session() as s, pytest.raises(ValueError):
        preferences.apply(s, cid, kid, action="everything", policy_version="v9")  # type: ignore[arg-type]
    assert _states(db, cid) == ("granted", "none", "none", None)
    assert len(_events(db, cid)) == 1


def test_stop_everything_withdraws_all_and_suppresses(db: Db) -> None:
    cid = _person(db, "Anna@Example.com", frozenset({P, R}))
    kid = _sent(db, cid)
    v = _apply(db, cid, kid, "stop_all")
    assert v.changed is True and v.suppressed == "unsubscribed" and v.receives == frozenset()
    assert v.states == {P: "withdrawn", R: "withdrawn", T: "withdrawn"}
    assert _events(db, cid)[2:] == [
        ("promotional", False, "unsubscribe-page", kid, "v9"),
        ("research", False, "unsubscribe-page", kid, "v9"),
        ("third_party", False, "unsubscribe-page", kid, "v9"),
    ]
    assert _states(db, cid) == ("withdrawn", "withdrawn", "withdrawn", "unsubscribed")
    with db.session() as s:
        [row] = s.exec(select(Suppression)).all()
        assert (row.reason, row.source, row.campaign_id) == (
            "unsubscribed",
            "unsubscribe-page",
            kid,
        )
        assert suppression.suppression_of(s, "anna@example.com") == "unsubscribed"
    assert _apply(db, cid, kid, "stop_all").changed is False
    assert len(_events(db, cid)) == 5


def test_stop_everything_suppresses_though_nothing_is_left_to_withdraw(db: Db) -> None:
    cid = _person(db, "b@example.com", frozenset({P}))
    kid = _sent(db, cid)
    with db.session() as s:
        assert preferences.one_click(s, cid, kid, "v9")
        s.commit()
    for purpose in (R, T):
        with db.session() as s:
            c = s.get(Contact, cid)
            consent.record(s, c, purpose, granted=False, source="operator:kim", policy_version="1")
            s.commit()
    n = len(_events(db, cid))
    v = _apply(db, cid, kid, "stop_all")
    # No consent left to withdraw, but the address is now suppressed: that is a change.
    assert v.changed is True and v.suppressed == "unsubscribed"
    assert len(_events(db, cid)) == n
    # A stronger suppression stays what it is.
    other = _person(db, "c@example.com")
    other_kid = _sent(db, other)
    with db.session() as s:
        suppression.suppress(s, "c@example.com", SuppressionReason.COMPLAINT)
        s.commit()
    v = _apply(db, other, other_kid, "stop_all")
    assert v.suppressed == "complaint"
    assert _states(db, other) == ("withdrawn", "withdrawn", "withdrawn", "complaint")


def test_keep_grants_the_ticked_and_withdraws_the_unticked(db: Db) -> None:
    cid = _person(db, "k@example.com", frozenset({P, R}))
    kid = _sent(db, cid)
    v = _apply(db, cid, kid, "keep", {"promotional", "third_party"})
    assert v.changed is True
    assert v.states == {P: "granted", R: "withdrawn", T: "granted"}
    assert v.receives == {P, T}
    assert _events(db, cid)[2:] == [
        ("research", False, "unsubscribe-page", kid, "v9"),
        ("third_party", True, "unsubscribe-page", kid, "v9"),
    ]
    again = _apply(db, cid, kid, "keep", {"promotional", "third_party"})
    assert again.changed is False and len(_events(db, cid)) == 4
    # Nothing ticked: what was granted is withdrawn, the rest left as it was.
    n = _person(db, "n@example.com", frozenset({R}))
    n_kid = _sent(db, n)
    v = _apply(db, n, n_kid, "keep")
    assert v.states == {P: "none", R: "withdrawn", T: "none"}
    assert v.suppressed is None and v.changed is True
    assert _events(db, n)[1:] == [("research", False, "unsubscribe-page", n_kid, "v9")]


def test_keep_is_the_persons_own_opt_in_it_lifts_stop_everything_not_a_bounce(db: Db) -> None:
    cid = _person(db, "back@example.com", frozenset({P, R}))
    kid = _sent(db, cid)
    _apply(db, cid, kid, "stop_all")
    v = _apply(db, cid, kid, "keep", {"research"})
    # Their own new opt-in re-grants what they withdrew, and lifts "stop everything".
    assert v.changed is True and v.suppressed is None and v.receives == {R}
    assert _states(db, cid) == ("withdrawn", "granted", "withdrawn", None)
    with db.session() as s:
        assert suppression.suppression_of(s, "back@example.com") is None
        assert consent.may_send(s, cid, R).allowed
    # A bounce is not theirs to lift.
    hb = _person(db, "hb@example.com")
    hb_kid = _sent(db, hb)
    with db.session() as s:
        suppression.suppress(s, "hb@example.com", SuppressionReason.HARD_BOUNCE)
        s.commit()
    v = _apply(db, hb, hb_kid, "keep", {"promotional"})
    assert v.states[P] == "granted" and v.suppressed == "hard_bounce"
    assert v.receives == frozenset()


def test_check_database_answers_gives_its_connection_back_or_raises(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    preferences.check_database(engine)
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    engine.dispose()
    unreachable = create_engine(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'x.db'}")
    with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises
        preferences.check_database(unreachable)
    unreachable.dispose()


# ---------------------------------------------------------------- two requests at once
#
# On PostgreSQL several web workers may handle two requests for one person at the same
# moment (a one-click and a form post, a scanner and a person). SQLite serialises
# writers by itself (BEGIN IMMEDIATE), so these run on PostgreSQL only.


def _wait_until_blocked(db: Db, pid: int) -> bool:
    """Whether backend `pid` comes to wait for a lock (polled; the bound of 30 s is only
    reached when it never does)."""
    with db.engine.connect() as conn:
        for _ in range(3000):
            waiting = conn.execute(
                text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"),
                {"pid": pid},
            ).scalar()
            conn.commit()
            if waiting == "Lock":
                return True
            time.sleep(0.01)
    return False


def _second_while_first_is_open(
    db: Db, first: Callable[[Session], Any], second: Callable[[Session], Any]
) -> Any:
    """Run `first` in a transaction left open, then `second` in another that has to wait
    for it; commit the first once the second waits. The second's result."""
    pids: list[int] = []
    results: list[Any] = []
    started = threading.Event()

    def run() -> None:
        try:
            with db.session() as s2:
                pids.append(s2.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar())
                started.set()
                results.append(second(s2))
                s2.commit()
        except BaseException as exc:
            results.append(exc)
        finally:
            started.set()

    with db.session() as s1:
        first(s1)
        s1.flush()
        worker = threading.Thread(target=run)
        worker.start()
        started.wait(10)
        blocked = bool(pids) and _wait_until_blocked(db, pids[0])
        s1.commit()
    worker.join(30)
    assert blocked, "the second request never waited for the first"
    [result] = results
    if isinstance(result, BaseException):
        raise result
    return result


@pytest.mark.parametrize("how", ["one_click", "stop_kind"])
@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_two_withdrawals_at_once_are_one_event(db: Db, how: str) -> None:
    cid = _person(db, "race@example.com", frozenset({P, R}))
    kid = _sent(db, cid)

    def withdraw(s: Session) -> Any:
        if how == "one_click":
            return preferences.one_click(s, cid, kid, "v9")
        return preferences.apply(s, cid, kid, action=Action.STOP_KIND, policy_version="v9")

    second = _second_while_first_is_open(db, withdraw, withdraw)
    # The second request saw the first one's withdrawal, not the state before it.
    if how == "one_click":
        assert second is True
    else:
        assert second.changed is False and second.states[P] == "withdrawn"
    assert _events(db, cid)[2:] == [
        ("promotional", False, "one-click" if how == "one_click" else "unsubscribe-page", kid, "v9")
    ]


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_viewing_never_waits_for_a_change_in_progress(db: Db) -> None:
    cid = _person(db, "look@example.com", frozenset({P}))
    kid = _sent(db, cid)
    with db.session() as s1:
        assert preferences.one_click(s1, cid, kid, "v9")
        s1.flush()
        with db.session() as s2:
            # A page view that queued behind the change would fail here instead.
            s2.connection().exec_driver_sql("SET LOCAL lock_timeout = '500ms'")
            v = preferences.view(s2, cid, kid)
            assert v is not None and v.states[P] == "granted"  # not yet committed
        s1.commit()
    with db.session() as s:
        v = preferences.view(s, cid, kid)
        assert v is not None and v.states[P] == "withdrawn"
