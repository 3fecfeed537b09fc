"""The one YAML reader for scenarios, ``--set`` values and a run's ``scenario.yaml``.

``yaml.safe_load`` builds no objects from tags, but it trusts the document's shape: aliases are
shared when loaded and only multiply when something walks the result (a 433-byte file of nested
aliases is 387 million values), an alias may point into itself, keys may repeat (the last wins,
silently), and an integer of 5000 digits or a date of month 13 is a ``ValueError`` rather than a
YAML error. This reader refuses each in one line naming the key and the line, before anything
walks the data:

- at most :data:`MAX_BYTES` of text and :data:`MAX_NODES` values, counting every use of an alias,
  nested at most :data:`MAX_DEPTH` deep: a resolved scenario holds about 120 values five levels
  deep, so the caps leave room for long lists while bounding any load to about a second;
- no alias inside the list or mapping it names; no key twice in one mapping (a merge key's
  values may still be overridden);
- integers of at most :data:`MAX_INT_DIGITS` digits, Python's own limit for reading and printing;
  a scalar PyYAML recognises but cannot build (``2001-13-01``, ``!!bool maybe``) is named;
- files are UTF-8; a byte that is not is reported with its line, column and key;
- no tag beyond YAML's own (``!!python/...``): named with its key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from harness.records.text import printable

MAX_BYTES = 1 << 20  # 1 MiB; the scenarios we ship are under 2 KB
# values, keys included, after aliases; PyYAML composes ~30k values a second in pure Python, so
# this bounds a load to about 0.4 s (the parse dominates: validating them takes a tenth of that)
MAX_NODES = 10_000
MAX_DEPTH = 20  # nesting levels; a scenario uses 5 (budgets.phases.forward.peak_main_rss)
MAX_INT_DIGITS = 4300  # int("...") refuses more (Python 3.11), and str() cannot print more
_INT_LIMIT = 10**MAX_INT_DIGITS
_MERGE = "tag:yaml.org,2002:merge"
_NON_PRINTABLE = yaml.reader.Reader.NON_PRINTABLE  # what PyYAML's reader refuses


class YamlInputError(yaml.YAMLError):
    """YAML this reader refuses; ``format(source)`` is the one-line message."""

    def __init__(self, problem: str, key: str = "", line: int | None = None, where: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.key = key
        # Where in the file, appended for files only: " (line N)" unless told otherwise.
        self.where = where if where is not None else (f" (line {line})" if line is not None else "")

    def format(self, source: str, lines: bool = True) -> str:
        """``source: key: problem (line N)``; ``lines=False`` for text that is one value."""
        text = self.problem + (self.where if lines else "")
        return f"{source}: {self.key}: {text}" if self.key else f"{source}: {text}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Loader(yaml.SafeLoader):
    """SafeLoader with the limits above, checked while composing and before constructing."""

    def __init__(self, text: str, prefix: str) -> None:
        super().__init__(text)
        self._prefix = prefix
        self._stack: list[str] = []  # key paths of the nodes being composed
        self._composed = 0
        self.paths: dict[int, str] = {}  # id(node) -> dotted key where the node is written
        self._alias_lines: dict[str, int] = {}  # dotted key -> line of an alias written there

    def _path(self, node: Node) -> str:
        return self.paths.get(id(node), self._prefix)

    # -- composing: the document as written, aliases not yet followed --

    def _event_line(self) -> int:
        return int(self.peek_event().start_mark.line) + 1  # type: ignore[no-untyped-call]

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        base = self._stack[-1] if self._stack else self._prefix
        if parent is None:
            path = base
        elif isinstance(parent, SequenceNode):
            path = f"{base}[{index}]"
        elif isinstance(index, ScalarNode):  # a mapping's value
            path = _join(base, index.value)
        elif index is None:  # a mapping's key: named once composed, below
            path = base
        else:
            path = _join(base, "?")
        if self.check_event(yaml.AliasEvent):
            self._alias_lines[path] = self._event_line()
            return super().compose_node(parent, index)
        line = self._event_line()
        self._composed += 1
        if self._composed > MAX_NODES:
            raise YamlInputError(f"more than {MAX_NODES} values", path, line)
        if len(self._stack) >= MAX_DEPTH:
            raise YamlInputError(f"nested more than {MAX_DEPTH} levels deep", path, line)
        self._stack.append(path)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._stack.pop()
        if index is None and isinstance(parent, MappingNode) and isinstance(node, ScalarNode):
            path = _join(base, node.value)
        if node is not None:
            self.paths[id(node)] = path
        return node

    # -- between composing and constructing: what the aliases make of it --

    def construct_document(self, node: Node) -> Any:
        self._check(node, {}, set())
        return super().construct_document(node)

    def _check(self, node: Node, done: dict[int, tuple[int, int]], open_: set[int]) -> tuple[int, int]:
        """(values, depth) of ``node`` with every alias followed; refuses loops and repeated keys.

        An anchor comes before its aliases, so an alias meets a node already done or one still
        open above it (a loop): the recursion is only as deep as the document is written.
        """
        key = id(node)
        if key in done:
            return done[key]
        here = self._path(node)
        children: list[tuple[Node, str]] = []  # each with the key where it is written
        if isinstance(node, SequenceNode):
            children = [(child, f"{here}[{i}]") for i, child in enumerate(node.value)]
        elif isinstance(node, MappingNode):
            self._refuse_repeated_keys(node)
            for k, v in node.value:
                children.append((k, here))
                children.append((v, _join(here, k.value if isinstance(k, ScalarNode) else "?")))
        open_.add(key)
        size, depth = 1, 0
        for child, where in children:
            if id(child) in open_:
                raise YamlInputError("an alias refers to the list or mapping that holds it",
                                     where, self._alias_lines.get(where))
            s, d = self._check(child, done, open_)
            size, depth = size + s, max(depth, d)
            if size > MAX_NODES:
                raise YamlInputError(f"aliases expand it to more than {MAX_NODES} values",
                                     here, node.start_mark.line + 1)
        depth += 1
        if depth > MAX_DEPTH:
            raise YamlInputError(f"aliases nest it more than {MAX_DEPTH} levels deep",
                                 here, node.start_mark.line + 1)
        open_.discard(key)
        done[key] = (size, depth)
        return size, depth

    def _refuse_repeated_keys(self, node: MappingNode) -> None:
        # Keys compared as loaded, so `1` and `0x1` are the same key, as they would be in the dict.
        seen: dict[Any, Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE or not isinstance(key_node, ScalarNode):
                continue  # merged keys may be overridden; a list as a key fails when constructed
            key = self.construct_object(key_node)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:
                continue
            if first is not key_node:
                a, b = first.start_mark.line + 1, key_node.start_mark.line + 1
                raise YamlInputError("appears twice", self._path(key_node),
                                     where=f" on line {a}" if a == b else f", on lines {a} and {b}")

    # -- constructing --

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        if not isinstance(node, ScalarNode):
            return super().construct_object(node, deep)
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, LookupError, AttributeError, ArithmeticError):
            # PyYAML's scalar constructors let these through: a date of month 13, `!!bool maybe`
            kind = node.tag.rpartition(":")[2]
            shown = node.value if len(node.value) <= 40 else node.value[:37] + "..."
            raise YamlInputError(f"not a valid {kind}: {shown!r}", self._path(node),
                                 node.start_mark.line + 1) from None

    def _construct_int(self, node: ScalarNode) -> int:
        too_large = YamlInputError(f"integer too large, more than {MAX_INT_DIGITS} digits",
                                   self._path(node), node.start_mark.line + 1)
        # Counted before reading: int() refuses more decimal digits, and base-60 integers
        # (1:0:0...) cost quadratic time to build.
        text = node.value
        if len(text) > 2 * MAX_INT_DIGITS or sum(c.isdigit() for c in text) > MAX_INT_DIGITS:
            raise too_large
        value: int = self.construct_yaml_int(node)
        if abs(value) >= _INT_LIMIT:  # hexadecimal, octal, binary, base 60
            raise too_large
        return value


    def _construct_undefined(self, node: Node) -> Any:
        # a tag SafeLoader has no constructor for (``!!python/object/apply:os.system``): named
        # with its key, not only its line
        raise YamlInputError(f"tag {node.tag!r} is not allowed: a scenario holds plain values",
                             self._path(node), node.start_mark.line + 1)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader._construct_int)
_Loader.add_constructor(None, _Loader._construct_undefined)


def load_text(text: str, prefix: str = "") -> Any:
    """Load one YAML document with the limits above; ``prefix`` is the key the document sits at.

    A syntax error is a :class:`YamlInputError` too, ``not valid YAML at line N: ...``, and so is
    a character YAML does not allow (ESC, BEL, NUL; a byte of an argument that was not UTF-8).
    """
    loader: _Loader | None = None
    try:
        loader = _Loader(text, prefix)  # the reader refuses control characters here already
        return loader.get_single_data()
    except YamlInputError:
        raise
    except yaml.reader.ReaderError as exc:
        raise _unprintable(text, exc.position, prefix) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise YamlInputError(f"not valid YAML{where}: {problem}", prefix) from None
    finally:
        if loader is not None:
            loader.dispose()


def _unprintable(text: str, position: int, prefix: str) -> YamlInputError:
    """The first character YAML refuses, shown escaped, with its line, column and key."""
    position = min(max(position, 0), len(text) - 1)
    char = text[position]
    line = text.count("\n", 0, position)
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    code = ord(char)
    what = (f"byte 0x{code - 0xDC00:02x} that is not UTF-8" if 0xDC80 <= code <= 0xDCFF
            else f"character {printable(char)} that YAML does not allow")
    # the key where it stands, from the text with every such character made harmless
    key = _key_at(_NON_PRINTABLE.sub("?", text), line, column - 1) or prefix
    return YamlInputError(f"a {what}", key, where=f" (line {line + 1}, column {column})")


def load_file(path: Path) -> Any:
    """Read and load a YAML file (UTF-8, at most :data:`MAX_BYTES`). ``OSError`` passes through."""
    with open(path, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise YamlInputError(f"larger than {MAX_BYTES >> 20} MiB; a scenario is a few KB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(data, exc.start) from None
    return load_text(text)


def _not_utf8(data: bytes, offset: int) -> YamlInputError:
    """Where the first byte that is not UTF-8 lies: line, column and, where it parses, the key."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    line = data.count(b"\n", 0, offset)  # 0-based
    column = len(data[line_start:offset].decode("utf-8", errors="replace")) + 1
    problem = f"not UTF-8: byte 0x{data[offset]:02x} at line {line + 1}, column {column}"
    return YamlInputError(problem, _key_at(data.decode("utf-8", errors="replace"), line, column - 1))


def _key_at(text: str, line: int, column: int) -> str:
    """The key of the value written at (line, column), both 0-based; "" where there is none."""
    try:
        loader = _Loader(text, "")
    except yaml.YAMLError:
        return ""
    try:
        root = loader.get_single_node()
    except yaml.YAMLError:
        return ""
    finally:
        loader.dispose()
    best: Node | None = None
    stack = [root] if root is not None else []
    seen: set[int] = set()  # aliases may share nodes, or loop
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, ScalarNode):
            start, end = node.start_mark, node.end_mark
            if (start.line, start.column) <= (line, column) < (end.line, end.column):
                best = node
        elif isinstance(node, SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, MappingNode):
            stack.extend(n for pair in node.value for n in pair)
    return loader.paths.get(id(best), "") if best is not None else ""
