"""Size and tolerance strings as people write them, and bytes written back."""

from __future__ import annotations

import pytest

from harness.sizes import SizeError, format_percent, format_size, parse_size, parse_tolerance


@pytest.mark.parametrize(("text", "expected"), [
    ("27528", 27528),
    (27528, 27528),
    (1.5e9, 1_500_000_000),
    ("0", 0),
    ("12 B", 12),
    ("12 bytes", 12),
    ("12 kB", 12_000),
    ("12 KB", 12_000),
    ("12kb", 12_000),
    ("12 KiB", 12 * 1024),
    ("900 MB", 900_000_000),
    ("900MB", 900_000_000),
    ("  900 mb ", 900_000_000),
    ("1.2 GB", 1_200_000_000),
    ("1.5 GiB", 1_610_612_736),
    ("1.5 gib", 1_610_612_736),
    ("0.5 MiB", 524_288),
    (".5 MiB", 524_288),
    ("2 TB", 2 * 10**12),
    ("1 TiB", 2**40),
    ("5 M", 5_000_000),
    ("5 Mi", 5 * 2**20),
    ("1e3 kB", 1_000_000),
    ("1.0000004", 1),  # fractions of a byte round
])
def test_parse_size(text: str | int | float, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", [
    "", "MB", "lots", "12 XB", "12 mbit", "1,5 GB", "1.5.2 GB", "12 MB 3", "-5 MB", -1, True, None,
    [12], "nan MB", "inf", "12 b b",
])
def test_parse_size_refuses(text: object) -> None:
    with pytest.raises(SizeError):
        parse_size(text)  # type: ignore[arg-type]


def test_parse_size_signed_allows_negative_sizes() -> None:
    assert parse_size("-5 MB", signed=True) == -5_000_000


@pytest.mark.parametrize(("text", "expected"), [
    ("10%", 0.10), ("10 %", 0.10), ("0%", 0.0), ("150%", 1.5), ("2.5%", 0.025),
    ("0.1", 0.1), (0.1, 0.1), (0, 0.0), ("1", 1.0), (1, 1.0),
])
def test_parse_tolerance(text: str | float, expected: float) -> None:
    assert parse_tolerance(text) == pytest.approx(expected)


@pytest.mark.parametrize(("text", "message"), [
    ("10", "ambiguous"), (10, "ambiguous"), ("-5%", "0 or more"), ("-0.1", "0 or more"),
    ("ten", "expected a tolerance"), ("%", "expected a tolerance"), (True, "expected a tolerance"),
    ("nan%", "0 or more"),
])
def test_parse_tolerance_refuses(text: object, message: str) -> None:
    with pytest.raises(SizeError, match=message):
        parse_tolerance(text)  # type: ignore[arg-type]


@pytest.mark.parametrize(("n", "kwargs", "expected"), [
    (0, {}, "0 B"),
    (1023, {}, "1023 B"),
    (1024, {}, "1.00 KiB"),
    (1536, {}, "1.50 KiB"),
    (27528, {}, "26.9 KiB"),
    (900_000_000, {}, "858 MiB"),
    (1_610_612_736, {}, "1.50 GiB"),
    (900_000_000, {"binary": False}, "900 MB"),
    (12_000, {"binary": False}, "12.0 kB"),
    (-5 * 2**20, {}, "-5.00 MiB"),
    (5 * 2**20, {"signed": True}, "+5.00 MiB"),
    (0, {"signed": True}, "0 B"),
    (None, {}, "-"),
    (float("nan"), {}, "-"),
])
def test_format_size(n: float | None, kwargs: dict[str, bool], expected: str) -> None:
    assert format_size(n, **kwargs) == expected


@pytest.mark.parametrize("text", ["27528", "900 MB", "1.5 GiB", "12 kB", "3 TiB"])
def test_format_then_parse_round_trips_within_rounding(text: str) -> None:
    n = parse_size(text)
    assert parse_size(format_size(n)) == pytest.approx(n, rel=0.01)


@pytest.mark.parametrize(("f", "signed", "expected"), [
    (0.125, False, "12.5%"), (0.125, True, "+12.5%"), (-0.5, True, "-50.0%"), (None, False, "-"),
    (float("inf"), False, "-"),
])
def test_format_percent(f: float | None, signed: bool, expected: str) -> None:
    assert format_percent(f, signed=signed) == expected
