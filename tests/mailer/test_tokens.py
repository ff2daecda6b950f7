"""Signed tokens: right ids back, nothing else ever verifies, keys rotate, keys are kept."""

from __future__ import annotations

import re
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaigns.config import ConfigError, Settings
from mailer.tokens import (
    MAX_ID,
    TokenKind,
    TokenSigner,
    load_or_create_keys,
    signer_from_settings,
)

ids = st.integers(min_value=0, max_value=MAX_ID)
small_ids = st.integers(min_value=0, max_value=10**9)
SIGNER = TokenSigner(["key-one"])


@given(ids, ids, st.sampled_from(list(TokenKind)))
def test_round_trip(contact: int, campaign: int, kind: TokenKind) -> None:
    token = SIGNER.sign(kind, contact, campaign)
    assert SIGNER.verify(kind, token) == (contact, campaign)


@given(ids, ids, st.sampled_from(list(TokenKind)))
def test_a_campaigns_prepared_signer_gives_the_same_tokens(
    contact: int, campaign: int, kind: TokenKind
) -> None:
    # The send engine signs with the prepared form; the web page and inbox verify.
    rotated = TokenSigner(["key-one", "older"])
    token = rotated.signer_for(kind, campaign)(contact)
    assert token == SIGNER.sign(kind, contact, campaign)
    assert SIGNER.verify(kind, token) == (contact, campaign)


@given(ids, ids)
def test_safe_as_path_segment_and_local_part(contact: int, campaign: int) -> None:
    token = SIGNER.sign(TokenKind.BOUNCE, contact, campaign)
    assert re.fullmatch(r"[a-z2-7]+", token)
    assert len("unsubscribe+" + token) <= 64


@given(small_ids, small_ids, st.sampled_from(list(TokenKind)))
def test_any_case_verifies(contact: int, campaign: int, kind: TokenKind) -> None:
    token = SIGNER.sign(kind, contact, campaign)
    assert SIGNER.verify(kind, token.upper()) == (contact, campaign)
    assert SIGNER.verify(kind, token.title()) == (contact, campaign)


@given(small_ids, small_ids)
def test_one_kind_never_verifies_as_another(contact: int, campaign: int) -> None:
    unsub = SIGNER.sign(TokenKind.UNSUBSCRIBE, contact, campaign)
    bounce = SIGNER.sign(TokenKind.BOUNCE, contact, campaign)
    assert unsub != bounce
    assert SIGNER.verify(TokenKind.BOUNCE, unsub) is None
    assert SIGNER.verify(TokenKind.UNSUBSCRIBE, bounce) is None


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, str]:
    token = SIGNER.sign(TokenKind.UNSUBSCRIBE, draw(small_ids), draw(small_ids))
    chars = list(token)
    how = draw(st.sampled_from(["replace", "insert", "delete", "truncate", "append", "swap"]))
    i = draw(st.integers(0, len(chars) - 1))
    alphabet = st.characters(codec="utf-8") | st.sampled_from("abcdefghijklmnopqrstuvwxyz234567")
    if how == "replace":
        chars[i] = draw(alphabet.filter(lambda c, old=chars[i]: c.lower() != old))
    elif how == "insert":
        chars.insert(i, draw(alphabet))
    elif how == "delete":
        del chars[i]
    elif how == "truncate":
        chars = chars[:i]
    elif how == "append":
        chars += draw(st.lists(alphabet, min_size=1, max_size=8))
    else:
        j = draw(st.integers(0, len(chars) - 1).filter(lambda j: chars[j] != chars[i]))
        chars[i], chars[j] = chars[j], chars[i]
    return token, "".join(chars)


@given(mutated())
def test_mutations_never_verify(pair: tuple[str, str]) -> None:
    original, changed = pair
    assert changed.lower() != original
    assert SIGNER.verify(TokenKind.UNSUBSCRIBE, changed) is None


BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


@given(st.integers(min_value=128, max_value=MAX_ID), small_ids, st.sampled_from(list(TokenKind)))
def test_no_other_spelling_of_a_token_verifies(
    contact: int, campaign: int, kind: TokenKind
) -> None:
    # Base32's last character carries unused low bits: for ids of two or more LEB128
    # bytes, other last characters decode to the very same bytes. An altered link must
    # still be refused (DESIGN.md §3: "a forged or altered token ... changes nothing").
    token = SIGNER.sign(kind, contact, campaign)
    assert SIGNER.verify(kind, token) == (contact, campaign)
    for position in (len(token) - 1, len(token) - 2, 0):
        for other in BASE32:
            if other == token[position]:
                continue
            altered = token[:position] + other + token[position + 1 :]
            assert SIGNER.verify(kind, altered) is None, (token, altered)


def test_the_spellings_that_decode_alike_are_refused() -> None:
    # A fixed case, worked by hand: contact 200 and campaign 7 make a 16-byte token,
    # 26 characters of which the last holds 3 bits of data and 2 unused ones.
    token = SIGNER.sign(TokenKind.UNSUBSCRIBE, 200, 7)
    assert len(token) == 26
    last = BASE32.index(token[-1])
    same_bytes = [BASE32[(last & ~0b11) | low] for low in range(4)]
    assert token[-1] in same_bytes
    for spelling in same_bytes:
        if spelling != token[-1]:
            assert SIGNER.verify(TokenKind.UNSUBSCRIBE, token[:-1] + spelling) is None


@given(st.one_of(st.text(), st.binary(), st.none(), st.integers(), st.text("abc234567")))
def test_garbage_never_raises(garbage: object) -> None:
    assert SIGNER.verify(TokenKind.UNSUBSCRIBE, garbage) is None
    assert SIGNER.verify(TokenKind.BOUNCE, garbage) is None


def test_lookalike_unicode_is_refused() -> None:
    token = SIGNER.sign(TokenKind.UNSUBSCRIBE, 5, 6)
    # KELVIN SIGN lower-cases to ASCII "k"; it must not pass for one.
    forged = token.replace("k", "\u212a") if "k" in token else token + "\u212a"
    assert SIGNER.verify(TokenKind.UNSUBSCRIBE, forged) is None


@given(small_ids, small_ids)
def test_rotation_old_keys_still_verify(contact: int, campaign: int) -> None:
    old = TokenSigner(["old"]).sign(TokenKind.UNSUBSCRIBE, contact, campaign)
    rotated = TokenSigner(["new", "old"])
    assert rotated.verify(TokenKind.UNSUBSCRIBE, old) == (contact, campaign)
    new = rotated.sign(TokenKind.UNSUBSCRIBE, contact, campaign)
    assert TokenSigner(["new"]).verify(TokenKind.UNSUBSCRIBE, new) == (contact, campaign)
    assert TokenSigner(["old"]).verify(TokenKind.UNSUBSCRIBE, new) is None
    assert TokenSigner(["other"]).verify(TokenKind.UNSUBSCRIBE, old) is None


def test_bad_ids_and_keys_refused() -> None:
    with pytest.raises(ValueError):
        SIGNER.sign(TokenKind.UNSUBSCRIBE, -1, 1)
    with pytest.raises(ValueError):
        SIGNER.sign(TokenKind.UNSUBSCRIBE, 1, MAX_ID + 1)
    with pytest.raises(ValueError):
        TokenSigner(["", ""])
    with pytest.raises(ValueError):
        SIGNER.signer_for(TokenKind.UNSUBSCRIBE, 1)(-1)
    with pytest.raises(ValueError):
        SIGNER.signer_for(TokenKind.BOUNCE, MAX_ID + 1)


def test_settings_keys_comma_separated(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, secret_key=" new , old ,")
    assert load_or_create_keys(settings) == ["new", "old"]
    assert not (tmp_path / "secret_key").exists()


def test_generated_key_is_private_and_reused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "missing" / "data", secret_key="")
    first = load_or_create_keys(settings)
    path = tmp_path / "missing" / "data" / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) == 1 and len(first[0]) >= 40
    assert load_or_create_keys(settings) == first
    token = signer_from_settings(settings).sign(TokenKind.UNSUBSCRIBE, 1, 2)
    assert signer_from_settings(settings).verify(TokenKind.UNSUBSCRIBE, token) == (1, 2)
    assert [p.name for p in path.parent.iterdir()] == ["secret_key"]


def test_concurrent_first_use_agrees_on_one_key(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", secret_key="")
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: load_or_create_keys(settings), range(16)))
    assert all(r == results[0] for r in results)
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["secret_key"]


@given(raw=st.binary(max_size=64))
def test_base32_matches_the_standard_library(raw: bytes) -> None:
    import base64

    from mailer.tokens import _encode

    assert _encode(raw) == base64.b32encode(raw).decode("ascii").rstrip("=").lower()


# Tokens in messages already sent must verify after every upgrade (DESIGN.md §3: "Tokens do
# not expire"), so the format is pinned. Worked out with the standard library alone:
#   derived = HMAC-SHA256(b"key-one", b"campaigns/token")
#   payload = b"\x01" + LEB128(contact) + LEB128(campaign)
#   token   = base32(payload + HMAC-SHA256(derived, kind + payload)[:12]), lower, no "="
KNOWN = [
    (TokenKind.UNSUBSCRIBE, 300, 7, "agwaebzz3zxrjgofcla2hmzrjq"),
    (TokenKind.BOUNCE, 300, 7, "agwaebzpatfqitxpntdj65tase"),
    (TokenKind.UNSUBSCRIBE, 0, 0, "aeaabxh77nmhxzs7yzw6wie6"),
    (
        TokenKind.UNSUBSCRIBE,
        MAX_ID,
        MAX_ID,
        "ah77777777777737777777777777674c3mqrxcixp75xc3ozxi",
    ),
]


@pytest.mark.parametrize(("kind", "contact", "campaign", "token"), KNOWN)
def test_known_tokens(kind: TokenKind, contact: int, campaign: int, token: str) -> None:
    assert SIGNER.sign(kind, contact, campaign) == token
    assert SIGNER.signer_for(kind, campaign)(contact) == token
    assert SIGNER.verify(kind, token) == (contact, campaign)
    assert TokenSigner(["other", "key-one"]).verify(kind, token.upper()) == (contact, campaign)


def test_the_longest_token_fits_a_local_part() -> None:
    token = SIGNER.sign(TokenKind.BOUNCE, MAX_ID, MAX_ID)
    assert len(token) == 50
    assert len(f"unsubscribe+{token}") == 62
    assert SIGNER.verify(TokenKind.BOUNCE, token) == (MAX_ID, MAX_ID)
    assert SIGNER.verify(TokenKind.BOUNCE, token + "a") is None


def test_ids_at_the_edges() -> None:
    for contact, campaign in ((0, 0), (127, 128), (128, 127), (16383, 16384), (MAX_ID, 0)):
        for kind in TokenKind:
            token = SIGNER.sign(kind, contact, campaign)
            assert SIGNER.verify(kind, token) == (contact, campaign)
            assert SIGNER.signer_for(kind, campaign)(contact) == token
    for bad_call in (
        lambda: SIGNER.sign(TokenKind.BOUNCE, MAX_ID + 1, 0),
        lambda: SIGNER.signer_for(TokenKind.BOUNCE, -1),
        lambda: SIGNER.signer_for(TokenKind.BOUNCE, 0)(MAX_ID + 1),
    ):
        with pytest.raises(ValueError) as info:
            bad_call()
        assert str(info.value) == "token ids must be between 0 and 2**63-1"


def test_empty_keys_are_skipped() -> None:
    token = SIGNER.sign(TokenKind.UNSUBSCRIBE, 1, 2)
    assert TokenSigner(["", "key-one"]).sign(TokenKind.UNSUBSCRIBE, 1, 2) == token
    with pytest.raises(ValueError) as info:
        TokenSigner([])
    assert str(info.value) == "a token signer needs at least one non-empty key"


def test_key_file_keys_are_comma_separated(tmp_path: Path) -> None:
    (tmp_path / "secret_key").write_text(" new ,\n old \n", encoding="utf-8")
    assert load_or_create_keys(Settings(data_dir=tmp_path, secret_key=" , ")) == ["new", "old"]


def test_an_empty_key_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "secret_key").write_text(" ,\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_or_create_keys(Settings(data_dir=tmp_path, secret_key=""))
    assert str(info.value) == (
        f"the key file {tmp_path / 'secret_key'} is empty; delete it or set CAMPAIGNS_SECRET_KEY"
    )


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda p: p.mkdir(), "Is a directory"),
        (lambda p: p.write_bytes(b"\xff\xfe key"), "not UTF-8 text"),
    ],
)
def test_an_unreadable_key_file_is_one_line_naming_it(
    tmp_path: Path, make: Callable[[Path], object], why: str
) -> None:
    """Issue 15: a key path that is a directory was an internal error."""
    make(tmp_path / "secret_key")
    with pytest.raises(ConfigError) as info:
        load_or_create_keys(Settings(data_dir=tmp_path, secret_key=""))
    assert str(info.value) == f"the key file {tmp_path / 'secret_key'} cannot be read: {why}"


def test_a_new_data_dir_is_private(tmp_path: Path) -> None:
    load_or_create_keys(Settings(data_dir=tmp_path / "data", secret_key=""))
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    key = (tmp_path / "data" / "secret_key").read_text(encoding="utf-8")
    assert key.endswith("\n") and re.fullmatch(r"[A-Za-z0-9_-]{43}", key.strip())


def crafted(payload: bytes, kind: bytes = b"u", key: bytes = b"key-one") -> str:
    """A token over any payload, MAC'd with the right key by the recipe above (stdlib only)."""
    import base64
    import hashlib
    import hmac

    derived = hmac.new(key, b"campaigns/token", hashlib.sha256).digest()
    mac = hmac.new(derived, kind + payload, hashlib.sha256).digest()[:12]
    return base64.b32encode(payload + mac).decode().rstrip("=").lower()


def test_the_recipe_is_the_signers() -> None:
    assert crafted(b"\x01\xac\x02\x07") == "agwaebzz3zxrjgofcla2hmzrjq"
    assert SIGNER.verify(TokenKind.UNSUBSCRIBE, crafted(b"\x01\x05\x06")) == (5, 6)


@pytest.mark.parametrize(
    "payload",
    [
        b"\x02\x05\x06",  # another version
        b"\x01\x05\x06\x00",  # bytes after the campaign id
        b"\x01\x05",  # no campaign id
        b"\x01\x85",  # a contact id that ends mid-number
        b"\x01" + b"\x80" * 9 + b"\x01" + b"\x00",  # contact 2**63
        b"\x01\x00" + b"\x80" * 9 + b"\x01",  # campaign 2**63
        b"\x01" + b"\xff" * 9 + b"\x01" + b"\x00",  # contact 2**64-1
        b"\x01" + b"\xff" * 12,  # never ends
    ],
)
def test_well_signed_but_malformed_tokens_are_refused(payload: bytes) -> None:
    # Only a holder of the key could make these; no id beyond a database integer passes.
    token = crafted(payload)
    assert SIGNER.verify(TokenKind.UNSUBSCRIBE, token) is None


@pytest.mark.parametrize("length", range(31))
def test_short_and_empty_canonical_strings_are_refused(length: int) -> None:
    # "a" is zero bits, so every run of "a"s re-encodes to itself: only the length differs.
    assert SIGNER.verify(TokenKind.UNSUBSCRIBE, "a" * length) is None
    assert SIGNER.verify(TokenKind.BOUNCE, "7" * length) is None


def test_a_key_is_made_in_an_existing_data_dir(tmp_path: Path) -> None:
    # The usual first run: data_dir already holds the database, not yet a key.
    (tmp_path / "campaigns.db").write_bytes(b"")
    keys = load_or_create_keys(Settings(data_dir=tmp_path, secret_key=""))
    assert len(keys) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["campaigns.db", "secret_key"]
    assert load_or_create_keys(Settings(data_dir=tmp_path, secret_key="")) == keys
