"""bounded_decimal: digits only, leading zeros allowed, huge values never converted."""

from __future__ import annotations

import pytest

from raftkv.wire.decimals import bounded_decimal


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("42", 42),
        ("0000000000000000000000000005", 5),  # longer than the maximum's digits
        ("100", 100),
        ("101", 101),  # maximum + 1 stands for every value above the maximum
        ("99999", 101),
        ("9" * 5000, 101),  # past int()'s 4300-digit limit: no ValueError
    ],
)
def test_values(text: str, value: int) -> None:
    assert bounded_decimal(text, 100) == value


@pytest.mark.parametrize("text", ["", "-1", "+1", "1.0", "²", "1 ", "0x10"])
def test_anything_but_ascii_digits_is_none(text: str) -> None:
    assert bounded_decimal(text, 100) is None
