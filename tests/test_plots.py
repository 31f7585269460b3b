"""harness.plots on the golden sweep's real records (issue 33): axes say what they are, no panel with fewer
than two points, titles inside the figure."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import plots
from harness.collect_results import load_records, records_frame

SWEEP = Path(__file__).resolve().parent / "golden" / "sweep"


@pytest.fixture(scope="module")
def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


@pytest.fixture(scope="module")
def shapes():
    df = records_frame(load_records(SWEEP)[0])
    return df[df["dataset"] == "Shapes3D"]


def inside(fig, artist) -> bool:
    fig.canvas.draw()
    box, page = artist.get_window_extent(), fig.bbox
    return box.x0 >= page.x0 and box.x1 <= page.x1 and box.y0 >= page.y0 and box.y1 <= page.y1


def test_usage_heatmap_axes_are_tasks_and_features_and_its_title_fits(plt, shapes):
    runs = shapes[shapes["algorithm"] == "SparseShared"]
    run, rdf = next(iter(runs.groupby("run")))
    fig = plots.heatmap_figure(plt, rdf, "usage", run)
    ax = fig.axes[0]
    usage = rdf.sort_values("step").iloc[-1]["usage"]
    assert ax.get_ylabel() == f"task ({len(usage)})" and ax.get_xlabel() == f"feature ({len(usage[0])})"
    assert run in ax.get_title() and inside(fig, ax.title)


def test_curve_panels_need_two_points(plt, shapes):
    full = plots.curves_figure(plt, "Shapes3D", shapes)
    titles = [ax.get_title() for ax in full.axes]
    assert {"mean out acc", "loss", "dci_disentanglement", "mcc"} <= set(titles)
    assert all(ax.get_xlabel() == "step" and ax.get_ylabel() == ax.get_title() for ax in full.axes)
    assert inside(full, full._suptitle)
    # DCI and MCC at the last checkpoint only (dci_freq larger than the number of checkpoints): one point each
    last = shapes["step"] == shapes.groupby("run")["step"].transform("max")
    sparse = shapes.assign(dci_disentanglement=shapes["dci_disentanglement"].where(last),
                           mcc=shapes["mcc"].where(last))
    titles = [ax.get_title() for ax in plots.curves_figure(plt, "Shapes3D", sparse).axes]
    assert "dci_disentanglement" not in titles and "mcc" not in titles and "loss" in titles
    one_checkpoint = shapes[last]
    assert plots.curves_figure(plt, "Shapes3D", one_checkpoint) is None
