"""``--where``: a small filter language over an item's payload, parsed once and translated per store.

Grammar (keywords in any case)::

    expr   := term ("or" term)*
    term   := factor ("and" factor)*
    factor := "not" factor | "(" expr ")" | FIELD OP VALUE | FIELD "in" "[" VALUE ("," VALUE)* "]"
    OP     := "=" | "!=" | "<" | "<=" | ">" | ">="
    VALUE  := "text" | 'text' | number | true | false

Examples: ``album = "2024"``, ``width >= 640 and not folder in ["tmp", "old"]``.

One meaning on every store: a comparison with a field an item lacks is false, so ``!=`` and ``not`` keep
items without the field (Qdrant's ``must_not``; the SQL forms say it with ``COALESCE``). Translations:
`Where.sql` (SQLite and LanceDB), `qdrant_filter.to_qdrant` (Qdrant's filter models) and `Where.matches` (a payload
in Python, the oracle of the tests).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from counterclip.errors import InputError

OPS = ("=", "!=", "<", "<=", ">", ">=")
Value = str | int | float | bool
_TOKEN = re.compile(
    r"\s*(?:(?P<str>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')|(?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
    r"|(?P<op>!=|<=|>=|=|<|>)|(?P<punct>[()\[\],])|(?P<word>[A-Za-z_][A-Za-z0-9_.]*))"
)
_KEYWORDS = {"and", "or", "not", "in", "true", "false"}


@dataclass(frozen=True)
class Cmp:
    field: str
    op: str
    value: Value


@dataclass(frozen=True)
class In:
    field: str
    values: tuple[Value, ...]


@dataclass(frozen=True)
class Bool:
    op: str  # "and", "or", "not"
    items: tuple[Node, ...]


Node = Cmp | In | Bool


@dataclass(frozen=True)
class Where:
    """A parsed ``--where`` filter (`parse_where`); ``text`` is what the user wrote."""

    text: str
    node: Node

    def fields(self) -> set[str]:
        """The payload fields the filter reads."""
        return _fields(self.node)

    def matches(self, payload: dict[str, Any]) -> bool:
        """Whether an item with this payload passes (the reference semantics)."""
        return _matches(self.node, payload)

    def sql(self, column: Callable[[str], str], literal: Callable[[Value], str] | None = None) -> str:
        """A SQL boolean expression. ``column`` maps a field to its SQL (raising `InputError` for a field
        the store does not have); ``literal`` renders a value (default: SQL literals, quotes doubled)."""
        return _sql(self.node, column, literal or sql_literal)


@functools.lru_cache(maxsize=256)
def parse_where(text: str) -> Where:
    """Parse a filter; `InputError` naming the position of the first thing it cannot read.

    Examples::

        >>> parse_where('album = "2024"').matches({"album": "2024"})
        True
    """
    tokens = _tokenise(text)
    parser = _Parser(text, tokens)
    node = parser.expr()
    if parser.pos != len(tokens):
        parser.fail("an operator, 'and' or 'or'")
    return Where(text, node)


def sql_literal(value: Value) -> str:
    """A SQL literal: strings single-quoted with quotes doubled, booleans TRUE/FALSE, numbers as written."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


def _tokenise(text: str) -> list[tuple[str, str, int]]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise InputError(f"--where {text!r}: cannot read {text[pos:].strip()[:20]!r} at position {pos}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind), match.start(kind)))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str, tokens: list[tuple[str, str, int]]) -> None:
        self.text, self.tokens, self.pos = text, tokens, 0

    def fail(self, wanted: str) -> None:
        where = self.tokens[self.pos][2] if self.pos < len(self.tokens) else len(self.text)
        got = repr(self.tokens[self.pos][1]) if self.pos < len(self.tokens) else "the end"
        raise InputError(f"--where {self.text!r}: expected {wanted} at position {where}, found {got}")

    def peek(self) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            return "", ""
        kind, value, _ = self.tokens[self.pos]
        return kind, value.lower() if kind == "word" else value

    def take(self, kind: str, value: str | None = None) -> str:
        got_kind, got = self.peek()
        if got_kind != kind or (value is not None and got != value):
            self.fail(repr(value) if value else kind)
        self.pos += 1
        return self.tokens[self.pos - 1][1]

    def expr(self) -> Node:
        items = [self.term()]
        while self.peek() == ("word", "or"):
            self.pos += 1
            items.append(self.term())
        return items[0] if len(items) == 1 else Bool("or", tuple(items))

    def term(self) -> Node:
        items = [self.factor()]
        while self.peek() == ("word", "and"):
            self.pos += 1
            items.append(self.factor())
        return items[0] if len(items) == 1 else Bool("and", tuple(items))

    def factor(self) -> Node:
        kind, value = self.peek()
        if (kind, value) == ("word", "not"):
            self.pos += 1
            return Bool("not", (self.factor(),))
        if (kind, value) == ("punct", "("):
            self.pos += 1
            node = self.expr()
            self.take("punct", ")")
            return node
        if kind != "word" or value in _KEYWORDS:
            self.fail("a field name")
        field = self.take("word")
        if self.peek() == ("word", "in"):
            self.pos += 1
            self.take("punct", "[")
            values = [self.value()]
            while self.peek() == ("punct", ","):
                self.pos += 1
                values.append(self.value())
            self.take("punct", "]")
            return In(field, tuple(values))
        if self.peek()[0] != "op":
            self.fail("one of " + " ".join(OPS) + " or 'in'")
        op = self.take("op")
        return Cmp(field, op, self.value())

    def value(self) -> Value:
        kind, value = self.peek()
        if kind == "str":
            self.pos += 1
            raw = self.tokens[self.pos - 1][1][1:-1]
            return re.sub(r"\\(.)", r"\1", raw)
        if kind == "num":
            self.pos += 1
            number = float(value)
            return int(number) if re.fullmatch(r"-?\d+", value) else number
        if kind == "word" and value in ("true", "false"):
            self.pos += 1
            return value == "true"
        self.fail("a value (a quoted text, a number, true or false)")
        raise AssertionError  # fail raised


def _fields(node: Node) -> set[str]:
    if isinstance(node, Bool):
        return set().union(*(_fields(item) for item in node.items))
    return {node.field}


def _compare(have: Any, op: str, value: Value) -> bool:
    if have is None:
        return False
    try:
        return {
            "=": have == value,
            "!=": have != value,
            "<": have < value,
            "<=": have <= value,
            ">": have > value,
            ">=": have >= value,
        }[op]
    except TypeError:  # a number compared with a text: not equal, not ordered
        return False


def _matches(node: Node, payload: dict[str, Any]) -> bool:
    if isinstance(node, Bool):
        if node.op == "not":
            return not _matches(node.items[0], payload)
        results = (_matches(item, payload) for item in node.items)
        return all(results) if node.op == "and" else any(results)
    have = payload.get(node.field)
    if isinstance(node, In):
        return have is not None and have in node.values
    if node.op == "!=":
        return not _compare(have, "=", node.value)
    return _compare(have, node.op, node.value)


def _sql(node: Node, column: Callable[[str], str], literal: Callable[[Value], str]) -> str:
    if isinstance(node, Bool):
        if node.op == "not":
            return f"(NOT {_sql(node.items[0], column, literal)})"
        joined = f" {node.op.upper()} ".join(_sql(item, column, literal) for item in node.items)
        return f"({joined})"
    col = column(node.field)
    if isinstance(node, In):
        return f"COALESCE({col} IN ({', '.join(literal(v) for v in node.values)}), FALSE)"
    if node.op == "!=":
        return f"(NOT COALESCE({col} = {literal(node.value)}, FALSE))"
    return f"COALESCE({col} {node.op} {literal(node.value)}, FALSE)"
