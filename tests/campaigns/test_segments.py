"""Segments (campaigns/segments.py) against real databases, checked against plain Python.

Every database test runs on SQLite, and on PostgreSQL when CAMPAIGNS_TEST_POSTGRES_URL is
set: a segment must pick the same people on both.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlmodel import Session

from campaigns import segments
from campaigns.models import Campaign, ConsentEvent, Contact, ContactTag
from campaigns.purposes import Purpose
from campaigns.segments import Breakdown, Recipient, Segment, SegmentError, parse_filters
from tests.conftest import Db

DB_SETTINGS = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    deadline=None,
    max_examples=50,
)

# ------------------------------------------------------------------ the oracle


def ascii_fold(text: str) -> str:
    """The documented case rule for cities and tags: A-Z only (written independently)."""
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)


@dataclass
class Person:
    """One contact as the test inserts it, and as plain Python judges it."""

    email: str
    country: str = ""
    city: str = ""
    tags: frozenset[str] = frozenset()
    attributes: dict[str, str] = field(default_factory=dict)
    created_at: datetime = datetime(2024, 1, 1, tzinfo=UTC)
    consent: dict[Purpose, str] = field(default_factory=dict)
    suppressed: str | None = None
    # Filled in on insert.
    id: int = 0
    event_ids: dict[Purpose, int] = field(default_factory=dict)

    def granted(self, purpose: Purpose | None) -> bool:
        purposes = list(Purpose) if purpose is None else [purpose]
        return any(self.consent.get(p, "none") == "granted" for p in purposes)

    def matches_filters(self, seg: Raw) -> bool:
        if seg.countries and self.country not in {c.strip().upper() for c in seg.countries}:
            return False
        if seg.cities and ascii_fold(self.city) not in {ascii_fold(c.strip()) for c in seg.cities}:
            return False
        mine = {ascii_fold(t) for t in self.tags}
        if any(ascii_fold(t.strip()) not in mine for t in seg.tags):
            return False
        if any(self.attributes.get(k) != v for k, v in seg.attributes):
            return False
        if seg.after is not None and not self.created_at >= seg.after:
            return False
        return seg.before is None or self.created_at < seg.before

    def eligible(self, seg: Raw) -> bool:
        return self.matches_filters(seg) and self.granted(seg.purpose) and not self.suppressed


@dataclass
class Raw:
    """A segment's filters as a user gave them (before any normalising)."""

    purpose: Purpose | None = None
    countries: tuple[str, ...] = ()
    cities: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    attributes: tuple[tuple[str, str], ...] = ()
    after: datetime | None = None
    before: datetime | None = None

    def segment(self) -> Segment:
        return Segment(
            purpose=self.purpose,
            countries=self.countries,
            cities=self.cities,
            tags=self.tags,
            attributes=self.attributes,
            signed_up_after=self.after,
            signed_up_before=self.before,
        )


def insert(db: Db, people: list[Person]) -> list[Person]:
    """Store the people with their tags, and a ledger event behind every consent state."""
    with db.session() as s:
        rows = []
        for p in people:
            c = Contact(
                email=p.email,
                email_key=p.email.lower(),
                country=p.country,
                city=p.city,
                attributes=dict(p.attributes),
                created_at=p.created_at,
                suppressed=p.suppressed,
            )
            s.add(c)
            rows.append(c)
        s.flush()
        events: list[tuple[Person, Purpose, ConsentEvent]] = []
        for p, c in zip(people, rows, strict=True):
            assert c.id is not None
            p.id = c.id
            for t in p.tags:
                s.add(ContactTag(contact_id=c.id, tag=t))
            for purpose, state in p.consent.items():
                setattr(c, purpose.value, state)
                if state != "none":
                    ev = ConsentEvent(
                        contact_id=c.id,
                        purpose=purpose.value,
                        granted=state == "granted",
                        source="form:signup" if state == "granted" else "one-click",
                        policy_version="1",
                    )
                    s.add(ev)
                    events.append((p, purpose, ev))
        s.flush()
        for p, purpose, ev in events:
            assert ev.id is not None
            p.event_ids[purpose] = ev.id
            c = rows[people.index(p)]
            setattr(c, f"{purpose.value}_event_id", ev.id)
            s.add(c)
        s.commit()
    return people


def count(db: Db, seg: Segment) -> int:
    # A session is closed straight away: on SQLite an open one would hold the write lock.
    with db.session() as s:
        return segments.count(s, seg)


def breakdown(db: Db, seg: Segment) -> Breakdown:
    with db.session() as s:
        return segments.breakdown(s, seg)


# ------------------------------------------------------------------ strategies

BASE = datetime(2024, 1, 1, tzinfo=UTC)
# Sign-up times and bounds share a pool, so bounds often equal a sign-up exactly.
TIMES = [
    BASE - timedelta(microseconds=1),
    BASE,
    BASE + timedelta(microseconds=1),
    BASE + timedelta(hours=5),
    BASE + timedelta(days=200, hours=22),
    BASE + timedelta(days=400),
]
ZONES = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-7, minutes=-30))]
COUNTRIES = ["DE", "FR", "AT", ""]
CITIES = ["Berlin", "berlin", "BERLIN", "München", "MÜNCHEN", "Paris", ""]
TAGS = ["vip", "VIP", "news", "Ärger", "ärger", "b2b"]
ATTR_KEYS = ["plan", "Größe", 'say "hi"', "a.b"]
ATTR_VALUES = ["gold", "Gold", "ü"]
STATES = ["granted", "granted", "withdrawn", "none"]
SUPPRESSED = [None, None, None, None, "unsubscribed", "hard_bounce", "erased"]


@st.composite
def people(draw: st.DrawFn) -> list[Person]:
    n = draw(st.integers(3, 16))
    out = []
    for i in range(n):
        out.append(
            Person(
                email=f"p{i}@example.com",
                country=draw(st.sampled_from(COUNTRIES)),
                city=draw(st.sampled_from(CITIES)),
                # One spelling per tag and person: the database holds "VIP" and "vip"
                # as one tag (migration 0003); different people may spell it apart.
                tags=frozenset(
                    {
                        ascii_fold(t): t for t in draw(st.sets(st.sampled_from(TAGS), max_size=4))
                    }.values()
                ),
                attributes=draw(
                    st.dictionaries(
                        st.sampled_from(ATTR_KEYS), st.sampled_from(ATTR_VALUES), max_size=3
                    )
                ),
                created_at=draw(st.sampled_from(TIMES)),
                consent={p: draw(st.sampled_from(STATES)) for p in Purpose},
                suppressed=draw(st.sampled_from(SUPPRESSED)),
            )
        )
    return out


def _zoned(t: datetime, draw: st.DrawFn) -> datetime:
    return t.astimezone(draw(st.sampled_from(ZONES)))


@st.composite
def raw_segments(draw: st.DrawFn, folks: list[Person]) -> Raw:
    """Filters as users type them; often taken from one of the contacts, so they hit."""
    after = draw(st.sampled_from(TIMES[:-1])) if draw(st.integers(0, 9)) < 3 else None
    later = [t for t in TIMES if after is None or t > after]
    before = draw(st.sampled_from(later)) if draw(st.integers(0, 9)) < 3 else None
    model = draw(st.sampled_from(folks)) if folks and draw(st.booleans()) else None

    def typed(text: str) -> str:
        # Padding and changed case: users type them so.
        return draw(st.sampled_from([text, text.lower(), text.upper(), f" {text} "]))

    def some(pool: list[str], own: list[str]) -> tuple[str, ...]:
        if draw(st.booleans()):
            return ()
        picks = draw(st.lists(st.sampled_from([*own, *own, *pool]), min_size=1, max_size=2))
        return tuple(typed(v) for v in picks)

    own_attrs = list(model.attributes.items()) if model else []
    attrs = draw(
        st.just({})
        | st.dictionaries(
            st.sampled_from([*ATTR_KEYS, "missing"]), st.sampled_from(ATTR_VALUES), max_size=2
        )
        | st.lists(st.sampled_from([*own_attrs, *own_attrs, ("plan", "gold")]), max_size=3).map(
            dict
        )
    )
    return Raw(
        purpose=draw(st.none() | st.sampled_from(list(Purpose))),
        countries=some(["DE", "FR", "XX"], [model.country] if model and model.country else []),
        cities=some(["Berlin", "München", "Nowhere"], [model.city] if model and model.city else []),
        tags=some(["vip", "ärger", "nobody"], sorted(model.tags) if model else []),
        attributes=tuple(attrs.items()),
        after=None if after is None else _zoned(after, draw),
        before=None if before is None else _zoned(before, draw),
    )


@st.composite
def populations(draw: st.DrawFn) -> tuple[list[Person], list[Raw]]:
    folks = draw(people())
    return folks, draw(st.lists(raw_segments(folks), min_size=2, max_size=4))


# ------------------------------------------------------------ against the oracle


@DB_SETTINGS
@given(population=populations())
def test_count_stream_and_breakdown_agree_with_plain_python(
    db: Db, population: tuple[list[Person], list[Raw]]
) -> None:
    folks, raws = population
    db.clean()
    insert(db, folks)
    hits = sum(1 for raw in raws if any(p.eligible(raw) for p in folks))
    event(f"segments that reach somebody: {hits} of {len(raws)}")
    for batch, raw in enumerate(raws, start=1):
        seg = raw.segment()
        expected = [p for p in folks if p.eligible(raw)]

        assert count(db, seg) == len(expected), seg.describe()

        matching = [p for p in folks if p.matches_filters(raw)]
        suppressed = sum(1 for p in matching if p.suppressed)
        assert breakdown(db, seg) == Breakdown(
            eligible=len(expected),
            no_consent=len(matching) - len(expected) - suppressed,
            suppressed=suppressed,
        ), seg.describe()

        if raw.purpose is None:
            with pytest.raises(SegmentError):
                next(segments.stream(db.engine, seg, batch))
            continue
        got = [r for b in segments.stream(db.engine, seg, batch) for r in b]
        assert got == [
            Recipient(contact_id=p.id, email=p.email, consent_event_id=p.event_ids[raw.purpose])
            for p in sorted(expected, key=lambda p: p.id)
        ], seg.describe()


def test_stream_in_small_batches_reaches_each_eligible_contact_once(db: Db) -> None:
    folks = insert(
        db,
        [
            Person(
                email=f"p{i}@example.com",
                country="DE" if i % 3 else "FR",
                consent={Purpose.RESEARCH: "granted" if i % 4 else "withdrawn"},
                suppressed="hard_bounce" if i % 7 == 0 else None,
            )
            for i in range(40)
        ],
    )
    seg = Segment(purpose=Purpose.RESEARCH, countries=("de",))
    eligible = [p for p in folks if p.eligible(Raw(Purpose.RESEARCH, ("DE",)))]
    assert 10 < len(eligible) < 40

    batches = list(segments.stream(db.engine, seg, batch_size=3))
    assert all(len(b) == 3 for b in batches[:-1]) and 1 <= len(batches[-1]) <= 3
    ids = [r.contact_id for b in batches for r in b]
    assert ids == sorted({p.id for p in eligible})
    # The proof of consent of each one is the event that granted research.
    proofs = {r.contact_id: r.consent_event_id for b in batches for r in b}
    assert proofs == {p.id: p.event_ids[Purpose.RESEARCH] for p in eligible}
    # Promotional consent was never given: nobody.
    assert list(segments.stream(db.engine, Segment(purpose=Purpose.PROMOTIONAL), 3)) == []


def test_stream_holds_nothing_open_between_batches_and_sees_withdrawals(db: Db) -> None:
    folks = insert(
        db,
        [
            Person(email=f"p{i}@example.com", consent={Purpose.PROMOTIONAL: "granted"})
            for i in range(9)
        ],
    )
    it = segments.stream(db.engine, Segment(purpose=Purpose.PROMOTIONAL), batch_size=3)
    first = next(it)
    assert [r.contact_id for r in first] == [p.id for p in folks[:3]]
    # A withdrawal arrives during the send. Were the stream holding a transaction open,
    # this write would wait for it (SQLite) instead of committing at once.
    started = time.monotonic()
    with db.session() as s:
        late = s.get(Contact, folks[7].id)
        assert late is not None
        late.promotional = "withdrawn"
        s.add(late)
        s.commit()
    assert time.monotonic() - started < 5
    rest = [r.contact_id for b in it for r in b]
    assert rest == [p.id for p in folks[3:] if p is not folks[7]]


def test_stream_needs_a_purpose_and_a_batch_size(db: Db) -> None:
    with pytest.raises(SegmentError, match="purpose"):
        next(segments.stream(db.engine, Segment(countries=("DE",))))
    with pytest.raises(ValueError):
        next(segments.stream(db.engine, Segment(purpose=Purpose.RESEARCH), batch_size=0))


def test_same_answers_for_the_awkward_cases_on_every_database(db: Db) -> None:
    granted = {Purpose.PROMOTIONAL: "granted"}
    a, b, c, d, e = insert(
        db,
        [
            Person("a@example.com", city="München", attributes={"Größe": "L"}, consent=granted),
            Person("b@example.com", city="Berlin", attributes={'say "hi"': "ü"}, consent=granted),
            Person("c@example.com", city="MÜNCHEN", tags=frozenset({"VIP"}), consent=granted),
            Person("d@example.com", country="DE", consent={Purpose.THIRD_PARTY: "granted"}),
            Person(
                "e@example.com",
                city="Paris",
                tags=frozenset({"vip", "news"}),
                attributes={"Größe": "L", "plan": "gold"},
                consent=granted,
            ),
        ],
    )
    with db.session() as s:
        # Not a string: stored by some other path, never matched by text on either database.
        row = s.get(Contact, d.id)
        assert row is not None
        row.attributes = {"n": 5}
        s.add(row)
        s.commit()

    def ids(*filters: str, purpose: Purpose | None = Purpose.PROMOTIONAL) -> set[int]:
        seg = parse_filters(filters, purpose)
        got = {r.contact_id for batch in segments.stream(db.engine, seg) for r in batch}
        assert count(db, seg) == len(got)
        return got

    # Keys that need escaping in JSON (non-ASCII, quotes) still match.
    assert ids("attr.Größe=L") == {a.id, e.id}
    assert ids('attr.say "hi"=ü') == {b.id}
    assert ids("attr.Größe=l") == set()
    # Case rule for cities and tags: A-Z only.
    assert ids("city=berlin") == {b.id}
    assert ids("city=münchen") == {a.id}
    assert ids("tag=vip") == {c.id, e.id}
    # Tags and attributes: all of; countries and cities: any of.
    assert ids("tag=vip", "tag=NEWS") == {e.id}
    assert ids("attr.Größe=L", "attr.plan=gold") == {e.id}
    assert ids("city=berlin,paris") == {b.id, e.id}
    assert ids("attr.n=5", purpose=Purpose.THIRD_PARTY) == set()
    # Third-party consent is its own: not reachable for promotions.
    assert ids("country=de") == set()
    assert ids("country=de", purpose=Purpose.THIRD_PARTY) == {d.id}
    with db.session() as s:
        assert segments.count(s, parse_filters(["country=de"])) == 1


def test_sign_up_bounds_include_the_start_and_exclude_the_end(db: Db) -> None:
    granted = {Purpose.PROMOTIONAL: "granted"}
    times = [BASE - timedelta(microseconds=1), BASE, BASE + timedelta(hours=5)]
    folks = insert(
        db,
        [Person(f"p{i}@example.com", created_at=t, consent=granted) for i, t in enumerate(times)],
    )
    # 02:00 at +02:00 is midnight UTC; 07:00 at +02:00 is 05:00 UTC.
    seg = parse_filters(
        ["signed_up_after=2024-01-01T02:00+02:00", "signed_up_before=2024-01-01T07:00+02:00"],
        Purpose.PROMOTIONAL,
    )
    got = [r.contact_id for b in segments.stream(db.engine, seg) for r in b]
    assert got == [folks[1].id]
    assert count(db, seg) == 1


# ------------------------------------------------------------------ parse_filters


@pytest.fixture
def berlin_time() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Berlin"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def test_parse_filters_builds_the_segment(berlin_time: None) -> None:
    seg = parse_filters(
        [
            "country=de,FR",
            "country= at ",
            "city=Berlin",
            "tag=vip",
            "tag=news,b2b",
            "attr.plan=gold",
            "attr.formula=a=b",
            "signed_up_after=2024-01-01",
            "signed_up_before=2025-01-01T12:00+02:00",
        ],
        Purpose.PROMOTIONAL,
    )
    assert seg == Segment(
        purpose=Purpose.PROMOTIONAL,
        countries=("DE", "FR", "AT"),
        cities=("Berlin",),
        tags=("vip", "news", "b2b"),
        attributes=(("plan", "gold"), ("formula", "a=b")),
        # Midnight in Berlin (winter, +01:00).
        signed_up_after=datetime(2023, 12, 31, 23, 0, tzinfo=UTC),
        signed_up_before=datetime(2025, 1, 1, 10, 0, tzinfo=UTC),
    )
    assert seg.describe() == (
        "promotional consent, country DE or FR or AT, city Berlin, tagged vip and news and b2b,"
        " plan = gold, formula = a=b, signed up on or after 2023-12-31 23:00 UTC,"
        " signed up before 2025-01-01 10:00 UTC"
    )


def test_parse_filters_local_summer_time_and_offsets(berlin_time: None) -> None:
    seg = parse_filters(["signed_up_after=2024-07-01T12:00", "signed_up_before=2024-07-02T00:00Z"])
    assert seg.signed_up_after == datetime(2024, 7, 1, 10, 0, tzinfo=UTC)  # +02:00 in July
    assert seg.signed_up_before == datetime(2024, 7, 2, tzinfo=UTC)
    # Repeated bounds narrow the range; every bound applies.
    seg = parse_filters(
        [
            "signed_up_after=2024-01-01T00:00Z",
            "signed_up_after=2024-03-01T00:00Z",
            "signed_up_before=2025-01-01T00:00Z",
        ]
    )
    assert seg.signed_up_after == datetime(2024, 3, 1, tzinfo=UTC)
    assert seg.describe() == (
        "consent for any purpose, signed up on or after 2024-03-01 00:00 UTC,"
        " signed up before 2025-01-01 00:00 UTC"
    )


def test_parse_filters_example_from_the_brief() -> None:
    seg = parse_filters(["country=DE,FR", "tag=vip"], Purpose.PROMOTIONAL)
    assert seg.describe() == "promotional consent, country DE or FR, tagged vip"


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        (["colour=red"], "unknown segment filter 'colour'"),
        (["country"], "not KEY=VALUE"),
        (["country="], "empty country"),
        (["country=DE,,FR"], "empty country"),
        (["tag=  "], "empty tag"),
        (["attr.=x"], "empty attribute name"),
        (["attr.plan="], "empty value of attribute 'plan'"),
        (["attr.plan=gold", "attr.plan=silver"], "cannot equal both"),
        (["signed_up_after=yesterday"], "not an ISO 8601"),
        (
            ["signed_up_after=2025-01-01T00:00Z", "signed_up_before=2024-01-01T00:00Z"],
            "must be earlier",
        ),
        (
            ["signed_up_after=2025-01-01T00:00Z", "signed_up_before=2025-01-01T00:00Z"],
            "must be earlier",
        ),
        (["tag=a\nb"], "control"),
        (["city=\x00"], "control"),
        (["tag=\udcff"], "control"),
    ],
)
def test_parse_filters_refuses_bad_input_in_one_line(filters: list[str], message: str) -> None:
    with pytest.raises(SegmentError, match=message) as exc:
        parse_filters(filters)
    assert len(str(exc.value).splitlines()) == 1


KEYS = ["country", "city", "tag", "attr.", "attr.plan", "signed_up_after", "signed_up_before"]
ANY_CHAR = st.characters(exclude_categories=()) | st.characters(
    min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=()
)
GARBAGE = (
    st.text(ANY_CHAR, max_size=30)
    | st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), st.text(ANY_CHAR, max_size=30))
    | st.builds(
        lambda k, t: f"{k}={t.isoformat()}",
        st.sampled_from(["signed_up_after", "signed_up_before"]),
        st.datetimes(timezones=st.none() | st.timezones()),
    )
)


@DB_SETTINGS
@given(filters=st.lists(GARBAGE, max_size=4))
def test_parse_filters_garbage_only_ever_raises_segment_error(db: Db, filters: list[str]) -> None:
    with db.session() as s:
        if s.get(Contact, 1) is None:
            # One contact, so that every condition is really evaluated.
            s.add(Contact(id=1, email="a@b.de", email_key="a@b.de", attributes={"plan": "x"}))
            s.commit()
    try:
        seg = parse_filters(filters, Purpose.PROMOTIONAL)
    except SegmentError as exc:
        assert len(str(exc).splitlines()) == 1
        return
    # Whatever is accepted is usable: stored, described, and run on the database.
    assert Segment.from_json(json.loads(json.dumps(seg.to_json()))) == seg
    assert len(seg.describe().splitlines()) == 1
    assert count(db, seg) in (0, 1)


def test_cli_style_purposeless_segment_counts_any_consent(db: Db) -> None:
    insert(
        db,
        [
            Person("a@example.com", consent={Purpose.RESEARCH: "granted"}),
            Person("b@example.com", consent={Purpose.RESEARCH: "withdrawn"}),
            Person("c@example.com", consent={Purpose.THIRD_PARTY: "granted"}, suppressed="erased"),
        ],
    )
    seg = parse_filters([])
    assert seg.describe() == "consent for any purpose"
    assert count(db, seg) == 1
    assert breakdown(db, seg) == Breakdown(eligible=1, no_consent=1, suppressed=1)


# ------------------------------------------------------------------ storage

TEXT = st.text(
    st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=12
).filter(lambda t: t.strip() == t and t != "")
AWARE = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.timezones()
)


@st.composite
def segments_(draw: st.DrawFn) -> Segment:
    after = draw(st.none() | AWARE)
    before = draw(st.none() | AWARE)
    if after is not None and before is not None and after >= before:
        after = None
    return Segment(
        purpose=draw(st.none() | st.sampled_from(list(Purpose))),
        countries=tuple(draw(st.lists(TEXT, max_size=3))),
        cities=tuple(draw(st.lists(TEXT, max_size=3))),
        tags=tuple(draw(st.lists(TEXT, max_size=3))),
        attributes=tuple(draw(st.dictionaries(TEXT, TEXT, max_size=3)).items()),
        signed_up_after=after,
        signed_up_before=before,
    )


@given(seg=segments_())
def test_json_round_trip(seg: Segment) -> None:
    stored = json.loads(json.dumps(seg.to_json()))
    again = Segment.from_json(stored)
    assert again == seg
    assert again.describe() == seg.describe()
    # Stored times keep their instant and are in UTC.
    for t in (again.signed_up_after, again.signed_up_before):
        assert t is None or t.utcoffset() == timedelta(0)


def test_empty_segment_is_stored_as_empty_object() -> None:
    assert Segment().to_json() == {}
    assert Segment.from_json({}) == Segment()


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
FIELDS = st.sampled_from(
    ["purpose", "countries", "cities", "tags", "attributes", "signed_up_after", "signed_up_before"]
)


@given(data=st.dictionaries(FIELDS | st.text(max_size=8), JSONISH, max_size=4) | JSONISH)
def test_from_json_refuses_broken_data_with_segment_error(data: object) -> None:
    try:
        seg = Segment.from_json(data)  # type: ignore[arg-type]
    except SegmentError as exc:
        assert len(str(exc).splitlines()) == 1
        return
    assert Segment.from_json(seg.to_json()) == seg


def test_segment_refuses_naive_times_and_empty_ranges() -> None:
    with pytest.raises(SegmentError, match="time zone"):
        Segment(signed_up_after=datetime(2024, 1, 1))
    with pytest.raises(SegmentError, match="earlier"):
        Segment(signed_up_after=BASE, signed_up_before=BASE)
    with pytest.raises(SegmentError, match="unknown purpose"):
        Segment.from_json({"purpose": "spam"})
    with pytest.raises(SegmentError, match="out of range"):
        Segment.from_json({"signed_up_after": "0001-01-01T00:00+05:00"})


def test_segment_is_stored_in_a_campaign_and_read_back(db: Db) -> None:
    seg = parse_filters(
        ["country=DE", "tag=Ärger", "attr.Größe=L", "signed_up_after=2024-05-01T10:00+02:00"],
        Purpose.RESEARCH,
    )
    with db.session() as s:
        campaign = Campaign(name="q3", kind="survey", subject="Q3", segment=seg.to_json())
        s.add(campaign)
        s.commit()
    with Session(db.engine) as s:
        stored = s.get(Campaign, campaign.id)
        assert stored is not None
        assert Segment.from_json(stored.segment) == seg


def test_a_count_is_never_stale_whoever_writes(db: Db) -> None:
    """SQLite remembers counts per connection until anything changes (segments.count):
    every kind of write, from this session or another connection, shows at once."""
    from sqlalchemy import create_engine, text

    from campaigns import consent, suppression

    granted = {Purpose.PROMOTIONAL: "granted"}
    a, b, c = insert(
        db,
        [
            Person("a@example.com", country="DE", tags=frozenset({"vip"}), consent=granted),
            Person("b@example.com", country="DE", tags=frozenset({"VIP"}), consent=granted),
            Person("c@example.com", country="DE", consent=granted),
        ],
    )
    seg = Segment(purpose=Purpose.PROMOTIONAL, countries=("de",), tags=("Vip",))
    assert count(db, seg) == count(db, seg) == 2

    with db.session() as s:
        # Unflushed changes of the same session count, and are forgotten on rollback.
        s.add(ContactTag(contact_id=c.id, tag="vip"))
        assert segments.count(s, seg) == 3
        s.rollback()
        assert segments.count(s, seg) == 2
        # A withdrawal recorded in this session.
        row = s.get(Contact, a.id)
        assert row is not None
        consent.record(
            s, row, Purpose.PROMOTIONAL, granted=False, source="one-click", policy_version="p"
        )
        assert segments.count(s, seg) == 1
        s.commit()
    assert count(db, seg) == 1

    # Another connection (another engine: another process would do the same).
    other = create_engine(db.url)
    try:
        with other.begin() as conn:
            conn.execute(text("DELETE FROM contact_tags WHERE contact_id = :id"), {"id": b.id})
        assert count(db, seg) == 0
        with other.begin() as conn:
            conn.execute(
                text("INSERT INTO contact_tags (contact_id, tag) VALUES (:id, 'VIP')"),
                {"id": b.id},
            )
        assert count(db, seg) == 1
    finally:
        other.dispose()

    # Suppression and erasure.
    with db.session() as s:
        suppression.forget(s, "b@example.com")
        s.commit()
    assert count(db, seg) == 0
