"""The evals page's scatter plot (web/plot.py) and page (web/pages.py): points where the drawn axes put them,
labels and strategy names as text, round ticks, labels that do not overlap."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from conductor_mcp.store import EvalRecord
from conductor_mcp.surfaces.web import pages
from conductor_mcp.surfaces.web.plot import Point, frame_for, label_box, nice_ticks, place_labels, scatter_svg

SVG = "{http://www.w3.org/2000/svg}"


def draw(points: list[Point]) -> ET.Element:
    """The plot, parsed as XML: it must be well formed to parse at all."""
    return ET.fromstring(scatter_svg(points, title="t", x_label="Mean tokens per task", y_label="Accuracy (%)"))


def axes(svg: ET.Element) -> tuple[tuple[float, float], tuple[float, float], float]:
    """From the drawing alone: the x axis's pixel span, the y axis's (bottom, top), and the last x tick's value."""
    lines = [e for e in svg.iter(f"{SVG}line") if e.get("class") == "axis"]
    horizontal = next(e for e in lines if e.get("y1") == e.get("y2"))
    vertical = next(e for e in lines if e.get("x1") == e.get("x2"))
    x_ticks = [e for e in svg.iter(f"{SVG}text") if "x-tick" in (e.get("class") or "")]
    last = float((x_ticks[-1].text or "").replace(",", ""))
    return ((float(horizontal.get("x1", "")), float(horizontal.get("x2", ""))),
            (float(vertical.get("y1", "")), float(vertical.get("y2", ""))), last)


def circles(svg: ET.Element) -> list[ET.Element]:
    return [e for e in svg.iter(f"{SVG}circle") if e.get("class") == "point"]


def test_points_lie_where_the_drawn_axes_put_them() -> None:
    points = [Point("origin", 0, 0), Point("best", 1820, 0.875), Point("moa", 11203, 0.5), Point("top", 600, 1.0)]
    svg = draw(points)
    (left, right), (bottom, top), x_last = axes(svg)
    assert x_last >= 11203 and bottom > top  # the x axis reaches past the largest value; y grows upwards
    drawn = circles(svg)
    assert [c.get("data-label") for c in drawn] == [p.label for p in points]
    for p, c in zip(points, drawn, strict=True):
        assert float(c.get("cx", "")) == pytest.approx(left + p.x / x_last * (right - left), abs=0.01)
        assert float(c.get("cy", "")) == pytest.approx(bottom - p.y * (bottom - top), abs=0.01)
    y_ticks = [e.text for e in svg.iter(f"{SVG}text") if "y-tick" in (e.get("class") or "")]
    assert y_ticks == ["0%", "25%", "50%", "75%", "100%"]
    labels = [e.text for e in svg.iter(f"{SVG}text") if "axis-label" in (e.get("class") or "")]
    assert labels == ["Mean tokens per task", "Accuracy (%)"]


def test_labels_are_text_not_markup() -> None:
    evil = '<script>alert(1)</script><img src=x onerror="x()"> & co'
    raw = scatter_svg([Point(evil, 10, 0.5)], title="t", x_label="x", y_label="y")
    assert "<script>" not in raw and "<img" not in raw and 'onerror="' not in raw
    svg = ET.fromstring(raw)
    assert circles(svg)[0].get("data-label") == evil
    assert [e.text for e in svg.iter(f"{SVG}text") if e.get("class") == "point-label"] == [evil]


@pytest.mark.parametrize(("high", "ticks"), [
    (1911.0, [0, 500, 1000, 1500, 2000]),
    (11763.15, [0, 2500, 5000, 7500, 10000, 12500]),
    (100.0, [0, 20, 40, 60, 80, 100]),
    (0.0, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
])
def test_ticks_are_round_and_cover_the_data(high: float, ticks: list[float]) -> None:
    assert nice_ticks(high) == pytest.approx(ticks)


def test_all_zero_tokens_still_draw() -> None:
    svg = draw([Point("failed", 0, 0), Point("also failed", 0, 0)])
    assert len(circles(svg)) == 2


def test_labels_of_points_in_one_place_do_not_overlap() -> None:
    points = [Point(f"single:worker-{i}", 500, 0.5) for i in range(4)] + [Point("conductor", 520, 0.52)]
    frame = frame_for(points)
    boxes = [label_box(x, y, anchor, p.label) for p, (x, y, anchor) in zip(points, place_labels(points, frame),
                                                                          strict=True)]
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)


def summary(correct: int, n: int, tokens: float) -> dict[str, Any]:
    return {"accuracy": round(correct / n, 4), "correct": correct, "n": n, "mean_tokens": tokens,
            "mean_seconds": 1.25, "mean_steps": 2.0, "mean_cost_usd": None}


def test_eval_page_escapes_every_name_and_plots_one_point_per_strategy() -> None:
    evil = "recipe:<b>bold</b>:w"
    runs = [{"task_id": "<t0>", "strategy": evil, "run_id": "r1", "status": "completed", "score": 1.0,
             "detail": "<ok>"}]
    record = EvalRecord(eval_id="e1", command="eval", suite="<i>suite</i>.jsonl", started_at=1000.0, ended_at=1003.0,
                        report={"suite": "x", "runs": runs,
                                "strategies": {"conductor": summary(2, 3, 1820.4), evil: summary(1, 3, 90)}})
    page = pages.eval_page(record, signed_in=False)
    assert "<b>bold</b>" not in page and "<i>suite</i>" not in page and "<t0>" not in page
    assert "recipe:&lt;b&gt;bold&lt;/b&gt;:w" in page and "&lt;i&gt;suite&lt;/i&gt;.jsonl" in page
    assert page.count('class="point"') == 2
    assert '<td class="num correct">2/3</td><td class="num" data-value="0.6667">66.7%</td>' in page
    assert '<td class="num" data-value="1820.4">1,820.4</td><td class="num" data-value="1.25">1.25 s</td>' in page
    assert '<a href="/ui/runs/r1">1</a>' in page  # a run's grade links to the run


def test_labels_stay_inside_the_axes() -> None:
    """A label beside a point on an axis (0 tokens, 0 % or 100 %) is moved off the axis and its ticks."""
    points = [Point("single:fast", 28, 0.0), Point("single:strong", 28, 1.0), Point("conductor", 679, 0.0)]
    frame = frame_for(points)
    for p, (x, y, anchor) in zip(points, place_labels(points, frame), strict=True):
        box = label_box(x, y, anchor, p.label)
        assert box.x0 > frame.px(0) and box.y1 < frame.py(0) and box.x1 <= frame.width, (p, box)
