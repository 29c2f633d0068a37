"""Consul's ``?filter=`` expression language (hashicorp/go-bexpr, as Consul uses it).

This module owns the whole filter pipeline for the HTTP API: tokenizing and
parsing an expression, validating its selectors against a response schema,
and evaluating it against the JSON-shaped dicts the API returns.  It has no
I/O; HTTP routes call :func:`apply_filter` (or :func:`compile_filter` once and
``matches`` per item) and map :class:`FilterError` to a 400 whose body is
``str(error)``.

Semantics follow go-bexpr v0.1.2, the version Consul vendors (it is the one
with reflection-based selector validation, hence ``Selector "Foo" is not
valid``):

* Selectors are case-sensitive: ``Meta.env``, ``Meta["my-key"]`` (no
  ``Meta.["k"]`` form; bexpr's grammar has none).
* Values are a bare selector-like word (its dotted text is the value), a
  number, a ``"double quoted"`` string with Go escapes (a string ends at the
  first ``"``, so ``\\"`` is not usable, exactly as in bexpr) or a
  ```raw``` string.
* The value is coerced to the selected field's type: bools parse like Go's
  ``strconv.ParseBool``, ints like ``strconv.ParseInt(s, 0, 64)``.
* ``in``/``contains`` mean membership on lists, key membership on maps and
  substring on strings.  A list of structs in the middle of a selector
  (``Checks.Status``) is an implicit *any*: the match is true if it is true for
  some element, and false for an empty list whatever the operator.
* A key missing from a map makes ``==``, ``in``, ``is not empty`` and
  ``matches`` false and their negations true.

With a schema, supported operators per field type are bexpr's: strings
``== != in "not in" matches "not matches"``; ints, floats and bools only
``== !=``; maps ``is empty``, ``is not empty``, ``in``, ``not in``; lists of
primitives ``in``, ``not in``, ``is empty``, ``is not empty``; lists of structs
only the emptiness checks.  Without a schema nothing is validated up front and
operators apply to whatever runtime type is found.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

from proconsul import go_regexp

__all__ = [
    "AGENT_CHECK",
    "AGENT_SERVICE",
    "CATALOG_NODE",
    "CATALOG_NODE_SERVICES",
    "CATALOG_SERVICE_NODE",
    "HEALTH_CHECK",
    "HEALTH_SERVICE_ENTRY",
    "CompiledFilter",
    "FieldType",
    "FilterError",
    "Schema",
    "apply_filter",
    "compile_filter",
]

# A field type is a primitive tag ("string" | "int" | "float" | "bool"), a
# container ("list", elem) / ("map", value_type) with string map keys, or a
# nested Schema (a struct).  A Schema maps selector names (case-sensitive,
# the Go field names, which are also the JSON keys) to field types.
FieldType: TypeAlias = "str | tuple[str, FieldType] | Mapping[str, FieldType]"
Schema: TypeAlias = Mapping[str, "FieldType"]

_PRIMITIVES = ("string", "int", "float", "bool")

_PREFIX = "Failed to create boolean expression evaluator: "


class FilterError(ValueError):
    """A filter expression that cannot be used; ``str()`` is the HTTP 400 body."""


# ---------------------------------------------------------------------------
# Operators


EQ = "=="
NE = "!="
IN = "in"
NOT_IN = "not in"
IS_EMPTY = "is empty"
IS_NOT_EMPTY = "is not empty"
MATCHES = "matches"
NOT_MATCHES = "not matches"

# bexpr's names for operators, used verbatim in its validation errors.
_OP_NAMES = {
    EQ: "Equal",
    NE: "Not Equal",
    IN: "In",
    NOT_IN: "Not In",
    IS_EMPTY: "Is Empty",
    IS_NOT_EMPTY: "Is Not Empty",
    MATCHES: "Matches",
    NOT_MATCHES: "Not Matches",
}

# Result of an operator when the selected map key does not exist.
_ABSENT_RESULT = {
    EQ: False,
    NE: True,
    IN: False,
    NOT_IN: True,
    IS_EMPTY: True,
    IS_NOT_EMPTY: False,
    MATCHES: False,
    NOT_MATCHES: True,
}

_NEGATIONS = {NE: EQ, NOT_IN: IN, IS_NOT_EMPTY: IS_EMPTY, NOT_MATCHES: MATCHES}


# ---------------------------------------------------------------------------
# AST


@dataclass(frozen=True)
class _Match:
    selector: tuple[str, ...]
    op: str
    raw: str | None  # the value's text; None for the emptiness checks
    # Filled in at compile time: the value coerced to the field's type (schema
    # mode) and the compiled regex for (not) matches.
    coerced: Any = None
    regex: go_regexp.Pattern | None = None


@dataclass(frozen=True)
class _Not:
    operand: _Node


@dataclass(frozen=True)
class _And:
    left: _Node
    right: _Node


@dataclass(frozen=True)
class _Or:
    left: _Node
    right: _Node


_Node: TypeAlias = "_Match | _Not | _And | _Or"


def _go_quote(text: str) -> str:
    """Approximate Go's %q so error messages read like Consul's."""
    return json.dumps(text, ensure_ascii=False)


def _sel_text(selector: tuple[str, ...] | list[str]) -> str:
    return ".".join(selector)


# ---------------------------------------------------------------------------
# Tokenizer

_WS = " \t\r\n"  # bexpr's whitespace class; anything else is a syntax error


@dataclass(frozen=True)
class _Tok:
    kind: str  # WORD NUMBER STRING OP ( ) [ ] . BAD EOF
    text: str  # source text (STRING: the unquoted value)
    pos: int
    ws_before: bool


class _SyntaxFail(Exception):
    """A hard parse error (bexpr's custom grammar errors)."""

    def __init__(self, pos: int, rule: str, message: str) -> None:
        super().__init__(message)
        self.pos = pos
        self.rule = rule
        self.message = message


def _is_ident_start(ch: str) -> bool:
    return ch.isascii() and ch.isalpha()


def _is_ident_char(ch: str) -> bool:
    return ch.isascii() and (ch.isalnum() or ch == "_")


def _tokenize(src: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i = 0
    n = len(src)
    ws = False
    while i < n:
        ch = src[i]
        if ch in _WS:
            ws = True
            i += 1
            continue
        start = i
        if _is_ident_start(ch):
            while i < n and _is_ident_char(src[i]):
                i += 1
            toks.append(_Tok("WORD", src[start:i], start, ws))
        elif ch.isascii() and (ch.isdigit() or (ch == "-" and i + 1 < n and src[i + 1].isdigit())):
            i = _scan_number(src, i)
            toks.append(_Tok("NUMBER", src[start:i], start, ws))
        elif ch in '"`':
            end = src.find(ch, i + 1)
            if end < 0:
                raise _SyntaxFail(start, "string", "Unterminated string literal")
            body = src[i + 1 : end]
            try:
                value = _go_unquote(body) if ch == '"' else body.replace("\r", "")
            except ValueError:
                raise _SyntaxFail(start, "string", "invalid syntax") from None
            i = end + 1
            toks.append(_Tok("STRING", value, start, ws))
        elif src.startswith("==", i) or src.startswith("!=", i):
            i += 2
            toks.append(_Tok("OP", src[start:i], start, ws))
        elif ch in "()[].":
            i += 1
            toks.append(_Tok(ch, ch, start, ws))
        else:
            # Left for the parser to report as "no match" at this position.
            i += 1
            toks.append(_Tok("BAD", ch, start, ws))
        ws = False
    toks.append(_Tok("EOF", "", n, ws))
    return toks


def _scan_number(src: str, i: int) -> int:
    """Scan bexpr's number literal: -?(0|[1-9][0-9]*)(.[0-9]+)? then ws, ')' or end."""
    start = i
    n = len(src)
    if src[i] == "-":
        i += 1
    if src[i] == "0":
        i += 1
    else:
        while i < n and src[i].isascii() and src[i].isdigit():
            i += 1
    if i + 1 < n and src[i] == "." and src[i + 1].isascii() and src[i + 1].isdigit():
        i += 1
        while i < n and src[i].isascii() and src[i].isdigit():
            i += 1
    if i < n and src[i] not in _WS and src[i] != ")":
        raise _SyntaxFail(start, "number", "Invalid number literal")
    return i


_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    '"': '"',
}


def _go_unquote(body: str) -> str:
    """Interpret Go double-quoted string escapes (strconv.Unquote); ValueError if invalid."""
    if "\n" in body:
        raise ValueError("newline in string")
    out: list[str] = []
    i = 0
    n = len(body)
    while i < n:
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        if i + 1 >= n:
            raise ValueError("trailing backslash")
        esc = body[i + 1]
        i += 2
        if esc in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[esc])
        elif esc in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[esc]
            digits = body[i : i + width]
            if len(digits) != width or any(c not in "0123456789abcdefABCDEF" for c in digits):
                raise ValueError("bad hex escape")
            code = int(digits, 16)
            if esc != "x" and (code > 0x10FFFF or 0xD800 <= code <= 0xDFFF):
                raise ValueError("bad code point")
            # \x is a byte in Go; for ASCII bytes that is the same character.
            out.append(chr(code))
            i += width
        elif esc in "01234567":
            digits = body[i - 1 : i + 2]
            if len(digits) != 3 or any(c not in "01234567" for c in digits) or int(digits, 8) > 0o377:
                raise ValueError("bad octal escape")
            out.append(chr(int(digits, 8)))
            i += 2
        else:
            raise ValueError(f"unknown escape \\{esc}")
    return "".join(out)


# ---------------------------------------------------------------------------
# Parser: recursive descent mirroring bexpr's PEG grammar, including where it
# insists on whitespace (around and/or/in/contains/matches/is, after not).


_T = TypeVar("_T")


class _NoMatch(Exception):
    """Soft failure: the current alternative does not apply; try the next."""


class _Parser:
    def __init__(self, src: str) -> None:
        self.src = src
        self.toks = _tokenize(src)
        self.i = 0
        # Farthest position reached by a failed alternative and what was
        # expected there, for a pigeon-style "no match found" message.
        self.far_pos = -1
        self.expected: set[str] = set()

    # -- helpers ----------------------------------------------------------
    def peek(self, k: int = 0) -> _Tok:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def fail(self, tok: _Tok, *expected: str) -> _NoMatch:
        if tok.pos > self.far_pos:
            self.far_pos = tok.pos
            self.expected = set(expected)
        elif tok.pos == self.far_pos:
            self.expected.update(expected)
        return _NoMatch()

    def is_word(self, tok: _Tok, word: str) -> bool:
        return tok.kind == "WORD" and tok.text == word

    def keyword(self, word: str, *, ws_before: bool, ws_after: bool) -> None:
        """Consume a keyword, enforcing bexpr's mandatory whitespace."""
        tok = self.peek()
        if not self.is_word(tok, word) or (ws_before and not tok.ws_before):
            raise self.fail(tok, f'"{word}"')
        nxt = self.peek(1)
        if ws_after and not nxt.ws_before:
            raise self.fail(nxt, "whitespace")
        self.i += 1

    def attempt(self, fn: Callable[[], _T]) -> _T | None:
        saved = self.i
        try:
            return fn()
        except _NoMatch:
            self.i = saved
            return None

    # -- grammar ----------------------------------------------------------
    def parse(self) -> _Node:
        try:
            node = self.or_expr()
            tok = self.peek()
            if tok.kind != "EOF":
                raise self.fail(tok, '"and"', '"or"', "end of input")
            return node
        except _NoMatch:
            pass
        pos = max(self.far_pos, 0)
        expected = ", ".join(sorted(self.expected)) or "an expression"
        raise _SyntaxFail(pos, "", f"no match found, expected: {expected}")

    def or_expr(self) -> _Node:
        left = self.and_expr()
        if self.peek().ws_before and self.is_word(self.peek(), "or"):
            saved = self.i
            try:
                self.keyword("or", ws_before=True, ws_after=True)
                return _Or(left, self.or_expr())
            except _NoMatch:
                self.i = saved
        return left

    def and_expr(self) -> _Node:
        left = self.not_expr()
        if self.peek().ws_before and self.is_word(self.peek(), "and"):
            saved = self.i
            try:
                self.keyword("and", ws_before=True, ws_after=True)
                return _And(left, self.and_expr())
            except _NoMatch:
                self.i = saved
        return left

    def not_expr(self) -> _Node:
        if self.is_word(self.peek(), "not"):

            def negated() -> _Node:
                self.keyword("not", ws_before=False, ws_after=True)
                return _Not(self.not_expr())

            # `not` is not reserved: `not == x` selects a field named "not".
            node = self.attempt(negated)
            if node is not None:
                return node
        return self.paren_expr()

    def paren_expr(self) -> _Node:
        tok = self.peek()
        if tok.kind == "(":
            self.i += 1
            inner = self.or_expr()
            if self.peek().kind != ")":
                self.fail(self.peek(), '")"', '"and"', '"or"')
                raise _SyntaxFail(tok.pos, "grouping", "Unmatched parentheses")
            self.i += 1
            return inner
        return self.match_expr()

    def selector(self) -> list[str]:
        tok = self.peek()
        if tok.kind != "WORD":
            raise self.fail(tok, "selector")
        self.i += 1
        parts = [tok.text]
        while True:
            tok = self.peek()
            if tok.ws_before:
                return parts
            if tok.kind == "." and self.peek(1).kind == "WORD" and not self.peek(1).ws_before:
                parts.append(self.peek(1).text)
                self.i += 2
            elif tok.kind == "[":
                lit = self.peek(1)
                if lit.kind != "STRING":
                    raise _SyntaxFail(tok.pos, "index", "Invalid index")
                if self.peek(2).kind != "]":
                    raise _SyntaxFail(tok.pos, "index", "Unclosed index expression")
                parts.append(lit.text)
                self.i += 3
            else:
                return parts

    def value(self) -> str:
        tok = self.peek()
        if tok.kind == "WORD":
            return _sel_text(self.selector())
        if tok.kind in ("NUMBER", "STRING"):
            self.i += 1
            return tok.text
        raise self.fail(tok, "value")

    def match_expr(self) -> _Node:
        start = self.peek()
        if start.kind == "WORD":
            sel = self.selector()
            tok = self.peek()
            if tok.kind == "OP":
                self.i += 1
                return _Match(tuple(sel), EQ if tok.text == "==" else NE, self.value())
            if not tok.ws_before or tok.kind != "WORD":
                raise self.fail(tok, '"=="', '"!="', '"contains"', '"in"', '"is"', '"matches"', '"not"')
            for word, op in (("contains", IN), ("matches", MATCHES)):
                if tok.text == word:
                    self.keyword(word, ws_before=True, ws_after=True)
                    return _Match(tuple(sel), op, self.value())
            if tok.text == "is":
                self.keyword("is", ws_before=True, ws_after=True)
                if self.is_word(self.peek(), "not"):
                    self.keyword("not", ws_before=True, ws_after=True)
                    self.keyword("empty", ws_before=True, ws_after=False)
                    return _Match(tuple(sel), IS_NOT_EMPTY, None)
                self.keyword("empty", ws_before=True, ws_after=False)
                return _Match(tuple(sel), IS_EMPTY, None)
            if tok.text == "not":
                word = self.peek(1).text if self.peek(1).kind == "WORD" else ""
                self.keyword("not", ws_before=True, ws_after=True)
                if word in ("contains", "matches"):
                    self.keyword(word, ws_before=True, ws_after=True)
                    return _Match(tuple(sel), NOT_IN if word == "contains" else NOT_MATCHES, self.value())
                self.keyword("in", ws_before=True, ws_after=True)
                # value-on-the-left: the "selector" we read was the value.
                return _Match(tuple(self.in_selector()), NOT_IN, _sel_text(sel))
            if tok.text == "in":
                self.keyword("in", ws_before=True, ws_after=True)
                return _Match(tuple(self.in_selector()), IN, _sel_text(sel))
            raise self.fail(tok, '"=="', '"!="', '"contains"', '"in"', '"is"', '"matches"', '"not"')
        if start.kind in ("NUMBER", "STRING"):
            self.i += 1
            tok = self.peek()
            if self.is_word(tok, "not"):
                self.keyword("not", ws_before=True, ws_after=True)
                self.keyword("in", ws_before=True, ws_after=True)
                return _Match(tuple(self.in_selector()), NOT_IN, start.text)
            self.keyword("in", ws_before=True, ws_after=True)
            return _Match(tuple(self.in_selector()), IN, start.text)
        raise self.fail(start, '"("', '"not"', "selector", "value")

    def in_selector(self) -> list[str]:
        tok = self.peek()
        if tok.kind != "WORD":
            raise _SyntaxFail(tok.pos, "match", "Invalid selector")
        return self.selector()


def _position(src: str, offset: int) -> str:
    line = src.count("\n", 0, offset) + 1
    col = offset - (src.rfind("\n", 0, offset) + 1) + 1
    return f"{line}:{col} ({offset})"


def _parse(src: str) -> _Node:
    try:
        return _Parser(src).parse()
    except _SyntaxFail as err:
        rule = f": rule {err.rule}" if err.rule else ""
        raise FilterError(f"{_PREFIX}{_position(src, err.pos)}{rule}: {err.message}") from None


# ---------------------------------------------------------------------------
# Value coercion (Go strconv semantics)


def _parse_bool(raw: str) -> bool:
    if raw in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if raw in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(f"strconv.ParseBool: parsing {_go_quote(raw)}: invalid syntax")


_DIGITS = {2: "01", 8: "01234567", 10: "0123456789", 16: "0123456789abcdefABCDEF"}


def _parse_int(raw: str) -> int:
    """strconv.ParseInt(raw, 0, 64): base prefixes, legacy 0-octal, '_' separators."""
    syntax = ValueError(f"strconv.ParseInt: parsing {_go_quote(raw)}: invalid syntax")
    s = raw
    negative = s[:1] == "-"
    if s[:1] in "+-":
        s = s[1:]
    base, body, prefixed = 10, s, False
    if len(s) >= 2 and s[0] == "0" and s[1] in "xXbBoO":
        base = {"x": 16, "b": 2, "o": 8}[s[1].lower()]
        body, prefixed = s[2:], True
    elif len(s) >= 2 and s[0] == "0":
        base, body, prefixed = 8, s[1:], True
    if not body or body.endswith("_") or "__" in body or (body.startswith("_") and not prefixed):
        raise syntax
    digits = body.replace("_", "")
    if not digits or any(c not in _DIGITS[base] for c in digits):
        raise syntax
    value = int(digits, base)
    value = -value if negative else value
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"strconv.ParseInt: parsing {_go_quote(raw)}: value out of range")
    return value


def _parse_float(raw: str) -> float:
    """strconv.ParseFloat(raw, 64), minus hex floats; Python's float() is laxer about
    surrounding whitespace and '_', which Go rejects here."""
    syntax = ValueError(f"strconv.ParseFloat: parsing {_go_quote(raw)}: invalid syntax")
    if raw != raw.strip() or "_" in raw:
        raise syntax
    try:
        return float(raw)
    except ValueError:
        raise syntax from None


_COERCERS: dict[str, Callable[[str], Any]] = {
    "string": str,
    "int": _parse_int,
    "float": _parse_float,
    "bool": _parse_bool,
}


def _runtime_kind(value: Any) -> str | None:
    # bool before int: in Python a bool is an int.
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return None


# ---------------------------------------------------------------------------
# Regular expressions: Go's RE2 syntax, run by RE2 itself (go_regexp), so matching is linear in
# the text and a pattern such as ^(a+)+$ cannot stall the agent.


def _compile_regex(pattern: str) -> go_regexp.Pattern:
    try:
        return go_regexp.compile(pattern)
    except go_regexp.RegexpError as err:
        raise FilterError(
            f"{_PREFIX}Failed to compile regular expression {_go_quote(pattern)}: "
            f"error parsing regexp: {err.detail}"
        ) from None


# ---------------------------------------------------------------------------
# Schema handling (bexpr's field configurations)

_ANY = object()  # the `<any>` map key in a schema walk


def _is_struct(ftype: Any) -> bool:
    return isinstance(ftype, Mapping)


def _container(ftype: Any) -> tuple[str, Any] | None:
    if isinstance(ftype, tuple) and len(ftype) == 2 and ftype[0] in ("list", "map"):
        return ftype[0], ftype[1]
    return None


def _supported_ops(ftype: Any) -> frozenset[str]:
    if ftype == "string":
        return frozenset({EQ, NE, IN, NOT_IN, MATCHES, NOT_MATCHES})
    if ftype in ("int", "float", "bool"):
        return frozenset({EQ, NE})
    cont = _container(ftype)
    if cont is not None:
        kind, elem = cont
        if kind == "map":
            return frozenset({IS_EMPTY, IS_NOT_EMPTY, IN, NOT_IN})
        if elem in _PRIMITIVES:
            return frozenset({IN, NOT_IN, IS_EMPTY, IS_NOT_EMPTY})
        return frozenset({IS_EMPTY, IS_NOT_EMPTY})
    return frozenset()  # structs: only their fields are selectable


def _subfields(ftype: Any) -> Mapping[Any, Any]:
    if _is_struct(ftype):
        return ftype  # type: ignore[no-any-return]
    cont = _container(ftype)
    if cont is None:
        return {}
    kind, elem = cont
    if kind == "map":
        return {_ANY: elem}
    # A list is transparent for selection: its elements' fields are selected
    # directly (`Checks.Status`), which evaluation turns into "any element".
    return _subfields(elem) if elem not in _PRIMITIVES else {}


def _value_coercer(ftype: Any) -> Callable[[str], Any] | None:
    if isinstance(ftype, str):
        return _COERCERS[ftype]
    cont = _container(ftype)
    if cont is None:
        return None
    kind, elem = cont
    if kind == "map":
        return str  # `in` on a map tests a (string) key
    return _COERCERS[elem] if elem in _PRIMITIVES else None


def _validate(node: _Match, schema: Schema) -> _Match:
    fields: Mapping[Any, Any] = schema
    ftype: Any = schema
    for idx, part in enumerate(node.selector):
        if part in fields:
            ftype = fields[part]
        elif _ANY in fields:
            ftype = fields[_ANY]
        else:
            raise FilterError(
                f"{_PREFIX}Selector {_go_quote(_sel_text(node.selector[: idx + 1]))} is not valid"
            )
        fields = _subfields(ftype)
    sel = _go_quote(_sel_text(node.selector))
    if node.op not in _supported_ops(ftype):
        raise FilterError(
            f"{_PREFIX}Invalid match operator {_go_quote(_OP_NAMES[node.op])} for selector {sel}"
        )
    coerced = None
    if node.raw is not None:
        coerce = _value_coercer(ftype)
        if coerce is not None:
            try:
                coerced = coerce(node.raw)
            except ValueError as err:
                raise FilterError(
                    f"{_PREFIX}Failed to coerce value {_go_quote(node.raw)} for selector {sel}: {err}"
                ) from None
    return _Match(node.selector, node.op, node.raw, coerced, node.regex)


# ---------------------------------------------------------------------------
# Evaluation


def _zero(ftype: Any) -> Any:
    """Go's zero value for a schema type: what a missing JSON field means."""
    if ftype == "string":
        return ""
    if ftype in ("int", "float"):
        return 0
    if ftype == "bool":
        return False
    if _is_struct(ftype):
        return {}
    return None  # nil list / nil map


def _eval_schema(m: _Match, value: Any, ftype: Any, depth: int) -> bool:
    if value is None:
        value = _zero(ftype)
    if depth == len(m.selector):
        return _apply_typed(m, value, ftype)
    cont = _container(ftype)
    if cont is not None and cont[0] == "list":
        if not isinstance(value, list):
            return False
        return any(_eval_schema(m, item, cont[1], depth) for item in value)
    if not isinstance(value, Mapping):
        return _ABSENT_RESULT[m.op]
    part = m.selector[depth]
    if cont is not None:  # map: a missing key is "absent", not a zero value
        if part not in value or value[part] is None:
            return _ABSENT_RESULT[m.op]
        return _eval_schema(m, value[part], cont[1], depth + 1)
    return _eval_schema(m, value.get(part), ftype[part], depth + 1)


def _apply_typed(m: _Match, value: Any, ftype: Any) -> bool:
    positive = _NEGATIONS.get(m.op)
    if positive is not None:
        return not _apply_typed(_replace_op(m, positive), value, ftype)
    if m.op == IS_EMPTY:
        return not value
    cont = _container(ftype)
    if cont is None and _runtime_kind(value) not in (ftype, "int" if ftype == "float" else None):
        # The data disagrees with the schema; judge it by what it actually is.
        return _apply_dynamic(m, value)
    if m.op == EQ:
        return bool(value == m.coerced)
    if m.op == MATCHES:
        assert m.regex is not None
        return m.regex.search(value) is not None
    # IN
    if cont is None:
        return m.coerced in value  # substring
    if cont[0] == "map":
        return isinstance(value, Mapping) and m.coerced in value
    return isinstance(value, list) and any(_equal_typed(item, m.coerced) for item in value)


def _equal_typed(item: Any, coerced: Any) -> bool:
    if isinstance(coerced, bool) or isinstance(item, bool):
        return isinstance(item, bool) and isinstance(coerced, bool) and item is coerced
    return bool(item == coerced)


def _replace_op(m: _Match, op: str) -> _Match:
    return _Match(m.selector, op, m.raw, m.coerced, m.regex)


def _eval_dynamic(m: _Match, value: Any, depth: int) -> bool:
    if value is None:
        return _ABSENT_RESULT[m.op]
    if depth == len(m.selector):
        return _apply_dynamic(m, value)
    if isinstance(value, list):
        return any(_eval_dynamic(m, item, depth) for item in value)
    if isinstance(value, Mapping):
        return _eval_dynamic(m, value.get(m.selector[depth]), depth + 1)
    return _ABSENT_RESULT[m.op]


def _coerce_runtime(m: _Match, kind: str) -> Any:
    assert m.raw is not None
    try:
        return _COERCERS[kind](m.raw)
    except ValueError as err:
        raise FilterError(
            f"{_PREFIX}Failed to coerce value {_go_quote(m.raw)} for selector "
            f"{_go_quote(_sel_text(m.selector))}: {err}"
        ) from None


def _apply_dynamic(m: _Match, value: Any) -> bool:
    positive = _NEGATIONS.get(m.op)
    if positive is not None:
        return not _apply_dynamic(_replace_op(m, positive), value)
    kind = _runtime_kind(value)
    ok = True
    if m.op == IS_EMPTY:
        if isinstance(value, (str, list, Mapping)):
            return len(value) == 0
        ok = False
    elif m.op == EQ:
        if kind is not None:
            return bool(value == _coerce_runtime(m, kind))
        ok = False
    elif m.op == MATCHES:
        if kind == "string":
            assert m.regex is not None
            return m.regex.search(value) is not None
        ok = False
    elif m.op == IN:
        assert m.raw is not None
        if kind == "string":
            return m.raw in value
        if isinstance(value, Mapping):
            return m.raw in value
        if isinstance(value, list):
            for item in value:
                item_kind = _runtime_kind(item)
                if item_kind is None:
                    continue
                try:
                    # Elements the value cannot be coerced to never match
                    # (newer bexpr does the same for mixed-type lists).
                    wanted = _COERCERS[item_kind](m.raw)
                except ValueError:
                    continue
                if _equal_typed(item, wanted):
                    return True
            return False
        ok = False
    if not ok:
        raise FilterError(
            f"{_PREFIX}Invalid match operator {_go_quote(_OP_NAMES[m.op])} for selector "
            f"{_go_quote(_sel_text(m.selector))} of type {type(value).__name__}"
        )
    raise AssertionError(m.op)  # pragma: no cover


# ---------------------------------------------------------------------------
# Public API


@dataclass(frozen=True)
class CompiledFilter:
    """A parsed (and, with a schema, validated) filter expression."""

    expression: str
    schema: Schema | None = None
    _root: _Node | None = field(default=None, repr=False)

    def matches(self, item: Mapping[str, Any]) -> bool:
        """Whether one API object satisfies the expression.

        Raises FilterError only without a schema, when an operator does not
        apply to the runtime type found (a schema rejects that at compile time).
        """
        if self._root is None:
            return True
        try:
            return self._eval(self._root, item)
        except RecursionError:
            raise FilterError(f"{_PREFIX}expression is too deeply nested") from None

    def _eval(self, node: _Node, item: Mapping[str, Any]) -> bool:
        if isinstance(node, _Match):
            if self.schema is None:
                return _eval_dynamic(node, item, 0)
            return _eval_schema(node, item, self.schema, 0)
        if isinstance(node, _Not):
            return not self._eval(node.operand, item)
        if isinstance(node, _And):
            return self._eval(node.left, item) and self._eval(node.right, item)
        return self._eval(node.left, item) or self._eval(node.right, item)


def _prepare(node: _Node, schema: Schema | None) -> _Node:
    if isinstance(node, _Not):
        return _Not(_prepare(node.operand, schema))
    if isinstance(node, _And):
        return _And(_prepare(node.left, schema), _prepare(node.right, schema))
    if isinstance(node, _Or):
        return _Or(_prepare(node.left, schema), _prepare(node.right, schema))
    if schema is not None:
        node = _validate(node, schema)
    if node.op in (MATCHES, NOT_MATCHES):
        assert node.raw is not None
        node = _Match(node.selector, node.op, node.raw, node.coerced, _compile_regex(node.raw))
    return node


def compile_filter(expression: str, schema: Schema | None = None) -> CompiledFilter:
    """Parse and validate ``expression``; raises FilterError with Consul's wording.

    An empty expression yields a filter that keeps everything (bexpr's nil
    filter), matching Consul's treatment of ``?filter=``.
    """
    if expression == "":
        return CompiledFilter(expression, schema, None)
    try:
        root = _prepare(_parse(expression), schema)
    except RecursionError:
        # A user-supplied expression must never turn into a 500.
        raise FilterError(f"{_PREFIX}expression is too deeply nested") from None
    return CompiledFilter(expression, schema, root)


_Items = TypeVar("_Items", list[Any], dict[str, Any])


def apply_filter(expression: str | None, items: _Items, schema: Schema | None = None) -> _Items:
    """Filter an API result: a list keeps matching elements, a dict keeps the
    keys whose values match.  No expression (None or "") returns ``items``."""
    if not expression:
        return items
    compiled = compile_filter(expression, schema)
    if isinstance(items, dict):
        return {key: value for key, value in items.items() if compiled.matches(value)}
    return [item for item in items if compiled.matches(item)]


# ---------------------------------------------------------------------------
# Response schemas.  Selector lists come from the "Filtering" tables of
# Consul's API docs (agent/service, agent/check, catalog, health); bexpr
# derives them from the Go structs, so names are the Go field names.

_MESH_GATEWAY: Schema = {"Mode": "string"}

_UPSTREAM: Schema = {
    "Datacenter": "string",
    "DestinationName": "string",
    "DestinationNamespace": "string",
    "DestinationType": "string",
    "LocalBindAddress": "string",
    "LocalBindPort": "int",
    "MeshGateway": _MESH_GATEWAY,
}

_PROXY: Schema = {
    "DestinationServiceID": "string",
    "DestinationServiceName": "string",
    "LocalServiceAddress": "string",
    "LocalServicePort": "int",
    "Mode": "string",
    "TransparentProxy": {"OutboundListenerPort": "int"},
    "MeshGateway": _MESH_GATEWAY,
    "Upstreams": ("list", _UPSTREAM),
}

_SERVICE_ADDRESS: Schema = {"Address": "string", "Port": "int"}

_WEIGHTS: Schema = {"Passing": "int", "Warning": "int"}

# structs.NodeService / api.AgentService as seen by bexpr.
_NODE_SERVICE: Schema = {
    "Address": "string",
    "Connect": {"Native": "bool"},
    "EnableTagOverride": "bool",
    "ID": "string",
    "Kind": "string",
    "Meta": ("map", "string"),
    "Port": "int",
    "Proxy": _PROXY,
    "Service": "string",
    "TaggedAddresses": ("map", _SERVICE_ADDRESS),
    "Tags": ("list", "string"),
    "Weights": _WEIGHTS,
}

#: /v1/agent/services (each value of the map)
AGENT_SERVICE: Schema = _NODE_SERVICE

#: /v1/catalog/node-services/:node (each element of "Services") and the
#: values of /v1/catalog/node/:node's "Services" map
CATALOG_NODE_SERVICES: Schema = _NODE_SERVICE

#: /v1/catalog/nodes
CATALOG_NODE: Schema = {
    "Address": "string",
    "Datacenter": "string",
    "ID": "string",
    "Meta": ("map", "string"),
    "Node": "string",
    "TaggedAddresses": ("map", "string"),
}

#: /v1/catalog/service/:name and /v1/catalog/connect/:name
CATALOG_SERVICE_NODE: Schema = {
    "Address": "string",
    "Datacenter": "string",
    "ID": "string",
    "Node": "string",
    "NodeMeta": ("map", "string"),
    "ServiceAddress": "string",
    "ServiceConnect": {"Native": "bool"},
    "ServiceEnableTagOverride": "bool",
    "ServiceID": "string",
    "ServiceKind": "string",
    "ServiceMeta": ("map", "string"),
    "ServiceName": "string",
    "ServicePort": "int",
    "ServiceProxy": _PROXY,
    "ServiceTaggedAddresses": ("map", _SERVICE_ADDRESS),
    "ServiceTags": ("list", "string"),
    "ServiceWeights": _WEIGHTS,
    "TaggedAddresses": ("map", "string"),
}

#: /v1/health/node/:node, /v1/health/checks/:service, /v1/health/state/:state.
#: "Type" is not in the docs' tables but is a plain field of structs.HealthCheck.
HEALTH_CHECK: Schema = {
    "CheckID": "string",
    "Name": "string",
    "Node": "string",
    "Notes": "string",
    "Output": "string",
    "ServiceID": "string",
    "ServiceName": "string",
    "ServiceTags": ("list", "string"),
    "Status": "string",
    "Type": "string",
}

#: /v1/agent/checks (each value of the map); same selectors as HEALTH_CHECK
AGENT_CHECK: Schema = HEALTH_CHECK

#: /v1/health/service/:name, /v1/health/connect/:name, /v1/health/ingress/:name
HEALTH_SERVICE_ENTRY: Schema = {
    "Checks": ("list", HEALTH_CHECK),
    "Node": CATALOG_NODE,
    "Service": _NODE_SERVICE,
}

#: /v1/agent/members (each element): serf.Member, which Consul filters directly.
#: Addr is a net.IP there; it is offered here as the string the JSON shows.
AGENT_MEMBER: Schema = {
    "Name": "string",
    "Addr": "string",
    "Port": "int",
    "Tags": ("map", "string"),
    "Status": "int",
    "ProtocolMin": "int",
    "ProtocolMax": "int",
    "ProtocolCur": "int",
    "DelegateMin": "int",
    "DelegateMax": "int",
    "DelegateCur": "int",
}
