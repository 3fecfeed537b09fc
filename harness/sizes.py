"""Sizes and tolerances as people write them, and bytes written back for people.

``"900 MB"`` is decimal (900·10⁶ bytes), ``"1.5 GiB"`` binary (1.5·2³⁰); a bare number is bytes.
Unit letters are case-insensitive except that ``b`` never means bits. Tolerances are a percentage
(``"10%"``) or a fraction (``"0.1"``); a bare number above 1 is refused as ambiguous.
"""

from __future__ import annotations

import math
import re

UNITS: dict[str, int] = {
    "": 1, "b": 1, "byte": 1, "bytes": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2,
    "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2,
    "gi": 1024**3, "gib": 1024**3, "ti": 1024**4, "tib": 1024**4,
}
KiB = 1024
MiB = 1024**2
GiB = 1024**3

_SIZE = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)\s*$")
_BINARY = (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))
_DECIMAL = (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("kB", 1000))


class SizeError(ValueError):
    """A size or tolerance string that cannot be read; the message says what was expected."""


def parse_size(value: str | int | float, *, signed: bool = False) -> int:
    """``"900 MB"`` -> 900000000, ``"1.5 GiB"`` -> 1610612736, ``27528`` -> 27528 (bytes).

    Negative sizes are refused unless ``signed``. Fractions of a byte are rounded.
    """
    if isinstance(value, bool):
        raise SizeError(f"expected a size like '900 MB' or '1.5 GiB', got {value!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    elif isinstance(value, str):
        m = _SIZE.match(value)
        if m is None or m[2].lower() not in UNITS:
            raise SizeError(f"expected a size like '900 MB' or '1.5 GiB', got {value!r}")
        number, unit = float(m[1]), m[2].lower()
    else:
        raise SizeError(f"expected a size like '900 MB' or '1.5 GiB', got {value!r}")
    if not math.isfinite(number):
        raise SizeError(f"expected a finite size, got {value!r}")
    if number < 0 and not signed:
        raise SizeError(f"expected a size of 0 or more, got {value!r}")
    return int(round(number * UNITS[unit]))


def parse_tolerance(value: str | int | float) -> float:
    """``"10%"`` -> 0.1, ``"0.1"`` -> 0.1, ``0`` -> 0.0; refuses negatives and a bare ``10``."""
    if isinstance(value, bool):
        raise SizeError(f"expected a tolerance like '10%' or 0.1, got {value!r}")
    text = str(value).strip()
    percent = text.endswith("%")
    try:
        number = float(text[:-1] if percent else text)
    except ValueError:
        raise SizeError(f"expected a tolerance like '10%' or 0.1, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise SizeError(f"expected a tolerance of 0 or more, got {value!r}")
    if percent:
        return number / 100.0
    if number > 1:
        raise SizeError(f"ambiguous tolerance {value!r}: write '{text}%' or a fraction such as 0.1")
    return number


def format_size(n: float | int | None, *, binary: bool = True, signed: bool = False,
                unit: str | None = None, digits: int = 1, missing: str = "-") -> str:
    """Bytes for people, the one byte formatter: ``1536`` -> ``"1.5 KiB"``; ``None`` -> ``missing``.

    By default the unit is the largest that keeps the number at least 1, with three significant
    digits; ``unit`` (``"MiB"``, ``"KiB"``, ``"B"``, ...) fixes it, with ``digits`` decimals and
    thousands separators (``"1,234.5 MiB"``). ``signed`` adds a ``+`` to positive numbers.
    """
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return missing
    sign = "-" if n < 0 else ("+" if signed and n > 0 else "")
    a = abs(float(n))
    if unit is not None:
        return f"{sign}{a / UNITS[unit.lower()]:,.{digits}f} {unit}"
    for name, factor in _BINARY if binary else _DECIMAL:
        if a >= factor:
            v = a / factor
            places = 0 if v >= 100 else (1 if v >= 10 else 2)
            return f"{sign}{v:.{places}f} {name}"
    return f"{sign}{a:.0f} B"


def format_percent(fraction: float | None, *, signed: bool = False) -> str:
    """``0.125`` -> ``"12.5%"``; ``None`` -> ``"-"``."""
    if fraction is None or math.isnan(fraction) or math.isinf(fraction):
        return "-"
    text = f"{fraction * 100:+.1f}%" if signed else f"{fraction * 100:.1f}%"
    return text
