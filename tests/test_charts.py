"""The SVG charts' geometry: bars in proportion to their values, on a round axis."""

from __future__ import annotations

import pytest

from newsletter.web import charts

pytestmark = pytest.mark.any_database


@pytest.mark.parametrize(
    ("value", "ceiling"),
    [
        (0, 1),
        (1, 1),
        (2, 2),
        (3, 5),
        (7, 10),
        (10, 10),
        (11, 20),
        (101, 200),
        (4_999_999, 5_000_000),
    ],
)
def test_the_axis_ends_on_a_round_number_at_or_above_the_largest_value(
    value: int, ceiling: int
) -> None:
    assert charts.nice_ceiling(value) == ceiling


def test_columns_are_in_proportion_and_stand_on_one_baseline() -> None:
    chart = charts.columns("Sent", "Mails sent per day", [("1", 50), ("2", 100), ("3", 0)])
    one, two, three = chart.bars
    assert [t.value for t in chart.ticks] == [0, 50, 100]
    assert two.height == pytest.approx(2 * one.height) and three.height == 0
    baseline = chart.ticks[0].at
    assert one.y + one.height == pytest.approx(baseline)
    assert two.y == pytest.approx(chart.ticks[-1].at)  # the tallest reaches the top tick
    assert one.x < two.x < three.x and two.x + two.width <= chart.width


def test_every_seventh_day_is_labelled_counting_back_from_the_last() -> None:
    points = [(str(day), day) for day in range(30)]
    chart = charts.columns("Signups", "per day", points, label_every=7)
    labelled = [bar.label for bar in chart.bars if bar.show_label]
    assert labelled == ["1", "8", "15", "22", "29"]


def test_an_empty_chart_has_a_unit_axis_and_no_repeated_tick() -> None:
    chart = charts.columns("Nothing yet", "no mail was sent", [("a", 0), ("b", 0)])
    assert [t.value for t in chart.ticks] == [0, 1]
    assert all(bar.height == 0 for bar in chart.bars)


def test_rows_grow_rightwards_in_proportion() -> None:
    chart = charts.rows("By state", "subscribers", [("active", 700), ("pending", 140)])
    active, pending = chart.bars
    assert chart.horizontal and active.x == pending.x
    assert active.width == pytest.approx(5 * pending.width)
    assert pending.y > active.y
