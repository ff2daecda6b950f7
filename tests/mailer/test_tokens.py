"""Signed tokens: right ids back, nothing else ever verifies, keys rotate, keys are kept."""

from __future__ import annotations

import re
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaigns.config import Settings
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
