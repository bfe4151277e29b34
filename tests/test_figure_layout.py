"""The layout check finds what does not read: tick labels over each other or off the figure, legends over data."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from analysis import figures as F  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _readable():
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    ax.plot(np.arange(10), np.arange(10) ** 0.5, label="square root")
    ax.set_xlabel("training step")
    ax.set_title("a figure that reads")
    F.place_legend(ax)
    return fig


def test_a_readable_figure_has_no_problems():
    assert F.layout_problems(_readable()) == []


def test_overlapping_tick_labels_are_found():
    fig, ax = plt.subplots(figsize=(4, 3), layout="constrained")
    ax.plot(range(12), range(12))
    ax.set_xticks(range(12), [f"setting number {i}" for i in range(12)])
    problems = F.layout_problems(fig)
    assert any("x tick labels overlap: 'setting number 0' and 'setting number 1'" in p for p in problems), problems
    # rotated 60 degrees and centred, as 03's settings figure was: the boxes still collide
    ax.tick_params(axis="x", labelrotation=60)
    assert any("x tick labels overlap" in p for p in F.layout_problems(fig))


def test_tick_labels_leaving_the_figure_are_found():
    fig, ax = plt.subplots(figsize=(4, 3))  # no layout engine: long y labels run off the left edge
    ax.barh(range(3), [1, 2, 3])
    ax.set_yticks(range(3), ["a very very long label that cannot fit", "b", "c"])
    problems = F.layout_problems(fig)
    assert any("y tick label 'a very very long label that cannot fit' leaves the figure" in p for p in problems), problems


def test_a_legend_over_data_is_found_and_one_outside_is_not():
    fig, ax = plt.subplots(figsize=(5, 4), layout="constrained")
    x = np.linspace(0, 1, 50)
    ax.plot(x, x, label="rising")
    ax.fill_between(x, 0, 1, alpha=0.2, label="band")
    ax.legend(loc="center")
    assert any("the legend covers data" in p for p in F.layout_problems(fig))
    F.place_legend(ax)
    assert F.layout_problems(fig) == []


def test_a_legend_over_scatter_points_or_bars_is_found():
    fig, ax = plt.subplots(figsize=(5, 4), layout="constrained")
    ax.scatter([0.5], [0.5], label="point")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="center")
    assert any("covers data" in p for p in F.layout_problems(fig))
    fig, ax = plt.subplots(figsize=(5, 4), layout="constrained")
    ax.bar([0, 1, 2], [3, 3, 3], label="bars")
    ax.legend(loc="lower center")
    assert any("covers data" in p for p in F.layout_problems(fig))
    # a legend in an empty corner is fine
    fig, ax = plt.subplots(figsize=(5, 4), layout="constrained")
    ax.plot([0, 1], [0, 0.2], label="low line")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper right")
    assert F.layout_problems(fig) == []


def test_save_figure_wraps_titles_wider_than_their_axes(tmp_path):
    fig, ax = plt.subplots(figsize=(3, 3), layout="constrained")
    ax.plot([0, 1], [0, 1])
    ax.set_title("a title much longer than the axes it sits on, which would leave the figure on both sides")
    assert any("title" in p and "leaves the figure" in p for p in F.layout_problems(fig))
    F.save_figure(fig, tmp_path / "wrapped", formats=("png",))
    assert "\n" in ax.get_title() and F.layout_problems(fig) == []
