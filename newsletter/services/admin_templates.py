"""Text that admins write (subjects, preheaders, bodies) as small, safe templates.

Rendered in Jinja2's SandboxedEnvironment, which refuses access to internals (`__class__`,
`__globals__`, ...). On top of that: the only names are the subscriber's fields, so nothing
reaches config or the environment; loops, macros, includes and imports are refused when the
text is checked, so a render takes time in proportion to the text; string repetition and
powers are bounded; the source and the output have size caps and a render has a time limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

MAX_SOURCE_CHARS = 50_000
MAX_OUTPUT_CHARS = 200_000
RENDER_SECONDS = 0.5
NAMES = frozenset({"first_name"})
# Statements that repeat or pull in other templates: with them a short text could run long.
_REFUSED = {
    nodes.For: "loops",
    nodes.Macro: "macros",
    nodes.CallBlock: "call blocks",
    nodes.Include: "includes",
    nodes.Import: "imports",
    nodes.FromImport: "imports",
    nodes.Extends: "extends",
}


class AdminTemplateError(ValueError):
    """Admin-written text that cannot be used as a template, and why."""


class _Sandbox(SandboxedEnvironment):
    """The sandbox, with `*` and `**` bounded (`'x' * 10**9` would exhaust memory)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            raise SecurityError("powers are not allowed")
        sizes = [len(v) for v in (left, right) if isinstance(v, str | list | tuple)]
        counts = [v for v in (left, right) if isinstance(v, int)]
        if sizes and counts and sizes[0] * max(counts) > MAX_OUTPUT_CHARS:
            raise SecurityError("the repeated text would be too long")
        return super().call_binop(context, operator, left, right)


class AdminTemplates:
    """Checks and renders admin text; `clock` is injectable for the time limit's tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.env = _Sandbox(undefined=StrictUndefined, autoescape=False)
        self.clock = clock
        self._compiled = lru_cache(maxsize=512)(self._compile)

    def check(self, source: str) -> None:
        """Raise AdminTemplateError unless `source` is a template this product will render."""
        self._compiled(source)

    def _compile(self, source: str) -> Template:
        if len(source) > MAX_SOURCE_CHARS:
            raise AdminTemplateError(f"the text is longer than {MAX_SOURCE_CHARS} characters")
        try:
            tree = self.env.parse(source)
        except TemplateError as exc:
            raise AdminTemplateError(f"template syntax: {exc}") from None
        for node_type, what in _REFUSED.items():
            if any(True for _ in tree.find_all(node_type)):
                raise AdminTemplateError(f"{what} are not allowed in this text")
        unknown = {n.name for n in tree.find_all(nodes.Name) if n.ctx == "load"} - NAMES
        if unknown:
            allowed = ", ".join(sorted(NAMES))
            raise AdminTemplateError(f"unknown name {sorted(unknown)[0]!r}; use only {allowed}")
        return self.env.from_string(tree)

    def render(self, source: str, **values: str) -> str:
        """The text with the values filled in; AdminTemplateError on any violation."""
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
        except (SecurityError, TemplateError) as exc:
            raise AdminTemplateError(f"the text cannot be rendered: {exc}") from None
        return "".join(out)
