"""GitHub Actions' expression language: the `${{ }}` of a workflow definition.

A lexer, parser and evaluator written for this grammar (never Python `eval`),
with GitHub's semantics point by point. The reference is the engine GitHub
evaluates workflows with (the runner's `DTExpressions2`) and the shared test
data of `actions/languageservices`:

- literals `'it''s'`, numbers (`1`, `-2.5`, `.5`, `1e3`, `0xff`, `0o17`, `NaN`,
  `Infinity`), `true`, `false`, `null`;
- by precedence: property access `a.b`, `a['b']`, `a[0]`, filters `a.*.b`;
  `!`; `< <= > >=`; `== !=`; `&&`; `||` (the last two return an operand);
- loose equality: operands of different kinds become numbers (null 0, booleans
  1/0, strings parsed: blank 0, invalid NaN; arrays and objects NaN and equal
  only to themselves); strings compare ignoring case;
- functions, case-insensitive by name, checked at parse time: `contains`,
  `startsWith`, `endsWith`, `format`, `join`, `toJSON`, `fromJSON`, `case`,
  and the status functions `success`, `failure`, `cancelled`, `always`.

Every input is bounded: an expression's length and depth as GitHub bounds
them, the strings and JSON it builds, and the steps one evaluation may take.
Past a bound comes an `ExpressionError` that says which, never a
`RecursionError` or a hang.
"""

from __future__ import annotations

import functools
import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_EXPRESSION_LENGTH = 21_000  # GitHub's limit, per expression
MAX_DEPTH = 50  # GitHub's limit on the depth of an expression's tree
MAX_JSON_DEPTH = 100  # nested arrays/objects fromJSON reads and toJSON writes
MAX_STRING_LENGTH = 1 << 20  # fromJSON's input; what toJSON, format, join and a template build
MAX_STEPS = 250_000  # work of one evaluation (nodes, items visited, characters / 64): ~0.3 s

STATUS_FUNCTIONS = frozenset({"success", "failure", "cancelled", "always"})


class ExpressionError(ValueError):
    """A malformed or failing expression; `offset` is 0-based within the parsed text and
    `line`/`column` 1-based (the column within its line), None where no position applies."""

    def __init__(
        self,
        message: str,
        offset: int | None = None,
        column: int | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.column = column
        self.line = line


class ExpressionSyntaxError(ExpressionError):
    """Found while parsing: the definition can be refused before any run."""


class EvaluationError(ExpressionError):
    """Found while evaluating against a run's contexts."""


@dataclass(frozen=True)
class Status:
    """What the status functions answer; `always()` is always true."""

    success: bool
    failure: bool
    cancelled: bool


def _error(
    cls: type[ExpressionError],
    text: str,
    offset: int,
    description: str,
    raw: str | None = None,
    detail: str = "",
) -> ExpressionError:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    where = f"at line {line}, column {column}" if "\n" in text else f"at column {column}"
    what = f"{description}: {_quote(raw)}" if raw is not None else description
    return cls(f"{what} {where}{detail}", offset, column, line)


def _quote(text: str, limit: int = 40) -> str:
    return f"'{text}'" if len(text) <= limit else f"'{text[:limit]}…'"


# --- values -------------------------------------------------------------------------------------
# Contexts hold plain JSON-like data; these are its kinds as GitHub names them.

_NULL, _BOOLEAN, _NUMBER, _STRING, _ARRAY, _OBJECT = (
    "Null",
    "Boolean",
    "Number",
    "String",
    "Array",
    "Object",
)
_PRIMITIVE = frozenset({_NULL, _BOOLEAN, _NUMBER, _STRING})


class _Filtered(list[Any]):
    """What a `*` filter yields: an array whose further indexes apply to each item."""


def _kind(value: Any) -> str:
    if value is None:
        return _NULL
    if isinstance(value, bool):
        return _BOOLEAN
    if isinstance(value, int | float):
        return _NUMBER
    if isinstance(value, str):
        return _STRING
    if isinstance(value, Mapping):
        return _OBJECT
    if isinstance(value, list | tuple):
        return _ARRAY
    raise EvaluationError(
        f"a context holds a value of type {type(value).__name__}; contexts hold JSON-like data"
    )


def _float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an int beyond a double: GitHub holds numbers as doubles
        return math.inf if value > 0 else -math.inf


def _normal(value: float) -> int | float:
    """Integral numbers as int, so `1.0` from a definition reaches Python code as `1`."""
    if value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")


def _parse_number(text: str) -> float:
    """A string as a number, GitHub's way (after JavaScript's `Number()`)."""
    text = _strip(text, 0, len(text))
    if not text:
        return 0.0
    if _DECIMAL.match(text):
        return float(text)
    if text in ("Infinity", "+Infinity"):
        return math.inf
    if text == "-Infinity":
        return -math.inf
    for prefix, base, digits in (("0x", 16, "0123456789abcdefABCDEF"), ("0o", 8, "01234567")):
        if text.startswith(prefix) and len(text) > 2 and all(c in digits for c in text[2:]):
            value = int(text[2:], base)
            if value > 0xFFFFFFFF:  # GitHub reads a 32-bit integer, two's complement
                return math.nan
            return float(value - (1 << 32) if value >= 1 << 31 else value)
    return math.nan


def _to_number(value: Any) -> float:
    kind = _kind(value)
    if kind == _NULL:
        return 0.0
    if kind == _BOOLEAN:
        return 1.0 if value else 0.0
    if kind == _NUMBER:
        return _float(value)
    if kind == _STRING:
        return _parse_number(value)
    return math.nan


def _format_number(value: int | float) -> str:
    number = _float(value)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    if number == 0:
        return "0"  # -0 too
    return format(number, ".15G")  # .NET's "G15": 15 significant digits, `1E+15`, `1E-05`


def to_text(value: Any) -> str:
    """A value as GitHub writes it into text: null '', 'true'/'false', numbers with at most
    15 significant digits (`1.0` is '1'), arrays 'Array', objects 'Object'."""
    kind = _kind(value)
    if kind == _NULL:
        return ""
    if kind == _BOOLEAN:
        return "true" if value else "false"
    if kind == _NUMBER:
        return _format_number(value)
    if kind == _STRING:
        return str(value)
    return kind


def truthy(value: Any) -> bool:
    """GitHub's truthiness: false, 0, -0, NaN, '' and null are falsy; arrays and objects truthy."""
    kind = _kind(value)
    if kind == _NULL:
        return False
    if kind == _BOOLEAN:
        return bool(value)
    if kind == _NUMBER:
        number = _float(value)
        return not (number == 0 or math.isnan(number))
    if kind == _STRING:
        return value != ""
    return True


def _fold(text: str) -> str:
    """Upper case per character, as GitHub's ordinal ignore-case comparison: characters whose
    upper case is longer (ß) stay, and so does the dotless ı."""
    upper = text.upper()
    if len(upper) == len(text) and "ı" not in text:  # no character grew: each has its own
        return upper
    return text.translate(_single_uppers())


@functools.cache
def _single_uppers() -> dict[int, str]:
    """Each character's upper case where it is one character (every cased letter lies below
    U+20000); built on first use, in some tens of milliseconds."""
    table: dict[int, str] = {}
    for code in range(0x20000):
        upper = chr(code).upper()
        if len(upper) == 1 and upper != chr(code) and code != ord("ı"):
            table[code] = upper
    return table


def _coerce(left: Any, right: Any) -> tuple[str, Any, str, Any]:
    """Both operands of a comparison as one kind where GitHub converts them."""
    left_kind, right_kind = _kind(left), _kind(right)
    while left_kind != right_kind:
        if left_kind == _NUMBER and right_kind == _STRING:
            right, right_kind = _parse_number(right), _NUMBER
        elif left_kind == _STRING and right_kind == _NUMBER:
            left, left_kind = _parse_number(left), _NUMBER
        elif left_kind in (_BOOLEAN, _NULL):
            left, left_kind = _to_number(left), _NUMBER
        elif right_kind in (_BOOLEAN, _NULL):
            right, right_kind = _to_number(right), _NUMBER
        else:
            break
    return left_kind, left, right_kind, right


def _equals(left: Any, right: Any) -> bool:
    left_kind, left, right_kind, right = _coerce(left, right)
    if left_kind != right_kind:
        return False
    if left_kind == _NULL:
        return True
    if left_kind == _NUMBER:
        return _float(left) == _float(right)  # NaN equals nothing
    if left_kind == _STRING:
        return _fold(left) == _fold(right)
    if left_kind == _BOOLEAN:
        return bool(left) == bool(right)
    return left is right  # arrays and objects: only themselves


def _order(left: Any, right: Any) -> int | None:
    """-1, 0 or 1 where `<` and `>` apply to the operands, else None (never ordered)."""
    left_kind, left, right_kind, right = _coerce(left, right)
    a: Any
    b: Any
    if left_kind != right_kind:
        return None
    if left_kind == _NUMBER:
        a, b = _float(left), _float(right)
    elif left_kind == _BOOLEAN:
        a, b = bool(left), bool(right)
    elif left_kind == _STRING:
        a, b = _fold(left), _fold(right)
        if not (a.isascii() and b.isascii()):  # GitHub orders UTF-16 code units
            a = a.encode("utf-16-be", "surrogatepass")
            b = b.encode("utf-16-be", "surrogatepass")
    else:
        return None
    return (a > b) - (a < b) if a == a and b == b else None  # NaN is never ordered


def _is_space(c: str) -> bool:
    return c.isspace() and c not in "\x1c\x1d\x1e\x1f"  # .NET's white space


def _strip(text: str, start: int, end: int) -> str:
    while start < end and _is_space(text[start]):
        start += 1
    while end > start and _is_space(text[end - 1]):
        end -= 1
    return text[start:end]


# --- JSON ---------------------------------------------------------------------------------------


def _json_number(text: str) -> int | float:
    return _normal(float(text))


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Keys are case-insensitive on GitHub: a later spelling of a key replaces its value."""
    result: dict[str, Any] = {}
    spelling: dict[str, str] = {}
    for key, value in pairs:
        result[spelling.setdefault(_fold(key), key)] = value
    return result


def _from_json(env: _Env, node: _Node, text: str) -> Any:
    if len(text) > MAX_STRING_LENGTH:
        raise _Failure(f"fromJSON: the text is longer than {MAX_STRING_LENGTH} characters")
    try:
        value = json.loads(
            text,
            parse_int=_json_number,
            parse_float=_json_number,
            object_pairs_hook=_json_object,
        )
    except RecursionError:
        raise _Failure(f"fromJSON: arrays/objects nest deeper than {MAX_JSON_DEPTH}") from None
    except json.JSONDecodeError as e:
        raise _Failure(
            f"fromJSON: invalid JSON ({e.msg}, line {e.lineno} column {e.colno}) in {_quote(text)}"
        ) from None
    stack = [(value, 0)] if isinstance(value, dict | list) else []
    while stack:
        container, level = stack.pop()
        if level >= MAX_JSON_DEPTH:
            raise _Failure(f"fromJSON: arrays/objects nest deeper than {MAX_JSON_DEPTH}")
        items = container.values() if isinstance(container, dict) else container
        env.charge(node, len(items))
        stack.extend((item, level + 1) for item in items if isinstance(item, dict | list))
    return value


_JSON_EXTRA_ESCAPES = {"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _json_string(text: str) -> str:
    quoted = json.dumps(text, ensure_ascii=False)
    if not text.isascii():  # GitHub's JSON writer also escapes these line breaks
        for char, escape in _JSON_EXTRA_ESCAPES.items():
            quoted = quoted.replace(char, escape)
    return quoted


def _json_scalar(value: Any, kind: str) -> str:
    if kind == _STRING:
        return _json_string(value)
    return "null" if kind == _NULL else to_text(value)


def _to_json(env: _Env, node: _Node, value: Any) -> str:
    """Pretty-printed as GitHub does: two spaces, `"key": value`, numbers as in text."""
    out: list[str] = []
    size = 0

    def emit(piece: str) -> None:
        nonlocal size
        size += len(piece)
        if size > MAX_STRING_LENGTH:
            raise _Failure(f"toJSON: the result is longer than {MAX_STRING_LENGTH} characters")
        out.append(piece)

    def write(container: Any, kind: str, level: int) -> None:
        if level >= MAX_JSON_DEPTH:
            raise _Failure(f"toJSON: arrays/objects nest deeper than {MAX_JSON_DEPTH}")
        env.charge(node, 1 + 2 * len(container))  # writing a value costs about two steps
        if not container:
            emit("[]" if kind == _ARRAY else "{}")
            return
        indent = "\n" + "  " * (level + 1)
        separator = indent
        emit("[" if kind == _ARRAY else "{")
        for member in container.items() if kind == _OBJECT else container:
            piece = separator
            separator = "," + indent
            if kind == _OBJECT:
                key, member = member
                piece += _json_string(key if isinstance(key, str) else to_text(key)) + ": "
            member_kind = _kind(member)
            if member_kind in (_ARRAY, _OBJECT):
                emit(piece)
                write(member, member_kind, level + 1)
            else:
                emit(piece + _json_scalar(member, member_kind))
        emit("\n" + "  " * level + ("]" if kind == _ARRAY else "}"))

    kind = _kind(value)
    if kind in (_ARRAY, _OBJECT):
        write(value, kind, 0)
    else:
        emit(_json_scalar(value, kind))
    return "".join(out)


# --- lexer --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    # a literal ("num", "str", "true", "false", "null"), "ident", "prop" (a name after
    # a dot), punctuation or an operator as written, "bad" (no token), or "eof"
    kind: str
    raw: str
    offset: int
    value: Any = None


_BOUNDARY = frozenset("([)],.!><=&|")
_OPERATORS = frozenset({"!", "==", "!=", "<", "<=", ">", ">=", "&&", "||"})
_LITERALS = frozenset({"num", "str", "true", "false", "null"})
_WORDS: dict[str, tuple[str, Any]] = {
    "true": ("true", True),
    "false": ("false", False),
    "null": ("null", None),
    "NaN": ("num", math.nan),
    "Infinity": ("num", math.inf),
}
_KEYWORD = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
# After these a "." starts a number (`.5`); elsewhere it reads a property.
_NUMBER_FOLLOWS = frozenset({"", ",", "(", "["}) | _OPERATORS


def _scan(text: str, i: int, end: int, dots: bool = False) -> int:
    while i < end and (
        not (text[i] in _BOUNDARY or _is_space(text[i])) or (dots and text[i] == ".")
    ):
        i += 1
    return i


def _read_string(text: str, i: int, end: int) -> tuple[int, str | None]:
    parts: list[str] = []
    j = i + 1
    while True:
        quote = text.find("'", j, end)
        if quote < 0:
            return end, None
        if quote + 1 < end and text[quote + 1] == "'":  # '' is a quote
            parts.append(text[j : quote + 1])
            j = quote + 2
            continue
        parts.append(text[j:quote])
        return quote + 1, "".join(parts)


def _tokenize(text: str, start: int, end: int) -> list[_Token]:
    tokens: list[_Token] = []
    previous = ""
    i = start
    while i < end:
        c = text[i]
        if _is_space(c):
            i += 1
            continue
        value: Any = None
        if c in "()[],*":
            kind, j = c, i + 1
        elif c == "'":
            j, value = _read_string(text, i, end)
            kind = "bad" if value is None else "str"
        elif c in "!<>=&|":
            if i + 2 <= end and text[i : i + 2] in _OPERATORS:
                kind, j = text[i : i + 2], i + 2
            elif c in "!<>":
                kind, j = c, i + 1
            else:  # a lone = & or |: GitHub reports it with what follows up to a boundary
                kind, j = "bad", _scan(text, i + 1, end)
        elif c == "." and previous not in _NUMBER_FOLLOWS:
            kind, j = ".", i + 1
        elif c in "+-." or "0" <= c <= "9":
            j = _scan(text, i + 1, end, dots=True)
            value = _parse_number(text[i:j])
            kind = "bad" if math.isnan(value) else "num"
            value = _normal(value)
        else:
            j = _scan(text, i + 1, end)
            word = text[i:j]
            if not _KEYWORD.match(word):
                kind = "bad"
            elif previous == ".":
                kind = "prop"
            elif word in _WORDS:
                kind, value = _WORDS[word]
            else:
                kind = "ident"
        tokens.append(_Token(kind, text[i:j], i, value))
        previous = kind
        i = j
    tokens.append(_Token("eof", "", end))
    return tokens


# --- syntax tree and evaluation -----------------------------------------------------------------


class _Failure(Exception):
    """A function's failure; the call turns it into an EvaluationError at its position."""


class _Env:
    """One evaluation: the contexts, the job's status and the work done so far."""

    __slots__ = ("ctx", "status", "text", "steps")

    def __init__(self, ctx: Mapping[str, Any], status: Status | None, text: str) -> None:
        self.ctx = ctx
        self.status = status
        self.text = text
        self.steps = 0

    def charge(self, node: _Node, steps: int = 1) -> None:
        self.steps += steps
        if self.steps > MAX_STEPS:
            raise self.error(node, f"Evaluation took more than {MAX_STEPS} steps")

    def charge_text(self, node: _Node, text: Any) -> None:
        if isinstance(text, str):  # case folding costs more beyond ASCII
            self.charge(node, len(text) >> (6 if text.isascii() else 4))

    def error(self, node: _Node, message: str) -> ExpressionError:
        return _error(EvaluationError, self.text, node.offset, message)


class _Node(ABC):
    __slots__ = ("offset", "depth")

    def __init__(self, offset: int, children: Sequence[_Node] = ()) -> None:
        self.offset: int = offset
        self.depth: int = 1 + max((child.depth for child in children), default=0)

    @abstractmethod
    def evaluate(self, env: _Env) -> Any: ...

    def children(self) -> Sequence[_Node]:
        return ()


class _Literal(_Node):
    __slots__ = ("value",)

    def __init__(self, value: Any, offset: int) -> None:
        super().__init__(offset)
        self.value = value

    def evaluate(self, env: _Env) -> Any:
        env.charge(self)
        return self.value


_MISSING = object()


def _lookup(env: _Env, node: _Node, mapping: Mapping[Any, Any], key: str) -> Any:
    """A key of an object, ignoring case as GitHub's contexts do; `_MISSING` if absent."""
    if key in mapping:
        return mapping[key]
    env.charge(node, len(mapping))
    folded = _fold(key)
    for name, value in mapping.items():
        if isinstance(name, str) and _fold(name) == folded:
            return value
    return _MISSING


class _Named(_Node):
    """A context by name (`github`, `inputs`, ...): null when the run has none."""

    __slots__ = ("name",)

    def __init__(self, name: str, offset: int) -> None:
        super().__init__(offset)
        self.name = name

    def evaluate(self, env: _Env) -> Any:
        env.charge(self)
        value = _lookup(env, self, env.ctx, self.name)
        return None if value is _MISSING else value


def _array_index(value: Any) -> int | None:
    number = _to_number(value)
    if math.isnan(number) or number < 0 or number >= 2**31:
        return None
    return math.floor(number)


class _Index(_Node):
    """`obj.name`, `obj[expr]`, `obj.*`, `obj[*]` (`index` None)."""

    __slots__ = ("obj", "index", "key")

    def __init__(self, obj: _Node, index: _Node | None, offset: int, key: str | None) -> None:
        super().__init__(offset, [obj, index or _Literal(None, offset)])
        self.obj = obj
        self.index = index
        self.key = key  # the index when written as a literal, for `references`

    def children(self) -> Sequence[_Node]:
        return [self.obj] if self.index is None else [self.obj, self.index]

    def evaluate(self, env: _Env) -> Any:
        env.charge(self)
        obj = self.obj.evaluate(env)
        star = self.index is None
        index = None if self.index is None else self.index.evaluate(env)
        name = to_text(index) if _kind(index) in _PRIMITIVE else None
        kind = _kind(obj)
        if isinstance(obj, _Filtered):  # the index applies to each item
            env.charge(self, len(obj))
            result = _Filtered()
            for item in obj:
                item_kind = _kind(item)
                if item_kind == _OBJECT:
                    if star:
                        result.extend(item.values())
                    elif name is not None:
                        value = _lookup(env, self, item, name)
                        if value is not _MISSING:
                            result.append(value)
                elif item_kind == _ARRAY:
                    if star:
                        result.extend(item)
                    elif (position := _array_index(index)) is not None and position < len(item):
                        result.append(item[position])
            env.charge(self, len(result))
            return result
        if kind == _OBJECT:
            if star:
                env.charge(self, len(obj))
                return _Filtered(obj.values())
            value = _MISSING if name is None else _lookup(env, self, obj, name)
            return None if value is _MISSING else value
        if kind == _ARRAY:
            if star:
                env.charge(self, len(obj))
                return _Filtered(obj)
            position = _array_index(index)
            return obj[position] if position is not None and position < len(obj) else None
        return _Filtered() if star else None


class _Not(_Node):
    __slots__ = ("operand",)

    def __init__(self, operand: _Node, offset: int) -> None:
        super().__init__(offset, [operand])
        self.operand = operand

    def children(self) -> Sequence[_Node]:
        return [self.operand]

    def evaluate(self, env: _Env) -> Any:
        env.charge(self)
        return not truthy(self.operand.evaluate(env))


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "==": _equals,
    "!=": lambda a, b: not _equals(a, b),
    "<": lambda a, b: _order(a, b) == -1,
    ">": lambda a, b: _order(a, b) == 1,
    "<=": lambda a, b: _equals(a, b) or _order(a, b) == -1,
    ">=": lambda a, b: _equals(a, b) or _order(a, b) == 1,
}


class _Compare(_Node):
    __slots__ = ("op", "left", "right")

    def __init__(self, op: str, left: _Node, right: _Node, offset: int) -> None:
        super().__init__(offset, [left, right])
        self.op, self.left, self.right = op, left, right

    def children(self) -> Sequence[_Node]:
        return [self.left, self.right]

    def evaluate(self, env: _Env) -> Any:
        env.charge(self)
        left = self.left.evaluate(env)
        right = self.right.evaluate(env)
        env.charge_text(self, left)
        env.charge_text(self, right)
        return _COMPARISONS[self.op](left, right)


class _Logical(_Node):
    """`&&` (`||`): the first falsy (truthy) operand, else the last, as GitHub returns it."""

    __slots__ = ("op", "args")

    def __init__(self, op: str, args: Sequence[_Node], offset: int) -> None:
        super().__init__(offset, args)
        self.op, self.args = op, list(args)

    def children(self) -> Sequence[_Node]:
        return self.args

    def evaluate(self, env: _Env) -> Any:
        env.charge(self)
        stop_when = self.op == "||"
        result = None
        for arg in self.args:
            result = arg.evaluate(env)
            if truthy(result) == stop_when:
                break
        return result


def _logical(op: str, left: _Node, right: _Node, offset: int) -> _Logical:
    """`a && (b && c)` is one node of three operands, as in GitHub's tree (and its depth)."""
    args: list[_Node] = []
    for operand in (left, right):
        if isinstance(operand, _Logical) and operand.op == op:
            args.extend(operand.args)
        else:
            args.append(operand)
    return _Logical(op, args, offset)


class _Call(_Node):
    __slots__ = ("name", "args")

    def __init__(self, name: str, args: Sequence[_Node], offset: int) -> None:
        super().__init__(offset, args)
        self.name, self.args = name, list(args)

    def children(self) -> Sequence[_Node]:
        return self.args

    def evaluate(self, env: _Env) -> Any:
        env.charge(self)
        try:
            result = _FUNCTIONS[self.name].call(env, self, self.args)
        except _Failure as failure:
            raise env.error(self, str(failure)) from None
        env.charge_text(self, result)
        return result


class _Interpolate(_Node):
    """Text with `${{ }}`: the text with each value written in, as GitHub's `format()`."""

    __slots__ = ("parts",)

    def __init__(self, parts: Sequence[str | _Node]) -> None:
        nodes = [part for part in parts if isinstance(part, _Node)]
        super().__init__(nodes[0].offset if nodes else 0, nodes)
        self.parts = list(parts)

    def children(self) -> Sequence[_Node]:
        return [part for part in self.parts if isinstance(part, _Node)]

    def evaluate(self, env: _Env) -> Any:
        out: list[str] = []
        written = 0
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            text = to_text(part.evaluate(env))
            written += len(text)
            if written > MAX_STRING_LENGTH:
                raise env.error(part, f"The values written exceed {MAX_STRING_LENGTH} characters")
            env.charge_text(part, text)
            out.append(text)
        return "".join(out)


# --- functions ----------------------------------------------------------------------------------
# Each takes its arguments unevaluated and evaluates only what GitHub evaluates, so that
# `case(true, 'a', fromJSON('bad'))` is 'a' and not an error.

Args = Sequence[_Node]


def _contains(env: _Env, node: _Node, args: Args) -> bool:
    search = args[0].evaluate(env)
    kind = _kind(search)
    if kind in _PRIMITIVE:
        item = args[1].evaluate(env)
        if _kind(item) not in _PRIMITIVE:
            return False
        haystack, needle = to_text(search), to_text(item)
        env.charge_text(node, haystack)
        env.charge_text(node, needle)
        return _fold(needle) in _fold(haystack)
    if kind == _ARRAY and search:
        item = args[1].evaluate(env)
        cost = 1 + (len(item) >> 6 if isinstance(item, str) else 0)
        for element in search:
            env.charge(node, cost + (len(element) >> 6 if isinstance(element, str) else 0))
            if _equals(item, element):
                return True
    return False


def _affix(test: Callable[[str, str], bool]) -> Callable[[_Env, _Node, Args], bool]:
    def call(env: _Env, node: _Node, args: Args) -> bool:
        text = args[0].evaluate(env)
        if _kind(text) not in _PRIMITIVE:
            return False
        affix = args[1].evaluate(env)
        if _kind(affix) not in _PRIMITIVE:
            return False
        env.charge_text(node, text)
        env.charge_text(node, affix)
        return test(_fold(to_text(text)), _fold(to_text(affix)))

    return call


def _format_segments(fmt: str, supplied: int) -> list[str | tuple[int, str]]:
    """`{0}`, `{{`, `}}` as GitHub reads them; a `{N:spec}` keeps its (unsupported) spec."""
    segments: list[str | tuple[int, str]] = []
    invalid = f"The following format string is invalid: {fmt}"
    i, n = 0, len(fmt)
    while i < n:
        left, right = fmt.find("{", i), fmt.find("}", i)
        if left >= 0 and (right < 0 or right > left):
            if fmt[left + 1 : left + 2] == "{":
                segments.append(fmt[i : left + 1])
                i = left + 2
                continue
            digits = left + 1
            while digits < n and "0" <= fmt[digits] <= "9":
                digits += 1
            number = fmt[left + 1 : digits].lstrip("0") or "0"
            if right < 0 or digits == left + 1 or len(number) > 3 or int(number) > 255:
                raise _Failure(invalid)  # GitHub reads the index as a byte
            index = int(number)
            if fmt[digits : digits + 1] == "}":
                spec, close = "", digits
            elif fmt[digits : digits + 1] == ":":
                chars: list[str] = []
                close = digits + 1
                while close < n and (fmt[close] != "}" or fmt[close + 1 : close + 2] == "}"):
                    chars.append(fmt[close])
                    close += 2 if fmt[close] == "}" else 1
                if close >= n:
                    raise _Failure(invalid)
                spec = "".join(chars)
            else:
                raise _Failure(invalid)
            if index >= supplied:
                raise _Failure(
                    f"The following format string references more arguments than were "
                    f"supplied: {fmt}"
                )
            if left > i:
                segments.append(fmt[i:left])
            segments.append((index, spec))
            i = close + 1
        elif right >= 0:
            if fmt[right + 1 : right + 2] != "}":
                raise _Failure(invalid)
            segments.append(fmt[i : right + 1])
            i = right + 2
        else:
            segments.append(fmt[i:])
            break
    return segments


def _format(env: _Env, node: _Node, args: Args) -> str:
    fmt = to_text(args[0].evaluate(env))
    env.charge_text(node, fmt)
    values: dict[int, Any] = {}  # each argument is evaluated once, when first written
    out: list[str] = []
    size = 0
    for segment in _format_segments(fmt, len(args) - 1):
        if isinstance(segment, tuple):
            index, spec = segment
            if index not in values:
                values[index] = args[index + 1].evaluate(env)
            if spec:
                raise _Failure(
                    f"The format specifiers '{spec}' are not valid for objects of type "
                    f"'{_kind(values[index])}'"
                )
            segment = to_text(values[index])
        size += len(segment)
        if size > MAX_STRING_LENGTH:
            raise _Failure(f"format: the result is longer than {MAX_STRING_LENGTH} characters")
        out.append(segment)
    return "".join(out)


def _join(env: _Env, node: _Node, args: Args) -> str:
    items = args[0].evaluate(env)
    kind = _kind(items)
    if kind == _ARRAY and items:
        separator = ","
        if len(items) > 1 and len(args) > 1:
            given = args[1].evaluate(env)
            if _kind(given) in _PRIMITIVE:
                separator = to_text(given)
        env.charge(node, len(items))
        texts = [to_text(item) for item in items]
        if sum(map(len, texts)) + len(separator) * (len(texts) - 1) > MAX_STRING_LENGTH:
            raise _Failure(f"join: the result is longer than {MAX_STRING_LENGTH} characters")
        return separator.join(texts)
    return to_text(items) if kind in _PRIMITIVE else ""


def _to_json_call(env: _Env, node: _Node, args: Args) -> str:
    return _to_json(env, node, args[0].evaluate(env))


def _from_json_call(env: _Env, node: _Node, args: Args) -> Any:
    text = to_text(args[0].evaluate(env))
    env.charge_text(node, text)
    return _from_json(env, node, text)


def _case(env: _Env, node: _Node, args: Args) -> Any:
    for i in range(0, len(args) - 1, 2):
        predicate = args[i].evaluate(env)
        if not isinstance(predicate, bool):
            raise _Failure("case predicate must evaluate to a boolean value")
        if predicate:
            return args[i + 1].evaluate(env)
    return args[-1].evaluate(env)


def _status(name: str) -> Callable[[_Env, _Node, Args], bool]:
    def call(env: _Env, node: _Node, args: Args) -> bool:
        if env.status is None:
            raise _Failure(f"{name}() is only available where a job's status is known")
        return name == "always" or bool(getattr(env.status, name))

    return call


@dataclass(frozen=True)
class _Function:
    low: int
    high: int
    call: Callable[[_Env, _Node, Args], Any]


_FUNCTIONS: dict[str, _Function] = {
    "contains": _Function(2, 2, _contains),
    "startswith": _Function(2, 2, _affix(str.startswith)),
    "endswith": _Function(2, 2, _affix(str.endswith)),
    "format": _Function(1, 255, _format),
    "join": _Function(1, 2, _join),
    "tojson": _Function(1, 1, _to_json_call),
    "fromjson": _Function(1, 1, _from_json_call),
    "case": _Function(3, 255, _case),
    **{name: _Function(0, 0, _status(name)) for name in sorted(STATUS_FUNCTIONS)},
}


# --- parser -------------------------------------------------------------------------------------

_PRECEDENCE = {"||": 1, "&&": 2, "==": 3, "!=": 3, "<": 4, "<=": 4, ">": 4, ">=": 4}


class _Parser:
    """Precedence climbing over the tokens; nesting is bounded before it recurses, so no input
    reaches Python's recursion limit."""

    def __init__(
        self, text: str, start: int, end: int, contexts: frozenset[str] | None = None
    ) -> None:
        self.text = text
        self.tokens = _tokenize(text, start, end)
        self.position = 0
        self.nesting = 0
        self.contexts = contexts

    def parse(self) -> _Node | None:
        if self.peek().kind == "eof":
            return None
        node = self.binary(1)
        token = self.next()
        if token.kind != "eof":
            raise self.unexpected(token)
        return node

    def peek(self) -> _Token:
        return self.tokens[self.position]

    def next(self) -> _Token:
        token = self.tokens[self.position]
        if token.kind != "eof":
            self.position += 1
        return token

    def error(self, token: _Token, description: str, raw: str | None = None) -> ExpressionError:
        return _error(ExpressionSyntaxError, self.text, token.offset, description, raw)

    def unexpected(self, token: _Token) -> ExpressionError:
        if token.kind == "eof":  # reported at the last token, as GitHub does
            last = self.tokens[-2] if len(self.tokens) > 1 else token
            return self.error(last, "Unexpected end of expression", last.raw)
        return self.error(token, "Unexpected symbol", token.raw)

    def expect(self, kind: str) -> None:
        token = self.next()
        if token.kind != kind:
            raise self.unexpected(token)

    def enter(self, token: _Token) -> None:
        self.nesting += 1
        if self.nesting > MAX_DEPTH:
            raise self.error(token, f"Exceeded max expression depth {MAX_DEPTH}")

    def bounded(self, node: _Node, token: _Token) -> _Node:
        if node.depth > MAX_DEPTH:
            raise self.error(token, f"Exceeded max expression depth {MAX_DEPTH}")
        return node

    def binary(self, lowest: int) -> _Node:
        left = self.unary()
        while (precedence := _PRECEDENCE.get(self.peek().kind, 0)) >= lowest:
            token = self.next()
            right = self.binary(precedence + 1)
            if token.kind in ("&&", "||"):
                left = _logical(token.kind, left, right, token.offset)
            else:
                left = _Compare(token.kind, left, right, token.offset)
            left = self.bounded(left, token)
        return left

    def unary(self) -> _Node:
        bangs: list[_Token] = []
        while self.peek().kind == "!":
            bangs.append(self.next())
        node = self.postfix()
        for bang in reversed(bangs):
            node = self.bounded(_Not(node, bang.offset), bang)
        return node

    def postfix(self) -> _Node:
        token = self.next()
        node: _Node
        if token.kind in _LITERALS:
            return _Literal(token.value, token.offset)
        if token.kind == "(":
            self.enter(token)
            node = self.binary(1)
            self.expect(")")
            self.nesting -= 1
        elif token.kind == "ident" and self.peek().kind == "(":
            node = self.call(token)
        elif token.kind == "ident":
            if self.contexts is not None and token.raw.lower() not in self.contexts:
                raise self.error(token, "Unrecognized named-value", token.raw)
            node = _Named(token.raw, token.offset)
        else:
            raise self.unexpected(token)
        while self.peek().kind in (".", "["):
            opener = self.next()
            key: str | None = None
            index: _Node | None = None
            if opener.kind == ".":
                name = self.next()
                if name.kind == "prop":
                    key = name.raw
                    index = _Literal(name.raw, name.offset)
                elif name.kind != "*":
                    raise self.unexpected(name)
            else:
                self.enter(opener)
                if self.peek().kind == "*":
                    self.next()
                else:
                    index = self.binary(1)
                    if isinstance(index, _Literal) and _kind(index.value) in (_STRING, _NUMBER):
                        key = to_text(index.value)
                self.expect("]")
                self.nesting -= 1
            node = self.bounded(_Index(node, index, opener.offset, key), opener)
        return node

    def call(self, name: _Token) -> _Node:
        function = _FUNCTIONS.get(name.raw.lower())
        if function is None:
            raise self.error(name, "Unrecognized function", name.raw)
        self.enter(self.next())
        args: list[_Node] = []
        if self.peek().kind == ")":
            self.next()
        else:
            while True:
                args.append(self.binary(1))
                token = self.next()
                if token.kind == ")":
                    break
                if token.kind != ",":
                    raise self.unexpected(token)
        self.nesting -= 1
        low, high = function.low, function.high
        wanted = f"{low}" if low == high else f"{low} to {high}"
        detail = f" ({name.raw}() takes {wanted}, got {len(args)})"
        for failed, description in (
            (len(args) < low, "Too few parameters supplied"),
            (len(args) > high, "Too many parameters supplied"),
            (
                name.raw.lower() == "case" and len(args) % 2 == 0,
                "Even number of parameters supplied, requires an odd number of parameters",
            ),
        ):
            if failed:
                raise _error(
                    ExpressionSyntaxError, self.text, name.offset, description, name.raw, detail
                )
        return self.bounded(_Call(name.raw.lower(), args, name.offset), name)


# --- public API ---------------------------------------------------------------------------------


def _static_path(node: _Node) -> tuple[str, ...] | None:
    if isinstance(node, _Named):
        return (node.name.lower(),)
    if isinstance(node, _Index) and node.key is not None:
        base = _static_path(node.obj)
        return None if base is None else (*base, node.key)
    return None


def _collect(node: _Node, functions: set[str], references: set[tuple[str, ...]]) -> None:
    path = _static_path(node)
    if path is not None:
        references.add(path)
        return
    if isinstance(node, _Call):
        functions.add(node.name)
    for child in node.children():
        _collect(child, functions, references)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, _Filtered) else value


class Expr:
    """A parsed expression.

    `functions`: lower-cased names of the functions it calls. `references`: the context
    paths it reads as far as they are written out, the context's name lower-cased
    (`needs.build.outputs.x` -> ("needs", "build", "outputs", "x"); `matrix[inputs.k]` ->
    ("matrix",) and ("inputs", "k")). `offset`: where `source` starts in the parsed text.
    """

    __slots__ = ("source", "offset", "functions", "references", "_root", "_text")

    def __init__(self, root: _Node | None, source: str, offset: int, text: str) -> None:
        functions: set[str] = set()
        references: set[tuple[str, ...]] = set()
        if root is not None:
            _collect(root, functions, references)
        self.source = source
        self.offset = offset
        self.functions = frozenset(functions)
        self.references = frozenset(references)
        self._root = root
        self._text = text

    def evaluate(self, ctx: Mapping[str, Any], status: Status | None = None) -> Any:
        """The value against `ctx`; with `status` None a status function is an error."""
        if self._root is None:
            return None
        return _plain(self._root.evaluate(_Env(ctx, status, self._text)))

    def calls_status_function(self) -> bool:
        return not STATUS_FUNCTIONS.isdisjoint(self.functions)

    def __repr__(self) -> str:
        return f"Expr({self.source!r})"


def _contexts(names: Collection[str] | None) -> frozenset[str] | None:
    return None if names is None else frozenset(name.lower() for name in names)


def _parse(text: str, start: int, end: int, contexts: frozenset[str] | None) -> Expr:
    if end - start > MAX_EXPRESSION_LENGTH:
        raise _error(
            ExpressionSyntaxError,
            text,
            start,
            f"Exceeded max expression length {MAX_EXPRESSION_LENGTH}",
        )
    return Expr(_Parser(text, start, end, contexts).parse(), text[start:end], start, text)


def parse_expression(text: str, *, contexts: Collection[str] | None = None) -> Expr:
    """The inside of `${{ }}` (or a bare `if:` value); positions are offsets in `text`.

    `contexts`, when given, are the names an expression may read (case-insensitive); any
    other name is refused as GitHub refuses it ("Unrecognized named-value").
    """
    return _parse(text, 0, len(text), _contexts(contexts))


class Template:
    """Text with zero or more `${{ }}`."""

    __slots__ = ("source", "expressions", "is_literal", "is_single", "_node")

    def __init__(self, source: str, parts: Sequence[str | Expr]) -> None:
        self.source = source
        self.expressions = tuple(part for part in parts if isinstance(part, Expr))
        self.is_literal = not self.expressions
        self.is_single = len(self.expressions) == 1 and all(
            isinstance(part, Expr) or not _strip(part, 0, len(part)) for part in parts
        )
        self._node = _Interpolate(
            [part if isinstance(part, str) else _root(part) for part in parts]
        )

    def render(self, ctx: Mapping[str, Any], status: Status | None = None) -> str:
        """The text with each expression's value written in as GitHub writes it."""
        if self.is_literal:
            return self.source
        result: str = self._node.evaluate(_Env(ctx, status, self.source))
        return result

    def evaluate(self, ctx: Mapping[str, Any], status: Status | None = None) -> Any:
        """A single `${{ }}`: its value itself (a list, a number, ...); else `render()`."""
        if self.is_single:
            return self.expressions[0].evaluate(ctx, status)
        return self.render(ctx, status)

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


def _root(expr: Expr) -> _Node:
    assert expr._root is not None  # a template refuses an empty ${{ }}
    return expr._root


def parse_template(text: str, *, contexts: Collection[str] | None = None) -> Template:
    """Text with zero or more `${{ }}`; positions are offsets in `text`.

    As on GitHub an expression ends at the first `}}` outside a string literal, so
    `${{ '}}' }}` is the text `}}`; an unterminated `${{` or an empty `${{ }}` is an error.
    """
    names = _contexts(contexts)
    parts: list[str | Expr] = []
    i = 0
    while (start := text.find("${{", i)) >= 0:
        if start > i:
            parts.append(text[i:start])
        in_string = False
        close = -1
        for j in range(start + 3, len(text)):
            c = text[j]
            if c == "'":
                in_string = not in_string  # '' toggles twice: still a string
            elif c == "}" and not in_string and text[j - 1] == "}":
                close = j
                break
        if close < 0:
            raise _error(
                ExpressionSyntaxError,
                text,
                start,
                "The expression is not closed. An unescaped ${{ sequence was found, "
                "but the closing }} sequence was not found",
            )
        inner_start, inner_end = start + 3, close - 1
        while inner_start < inner_end and _is_space(text[inner_start]):
            inner_start += 1
        while inner_end > inner_start and _is_space(text[inner_end - 1]):
            inner_end -= 1
        if inner_start == inner_end:
            raise _error(ExpressionSyntaxError, text, start, "An expression was expected")
        parts.append(_parse(text, inner_start, inner_end, names))
        i = close + 1
    if i < len(text) or not parts:
        parts.append(text[i:])
    return Template(text, parts)


def condition(text: str, *, contexts: Collection[str] | None = None) -> Expr:
    """An `if:` value, with or without `${{ }}`, as GitHub reads it: empty is `success()`,
    and an expression that calls none of the status functions is `success() && (expr)`.
    Text around a `${{ }}` makes it a string, true when not empty, as on GitHub."""
    template = parse_template(text, contexts=contexts)
    if template.is_literal:
        expr = parse_expression(text, contexts=contexts)
    elif template.is_single:
        expr = template.expressions[0]
    else:
        expr = Expr(template._node, text, 0, text)
    if expr.calls_status_function():
        return expr
    success = _Call("success", [], expr.offset)
    root = success if expr._root is None else _logical("&&", success, expr._root, expr.offset)
    if root.depth > MAX_DEPTH:
        raise _error(
            ExpressionSyntaxError, text, expr.offset, f"Exceeded max expression depth {MAX_DEPTH}"
        )
    return Expr(root, expr.source, expr.offset, text)
