"""axe-core in the test browser: the accessibility checks every admin page must pass.

The library is vendored from npm (package.json pins it; scripts/vendor copies it to
tests/vendor/axe.min.js), so a test run needs neither npm nor the network. The pages forbid
inline script (CSP), so it is not added as a script tag: it runs through Playwright's evaluate
(the DevTools protocol, which no page policy governs) and sets window.axe.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from tests.helpers.env import ROOT

if TYPE_CHECKING:
    from playwright.sync_api import Page

AXE = ROOT / "tests" / "vendor" / "axe.min.js"
FAILING_IMPACTS = ("serious", "critical")


@cache
def _source() -> str:
    return AXE.read_text(encoding="utf-8")


def violations(page: Page) -> list[dict[str, Any]]:
    """Every axe-core violation on the page as it is now (WCAG 2.x A and AA, best practices)."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.evaluate("() => {\n" + _source() + "\n}")
    result: dict[str, Any] = page.evaluate(
        """async () => await window.axe.run(document, {
            runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa',
                                            'wcag22aa', 'best-practice']},
            resultTypes: ['violations'],
        })"""
    )
    return list(result["violations"])


def assert_accessible(page: Page) -> None:
    """Fail on any serious or critical axe-core violation, naming the rule and the elements."""
    found = [v for v in violations(page) if v.get("impact") in FAILING_IMPACTS]
    lines = []
    for violation in found:
        targets = [", ".join(node.get("target", [])) for node in violation.get("nodes", [])]
        lines.append(f"{violation['id']} ({violation['impact']}): {violation['help']} at {targets}")
    assert not found, f"{page.url}: accessibility violations:\n" + "\n".join(lines)
