"""Case folding of tags and cities: the letters A-Z only, as SQL compares them.

SQLite's ``lower()`` and NOCASE collation fold A-Z and nothing else, and PostgreSQL is
made to do the same (``lower(x COLLATE "C")``), so this is the one fold that agrees with
both. It lives apart from segments so that the CSV reader, which must not import
SQLAlchemy (campaigns/csv_reading.py), folds tags exactly as segments do.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def fold(text: str) -> str:
    """``text`` with A-Z lower-cased and every other character as written."""
    return text.translate(_ASCII_LOWER)


def unique_tags(tags: Iterable[str]) -> list[str]:
    """Tags without repeats under ``fold``, each kept as first written."""
    seen: set[str] = set()
    out: list[str] = []
    for tag in tags:
        key = fold(tag)
        if key not in seen:
            seen.add(key)
            out.append(tag)
    return out
