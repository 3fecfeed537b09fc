"""A record that fails its model, said in one line: the field at fault and what was expected."""

from __future__ import annotations

import json

from pydantic import ValidationError


def error_line(exc: ValidationError, skip: int = 0) -> str:
    """The first field at fault, ``a.b.0.c: what was expected (got ...)``, and how many more;
    ``skip``: the locations' first parts to leave out (a tagged union's tag)."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"][skip:]) or "(the whole record)"
    kind = str(first["type"])
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        what = "expected a JSON object"
    elif kind == "list_type":
        what = "expected a list"
    elif kind == "missing":
        what = "missing"
    else:
        what = first["msg"][0].lower() + first["msg"][1:]
    if kind != "missing":
        what += f" (got {json.dumps(first.get('input'), default=str)[:40]})"
    more = exc.error_count() - 1
    return f"{where}: {what}" + (f" (and {more} more)" if more else "")
