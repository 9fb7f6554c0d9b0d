"""Decimal integers from URLs and headers, without letting a huge one cost a 500."""

from __future__ import annotations

__all__ = ["bounded_decimal"]


def bounded_decimal(text: str, maximum: int) -> int | None:
    """The value of ``text`` if it is ASCII digits, else None; a value above ``maximum``
    comes back as ``maximum + 1`` without being converted.

    ``isascii`` because ``isdigit`` alone admits digits ``int`` refuses ("²"); the length
    check (leading zeros aside, so "007" is 7) because ``int`` refuses more than 4300
    digits with a ValueError.
    """
    if not text or not text.isascii() or not text.isdigit():
        return None
    if len(text.lstrip("0")) > len(str(maximum)):
        return maximum + 1
    return min(int(text), maximum + 1)
