"""The team overview's plots: PNGs drawn with matplotlib (Agg) from :func:`review.statistics.team_figures`."""

from __future__ import annotations

import io
from typing import Any, Callable, Dict, List

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _bar(ax, labels: List[str], values: List[float], title: str, colour: str, rotate: bool = True) -> None:
    ax.bar(range(len(values)), values, color=colour)
    if all(float(v).is_integer() for v in values):
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 0.25 of a case
    ax.set_xticks(range(len(values)), labels, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_title(title, fontsize=10)
    if not values:
        ax.text(0.5, 0.5, "nothing yet", ha="center", va="center", transform=ax.transAxes, color="grey")


def _states(ax, figures) -> None:
    data = figures["cases_per_state"]
    _bar(ax, list(data), list(data.values()), "Cases per state", "#4c72b0")


def _throughput(ax, figures) -> None:
    data = figures["finals_per_day"]
    _bar(ax, list(data), list(data.values()), "Cases made final per day", "#55a868")


def _stages(ax, figures) -> None:
    data = figures["mean_hours_per_stage"]
    _bar(ax, list(data), list(data.values()), "Mean hours spent in each stage", "#c44e52")


def _rounds(ax, figures) -> None:
    data = figures["rounds_of_final_cases"]
    _bar(ax, [str(k) for k in data], list(data.values()), "Rounds per final case", "#8172b2", rotate=False)


def _agreement(ax, figures) -> None:
    readers = figures["readers"]
    names = list(readers)
    dice = [readers[n]["mean_dice"] or 0 for n in names]
    nsd = [readers[n]["mean_nsd"] or 0 for n in names]
    ax.bar([i - 0.2 for i in range(len(names))], dice, width=0.4, label="Dice", color="#4c72b0")
    ax.bar([i + 0.2 for i in range(len(names))], nsd, width=0.4, label="NSD", color="#dd8452")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title("Reader agreement with consensus (mean)", fontsize=10)
    if names:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "nothing yet", ha="center", va="center", transform=ax.transAxes, color="grey")


def _sent_back(ax, figures) -> None:
    data = figures["organs_sent_back"]
    _bar(ax, list(data), list(data.values()), "Organs most often sent back", "#937860")


PLOTS: Dict[str, Callable] = {
    "states": _states,
    "throughput": _throughput,
    "stages": _stages,
    "rounds": _rounds,
    "agreement": _agreement,
    "sent_back": _sent_back,
}


def plot_png(name: str, figures: Dict[str, Any]) -> bytes:
    """One overview plot as PNG bytes (``name`` one of :data:`PLOTS`)."""
    figure, ax = plt.subplots(figsize=(5, 3.2), dpi=90)
    try:
        PLOTS[name](ax, figures)
        figure.tight_layout()
        out = io.BytesIO()
        figure.savefig(out, format="png")
        return out.getvalue()
    finally:
        plt.close(figure)
