"""Tests for newsletter.content.article: splitting an article into an email series."""

from __future__ import annotations

import itertools
import math
import pathlib
import random
import re

import pytest

from newsletter.content.article import (
    ArticleError,
    Part,
    ResourceLink,
    Sidecar,
    SplitResult,
    load_sidecar,
    split_article,
)
from newsletter.content.article_parse import (
    balanced_partition,
    first_sentence,
    is_heading_line,
    md_to_plain,
    parse_plain,
    strip_boilerplate,
)
from tests.helpers.env import IN_CI, ROOT

SEED = ROOT / "emails" / "articles" / "emotional-distance.txt"
SHARED_SEED = ROOT.parent / "shared" / "seed" / "article.txt"
SEED_TOML = ROOT / "emails" / "articles" / "emotional-distance.toml"

DEEPER = "A Deeper Breakdown (Optional)"
FLOW_HEADINGS = [
    "Emotional Safety Is Not What Most People Think",
    "Why Emotional Distance Is a Regulation Response",
    "The Hidden Trigger That Creates Emotional Withdrawal",
    "Why Chasing Emotional Closeness Backfires",
    "Emotional Safety Creates Voluntary Connection",
    "This Is Why Some Small Changes Have Big Effects",
    "Understanding the Mechanism Changes How You Respond",
    "Final Thought",
]
LINK_1 = (
    "Many women experience this exact pattern. Here’s a deeper breakdown of why emotional"
    " distance happens — and what tends to bring closeness back."
)
LINK_2 = (
    "This article explains how emotional attraction actually forms — and why it works"
    " differently than most advice suggests."
)
BLURB_1 = (
    "If you want a more detailed explanation of why men pull away emotionally and how"
    " reconnection often begins, this resource goes deeper:"
)
BLURB_2 = (
    "And if you want to understand how emotional attraction forms and strengthens over time,"
    " this article explains the foundation behind it:"
)


@pytest.fixture(scope="module")
def seed() -> str:
    return SEED.read_text(encoding="utf-8")


def unmark(md: str) -> str:
    """Markdown body back to plain lines: drop heading/bullet markers and escapes."""
    text = re.sub(r"(?m)^(#{1,6} |- )", "", md)
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", text)


def words(text: str) -> int:
    return sum(1 for token in text.split() if re.search(r"\w", token))


def keep_reading_text(part: Part) -> str:
    pieces = [part.resources_intro or ""]
    for link in part.resources:
        pieces += [link.blurb, link.title]
    return "\n".join(pieces)


# --- the seed article ------------------------------------------------------------------


def test_seed_is_a_byte_copy_of_the_shared_seed() -> None:
    # ../shared sits beside the repository on the machines that have it (CI among them).
    if not SHARED_SEED.exists():
        if IN_CI:
            pytest.fail(f"the shared seed {SHARED_SEED} is missing in CI")
        pytest.skip(f"no shared seed beside the repository ({SHARED_SEED})")
    assert SEED.read_bytes() == SHARED_SEED.read_bytes()


def test_every_line_appears_and_flow_keeps_source_order(seed: str) -> None:
    result = split_article(seed, parts=4)
    body = "\n".join(unmark(p.body_md) for p in result.parts)
    closing = keep_reading_text(result.parts[-1])
    lines = [line.strip() for line in seed.splitlines() if line.strip()]
    start, end = lines.index(DEEPER), lines.index("Final Thought")
    resource_lines = lines[start + 1 : end]
    flow_lines = [unmark(line) for line in lines[:start] + lines[end:] if line != "Leave a Reply"]
    assert len(resource_lines) == 4 and len(flow_lines) == 81

    position = 0
    for line in flow_lines:
        found = body.find(line, position)
        assert found >= 0, f"missing or out of order: {line!r}"
        position = found + len(line)
    for line in resource_lines:
        assert line in closing and line not in body
    # The resources heading is replaced by the layout's own "Keep reading" title.
    assert DEEPER not in body and DEEPER not in closing


def test_trailing_boilerplate_is_dropped_and_reported(seed: str) -> None:
    result = split_article(seed)
    assert result.dropped_boilerplate == ["Leave a Reply"]
    everything = "\n".join(p.body_md + keep_reading_text(p) + p.preheader for p in result.parts)
    assert "Leave a Reply" not in everything


def test_boilerplate_only_at_the_end() -> None:
    text = (
        "Intro line here.\nRelated\nMiddle text stays.\nRelated posts\n\nShare this:\nTags: x, y\n"
    )
    remaining, dropped = strip_boilerplate(text)
    assert dropped == ["Related posts", "Share this:", "Tags: x, y"]
    assert remaining.splitlines() == ["Intro line here.", "Related", "Middle text stays."]


def test_headings_detected_exactly(seed: str) -> None:
    text, _ = strip_boilerplate(seed)
    headings = [b.plain for b in parse_plain(text) if b.kind == "heading"]
    expected = FLOW_HEADINGS[:7] + [DEEPER, "Final Thought"]
    assert headings == expected
    result = split_article(seed, parts=4)
    in_bodies = [
        line[3:] for p in result.parts for line in p.body_md.splitlines() if line.startswith("## ")
    ]
    assert in_bodies == FLOW_HEADINGS
    last = result.parts[-1].body_md
    assert last.rsplit("\n## ", 1)[1].startswith("Final Thought\n")
    assert last.endswith("It returns on its own.")


@pytest.mark.parametrize(
    "line",
    [
        "Why Emotional Distance Is a Regulation Response",
        "Understanding the Mechanism Changes How You Respond",
        "A Deeper Breakdown (Optional)",
        "Final Thought",
        "5 Signs He Is Pulling Away",
    ],
)
def test_heading_lines(line: str) -> None:
    assert is_heading_line(line)


@pytest.mark.parametrize(
    "line",
    [
        "Not effort.",
        "Emotional safety.",
        "Pressure to:",
        "More questions.",
        "Emotional distance rarely comes out of nowhere.",
        "He Said “No.”",
        "This is why it matters",
        "- Feeling Trusted",
        "A Title That Is Far Too Long To Be A Heading In Any Normal Article Really",
    ],
)
def test_non_heading_lines(line: str) -> None:
    assert not is_heading_line(line)


def test_bullet_lists_become_markdown_lists(seed: str) -> None:
    result = split_article(seed, parts=4)
    body = "\n".join(p.body_md for p in result.parts)
    assert (
        "It’s the difference between:\n\n"
        "- Feeling relaxed vs. feeling evaluated\n"
        "- Feeling trusted vs. feeling managed\n"
        "- Feeling free vs. feeling responsible for someone else’s emotions\n\n"
    ) in body
    assert body.count("\n- ") == 19  # every bullet line of the seed


def _check_sections(result: SplitResult) -> list[int]:
    """Independently recount each part's sections from body_md; return all section sizes."""
    sizes: list[int] = []
    for part in result.parts:
        chunks = re.split(r"(?m)^(?=## )", part.body_md)
        counted = [words(unmark(chunk)) for chunk in chunks if chunk.strip()]
        assert counted == part.section_words
        assert part.words == sum(counted)
        sizes += counted
    return sizes


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_fixed_parts_stay_within_one_section_of_target(seed: str, n: int) -> None:
    result = split_article(seed, parts=n)
    assert [p.number for p in result.parts] == list(range(1, n + 1))
    assert all(p.total == n for p in result.parts)
    sizes = _check_sections(result)
    assert len(sizes) == 9
    target = sum(sizes) / n
    for part in result.parts:
        assert part.words - max(part.section_words) <= target


@pytest.mark.parametrize("budget", [0.5, 1.0, 2.5])
def test_budget_parts_stay_within_one_section_of_budget(seed: str, budget: float) -> None:
    result = split_article(seed, minutes_per_part=budget)
    sizes = _check_sections(result)
    expected = min(math.ceil(sum(sizes) / 230 / budget), len(sizes))
    assert len(result.parts) == expected
    for part in result.parts:
        assert part.words - max(part.section_words) <= budget * 230


def test_default_budget_gives_two_parts_and_sidecar_gives_four(seed: str) -> None:
    assert len(split_article(seed).parts) == 2
    sidecar = load_sidecar(SEED_TOML)
    result = split_article(seed, title=sidecar.title, parts=sidecar.parts, links=sidecar.links)
    assert [(p.headline, p.words) for p in result.parts] == [
        (sidecar.title, 143),
        ("Why Emotional Distance Is a Regulation Response", 123),
        ("Why Chasing Emotional Closeness Backfires", 186),
        ("Understanding the Mechanism Changes How You Respond", 170),
    ]


def test_partition_matches_brute_force() -> None:
    """The DP finds the partition with the smallest largest part, then the most even one."""
    rng = random.Random(7)
    for _ in range(300):
        weights = [rng.randint(1, 150) for _ in range(rng.randint(1, 8))]
        n = rng.randint(1, len(weights))
        best: tuple[tuple[int, int], list[int]] | None = None
        for cuts in itertools.combinations(range(1, len(weights)), n - 1):
            bounds = [0, *cuts, len(weights)]
            segs = [sum(weights[a:b]) for a, b in itertools.pairwise(bounds)]
            key = (max(segs), sum(x * x for x in segs))
            if best is None or key < best[0]:
                best = (key, [b - a for a, b in itertools.pairwise(bounds)])
        assert best is not None
        assert balanced_partition(weights, n, sum(weights) / n) == best[1], (weights, n)


def test_parts_beyond_section_count_are_clamped(seed: str) -> None:
    result = split_article(seed, parts=50)
    assert len(result.parts) == 9
    assert any("parts=50 reduced to 9" in w for w in result.warnings)


# --- resources ---------------------------------------------------------------------------


def test_resources_close_the_last_part(seed: str) -> None:
    result = split_article(seed, parts=3)
    last = result.parts[-1]
    assert last.resources == [ResourceLink(LINK_1, BLURB_1, ""), ResourceLink(LINK_2, BLURB_2, "")]
    assert last.resources_intro is None
    assert all(not p.resources for p in result.parts[:-1])
    assert LINK_1 not in last.body_md and BLURB_2 not in last.body_md
    no_url = [w for w in result.warnings if "has no URL" in w]
    assert len(no_url) == 2
    assert "Many women experience" in no_url[0] and "This article explains" in no_url[1]


def test_sidecar_url_fills_the_link(seed: str) -> None:
    # Curly/straight quotes and spacing differ from the article on purpose.
    title = LINK_1.replace("’", "'").replace(" ", "  ")
    result = split_article(seed, links={title: "https://example.org/x"}, sidecar_name="s.toml")
    first, second = result.parts[-1].resources
    assert first.url == "https://example.org/x" and second.url == ""
    assert result.warnings == [
        "resource link 'This article explains how emotional…' has no URL: set it in s.toml"
    ]


def test_unmatched_sidecar_link_is_warned(seed: str) -> None:
    result = split_article(seed, links={"Some other article": "https://example.org/y"})
    assert any("'Some other article' matches no link" in w for w in result.warnings)


def test_plain_resources_with_title_case_link_text() -> None:
    text = (
        "Intro text here.\nFurther Reading\nSome context first.\nSee this guide:\nThe Full Guide\n"
    )
    last = split_article(text, links={"the full guide": "https://example.org/g"}).parts[-1]
    assert last.resources == [
        ResourceLink("The Full Guide", "See this guide:", "https://example.org/g")
    ]
    assert last.resources_intro == "Some context first."
    assert last.body_md == "Intro text here."
    # Without a lead-in, a line is a link only when the sidecar names it.
    text = "Intro text here.\nKeep Reading\nA note.\nOther guide\n"
    result = split_article(text, links={"Other guide": ""})
    assert result.parts[-1].resources == [ResourceLink("Other guide", "", "")]
    assert result.parts[-1].resources_intro == "A note."
    assert split_article(text).parts[-1].resources_intro == "A note.\n\nOther guide"


def test_missing_resources_section_is_warned() -> None:
    result = split_article("First line here.\nMore text.\nA Heading Here\nBody text.")
    assert result.parts[-1].resources == []
    assert any("no deeper-resources section" in w for w in result.warnings)


def test_seed_sidecar_ships_empty_urls() -> None:
    sidecar = load_sidecar(SEED_TOML)
    assert sidecar.parts == 4 and sidecar.title and sidecar.description
    assert sidecar.links == {LINK_1: "", LINK_2: ""}
    assert SEED_TOML.read_text(encoding="utf-8").count("EMPTY ON PURPOSE") == 2


# --- per-part fields ------------------------------------------------------------------


def test_subjects_preheaders_teasers(seed: str) -> None:
    result = split_article(seed, title="My Series", parts=4)
    parts = result.parts
    assert result.title == "My Series" and parts[0].headline == "My Series"
    assert [p.subject for p in parts] == [p.headline for p in parts]
    assert [p.preheader for p in parts] == [
        "Emotional distance rarely comes out of nowhere.",
        "Men are often taught — directly or indirectly — to regulate emotions internally.",
        "When someone senses emotional distance, the natural reaction is to close the gap.",
        (
            "Once you know that emotional withdrawal is often about safety — not lack of love —"
            " your response changes."
        ),
    ]
    for k, part in enumerate(parts[:-1]):
        assert part.teaser == f"Tomorrow: {parts[k + 1].headline}"
    assert parts[-1].teaser is None
    for part in parts:
        assert "Tomorrow" not in part.body_md and "Part " not in part.body_md
        assert part.body_md.startswith(f"## {part.headline}") == (part.number > 1)


@pytest.mark.parametrize(
    ("text", "sentence"),
    [
        (
            "Feeling relaxed vs. feeling evaluated. Next one.",
            "Feeling relaxed vs. feeling evaluated.",
        ),
        ("She asked “why?” Then left.", "She asked “why?”"),
        ("Really… Yes.", "Really…"),
        ("No sentence end here", "No sentence end here"),
    ],
)
def test_first_sentence(text: str, sentence: str) -> None:
    assert first_sentence(text) == sentence


def test_default_title_is_first_sentence(seed: str) -> None:
    assert split_article(seed).title == "Emotional distance rarely comes out of nowhere."
    long = "word " * 40 + "end."
    title = split_article(long).title
    assert len(title) <= 60 and title.endswith("…") and long.startswith(title[:-1])


def test_long_subject_and_preheader_are_trimmed_at_word_boundaries() -> None:
    title = "An Extraordinarily Long Series Title " * 4
    sentence = "This opening sentence keeps going " * 6 + "until it ends. Second one."
    result = split_article(sentence, title=title)
    part = result.parts[0]
    assert len(part.subject) <= 78 and title.startswith(part.subject)
    assert title[len(part.subject)] == " "
    assert len(part.preheader) <= 120 and part.preheader.endswith("…")
    assert sentence.startswith(part.preheader[:-1]) and sentence[len(part.preheader) - 1] == " "


def test_plain_text_markdown_specials_are_escaped() -> None:
    text = "# not a heading\n1. not a list\nUse *stars* and [brackets](x) here.\n+ plus"
    body = split_article(text).parts[0].body_md
    assert body.split("\n\n") == [
        r"\# not a heading",
        r"1\. not a list",
        r"Use \*stars\* and \[brackets](x) here.",
        r"\+ plus",
    ]
    assert unmark(body).split("\n\n") == text.splitlines()


# --- Markdown input -------------------------------------------------------------------

MARKDOWN = """\
# Slow Cooking Basics

Slow cooking rewards patience. It is mostly
about time, not effort.

## Choosing a Pot

A heavy pot matters:

* cast iron holds heat
- clay pots are gentle
  and forgiving

### Lids

Keep the [lid](https://example.org/lids) on.

## Further Reading

Some extra material.

- [Braising guide](https://example.org/braise) — everything about braising
- [Stock basics]() for the base

If you want more:

[Knife skills](https://example.org/knives)

## Leave a Reply

Share this:
"""


def test_markdown_article() -> None:
    result = split_article(
        MARKDOWN,
        markdown=True,
        parts=2,
        links={"Stock basics": "https://example.org/stock", "Knife skills": "https://other.org"},
    )
    assert result.title == "Slow Cooking Basics"
    assert result.dropped_boilerplate == ["## Leave a Reply", "Share this:"]
    first, second = result.parts
    assert first.headline == "Slow Cooking Basics" and first.teaser == "Tomorrow: Choosing a Pot"
    assert first.body_md == "Slow cooking rewards patience. It is mostly\nabout time, not effort."
    assert first.preheader == "Slow cooking rewards patience."
    assert second.body_md == (
        "## Choosing a Pot\n\nA heavy pot matters:\n\n"
        "- cast iron holds heat\n- clay pots are gentle and forgiving\n\n"
        "### Lids\n\nKeep the [lid](https://example.org/lids) on."
    )
    assert second.resources == [
        ResourceLink("Braising guide", "everything about braising", "https://example.org/braise"),
        ResourceLink("Stock basics", "for the base", "https://example.org/stock"),
        # The article's own URL wins over the sidecar's.
        ResourceLink("Knife skills", "If you want more:", "https://example.org/knives"),
    ]
    assert second.resources_intro == "Some extra material."
    assert result.warnings == []


@pytest.mark.parametrize(
    ("md", "plain"),
    [
        ("_em_, __strong__, **b**, *i* and `code`", "em, strong, b, i and code"),
        ("**_both_**", "both"),
        ("snake_case_word and (_aside_)", "snake_case_word and (aside)"),
        ("Hello {{ first_name }}, {% if first_name %}hi{% endif %}", None),
    ],
)
def test_plain_text_of_inline_markdown(md: str, plain: str | None) -> None:
    # An underscore inside a word is no emphasis: a heading that greets {{ first_name }}
    # keeps the name intact in the subject made from it.
    assert md_to_plain(md) == (md if plain is None else plain)


def test_a_heading_with_a_template_becomes_the_subject_as_written() -> None:
    text = "# Course\n\n## Hello {{ first_name|d('you', true) }}\n\nSome text here.\n"
    (part,) = split_article(text, markdown=True).parts
    assert part.subject == "Hello {{ first_name|d('you', true) }}"


# --- errors and the sidecar loader ----------------------------------------------------


@pytest.mark.parametrize("text", ["", "  \n\n ", "Leave a Reply\n\nShare this:\n"])
def test_empty_article(text: str) -> None:
    with pytest.raises(ArticleError, match="article is empty"):
        split_article(text)


def test_bad_arguments(seed: str) -> None:
    with pytest.raises(ArticleError, match="parts"):
        split_article(seed, parts=0)
    with pytest.raises(ArticleError, match="minutes_per_part"):
        split_article(seed, minutes_per_part=0)
    assert issubclass(ArticleError, ValueError)


def test_missing_sidecar_gives_defaults(tmp_path: pathlib.Path) -> None:
    assert load_sidecar(tmp_path / "nope.toml") == Sidecar()
    assert Sidecar().title is None and Sidecar().links == {}


def test_valid_sidecar(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text(
        'title = "T"\nminutes_per_part = 3\n[[links]]\ntitle = "L"\nurl = "https://x.org/a"\n',
        encoding="utf-8",
    )
    assert load_sidecar(path) == Sidecar(
        title="T", minutes_per_part=3.0, links={"L": "https://x.org/a"}
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('title = "unterminated\n', "cannot read sidecar TOML"),
        ('parts = "4"\n', "parts must be an integer"),
        ("parts = 0\n", "parts must be an integer"),
        ("minutes_per_part = -1\n", "minutes_per_part must be a number"),
        ("title = 3\n", "title must be a string"),
        ("minutes_per_parts = 2\n", "unknown key"),
        ('links = "x"\n', "links must be an array"),
        ('[[links]]\nurl = "https://x.org"\n', "title must be a non-empty string"),
        ('[[links]]\ntitle = "L"\nurl = "javascript:alert(1)"\n', "https:// or mailto:"),
        ('[[links]]\ntitle = "L"\nurl = "http://plain.example.org/a"\n', "https:// or mailto:"),
        ('[[links]]\ntitle = "L"\n[[links]]\ntitle = " l "\n', "duplicate title"),
    ],
)
def test_bad_sidecar(tmp_path: pathlib.Path, content: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ArticleError, match=message):
        load_sidecar(path)
