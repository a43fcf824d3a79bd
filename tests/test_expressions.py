"""GitHub Actions' expression language, asserted against GitHub's results.

The expected values are GitHub's: the behaviour of the engine GitHub evaluates
workflows with (the runner's DTExpressions2) and of the shared expression test
data of actions/languageservices, case by case.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable
from typing import Any

import pytest

from actors.expressions import (
    MAX_DEPTH,
    MAX_EXPRESSION_LENGTH,
    MAX_JSON_DEPTH,
    MAX_STEPS,
    MAX_STRING_LENGTH,
    EvaluationError,
    Expr,
    ExpressionError,
    ExpressionSyntaxError,
    Status,
    Template,
    condition,
    parse_expression,
    parse_template,
    to_text,
    truthy,
)

NAN = math.nan
INF = math.inf
OK = Status(success=True, failure=False, cancelled=False)
FAILED = Status(success=False, failure=True, cancelled=False)
CANCELLED = Status(success=False, failure=False, cancelled=True)


def value(text: str, ctx: dict[str, Any] | None = None, status: Status | None = None) -> Any:
    return parse_expression(text).evaluate(ctx or {}, status)


def same(actual: Any, expected: Any) -> bool:
    """Equal and of the same JSON kind: `True` is not `1`, NaN is NaN, key order counts."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(actual) is type(expected) and actual == expected
    if isinstance(expected, int | float):
        if not isinstance(actual, int | float):
            return False
        if math.isnan(expected):
            return math.isnan(actual)
        return actual == expected
    if isinstance(expected, list):
        return (
            type(actual) is list
            and len(actual) == len(expected)
            and all(same(a, e) for a, e in zip(actual, expected, strict=True))
        )
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and list(actual) == list(expected)
            and all(same(actual[k], expected[k]) for k in expected)
        )
    return type(actual) is type(expected) and actual == expected


def check(text: str, expected: Any, ctx: dict[str, Any] | None = None) -> None:
    actual = value(text, ctx)
    assert same(actual, expected), f"{text!r} gave {actual!r}, GitHub gives {expected!r}"


# --- literals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1", 1),
        ("2", 2),
        (".5", 0.5),
        ("0.5", 0.5),
        ("-1", -1),
        ("+1", 1),
        ("-.5", -0.5),
        ("-2.0", -2),
        ("0", 0),
        ("-0", 0),
        ("-0.0", 0),
        ("1.", 1),
        ("1e1", 10),
        ("1E1", 10),
        ("1E+1", 10),
        ("1e-1", 0.1),
        ("1.2E-2", 0.012),
        ("0x0", 0),
        ("0xf", 15),
        ("0xfF", 255),
        ("0xfFf", 4095),
        ("0o0", 0),
        ("0o7", 7),
        ("0o777", 511),
        ("0xFFFFFFFF", -1),  # GitHub reads hex as a 32-bit integer
        ("0x7FFFFFFF", 2147483647),
        ("NaN", NAN),
        ("Infinity", INF),
        ("-Infinity", -INF),
        ("+Infinity", INF),
        ("1e400", INF),
        ("true", True),
        ("false", False),
        ("null", None),
        ("''", ""),
        ("'abc'", "abc"),
        ("'it''s'", "it's"),
        ("'a''''b'", "a''b"),
        ("''''", "'"),
        ("'}}'", "}}"),
        ("'${{ x }}'", "${{ x }}"),
        ("'line\nbreak'", "line\nbreak"),
        ("'ü 😊'", "ü 😊"),
        ("  'padded'  ", "padded"),
        ("", None),  # GitHub evaluates an empty expression to null
        ("   ", None),
    ],
)
def test_literals(text: str, expected: Any) -> None:
    check(text, expected)


def test_integral_numbers_come_back_as_int() -> None:
    assert type(value("1.0")) is int
    assert type(value("fromJSON('[2.0]')")[0]) is int
    assert type(value("0.5")) is float


# --- strings from values: to_text, format(), join() and templates share it ----------------------


@pytest.mark.parametrize(
    "given, text",
    [
        (None, ""),
        (True, "true"),
        (False, "false"),
        (1, "1"),
        (1.0, "1"),
        (-2.0, "-2"),
        (0.5, "0.5"),
        (-0.5, "-0.5"),
        (0, "0"),
        (-0.0, "0"),
        (123456.789, "123456.789"),
        (-123456.789, "-123456.789"),
        (1.9, "1.9"),
        (1234.56, "1234.56"),
        (0.84551240822557006, "0.84551240822557"),  # 15 significant digits
        (1.2345678901234567, "1.23456789012346"),
        (0.1 + 0.2, "0.3"),
        (123456789012345, "123456789012345"),
        (1e15, "1E+15"),  # .NET's G15 notation
        (123456789012345678, "1.23456789012346E+17"),
        (0.0001, "0.0001"),
        (0.00001, "1E-05"),
        pytest.param(10**400, "Infinity", id="int-beyond-a-double"),
        pytest.param(-(10**400), "-Infinity", id="negative-int-beyond-a-double"),
        (NAN, "NaN"),
        (INF, "Infinity"),
        (-INF, "-Infinity"),
        ("text", "text"),
        ("", ""),
        ([], "Array"),
        ([1, 2, 3], "Array"),
        ({}, "Object"),
        ({"a": 1}, "Object"),
    ],
)
def test_to_text(given: Any, text: str) -> None:
    assert to_text(given) == text
    assert value("format('{0}', x)", {"x": given}) == text
    assert parse_template("${{ x }}!").render({"x": given}) == text + "!"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("format('{0}', 1.2e2)", "120"),
        ("format('{0}', 1.2e-2)", "0.012"),
        ("format('{0}', .5)", "0.5"),
        ("format('{0}', 0xff)", "255"),
        ("format('{0}', 0o10)", "8"),
        ("format('{0}', -0)", "0"),
        ("format('{0}', +Infinity)", "Infinity"),
    ],
)
def test_numbers_in_text(text: str, expected: str) -> None:
    check(text, expected)


# --- truthiness -------------------------------------------------------------------------------

FALSY = [False, 0, 0.0, -0.0, NAN, "", None]
TRUTHY = [True, 1, -1, 0.5, -0.5, INF, -INF, "a", "false", "0", " ", [], {}, [0], {"a": 0}]


@pytest.mark.parametrize("given", FALSY)
def test_falsy(given: Any) -> None:
    assert truthy(given) is False
    assert value("!!x", {"x": given}) is False


@pytest.mark.parametrize("given", TRUTHY)
def test_truthy(given: Any) -> None:
    assert truthy(given) is True
    assert value("!!x", {"x": given}) is True


@pytest.mark.parametrize(
    "text, expected",
    [
        ("!!true", True),
        ("!!1", True),
        ("!!.5", True),
        ("!!-Infinity", True),
        ("!!NaN", False),
        ("!!-0.0", False),
        ("!!'false'", True),
        ("!!' '", True),
        ("!!''", False),
        ("!!fromJson('[]')", True),
        ("!!fromJson('{}')", True),
        ("!!null", False),
        ("!0", True),
        ("!'a'", False),
    ],
)
def test_not(text: str, expected: bool) -> None:
    check(text, expected)


# --- loose equality ---------------------------------------------------------------------------

EMPTY: dict[str, Any] = {"obj": {}, "arr": [], "obj2": {}, "arr2": []}


@pytest.mark.parametrize(
    "text, expected",
    [
        # same kinds
        ("true == true", True),
        ("false == true", False),
        ("0 == -0", True),
        ("120 == 1.2e2", True),
        ("1.001 == 1.002", False),
        ("NaN == NaN", False),
        ("NaN != NaN", True),
        ("Infinity == Infinity", True),
        ("-Infinity == Infinity", False),
        ("'a' == 'a'", True),
        ("'a' == 'b'", False),
        ("null == null", True),
        ("obj == obj", True),  # objects and arrays equal only themselves
        ("obj == obj2", False),
        ("arr == arr", True),
        ("arr == arr2", False),
        ("fromJSON('[]') == fromJSON('[]')", False),
        ("obj == arr", False),
        # strings ignore case (ordinal, per character), as GitHub compares them
        ("'abcdefghijklmnopqrstuvwxyz' == 'ABCDEFGHIJKLMNOPQRSTUVWXYZ'", True),
        ("'ü' == 'Ü'", True),
        ("'ç' == 'Ç'", True),
        ("'ς' == 'Σ'", True),
        ("'Σ' == 'σ'", True),
        ("'АБВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЬЭЮЯ' == 'абвгдежзийклмнопрстуфхцчшщьэюя'", True),
        ("'i' == 'İ'", False),
        ("'ı' == 'I'", False),
        ("'ß' == 'SS'", False),
        # booleans and null become numbers
        ("false == 0", True),
        ("true == 1", True),
        ("true == 2", False),
        ("false == NaN", False),
        ("false == ''", True),
        ("false == '  '", True),
        ("false == ' 0.0 '", True),
        ("true == ' 1.0 '", True),
        ("false == '-1'", False),
        ("true == 'true'", False),  # 'true' is NaN as a number
        ("false == null", True),
        ("true == null", False),
        ("null == 0", True),
        ("null == ''", True),
        ("null == '   '", True),
        ("null == '0'", True),
        ("null == 'null'", False),
        ("null == 'false'", False),
        # numbers and strings: the string is parsed
        ("0 == ''", True),
        ("0 == ' -0.0 '", True),
        ("120 == ' +1.2e2 '", True),
        ("-120 == ' -1.2E+2 '", True),
        ("0.012 == ' 1.2e-2 '", True),
        ("255 == ' 0xff '", True),
        ("8 == ' 0o10 '", True),
        ("Infinity == ' Infinity '", True),
        ("-Infinity == ' -Infinity '", True),
        ("1 == '0'", False),
        ("1 == 'a'", False),
        ("NaN == 'NaN'", False),
        ("' NaN ' != NaN", True),
        ("10 == '1_0'", False),
        ("255 == '0XFF'", False),  # only a lower-case 0x prefix
        # arrays and objects are NaN to every other kind
        ("'' == obj", False),
        ("'Object' == obj", False),
        ("'Array' == arr", False),
        ("0 == arr", False),
        ("false == obj", False),
        ("null == arr", False),
        ("fromjson('[]') == NaN", False),
        ("fromjson('[]') != NaN", True),
    ],
)
def test_equality(text: str, expected: bool) -> None:
    check(text, expected, EMPTY)


# --- ordering ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1 < 2", True),
        ("1 < 1", False),
        ("1.002 > 1.001", True),
        ("1 <= 1", True),
        ("2 >= 3", False),
        ("'abc' < 'def'", True),
        ("'def' > 'abc'", True),
        ("'a' < '['", True),  # ignoring case means comparing upper case
        ("'a' >= '['", False),
        ("'abc' <= 'ABC'", True),
        ("'abc' < 'ABC'", False),
        ("'i' < 'İ'", True),
        ("'ı' > 'I'", True),
        ("false < true", True),
        ("true > false", True),
        ("true > true", False),
        ("true >= true", True),
        ("false > -11", True),
        ("true > NaN", False),
        ("true > -Infinity", True),
        ("false < Infinity", True),
        ("false > '-1'", True),
        ("true > null", True),
        ("'1' > null", True),
        ("'' > null", False),
        ("null > -1", True),
        ("null > ' -1 '", True),
        ("null >= null", True),  # equal, though never ordered
        ("null > null", False),
        ("0 > ' -1 '", True),
        ("' 1 ' > 0", True),
        ("'2' > true", True),
        ("NaN < 1", False),
        ("NaN >= NaN", False),
        ("' abc ' > NaN", False),
        ("arr > arr", False),
        ("obj < obj", False),
        ("arr >= arr", True),  # >= is == or >
        ("1 > arr", False),
        ("'' < obj", False),
    ],
)
def test_ordering(text: str, expected: bool) -> None:
    check(text, expected, EMPTY)


# --- && and || return an operand --------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("true && true && true", True),
        ("true && false && true", False),
        ("true && 1 && 2", 2),
        ("true && 0 && 2", 0),
        ("true && 'a' && 'b'", "b"),
        ("true && '' && 'asdf'", ""),
        ("null && true", None),
        ("obj && 123", 123),
        ("arr && 789", 789),
        ("true || false", True),
        ("false || false", False),
        ("0 || 0 || 2 || 3", 2),
        ("false || 0", 0),
        ("false || '' || 'a' || 'b'", "a"),
        ("false || null", None),
        ("null || true", True),
        ("arr || 1", []),
        ("false || fromJSON('{\"a\": 1}')", {"a": 1}),
        ("false && fromJSON('not json')", False),  # the right side is never evaluated
        ("true || fromJSON('not json')", True),
    ],
)
def test_logical_operators(text: str, expected: Any) -> None:
    check(text, expected, EMPTY)


# --- precedence: grouping, index/property, !, < <= > >=, == !=, &&, || -------------------------


@pytest.mark.parametrize(
    "text, expected, ctx",
    [
        ("foo.bar.baz", 2, {"foo": {"bar": {"baz": 2}}}),
        ("!foo.bar", False, {"foo": {"bar": True}}),
        ("(!foo).bar", None, {"foo": {"bar": True}}),
        ("3 > foo.bar", True, {"foo": {"bar": 2}}),
        ("3 > foo['bar']", True, {"foo": {"bar": 2}}),
        ("!2 < 3", True, {}),
        ("!(2 < 3)", False, {}),
        ("3 < 2 < 1", True, {}),
        ("3 < (2 < 1)", False, {}),
        ("3 <= 2 < 1", True, {}),
        ("0 > 0 < 1", True, {}),
        ("2 > 2 > 0", False, {}),
        ("2 > (2 > 0)", True, {}),
        ("2 <= 3 == true", True, {}),
        ("2 <= (3 == true)", False, {}),
        ("2 == 2 == 1", True, {}),
        ("2 == (2 == 1)", False, {}),
        ("2 == 2 != 0", True, {}),
        ("1 == 1 && 2", 2, {}),
        ("1 == (1 && 2)", False, {}),
        ("'a' == 'a' && 'b'", "b", {}),
        ("false && 0 || null", None, {}),
        ("false && (0 || null)", False, {}),
        ("1 || 2 && 3", 1, {}),
        ("(1 || 2) && 3", 3, {}),
        ("1 && 2 || 3 && 4", 2, {}),
    ],
)
def test_precedence(text: str, expected: Any, ctx: dict[str, Any]) -> None:
    check(text, expected, ctx)


# --- property access, indexes and filters -----------------------------------------------------

LABELS = {
    "github": {
        "event_name": "push",
        "event": {"issue": {"labels": [{"name": "bug"}, {"name": "help wanted"}]}},
    }
}


@pytest.mark.parametrize(
    "text, expected, ctx",
    [
        ("foo.bar", "baz", {"foo": {"bar": "baz"}}),
        ("foo.b-ar", "baz", {"foo": {"b-ar": "baz"}}),
        ("foo._bar", "baz", {"foo": {"_bar": "baz"}}),
        ("foo.BAR", "baz", {"foo": {"bar": "baz"}}),  # keys ignore case
        ("FOO.bar", "baz", {"foo": {"bar": "baz"}}),  # context names too
        ("github.EVENT_NAME", "push", LABELS),
        ("foo['bAr']", "baz", {"foo": {"BaR": "baz"}}),
        ("foo.Bar", "exact", {"foo": {"bar": "folded", "Bar": "exact"}}),
        ("foo.true", "t", {"foo": {"true": "t"}}),  # keywords after a dot are names
        ("foo.null", "n", {"foo": {"null": "n"}}),
        ("foo.format", "f", {"foo": {"format": "f"}}),
        ("foo.missing", None, {"foo": {"bar": "baz"}}),
        ("foo.a.b.c", None, {"foo": {}}),  # missing all the way down: null, never an error
        ("missing.a.b", None, {}),
        ("foo.bar", None, {"foo": "text"}),
        ("foo.bar", None, {"foo": None}),
        ("foo[0]", None, {"foo": None}),
        ("foo[0]", "zero", {"foo": ["zero", "one", "two"]}),
        ("foo[2]", "two", {"foo": ["zero", "one", "two"]}),
        ("foo[1.9]", "one", {"foo": ["zero", "one", "two"]}),  # floored
        ("foo[3]", None, {"foo": ["zero", "one", "two"]}),
        ("foo[-1]", None, {"foo": ["zero", "one", "two"]}),
        ("foo[NaN]", None, {"foo": ["zero", "one", "two"]}),
        ("foo[Infinity]", None, {"foo": ["zero", "one", "two"]}),
        ("foo[null]", "zero", {"foo": ["zero", "one", "two"]}),
        ("foo[false]", "zero", {"foo": ["zero", "one", "two"]}),
        ("foo[true]", "one", {"foo": ["zero", "one", "two"]}),
        ("foo[' 0x02 ']", "two", {"foo": ["zero", "one", "two"]}),
        ("foo['abc']", None, {"foo": ["zero", "one", "two"]}),
        ("foo.bar", None, {"foo": ["zero"]}),
        ("foo[fromjson('[]')]", None, {"foo": ["zero"]}),
        ("foo[5]", "five", {"foo": {"5": "five"}}),
        ("foo[.5]", "half", {"foo": {"0.5": "half"}}),
        ("foo[0x0f]", "fifteen", {"foo": {"15": "fifteen"}}),
        ("foo[null]", "empty", {"foo": {"": "empty"}}),
        ("foo[true]", "t", {"foo": {"true": "t"}}),
        ("foo[NaN]", "nan", {"foo": {"NaN": "nan"}}),
        ("foo[fromJson('{}')]", None, {"foo": {"Object": "o"}}),
        ("foo[format('{0}', fromJson('{}'))]", "o", {"foo": {"Object": "o"}}),
        ("foo['*']", "star", {"foo": {"*": "star", "a": "b"}}),
        ("foo[inputs.k]", "picked", {"foo": {"x": "picked"}, "inputs": {"k": "x"}}),
        ('fromJson(\'["one", "two"]\')[1]', "two", {}),
        ('(fromJson(\'["one", "two"]\'))[1]', "two", {}),
        ('fromJson(\'{"one": "val"}\').one', "val", {}),
        ("fromJson('{\"Key\": 1}').KEY", 1, {}),
        # filters
        ("foo.*", [], {"foo": None}),
        ("foo.*", [], {"foo": 123}),
        ("foo.*", [], {"foo": "abc"}),
        ("foo.*", ["zero", "one"], {"foo": ["zero", "one"]}),
        ("foo[*]", ["one val", "two val"], {"foo": {"one": "one val", "two": "two val"}}),
        ("foo.*.one", ["a1", "b1"], {"foo": [{"one": "a1"}, {"two": "x"}, {"one": "b1"}]}),
        ("foo.*.thePROPERTY", ["p"], {"foo": [{"THEproperty": "p"}]}),
        ("foo[*]['']", ["e"], {"foo": [{"": "e"}]}),
        ("foo[*][1]", ["a1", "c1"], {"foo": [["a0", "a1"], ["b0"], ["c0", "c1"]]}),
        ("foo[*][true]", ["a1"], {"foo": [["a0", "a1"]]}),
        ("foo[*]['abc']", [], {"foo": [["a0", "a1"]]}),
        ("foo.*.*", ["zero", "one", "v1"], {"foo": [None, 1, "s", ["zero", "one"], {"p": "v1"}]}),
        (
            "foo.*.p.nestedp",
            ["v1", "v2"],
            {"foo": [{"p": {"nestedp": "v1"}}, {"p": {"nestedp": "v2"}}]},
        ),
        ("foo[*][1][2]", [], {"foo": []}),
        ("foo.*.bar.baz", [], {"foo": {}}),
        ("github.event.issue.labels.*.name", ["bug", "help wanted"], LABELS),
    ],
)
def test_property_access(text: str, expected: Any, ctx: dict[str, Any]) -> None:
    check(text, expected, ctx)


def test_filter_result_is_a_plain_list() -> None:
    result = value("foo.*", {"foo": {"a": 1}})
    assert type(result) is list
    assert value("foo.* == foo.*", {"foo": [1]}) is False  # a new array each time


def test_context_values_are_returned_as_they_are() -> None:
    event = {"a": [1, 2]}
    assert value("github.event", {"github": {"event": event}}) is event


# --- functions --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected, ctx",
    [
        ("contains('abcdef', 'cde')", True, {}),
        ("contains('abCdEf', 'cDe')", True, {}),
        ("contains('abcdef', '')", True, {}),
        ("contains('abcdef', 'xyz')", False, {}),
        ("contains('1234', 23)", True, {}),
        ("contains('true', true)", True, {}),
        ("contains('true', false)", False, {}),
        ("contains('asdf', null)", True, {}),
        ("contains(null, '')", True, {}),
        ("contains('Array', arr)", False, EMPTY),
        ("contains(test, 'hello')", True, {"test": ["hello", "world"]}),
        ("contains(test, 'HELLO')", True, {"test": ["hello"]}),
        ("contains(test, 'asdf')", False, {"test": ["hello"]}),
        ("contains(test, 123)", True, {"test": [123.0]}),
        ("contains(test, '123')", True, {"test": [123]}),
        ("contains(test, null)", True, {"test": [""]}),
        ("contains(test, false)", True, {"test": [0]}),
        ("contains(test, 'x')", False, {"test": []}),
        ("contains(test, 'a')", False, {"test": {"a": "a"}}),  # objects contain nothing
        ("contains(test.*, 'world')", True, {"test": ["hello", "world"]}),
        ("contains(test, test[0])", True, {"test": [{"a": 1}]}),
        ("contains(github.event.issue.labels.*.name, 'bug')", True, LABELS),
        ("startsWith('abcdef', 'abc')", True, {}),
        ("startsWith('abcdef', 'bc')", False, {}),
        ("startsWith('abcdef', '')", True, {}),
        ("startsWith('1234', 12)", True, {}),
        ("startsWith('asdf', null)", True, {}),
        ("startsWith('ABCDEF_asdf', 'abcdef')", True, {}),
        ("startsWith('ς_asdf', 'Σ')", True, {}),
        ("startsWith('i_asdf', 'İ')", False, {}),
        ("startsWith('ı_asdf', 'I')", False, {}),
        ("startsWith(arr, '')", False, EMPTY),
        ("startsWith('Array', arr)", False, EMPTY),
        ("endsWith('abcdef', 'def')", True, {}),
        ("endsWith('abcdef', 'de')", False, {}),
        ("endsWith('1234', 34)", True, {}),
        ("endsWith('false', false)", True, {}),
        ("endsWith('asdf_ü', 'Ü')", True, {}),
        ("endsWith('asdf_I', 'ı')", False, {}),
        ("format(null)", "", {}),
        ("format('', 'arg')", "", {}),
        ("format('123{0}456', 'abc')", "123abc456", {}),
        ("format('123{0}456{0}789', 'abc')", "123abc456abc789", {}),
        ("format('{0}{1}', 'abc', 'def')", "abcdef", {}),
        ("format('{1}{0}', 'abc', 'def')", "defabc", {}),
        ("format('{00}', 'abc')", "abc", {}),
        ("format('{{0}}', 'abc')", "{0}", {}),
        ("format('{{{{0}}}}', 'abc')", "{{0}}", {}),
        ("format('}}{{}}', 'abc')", "}{}", {}),
        ("format('{{{0}}}', 'abc')", "{abc}", {}),
        ("format('{0} {1}', true, null)", "true ", {}),
        ("format('{0}', arr)", "Array", EMPTY),
        ("FORMAT('{0}', 1)", "1", {}),  # function names ignore case
        ("join(github.event.issue.labels.*.name, ', ')", "bug, help wanted", LABELS),
        ("join(test)", "a,b,c", {"test": ["a", "b", "c"]}),
        ("join(test, ' | ')", "a | b", {"test": ["a", "b"]}),
        ("join(test, null)", "ab", {"test": ["a", "b"]}),
        ("join(test, true)", "atrueb", {"test": ["a", "b"]}),
        ("join(test, 1.5)", "a1.5b", {"test": ["a", "b"]}),
        ("join(test, sep)", "a,b", {"test": ["a", "b"], "sep": []}),  # not a separator
        ("join(test)", ",true,1.5,abc,Array,Object", {"test": [None, True, 1.5, "abc", [], {}]}),
        ("join(test)", "", {"test": []}),
        ("join(test)", "", {"test": {"a": "b"}}),
        ("join(null)", "", {}),
        ("join(true)", "true", {}),
        ("join('abc', '-')", "abc", {}),
        ("join(123.456)", "123.456", {}),
        ("Join(test, '-')", "1-2", {"test": [1, 2]}),
        ("toJSON(null)", "null", {}),
        ("toJSON(true)", "true", {}),
        ("toJSON(-0)", "0", {}),
        ("toJSON(1234.5)", "1234.5", {}),
        ("toJSON(1e15)", "1E+15", {}),
        ("toJSON('abc''def')", '"abc\'def"', {}),
        ("toJSON('a\\\"b')", '"a\\\\\\"b"', {}),
        ("toJSON(x)", '"tab\\tnl\\nu\\u0001 ü \\u2028"', {"x": "tab\tnl\nu\x01 ü \u2028"}),
        ("toJSON(x)", "[]", {"x": []}),
        ("toJSON(x)", "{}", {"x": {}}),
        ("toJSON(x)", "[\n  1,\n  2,\n  3\n]", {"x": [1, 2, 3]}),
        (
            "toJSON(x)",
            '{\n  "one": "value one",\n  "nested": {\n    "list": [\n      true,\n'
            "      null,\n      [],\n      {}\n    ]\n  }\n}",
            {"x": {"one": "value one", "nested": {"list": [True, None, [], {}]}}},
        ),
        ("toJSON(x.*.foo)", "[\n  32,\n  -10\n]", {"x": {"a": {"foo": 32}, "b": {"foo": -10}}}),
        ("toJson(NaN)", "NaN", {}),
        ("fromJSON('null')", None, {}),
        ("fromJSON('true')", True, {}),
        ("fromJSON('-0')", 0, {}),
        ("fromJSON('123456789')", 123456789, {}),
        ("fromJSON('-1234.5')", -1234.5, {}),
        ("fromJSON('1e400')", INF, {}),
        ("fromJSON('\"\"')", "", {}),
        ("fromJSON('\"abc''def\"')", "abc'def", {}),
        ("fromJSON(' [1, 2, 3] ')", [1, 2, 3], {}),
        (
            "fromJSON('[[1], [\"a\"], [true, false, null, [], {}]]')",
            [[1], ["a"], [True, False, None, [], {}]],
            {},
        ),
        ('fromJSON(\'{"a": 1, "b": {"c": []}}\')', {"a": 1, "b": {"c": []}}, {}),
        ('fromJSON(\'{"a": 1, "A": 2}\')', {"a": 2}, {}),  # keys ignore case
        ("fromJSON(x).k", "v", {"x": '{"k": "v"}'}),
        ("fromJSON(x)", 5, {"x": 5}),
        ("fromjson(tojson(x))", {"a": [1, "b"]}, {"x": {"a": [1, "b"]}}),
        ("case(true, 'first', 'default')", "first", {}),
        ("case(false, 'first', 'default')", "default", {}),
        ("case(false, 'first', true, 'second', 'default')", "second", {}),
        ("case(1 == 2, 'equal', 'not equal')", "not equal", {}),
        ("case(true, fromJSON('[1,2,3]'), 'default')", [1, 2, 3], {}),
        # arguments GitHub does not need are not evaluated
        ("case(true, 'a', fromJSON('not json'))", "a", {}),
        ("case(false, fromJSON('not json'), 'b')", "b", {}),
        ("contains(fromJSON('[]'), fromJSON('not json'))", False, {}),
        ("format('{0}', 'a', fromJSON('not json'))", "a", {}),
        ("join(fromJSON('[1]'), fromJSON('not json'))", "1", {}),
    ],
)
def test_functions(text: str, expected: Any, ctx: dict[str, Any]) -> None:
    check(text, expected, ctx)


@pytest.mark.parametrize(
    "text, status, expected",
    [
        ("success()", OK, True),
        ("success()", FAILED, False),
        ("failure()", FAILED, True),
        ("failure()", OK, False),
        ("cancelled()", CANCELLED, True),
        ("cancelled()", OK, False),
        ("always()", OK, True),
        ("always()", FAILED, True),
        ("always()", CANCELLED, True),
        ("SUCCESS()", OK, True),
        ("!cancelled() && failure()", FAILED, True),
    ],
)
def test_status_functions(text: str, status: Status, expected: bool) -> None:
    assert value(text, status=status) is expected


# --- evaluation errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, ctx, message",
    [
        ("fromJSON('')", {}, "fromJSON: invalid JSON (Expecting value, line 1 column 1) in '' "),
        ("fromJSON('{bad')", {}, "fromJSON: invalid JSON"),
        ("fromJSON('[1,]')", {}, "fromJSON: invalid JSON"),
        ("fromJSON('[1] 2')", {}, "Extra data"),
        ("fromJSON(x)", {"x": [1]}, "in 'Array'"),
        ("format('{0')", {}, "The following format string is invalid: {0 at column 1"),
        ("format('{0}}', '')", {}, "The following format string is invalid: {0}}"),
        ("format('0}')", {}, "The following format string is invalid: 0}"),
        ("format('{{0}')", {}, "The following format string is invalid: {{0}"),
        ("format('}0{')", {}, "The following format string is invalid: }0{"),
        ("format('{0}{', '')", {}, "The following format string is invalid: {0}{"),
        ("format('{a}', '')", {}, "The following format string is invalid: {a}"),
        ("format('{256}', '')", {}, "The following format string is invalid: {256}"),
        ("format('{0}')", {}, "references more arguments than were supplied: {0}"),
        ("format('{0}{1}', 'abc')", {}, "references more arguments than were supplied"),
        ("format('{0:x}', 1)", {}, "The format specifiers 'x' are not valid for objects of type"),
        ("case('not a boolean', 'a', 'b')", {}, "case predicate must evaluate to a boolean value"),
        ("case(1, 'a', 'b')", {}, "case predicate must evaluate to a boolean value"),
        ("case(null, 'a', 'b')", {}, "case predicate must evaluate to a boolean value"),
        ("success()", {}, "success() is only available where a job's status is known"),
        ("always()", {}, "always() is only available where a job's status is known"),
    ],
)
def test_evaluation_errors(text: str, ctx: dict[str, Any], message: str) -> None:
    expr = parse_expression(text)  # parses: the failure is the run's, not the definition's
    with pytest.raises(EvaluationError) as caught:
        expr.evaluate(ctx)
    assert message in caught.value.message
    assert str(caught.value) == caught.value.message


def test_evaluation_error_position_is_the_failing_call() -> None:
    with pytest.raises(EvaluationError) as caught:
        value("inputs.a == 'x' || fromJSON(inputs.b)", {"inputs": {"a": "y", "b": "{"}})
    assert (caught.value.offset, caught.value.column, caught.value.line) == (19, 20, 1)
    assert caught.value.message.endswith("at column 20")


def test_unsupported_context_value_is_an_evaluation_error() -> None:
    with pytest.raises(EvaluationError, match="type object"):
        value("x == 1", {"x": object()})


# --- syntax errors, with GitHub's positions ----------------------------------------------------


@pytest.mark.parametrize(
    "text, message, offset",
    [
        ("1 <", "Unexpected end of expression: '<' at column 3", 2),
        ("1 < )", "Unexpected symbol: ')' at column 5", 4),
        ("a == (b))", "Unexpected symbol: ')' at column 9", 8),
        ("> 1", "Unexpected symbol: '>' at column 1", 0),
        ("github.()", "Unexpected symbol: '(' at column 8", 7),
        ("endswith(1, 2 a)", "Unexpected symbol: 'a' at column 15", 14),
        ("(1,", "Unexpected symbol: ',' at column 3", 2),
        ("1 2", "Unexpected symbol: '2' at column 3", 2),
        ("(1)2", "Unexpected symbol: '2' at column 4", 3),
        ("tojson(1)2", "Unexpected symbol: '2' at column 10", 9),
        ("foo 2", "Unexpected symbol: '2' at column 5", 4),
        ("foo.bar 2", "Unexpected symbol: '2' at column 9", 8),
        ("foo['bar']2", "Unexpected symbol: '2' at column 11", 10),
        ("foo.b@r", "Unexpected symbol: 'b@r' at column 5", 4),
        ("foo.1", "Unexpected symbol: '1' at column 5", 4),
        ("fromjson('').1", "Unexpected symbol: '1' at column 14", 13),
        ("foo[1].2", "Unexpected symbol: '2' at column 8", 7),
        ("'abc'.length", "Unexpected symbol: '.' at column 6", 5),
        ("'abc'[0]", "Unexpected symbol: '[' at column 6", 5),
        ("foo[1,2]", "Unexpected symbol: ',' at column 6", 5),
        ("foo[]", "Unexpected symbol: ']' at column 5", 4),
        ("foo.*bar", "Unexpected symbol: 'bar' at column 6", 5),
        ("1 * 2", "Unexpected symbol: '*' at column 3", 2),
        ("()", "Unexpected symbol: ')' at column 2", 1),
        ("fn(", "Unrecognized function: 'fn' at column 1", 0),
        ("format(", "Unexpected end of expression: '(' at column 7", 6),
        ("format('a',)", "Unexpected symbol: ')' at column 12", 11),
        ("format('a' 'b')", "Unexpected symbol: ''b'' at column 12", 11),
        ("!", "Unexpected end of expression: '!' at column 1", 0),
        ("a !b", "Unexpected symbol: '!' at column 3", 2),
        ("a !== b", "Unexpected symbol: '=' at column 5", 4),
        ("1 = < 2", "Unexpected symbol: '=' at column 3", 2),
        ("1 & < 2", "Unexpected symbol: '&' at column 3", 2),
        ("1 | < 2", "Unexpected symbol: '|' at column 3", 2),
        ("1 =2 =3", "Unexpected symbol: '=2' at column 3", 2),
        ("1 &2 &3", "Unexpected symbol: '&2' at column 3", 2),
        ("1 @abc 2", "Unexpected symbol: '@abc' at column 3", 2),
        ("a - b", "Unexpected symbol: '-' at column 3", 2),
        ("'foo", "Unexpected symbol: ''foo' at column 1", 0),
        ("'it''s", "Unexpected symbol: ''it''s' at column 1", 0),
        (" true ||( false && false", "Unexpected end of expression: 'false' at column 20", 19),
        ("😊 Emoji!! (unicode)", "Unexpected symbol: '😊' at column 1", 0),
        ("0x01p2", "Unexpected symbol: '0x01p2' at column 1", 0),
        ("-Inf", "Unexpected symbol: '-Inf' at column 1", 0),
        ("-0xFF", "Unexpected symbol: '-0xFF' at column 1", 0),
        ("0xFZ", "Unexpected symbol: '0xFZ' at column 1", 0),
        ("1.2.3", "Unexpected symbol: '1.2.3' at column 1", 0),
        ("..github/workflow.md", "Unexpected symbol: '..github/workflow.md' at column 1", 0),
        ("1 && ..github/workflow.md", "Unexpected symbol: '..github/workflow.md' at column 6", 5),
        ("github/workflow.md", "Unexpected symbol: 'github/workflow' at column 1", 0),
        ("nonExistentFunction()", "Unrecognized function: 'nonExistentFunction' at column 1", 0),
        ("false && hashFiles('x')", "Unrecognized function: 'hashFiles' at column 10", 9),
        (
            "join()",
            "Too few parameters supplied: 'join' at column 1 (join() takes 1 to 2, got 0)",
            0,
        ),
        (
            "x || join(1, 2, 3)",
            "Too many parameters supplied: 'join' at column 6 (join() takes 1 to 2, got 3)",
            5,
        ),
        ("startsWith('a')", "Too few parameters supplied: 'startsWith' at column 1", 0),
        ("success(1)", "Too many parameters supplied: 'success' at column 1", 0),
        ("fromJSON()", "Too few parameters supplied: 'fromJSON' at column 1", 0),
        ("format()", "Too few parameters supplied: 'format' at column 1", 0),
        ("case(true, 'a')", "Too few parameters supplied: 'case' at column 1", 0),
        (
            "case(true, 'first', false, 'second')",
            "Even number of parameters supplied, requires an odd number of parameters: 'case'"
            " at column 1",
            0,
        ),
        ("a ==\n  == b", "Unexpected symbol: '==' at line 2, column 3", 7),
        ("a &&\n(b", "Unexpected end of expression: 'b' at line 2, column 2", 6),
    ],
)
def test_syntax_errors(text: str, message: str, offset: int) -> None:
    with pytest.raises(ExpressionSyntaxError) as caught:
        parse_expression(text)
    assert caught.value.message.startswith(message)
    assert caught.value.offset == offset
    line_start = text.rfind("\n", 0, offset) + 1
    assert caught.value.column == offset - line_start + 1
    assert caught.value.line == text.count("\n", 0, offset) + 1


def test_unknown_contexts_are_refused_when_the_contexts_are_given() -> None:
    names = ["github", "Inputs"]
    assert parse_expression("GITHUB.sha && inputs.x", contexts=names).references == {
        ("github", "sha"),
        ("inputs", "x"),
    }
    text = "github.event_name == 'push'\n && !contains(env.COMMIT_MESSAGES)"
    with pytest.raises(ExpressionSyntaxError) as caught:
        parse_expression(text, contexts=names)
    assert caught.value.message == "Unrecognized named-value: 'env' at line 2, column 15"
    assert caught.value.offset == 42  # GitHub: "position 43"
    with pytest.raises(ExpressionSyntaxError, match="Unrecognized named-value: 'secrets'"):
        parse_template("echo ${{ secrets.x }}", contexts=names)
    with pytest.raises(ExpressionSyntaxError, match="Unrecognized named-value: 'x'"):
        condition("x", contexts=names)
    assert value("nosuchcontext.foo") is None  # without a list, a missing context is null


# --- templates --------------------------------------------------------------------------------

CTX = {
    "github": {"sha": "abc123", "ref": "refs/heads/main", "event": {"n": 1}},
    "inputs": {"flag": True, "count": 2.0, "none": None, "list": [1, 2]},
}


@pytest.mark.parametrize(
    "text, rendered",
    [
        ("plain text", "plain text"),
        ("", ""),
        ("${{ github.sha }}", "abc123"),
        ("sha=${{ github.sha }}!", "sha=abc123!"),
        ("${{github.sha}}${{ github.SHA }}", "abc123abc123"),
        ("a ${{ inputs.flag }} b ${{ inputs.count }} c", "a true b 2 c"),
        ("[${{ inputs.none }}][${{ inputs.missing }}]", "[][]"),
        ("${{ inputs.list }} ${{ github.event }}", "Array Object"),
        ("${{ '}}' }}", "}}"),
        ("${{ '${{' }}", "${{"),
        ("${{ 'it''s }}' }} done", "it's }} done"),
        ("${{ format('{{{0}}}', 'x') }}", "{x}"),
        ('echo "${{ toJSON(inputs.list) }}"', 'echo "[\n  1,\n  2\n]"'),
        ("}} ${ { $ {{", "}} ${ { $ {{"),
        ("${{ 1 }}}", "1}"),
        ("multi\n${{ github.sha }}\nline", "multi\nabc123\nline"),
    ],
)
def test_template_render(text: str, rendered: str) -> None:
    assert parse_template(text).render(CTX) == rendered


@pytest.mark.parametrize(
    "text, is_literal, is_single, evaluated",
    [
        ("plain", True, False, "plain"),
        ("", True, False, ""),
        ("${{ inputs.list }}", False, True, [1, 2]),
        ("  ${{ inputs.list }}\n", False, True, [1, 2]),
        ("${{ inputs.flag }}", False, True, True),
        ("${{ inputs.count }}", False, True, 2),
        ("${{ inputs.none }}", False, True, None),
        ('${{ fromJSON(\'{"os": ["a", "b"]}\') }}', False, True, {"os": ["a", "b"]}),
        ("x${{ inputs.list }}", False, False, "xArray"),
        ("${{ inputs.flag }}${{ inputs.flag }}", False, False, "truetrue"),
        ("${{ inputs.count }} ", False, True, 2),
    ],
)
def test_template_value(text: str, is_literal: bool, is_single: bool, evaluated: Any) -> None:
    template = parse_template(text)
    assert (template.is_literal, template.is_single) == (is_literal, is_single)
    assert same(template.evaluate(CTX), evaluated)
    assert template.source == text


def test_template_expressions_and_offsets() -> None:
    text = "echo ${{ github.sha }} ${{format('{0}', inputs.x)}}"
    template = parse_template(text)
    assert isinstance(template, Template)
    assert [(e.source, e.offset) for e in template.expressions] == [
        ("github.sha", 9),
        ("format('{0}', inputs.x)", 26),
    ]
    for expr in template.expressions:
        assert text[expr.offset : expr.offset + len(expr.source)] == expr.source
    assert template.expressions[1].functions == {"format"}


@pytest.mark.parametrize(
    "text, message, offset",
    [
        ("echo ${{ github.sha", "The expression is not closed", 5),
        ("${{ 'it''s }}", "The expression is not closed", 0),  # the }} is in a string
        ("a ${{ }} b", "An expression was expected at column 3", 2),
        ("a ${{}} b", "An expression was expected", 2),
        ("run ${{ a == }} now", "Unexpected end of expression: '==' at column 11", 10),
        ("ok ${{ a }} ${{ b c }}", "Unexpected symbol: 'c' at column 19", 18),
        ("line one\n  ${{ fn(1) }}", "Unrecognized function: 'fn' at line 2, column 7", 15),
        ("${{ " + "a" * (MAX_EXPRESSION_LENGTH + 1) + " }}", "Exceeded max expression length", 4),
    ],
)
def test_template_syntax_errors(text: str, message: str, offset: int) -> None:
    with pytest.raises(ExpressionSyntaxError) as caught:
        parse_template(text)
    assert message in caught.value.message
    assert caught.value.offset == offset


def test_template_evaluation_error_position_is_within_the_template() -> None:
    template = parse_template("x=${{ fromJSON(inputs.raw) }}")
    with pytest.raises(EvaluationError) as caught:
        template.render({"inputs": {"raw": "{"}})
    assert (caught.value.offset, caught.value.column) == (6, 7)


# --- conditions (`if:`) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, status, expected",
    [
        ("", OK, True),  # empty is success()
        ("", FAILED, False),
        ("   ", OK, True),
        ("github.ref == 'refs/heads/main'", OK, True),
        ("github.ref == 'refs/heads/main'", FAILED, False),  # success() && (...)
        ("github.ref == 'refs/heads/other'", OK, False),
        ("${{ github.ref == 'refs/heads/main' }}", OK, True),
        ("${{ github.ref == 'refs/heads/main' }}", FAILED, False),
        ("  ${{ inputs.flag }}  ", OK, True),
        ("always()", FAILED, True),
        ("${{ always() }}", CANCELLED, True),
        ("failure()", FAILED, True),
        ("failure()", OK, False),
        ("failure() || github.ref == 'refs/heads/main'", OK, True),
        ("cancelled()", CANCELLED, True),
        ("!cancelled()", CANCELLED, False),
        ("Success() && inputs.flag", OK, True),
        ("contains('always()', 'a')", FAILED, False),  # a string is not a call
        ("inputs.count", OK, True),
        ("inputs.none", OK, False),
        ("false || 0", OK, False),
        # text around ${{ }} makes the condition a string: true when not empty, as on GitHub
        ("${{ false }} && true", OK, True),
        ("${{ false }} && true", FAILED, False),
        ("${{ inputs.none }}${{ inputs.none }}", OK, False),
    ],
)
def test_condition(text: str, status: Status, expected: bool) -> None:
    expr = condition(text)
    assert isinstance(expr, Expr)
    assert truthy(expr.evaluate(CTX, status)) is expected
    assert expr.calls_status_function()


def test_condition_returns_the_operand() -> None:
    assert condition("inputs.count").evaluate(CTX, OK) == 2
    assert condition("inputs.count").evaluate(CTX, FAILED) is False


def test_condition_reports_what_it_reads_and_calls() -> None:
    expr = condition("${{ github.ref == 'x' && contains(inputs.list, 1) }}")
    assert expr.functions == {"success", "contains"}
    assert expr.references == {("github", "ref"), ("inputs", "list")}
    assert expr.source == "github.ref == 'x' && contains(inputs.list, 1)"
    assert condition("always() || x").functions == {"always"}


def test_condition_syntax_errors_point_into_the_text() -> None:
    with pytest.raises(ExpressionSyntaxError) as caught:
        condition("${{ github.ref == }}")
    assert caught.value.offset == 15
    with pytest.raises(ExpressionSyntaxError, match="not closed"):
        condition("${{ x")


# --- the API ----------------------------------------------------------------------------------


def test_error_classes() -> None:
    assert issubclass(ExpressionError, ValueError)
    assert issubclass(ExpressionSyntaxError, ExpressionError)
    assert issubclass(EvaluationError, ExpressionError)
    assert not issubclass(EvaluationError, ExpressionSyntaxError)
    with pytest.raises(ValueError):
        parse_expression("1 +")


def test_status_is_frozen() -> None:
    with pytest.raises(AttributeError):
        OK.success = False  # type: ignore[misc]


@pytest.mark.parametrize(
    "text, functions, references",
    [
        ("1", set(), set()),
        ("needs.build.outputs.x", set(), {("needs", "build", "outputs", "x")}),
        ("NEEDS.Build.result", set(), {("needs", "Build", "result")}),
        ("matrix[inputs.k]", set(), {("matrix",), ("inputs", "k")}),
        ("a['b'][0].c", set(), {("a", "b", "0", "c")}),
        ("(a).b", set(), {("a", "b")}),
        ("github.event.*.name", set(), {("github", "event")}),
        ("fromJSON(inputs.m).os", {"fromjson"}, {("inputs", "m")}),
        (
            "Contains(github.ref, 'x') && FORMAT('{0}', env.y) || success()",
            {"contains", "format", "success"},
            {("github", "ref"), ("env", "y")},
        ),
        ("a.b == a.b.c", set(), {("a", "b"), ("a", "b", "c")}),
    ],
)
def test_functions_and_references(text: str, functions: set[str], references: set[Any]) -> None:
    expr = parse_expression(text)
    assert expr.functions == functions
    assert expr.references == references
    assert isinstance(expr.functions, frozenset) and isinstance(expr.references, frozenset)
    assert expr.source == text and expr.offset == 0


@pytest.mark.parametrize(
    "text, calls",
    [("success()", True), ("!Failure()", True), ("x || cancelled()", True), ("x", False)],
)
def test_calls_status_function(text: str, calls: bool) -> None:
    assert parse_expression(text).calls_status_function() is calls


def test_a_parsed_expression_is_reusable() -> None:
    expr = parse_expression("inputs.n > 1")
    assert expr.evaluate({"inputs": {"n": 2}}) is True
    assert expr.evaluate({"inputs": {"n": 0}}) is False
    assert expr.evaluate({}) is False


# --- bounds: every input does bounded work ----------------------------------------------------


def nested(depth: int, opener: str, closer: str, inner: str = "1") -> str:
    return opener * depth + inner + closer * depth


@pytest.mark.parametrize(
    "text",
    [
        "!" * (MAX_DEPTH - 1) + "false",
        "foo" + "".join(f"._{i}" for i in range(MAX_DEPTH - 1)),
        "foo" + "[*]" * (MAX_DEPTH - 1),
        "foo" + ".*" * (MAX_DEPTH - 1),
        nested(MAX_DEPTH - 1, "fromJSON(", ")", "'1'"),
        nested(MAX_DEPTH, "(", ")"),
        nested((MAX_DEPTH - 1) // 2, "format('x' || ", ")", "'y'"),
        " || ".join(["1"] * 100),  # && and || flatten: a long chain is shallow
        " && ".join(["1"] * 100),
        "a == " * (MAX_DEPTH - 1) + "a",
    ],
)
def test_depth_within_the_bound(text: str) -> None:
    parse_expression(text).evaluate({"foo": None, "a": 1})


@pytest.mark.parametrize(
    "text",
    [
        "!" * MAX_DEPTH + "false",
        "!" * 10_000 + "false",
        "foo" + "".join(f"._{i}" for i in range(MAX_DEPTH)),
        "foo" + "[*]" * MAX_DEPTH,
        "foo" + ".*" * MAX_DEPTH,
        "foo" + "[0]" * 5000,
        nested(MAX_DEPTH, "tojson(", ")"),
        nested(MAX_DEPTH + 1, "(", ")"),
        nested(5000, "(", ")"),
        "a" + "[a" * 5000 + "]" * 5000,
        nested(MAX_DEPTH // 2, "format('x' || ", ")", "'y'"),
        "a == " * MAX_DEPTH + "a",
    ],
)
def test_depth_past_the_bound(text: str) -> None:
    with pytest.raises(ExpressionSyntaxError) as caught:
        parse_expression(text)
    assert "Exceeded max expression depth 50" in caught.value.message
    assert caught.value.offset is not None


def test_condition_wrapping_counts_towards_the_depth() -> None:
    deepest = "a == " * (MAX_DEPTH - 1) + "a"
    parse_expression(deepest)
    with pytest.raises(ExpressionSyntaxError, match="Exceeded max expression depth"):
        condition(deepest)  # success() && (...) is one level deeper, as on GitHub
    assert condition("always() && " + "a == " * (MAX_DEPTH - 2) + "a").functions == {"always"}


def test_expression_length() -> None:
    longest = "'" + "x" * (MAX_EXPRESSION_LENGTH - 2) + "'"
    assert len(value(longest)) == MAX_EXPRESSION_LENGTH - 2
    with pytest.raises(ExpressionSyntaxError) as caught:
        parse_expression(longest + " ")
    assert caught.value.message == "Exceeded max expression length 21000 at column 1"


def run_with_frames_left(frames: int, call: Callable[[], Any]) -> Any:
    """Run `call` with only `frames` Python frames of headroom below the recursion limit."""
    depth = 0
    frame = inspect.currentframe()
    while frame is not None:
        depth += 1
        frame = frame.f_back
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + frames)
    try:
        return call()
    finally:
        sys.setrecursionlimit(limit)


@pytest.mark.parametrize(
    "text",
    [
        nested(MAX_DEPTH, "(", ")"),
        nested(MAX_DEPTH - 1, "a || (", ")"),
        nested(MAX_DEPTH // 2 - 2, "fromJSON(toJSON(", "))", "fromJSON('1')"),
        nested(24, "a || b && (", ")"),
    ],
)
def test_deepest_expressions_need_little_stack(text: str) -> None:
    def parse_and_evaluate() -> Any:
        return condition(text).evaluate({"a": None, "b": None}, OK)

    run_with_frames_left(300, parse_and_evaluate)


def deep_list(depth: int) -> list[Any]:
    outer: list[Any] = []
    current = outer
    for _ in range(depth - 1):
        current.append([])
        current = current[0]
    return outer


def test_json_depth() -> None:
    text = nested(MAX_JSON_DEPTH, "[", "]", "")
    assert value("toJSON(fromJSON(x)) != ''", {"x": text}) is True
    assert run_with_frames_left(300, lambda: value("toJSON(x)", {"x": deep_list(MAX_JSON_DEPTH)}))
    for depth in (MAX_JSON_DEPTH + 1, 5000, 400_000):
        with pytest.raises(EvaluationError, match="nest deeper than 100"):
            value("fromJSON(x)", {"x": nested(depth, "[", "]", "")})
    with pytest.raises(EvaluationError, match="toJSON: arrays/objects nest deeper than 100"):
        value("toJSON(x)", {"x": deep_list(MAX_JSON_DEPTH + 1)})
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    with pytest.raises(EvaluationError, match="nest deeper"):
        value("toJSON(x)", {"x": cyclic})


def test_json_size() -> None:
    largest = '"' + "x" * (MAX_STRING_LENGTH - 2) + '"'
    assert len(value("fromJSON(x)", {"x": largest})) == MAX_STRING_LENGTH - 2
    with pytest.raises(EvaluationError, match="fromJSON: the text is longer than 1048576"):
        value("fromJSON(x)", {"x": largest + " "})
    assert len(value("toJSON(x)", {"x": "x" * (MAX_STRING_LENGTH - 2)})) == MAX_STRING_LENGTH
    with pytest.raises(EvaluationError, match="toJSON: the result is longer than 1048576"):
        value("toJSON(x)", {"x": "x" * (MAX_STRING_LENGTH - 1)})
    with pytest.raises(EvaluationError, match="toJSON: the result is longer"):
        value(nested(30, "toJSON(", ")", "'\"'"))  # escaping doubles at each level


def test_string_size() -> None:
    half = "x" * (MAX_STRING_LENGTH // 2)
    assert len(value("format('{0}{0}', x)", {"x": half})) == MAX_STRING_LENGTH
    with pytest.raises(EvaluationError, match="format: the result is longer than 1048576"):
        value("format('{0}{0}{0}', x)", {"x": half})
    assert len(value("join(x, '')", {"x": [half, half]})) == MAX_STRING_LENGTH
    with pytest.raises(EvaluationError, match="join: the result is longer than 1048576"):
        value("join(x)", {"x": [half, half]})
    template = parse_template("${{ x }}-${{ x }}-${{ x }}")
    with pytest.raises(EvaluationError, match="exceed 1048576 characters") as caught:
        template.render({"x": half})
    assert caught.value.offset == 22  # the third expression


@pytest.mark.parametrize(
    "text, ctx",
    [
        (" || ".join(["contains(x, -1)"] * 100), {"x": list(range(100_000))}),
        (" || ".join(["toJSON(x) == ''"] * 100), {"x": list(range(10_000))}),
        (" || ".join(["x.*.*.* == 1"] * 100), {"x": [[[0] * 100] * 100] * 10}),
        (" || ".join(["fromJSON(x) == 1"] * 400), {"x": "[" + "0," * 100_000 + "0]"}),
        (" || ".join(["x == y"] * 400), {"x": "a" * 500_000, "y": "a" * 500_001}),
        (" || ".join(["x == y"] * 400), {"x": "ü" * 500_000, "y": "Ü" * 500_001}),
        (" || ".join(["x < y"] * 400), {"x": "ß" * 500_000, "y": "ß" * 500_000}),
        (" || ".join(["contains(x, y)"] * 400), {"x": "ßa" * 250_000, "y": "q"}),
        (" || ".join(["startsWith(x, y)"] * 400), {"x": "a" * 500_000, "y": "b"}),
    ],
)
def test_evaluation_steps_are_bounded(text: str, ctx: dict[str, Any]) -> None:
    with pytest.raises(EvaluationError, match=f"Evaluation took more than {MAX_STEPS} steps"):
        value(text, ctx)
