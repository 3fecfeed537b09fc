"""The one JSON reader (and writer) for run directories and baseline files.

``json.loads`` trusts the document's shape: it recurses once per level of nesting (``[`` a
hundred thousand times is a RecursionError), turns an integer of more than 4,300 digits into a
ValueError, and reads ``1e400``, ``Infinity`` and ``NaN`` as floats that ``json.dumps`` then
writes back as ``Infinity``, which is not JSON. This reader refuses each as a
:class:`RecordError`, one line ``<file>: <field>: <what>``:

- nested at most :data:`MAX_DEPTH` levels (a summary is 5 deep, a manifest's scenario 6), checked
  by a scan of the brackets outside strings before ``json.loads`` runs;
- integers of at most :data:`MAX_INT_DIGITS` digits: every figure a record holds (bytes, counts,
  pids, nanoseconds) fits in 64 bits, and a longer one would break the arithmetic after it;
- finite numbers only (a caller may name top-level keys whose non-finite value reads as None,
  not recorded: a metric's ``value``, where a loss gone NaN is a reading, not damage);
- UTF-8 only, as the writers write it.

:func:`dumps` is its writer: ``allow_nan=False``, naming the field that holds a non-finite value
instead of writing it. Imports nothing of the harness but its errors, so both processes can.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Iterator
from itertools import accumulate, count, repeat
from pathlib import Path
from typing import Any

from harness.errors import UsageError

MAX_DEPTH = 64
MAX_INT_DIGITS = 20  # 2**64 has 20 digits

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")  # bytes.translate's delete argument
_OPENS = bytes(1 if chr(b) in "[{" else 0 for b in range(256))
_TOKEN = re.compile(r'\s*(?:("[^"\\]*(?:\\.[^"\\]*)*")|([\[\]{}:,])|([-+\w.]+))')


class RecordError(UsageError):
    """A record (a run's JSON file or report table, a baseline) that cannot be taken as written.

    ``str()`` is the one line the CLI prints: ``<file>: <field>: <what>`` (no field when the fault
    is the file's as a whole). Bad input: exit 2.
    """

    def __init__(self, file: str, field: str, what: str) -> None:
        self.file, self.field, self.what = file, field, what
        super().__init__(f"{file}: {self.detail}")

    @property
    def detail(self) -> str:
        """The message without the file: ``field: what``, as a problem on a line names it."""
        return f"{self.field}: {self.what}" if self.field else self.what


class NotJson(RecordError):
    """Text that is not JSON at all (a syntax error or bytes that are not UTF-8), as against
    JSON beyond this reader's limits."""


class _Refused(ValueError):
    """Raised inside ``json.loads`` by the number hooks; located and named afterwards."""


def _refuse_constant(name: str) -> Any:
    raise _Refused(name)


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(text)
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(text)
    return value


def _depth(data: bytes) -> int:
    """The deepest nesting of brackets in ``data``, strings included: an upper bound, exact for
    JSON whose strings hold no brackets. C-speed passes only: a tenth of ``json.loads``'s time."""
    brackets = data.translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= MAX_DEPTH:
        return 0
    # depth after the i-th bracket (1-based) = opens so far - closes so far = 2 * opens - i
    opens = accumulate(brackets.translate(_OPENS))
    return max(map(operator.sub, map(operator.mul, opens, repeat(2)), count(1)))


def _too_deep(text: str) -> bool:
    """Whether ``text`` nests past MAX_DEPTH, before ``json.loads`` recurses that deep."""
    data = text.encode("utf-8", errors="surrogatepass")
    if _depth(data) <= MAX_DEPTH:
        return False
    return _depth(_STRING.sub("", text).encode("utf-8", errors="surrogatepass")) > MAX_DEPTH


def _number_fault(token: str) -> str | None:
    """What is wrong with a number as written, or None."""
    if token in ("NaN", "Infinity", "-Infinity"):
        return f"not a finite number ({token})"
    if re.fullmatch(r"-?\d+", token):
        digits = len(token.lstrip("-"))
        if digits > MAX_INT_DIGITS:
            return f"integer of {digits} digits, more than the {MAX_INT_DIGITS} a record holds"
        return None
    try:
        value = float(token)
    except ValueError:
        return None
    shown = token if len(token) <= 24 else token[:21] + "..."
    return None if math.isfinite(value) else f"not a finite number ({shown})"


def _walk(text: str, unknown_at: frozenset[str] = frozenset()) -> Iterator[tuple[str, str]]:
    """(field path, fault) of each fault in document order: nesting past MAX_DEPTH, a number this
    reader refuses (a non-finite one at a top-level key of ``unknown_at`` is none). Pure Python:
    run only once a fault is known to be there."""
    stack: list[list[Any]] = []  # [kind, key or index, expecting a key]

    def path() -> str:
        parts = [str(frame[1]) for frame in stack if frame[1] is not None]
        return ".".join(parts if len(parts) <= 8 else [*parts[:6], "..."])

    for m in _TOKEN.finditer(text):
        string, punct, word = m.groups()
        top = stack[-1] if stack else None
        if string is not None:
            if top is not None and top[0] == "{" and top[2]:
                try:
                    top[1] = json.loads(string)
                except ValueError:
                    top[1] = string[1:-1]
            continue
        if punct in ("[", "{"):
            if len(stack) >= MAX_DEPTH:
                yield path(), f"nested more than {MAX_DEPTH} levels deep"
                return
            stack.append([punct, 0 if punct == "[" else None, punct == "{"])
        elif punct in ("]", "}"):
            if stack:
                stack.pop()
        elif punct == ":":
            if top is not None:
                top[2] = False
        elif punct == ",":
            if top is not None and top[0] == "[":
                top[1] += 1
            elif top is not None:
                top[2] = True
        elif word is not None:
            fault = _number_fault(word)
            lenient = (len(stack) == 1 and stack[0][1] in unknown_at
                       and fault is not None and fault.startswith("not a finite"))
            if fault is not None and not lenient:
                yield path(), fault


def _located(text: str, source: str, fallback: str,
             unknown_at: frozenset[str] = frozenset()) -> RecordError:
    for where, fault in _walk(text, unknown_at):
        return RecordError(source, where, fault)
    return RecordError(source, "", fallback)


def loads(data: str | bytes, source: str, unknown_at: frozenset[str] = frozenset()) -> Any:
    """Parse one JSON document under the limits above; ``source`` names it in any error.

    ``unknown_at``: top-level keys of an object whose value, a non-finite number, reads as None
    (not recorded) rather than as a fault: a metric's ``value``, where a loss gone NaN is what
    the workload measured, not damage to the file.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            at = f" at line {line}" if b"\n" in data.strip() else ""
            raise NotJson(source, "", f"not UTF-8: byte 0x{data[exc.start]:02x}{at}") from None
    else:
        text = data
    if _too_deep(text):
        raise _located(text, source, f"nested more than {MAX_DEPTH} levels deep")
    if unknown_at:
        return _loads_lenient(text, source, unknown_at)
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_int=_int, parse_float=_float)
    except json.JSONDecodeError as exc:
        at = f"line {exc.lineno} column {exc.colno}" if "\n" in text.strip() else f"column {exc.colno}"
        raise NotJson(source, "", f"not valid JSON: {exc.msg} at {at}") from None
    except _Refused as exc:
        raise _located(text, source, f"refused number {str(exc)[:24]}") from None
    except (RecursionError, ValueError):  # not expected past the checks above; named, never raised
        raise _located(text, source, "cannot be read as JSON") from None


_UNKNOWN = object()  # a non-finite number, while ``unknown_at`` decides whether it may stand


def _loads_lenient(text: str, source: str, unknown_at: frozenset[str]) -> Any:
    seen: list[bool] = []

    def unknown(_: str) -> Any:
        seen.append(True)
        return _UNKNOWN

    def number(token: str) -> Any:
        value = float(token)
        return value if math.isfinite(value) else unknown(token)

    try:
        doc = json.loads(text, parse_constant=unknown, parse_int=_int, parse_float=number)
    except ValueError:  # a syntax error or a refused integer: as the strict reader says it
        return loads(text, source)
    if not seen:
        return doc
    if isinstance(doc, dict):
        for key in unknown_at:
            if doc.get(key) is _UNKNOWN:
                doc[key] = None
    if _holds(doc, _UNKNOWN):
        raise _located(text, source, "not a finite number", unknown_at)
    return doc


def _holds(obj: Any, target: object) -> bool:
    """Whether ``target`` is anywhere in ``obj`` (walked without recursion)."""
    todo = [obj]
    while todo:
        value = todo.pop()
        if value is target:
            return True
        if isinstance(value, dict):
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)
    return False


def read(path: Path, source: str | None = None) -> Any:
    """Read and parse the JSON file ``path``; ``source`` (default: the path) names it in errors.
    A missing or unreadable file is a RecordError too."""
    name = str(path) if source is None else source
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise RecordError(name, "", "no such file") from None
    except IsADirectoryError:
        raise RecordError(name, "", "a folder, not a file") from None
    except OSError as exc:
        raise RecordError(name, "", f"cannot read: {exc.strerror or type(exc).__name__}") from None
    return loads(data, name)


def _non_finite(obj: Any) -> str | None:
    """The dotted path of the first non-finite float in ``obj`` (walked without recursion)."""
    todo: list[tuple[Any, str]] = [(obj, "")]
    while todo:
        value, where = todo.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return where
        if isinstance(value, dict):
            items = [(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            items = [(v, f"{where}.{i}" if where else str(i)) for i, v in enumerate(value)]
        else:
            continue
        todo.extend(reversed(items))
    return None


def dumps(obj: Any, source: str, **kwargs: Any) -> str:
    """``json.dumps(obj, **kwargs)`` that never writes ``Infinity`` or ``NaN``: a non-finite
    number is a RecordError naming ``source`` and the field that holds it."""
    try:
        return json.dumps(obj, allow_nan=False, **kwargs)
    except ValueError:
        where = _non_finite(obj)
        if where is None:
            raise
        raise RecordError(source, where, "not a finite number: not written") from None
    except RecursionError:
        raise RecordError(source, "", "nested too deep to be written as JSON") from None
