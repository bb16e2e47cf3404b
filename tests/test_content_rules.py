"""What a part's body may link to and show: https or mailto links, images with alt text."""

from __future__ import annotations

import pytest

from newsletter.services.content_rules import body_problems


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("[a](https://e.org/x) and [b](mailto:me@e.org)", None),
        ("![A chart of replies](https://e.org/c.png)", None),
        ("[a](http://e.org/x)", "link 'http://e.org/x' must be an https:// or mailto: URL"),
        ("[a](javascript:alert(1))", None),  # not a link to the renderer: shown as text
        ("[a](/relative/path)", "link '/relative/path' must be"),
        ("[a](mailto:nobody)", "link 'mailto:nobody' must be"),
        ("![](https://e.org/c.png)", "needs alt text"),
        ("![A chart](http://e.org/c.png)", "image 'http://e.org/c.png' must be an https:// URL"),
        ("* [nested](http://e.org/in-a-list)", "link 'http://e.org/in-a-list' must be"),
    ],
)
def test_body_links_and_images(body: str, problem: str | None) -> None:
    found = body_problems(body)
    if problem is None:
        assert found == []
    else:
        assert len(found) == 1 and problem in found[0], found
