"""Text that admins write (subjects, preheaders, bodies) as small, bounded templates.

What a text may contain is a whitelist checked on the parsed template before it is ever
compiled: plain text, `{{ expression }}` outputs and `{% if %}` blocks; the only name is
`first_name`; constants; the filters and tests in `FILTERS` and `TESTS`; `==`, `!=`, `in`,
`not in`, `and`, `or`, `not`, `~` and the inline `a if b else c`. Everything else (attributes,
indexes, calls, arithmetic, `{% set %}`, loops, macros, includes, literals of lists or dicts) is
refused with a message naming it. Because nothing repeats and nothing is stored, every node is
evaluated at most once per render, so the largest value each node can build is known from the
tree alone (for a `MAX_VALUE_CHARS` name): a text whose worst case adds up to more than
`MAX_OUTPUT_CHARS` is refused when checked, before anything runs, and the filters check their
arguments again before they build anything. A checked text is also rendered for `SAMPLES`, a
few unusual subscribers, so an error shows when the text is written, not when it is sent.

Every `{{ expression }}` renders as a value token (`value_token`): letters and digits that
carry the value itself, inert to Markdown and HTML. The caller puts the real value in after
Markdown has run (`fill_values`): escaped in HTML, plain in text. So a subscriber's name is
always text: it can never become a link, an image, a heading or a tag.
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, nodes
from jinja2.exceptions import SecurityError
from jinja2.filters import do_capitalize, do_default, do_title
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment
from jinja2.tests import test_defined, test_none, test_string, test_undefined

MAX_SOURCE_CHARS = 50_000
# The most characters a text may build in one render, counted for the worst case of every
# node (the longest name, every filter at its largest) and including the value tokens.
MAX_OUTPUT_CHARS = 200_000
# The longest value a template is rendered with: the first_name column holds 100 characters,
# and signup refuses longer names.
MAX_VALUE_CHARS = 100
# How deeply expressions and {% if %} blocks may nest; a legible text needs a handful.
MAX_NESTING = 20
# How many parts (outputs, names, constants, filters, tests, operators, blocks) a text may have.
# Compiling costs up to 6 KB per part, so this bounds checking a text as the budget below
# bounds rendering it; a text that greets its reader in ten places has about twenty.
MAX_NODES = 500
RENDER_SECONDS = 0.5
# No admin input can make one render use more than this. Every string a render builds is
# bounded by the checked worst case (MAX_OUTPUT_CHARS characters in all, at most 4 bytes each
# in CPython: 0.8 MB), plus the joined output and the filled-in copy (0.8 MB each), plus
# per-object overhead; tests/test_sandbox_bounds.py renders the worst accepted texts against it.
# Checking and compiling a text stays within it too: MAX_NODES bounds the compiled code.
RENDER_MEMORY_BYTES = 10 * 1024 * 1024
# Unicode case mappings turn one character into at most three ("ΐ".upper() is 3 characters),
# and a mapped character maps on to no more than that, so chains of case filters never grow a
# text by more than this (tests/test_sandbox_bounds.py checks it for every code point).
CASE_GROWTH = 3
NAMES = frozenset({"first_name"})

# Unusual subscribers every text is rendered for when it is checked.
SAMPLES: tuple[tuple[str, str], ...] = (
    ("no name", ""),
    (f"a {MAX_VALUE_CHARS}-character name", ("Anna-Maria Ŀudmiła ΐ " * 8)[:MAX_VALUE_CHARS]),
    ("a non-Latin name", "李小龍"),
    ("a right-to-left name", "محمد"),
    # A link in Markdown and in HTML: if a value ever reached the mail as markup, the link
    # rules (checked on the rendered HTML at import) would refuse the text.
    ("a name full of Markdown and HTML", '[*x*](http://e.org) <a href="http://e.org">#</a> &'),
)

# A value token: letters and digits only, so Markdown, HTML escaping and CSS inlining leave it
# whole; the hex digits are the value's UTF-8, so the token needs no state to be filled in and
# survives Jinja's compile-time folding of constant outputs.
TOKEN_START = "NLVALUE"
TOKEN_END = "EULAVN"
# A plain run of hex digits, not pairs: a repeated group would make the regex engine keep a
# backtracking mark per pair (megabytes for one long value).
VALUE_TOKEN = re.compile(f"{TOKEN_START}([0-9a-f]*){TOKEN_END}")
# Hex of UTF-8: up to 4 bytes, so 8 characters, for each character of a value.
_TOKEN_CHARS_PER_CHAR = 8


class AdminTemplateError(ValueError):
    """Admin-written text that cannot be used as a template, and why."""


def value_token(value: object) -> str:
    """The token standing for one output value (the sandbox's `finalize` hook)."""
    return f"{TOKEN_START}{str(value).encode('utf-8').hex()}{TOKEN_END}"


def token_value(hex_digits: str) -> str:
    """The value a token's hex digits carry."""
    # Only a token an admin typed by hand can have an odd digit or bytes that are not UTF-8.
    whole = hex_digits[: len(hex_digits) // 2 * 2]
    return bytes.fromhex(whole).decode("utf-8", errors="replace")


def fill_values(text: str, convert: Callable[[str], str] = str) -> str:
    """`text` with every value token replaced by `convert(value)`, in one pass."""
    if TOKEN_START not in text:
        return text
    return VALUE_TOKEN.sub(lambda m: convert(token_value(m.group(1))), text)


def _token_chars(value_chars: int) -> int:
    return len(TOKEN_START) + len(TOKEN_END) + _TOKEN_CHARS_PER_CHAR * value_chars


# -- the filters and tests a text may use ---------------------------------------------------------
# Each checks, before it builds anything, that its result fits MAX_OUTPUT_CHARS: the check at
# compile time bounds the worst case already, these keep the bound if that check were wrong.


def _fits(chars: int, what: str) -> None:
    if chars > MAX_OUTPUT_CHARS:
        raise AdminTemplateError(f"{what} would be longer than {MAX_OUTPUT_CHARS:,} characters")


def _case(name: str, convert: Callable[[str], str]) -> Callable[[object], str]:
    def apply(value: object) -> str:
        text = str(value)
        _fits(CASE_GROWTH * len(text), name)
        return convert(text)

    apply.__name__ = name
    return apply


def _whole(value: object, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise AdminTemplateError(f"{what} must be a whole number from {low} to {high:,}")
    return value


def _truncate(
    value: object, length: int = 255, killwords: bool = False, end: str = "...", leeway: int = 5
) -> str:
    """Jinja's truncate, with its arguments checked instead of asserted."""
    text, end = str(value), str(end)
    length = _whole(length, "truncate's length", len(end), MAX_OUTPUT_CHARS)
    leeway = _whole(leeway, "truncate's leeway", 0, MAX_OUTPUT_CHARS)
    if len(text) <= length + leeway:
        return text
    if killwords:
        return text[: length - len(end)] + end
    return text[: length - len(end)].rsplit(" ", 1)[0] + end


def _replace(value: object, old: object, new: object, count: object = None) -> str:
    """str.replace, refused before it runs when the result would be too long."""
    text, old, new = str(value), str(old), str(new)
    found = len(text) + 1 if old == "" else text.count(old)
    if count is not None:
        found = min(found, _whole(count, "replace's count", 0, MAX_OUTPUT_CHARS))
    _fits(len(text) + found * (len(new) - len(old)), "the replacement")
    return text.replace(old, new, -1 if count is None else found)


def _trim(value: object, chars: object = None) -> str:
    return str(value).strip(None if chars is None else str(chars))


def _length(value: object) -> int:
    return len(str(value))


_CASE_FILTERS = {
    "upper": _case("upper", str.upper),
    "lower": _case("lower", str.lower),
    "title": _case("title", do_title),
    "capitalize": _case("capitalize", do_capitalize),
}
FILTERS: dict[str, Callable[..., Any]] = {
    **_CASE_FILTERS,
    "default": do_default,
    "d": do_default,
    "trim": _trim,
    "truncate": _truncate,
    "replace": _replace,
    "length": _length,
}
TESTS: dict[str, Callable[..., bool]] = {
    "defined": test_defined,
    "undefined": test_undefined,
    "none": test_none,
    "string": test_string,
}
_SIGNATURES = {name: inspect.signature(f) for name, f in (FILTERS | TESTS).items()}
_COMPARISONS = {"eq": "==", "ne": "!=", "in": "in", "notin": "not in"}

# What a text is made of: anything else is refused, naming what it is.
_ALLOWED: frozenset[type[nodes.Node]] = frozenset(
    {
        nodes.Template,
        nodes.Output,
        nodes.TemplateData,
        nodes.Const,
        nodes.Name,
        nodes.If,
        nodes.CondExpr,
        nodes.Filter,
        nodes.Test,
        nodes.Keyword,
        nodes.Compare,
        nodes.Operand,
        nodes.And,
        nodes.Or,
        nodes.Not,
        nodes.Concat,
    }
)
# Nodes that only hold others: they add no depth.
_FLAT: frozenset[type[nodes.Node]] = frozenset(
    {nodes.Template, nodes.Output, nodes.Operand, nodes.Keyword}
)
_ARITHMETIC = "arithmetic (+ - * / // % **) is"
# What each refused node is, as the subject of "... not allowed in this text".
_REFUSED: dict[type[nodes.Node], str] = {
    nodes.For: "loops are",
    nodes.Macro: "macros are",
    nodes.CallBlock: "call blocks are",
    nodes.Include: "includes are",
    nodes.Import: "imports are",
    nodes.FromImport: "imports are",
    nodes.Extends: "extends are",
    nodes.Block: "blocks are",
    nodes.Assign: "assignments ({% set %}) are",
    nodes.AssignBlock: "assignments ({% set %}) are",
    nodes.With: "{% with %} blocks are",
    nodes.FilterBlock: "{% filter %} blocks are",
    nodes.Getattr: "attributes (x.y) are",
    nodes.Getitem: "indexes (x[y]) are",
    nodes.Slice: "slices (x[a:b]) are",
    nodes.Call: "calls (x()) are",
    nodes.List: "lists are",
    nodes.Tuple: "tuples are",
    nodes.Dict: "dicts are",
    nodes.Add: _ARITHMETIC,
    nodes.Sub: _ARITHMETIC,
    nodes.Mul: _ARITHMETIC,
    nodes.Div: _ARITHMETIC,
    nodes.FloorDiv: _ARITHMETIC,
    nodes.Mod: _ARITHMETIC,
    nodes.Pow: _ARITHMETIC,
    nodes.Neg: _ARITHMETIC,
    nodes.Pos: _ARITHMETIC,
    nodes.ScopedEvalContextModifier: "{% autoescape %} blocks are",
    nodes.EvalContextModifier: "{% autoescape %} blocks are",
}
_SYMBOLS = {"gt": ">", "gteq": ">=", "lt": "<", "lteq": "<="}
_HINT = (
    "use {{ first_name }}, constants, {% if %}, the filters "
    + ", ".join(sorted(FILTERS))
    + ", the tests "
    + ", ".join(sorted(TESTS))
    + ", ==, !=, in, not in, and, or, not and ~"
)


def _refuse(what: str) -> AdminTemplateError:
    return AdminTemplateError(f"{what} not allowed in this text; {_HINT}")


def _check_tree(tree: nodes.Template) -> None:
    """Refuse any node, name, filter, test or operator not on the whitelist, or too deep."""
    stack: list[tuple[nodes.Node, int]] = [(tree, 0)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise AdminTemplateError(
                f"the text has more than {MAX_NODES:,} template parts (outputs, names,"
                " constants, filters, tests, operators, blocks); split it or simplify it"
            )
        kind = type(node)
        if kind not in _ALLOWED:
            raise _refuse(_REFUSED.get(kind, f"{kind.__name__} nodes are"))
        if kind not in _FLAT:
            depth += 1
            if depth > MAX_NESTING:
                raise AdminTemplateError(f"the text nests deeper than {MAX_NESTING} levels")
        if isinstance(node, nodes.Name):
            if node.name not in NAMES or node.ctx != "load":
                allowed = ", ".join(sorted(NAMES))
                raise AdminTemplateError(f"unknown name {node.name!r}; use only {allowed}")
        elif isinstance(node, nodes.Filter | nodes.Test):
            _check_call(node)
        elif isinstance(node, nodes.Operand) and node.op not in _COMPARISONS:
            symbol = _SYMBOLS.get(node.op, node.op)
            raise AdminTemplateError(
                f"the comparison {symbol!r} is not allowed in this text; use ==, !=, in, not in"
            )
        elif isinstance(node, nodes.CondExpr) and node.expr2 is None:
            raise AdminTemplateError("an inline if needs an else: {{ a if b else c }}")
        # Reversed, so that the first thing refused is the first in the text.
        stack.extend((child, depth) for child in reversed(list(node.iter_child_nodes())))


def _check_call(node: nodes.Filter | nodes.Test) -> None:
    kind, known = ("filter", FILTERS) if isinstance(node, nodes.Filter) else ("test", TESTS)
    if node.name not in known:
        allowed = ", ".join(sorted(known))
        raise AdminTemplateError(
            f"the {kind} {node.name!r} is not allowed in this text; use one of {allowed}"
        )
    if node.dyn_args is not None or node.dyn_kwargs is not None:
        raise _refuse("argument unpacking (*x, **x) is")
    try:
        _arguments(node)
    except TypeError as exc:
        raise AdminTemplateError(f"the {kind} {node.name!r}: {exc}") from None


def _arguments(node: nodes.Filter | nodes.Test) -> dict[str, nodes.Expr]:
    """The argument nodes of a filter or test by parameter name (TypeError if they do not fit)."""
    keywords: dict[str, nodes.Expr] = {}
    for keyword in node.kwargs:  # the parser makes Keyword nodes, though typed as Pair
        assert isinstance(keyword, nodes.Keyword)
        keywords[keyword.key] = keyword.value
    bound = _SIGNATURES[node.name].bind(node.node, *node.args, **keywords)
    return dict(bound.arguments)


def _const(node: nodes.Expr | None) -> Any:
    return node.value if isinstance(node, nodes.Const) else None


class _Worst:
    """The largest value (in characters) each node of a checked tree can build, for the longest
    value: a bound, since every node is evaluated at most once per render."""

    def __init__(self) -> None:
        self.sizes: dict[int, int] = {}

    def total(self, tree: nodes.Template) -> int:
        """Characters a render can build in all: every node's worst value, and every token."""
        chars = 0
        for output in tree.find_all(nodes.Output):
            for child in output.nodes:
                if isinstance(child, nodes.TemplateData):
                    chars += len(child.data)
                else:
                    chars += _token_chars(self.size(child))
        for expr in tree.find_all(nodes.Expr):
            if not isinstance(expr, nodes.TemplateData):
                chars += self.size(expr)
        return chars

    def size(self, node: nodes.Node) -> int:
        key = id(node)
        if key not in self.sizes:
            self.sizes[key] = self._size(node)
        return self.sizes[key]

    def _size(self, node: nodes.Node) -> int:
        if isinstance(node, nodes.Const):
            return len(str(node.value))
        if isinstance(node, nodes.Name):
            return MAX_VALUE_CHARS
        if isinstance(node, nodes.Keyword):
            return self.size(node.value)
        if isinstance(node, nodes.Concat):
            return sum(self.size(n) for n in node.nodes)
        if isinstance(node, nodes.CondExpr):
            return max(self.size(node.expr1), self.size(node.expr2) if node.expr2 else 0)
        if isinstance(node, nodes.And | nodes.Or):  # the value of one side
            return max(self.size(node.left), self.size(node.right), len("False"))
        if isinstance(node, nodes.Filter):
            return self._filter(node)
        return len("False")  # tests, comparisons, not: a bool

    def _filter(self, node: nodes.Filter) -> int:
        args = _arguments(node)
        inner = node.node
        assert inner is not None  # filter blocks are refused before this
        size = self.size(inner)
        if node.name in _CASE_FILTERS:
            # A chain of case filters grows a text by CASE_GROWTH at most, not once per link.
            chained = isinstance(inner, nodes.Filter) and inner.name in _CASE_FILTERS
            return size if chained else CASE_GROWTH * size
        if node.name in ("default", "d"):
            fallback = args.get("default_value")
            return max(size, self.size(fallback) if fallback else 0)
        if node.name == "truncate":
            end = args.get("end")
            return size + (self.size(end) if end else len("..."))
        if node.name == "length":
            return len(str(size))
        if node.name == "replace":
            old, count = _const(args.get("old")), _const(args.get("count"))
            found = size // len(old) if isinstance(old, str) and old else size + 1
            if type(count) is int and count >= 0:
                found = min(found, count)
            return size + found * self.size(args["new"])
        return size  # trim


class _Sandbox(SandboxedEnvironment):
    """The sandbox, with the refused operations refused again at run time.

    The tree check refuses them first; these keep them refused if that check had a gap.
    """

    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})
    intercepted_unops = frozenset({"+", "-"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        raise SecurityError(f"{_ARITHMETIC} is not allowed")

    def call_unop(self, context: Context, operator: str, arg: Any) -> Any:
        raise SecurityError(f"{_ARITHMETIC} is not allowed")

    def getattr(self, obj: Any, attribute: str) -> Any:
        raise SecurityError("attributes are not allowed")

    def getitem(self, obj: Any, argument: Any) -> Any:
        raise SecurityError("indexes are not allowed")

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        raise SecurityError("calls are not allowed")


@dataclass(frozen=True)
class SampleRender:
    """A text as rendered for one sample subscriber, with value tokens in place."""

    label: str
    value: str
    output: str


class AdminTemplates:
    """Checks and renders admin text; `clock` is injectable for the time limit's tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.env = _Sandbox(undefined=StrictUndefined, autoescape=False, finalize=value_token)
        # Only the whitelisted filters and tests exist, and no globals (range, lipsum, ...).
        self.env.filters = dict(FILTERS)
        self.env.tests = dict(TESTS)
        self.env.globals = {}
        self.clock = clock
        # Refusals are remembered too: a refused text stored by other means than an import
        # fails each of its mails at once instead of being parsed again for each of them.
        self._outcomes = lru_cache(maxsize=512)(self._outcome)

    def check(self, source: str) -> None:
        """Raise AdminTemplateError unless `source` is allowed and renders for every sample."""
        for _ in self.sample_renders(source):
            pass

    def sample_renders(self, source: str) -> Iterator[SampleRender]:
        """`source` rendered with tokens for each of SAMPLES; the error names the sample."""
        self._compiled(source)
        for label, value in SAMPLES:
            try:
                output = self.render_marked(source, first_name=value)
            except AdminTemplateError as exc:
                raise AdminTemplateError(f"for a subscriber with {label}: {exc}") from None
            yield SampleRender(label, value, output)

    def _compiled(self, source: str) -> Template:
        outcome = self._outcomes(source)
        if isinstance(outcome, AdminTemplateError):
            raise AdminTemplateError(str(outcome))
        return outcome

    def _outcome(self, source: str) -> Template | AdminTemplateError:
        try:
            return self._compile(source)
        except AdminTemplateError as exc:
            return exc

    def _compile(self, source: str) -> Template:
        if len(source) > MAX_SOURCE_CHARS:
            raise AdminTemplateError(f"the text is longer than {MAX_SOURCE_CHARS} characters")
        try:
            tree = self.env.parse(source)
        except TemplateError as exc:
            raise AdminTemplateError(f"template syntax: {exc}") from None
        except (RecursionError, MemoryError):
            raise AdminTemplateError(f"the text nests deeper than {MAX_NESTING} levels") from None
        except ValueError as exc:  # e.g. an integer literal of thousands of digits
            raise AdminTemplateError(f"template syntax: {exc}") from None
        _check_tree(tree)
        worst = _Worst().total(tree)
        if worst > MAX_OUTPUT_CHARS:
            raise AdminTemplateError(
                f"the text could build {worst:,} characters for a {MAX_VALUE_CHARS}-character"
                f" name, more than {MAX_OUTPUT_CHARS:,}: use fewer or smaller replacements"
            )
        try:
            return self.env.from_string(tree)
        except TemplateError as exc:
            raise AdminTemplateError(f"template syntax: {exc}") from None
        except (RecursionError, MemoryError) as exc:
            raise AdminTemplateError(f"the text cannot be compiled: {exc!r}") from None

    def render(self, source: str, **values: str) -> str:
        """The text with the values filled in as they are; AdminTemplateError on any violation."""
        return fill_values(self.render_marked(source, **values))

    def render_marked(self, source: str, **values: str) -> str:
        """The text with a value token for every output, for the caller to fill in."""
        for name, value in values.items():
            if len(value) > MAX_VALUE_CHARS:
                raise AdminTemplateError(f"{name} is longer than {MAX_VALUE_CHARS} characters")
        template = self._compiled(source)
        started = self.clock()
        out: list[str] = []
        size = 0
        try:
            for chunk in template.generate(**values):
                size += len(chunk)
                if size > MAX_OUTPUT_CHARS:
                    raise AdminTemplateError(f"the text renders longer than {MAX_OUTPUT_CHARS}")
                if self.clock() - started > RENDER_SECONDS:
                    raise AdminTemplateError(f"the text took longer than {RENDER_SECONDS} s")
                out.append(chunk)
        except AdminTemplateError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of admin text fails the mail alone
            raise AdminTemplateError(f"the text cannot be rendered: {exc}") from None
        return "".join(out)
