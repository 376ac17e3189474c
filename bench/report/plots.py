"""The report's figures: robustness curves, the seed's prediction by shift, latency and size bars."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI or servers
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

STYLE = {"A": dict(color="#1f77b4", marker="o", linestyle="-"), "B": dict(color="#d62728", marker="s", linestyle="--"),
         "ln-swiglu": dict(color="#2ca02c", marker="^", linestyle=":"),
         "rms-gelu": dict(color="#9467bd", marker="v", linestyle="-.")}


def _grid(n: int, sharey: bool = True):
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False, sharey=sharey)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def curves(series: dict[str, dict[str, list[tuple[float, float]]]], xlabel: str, ylabel: str, title: str,
           path: Path, log_panels: tuple[str, ...] = ()) -> Path:
    """series: panel (recipe) -> design -> [(x, y)] or [(x, y, low, high)] (an interval, drawn as a
    band); one panel per recipe, designs on the same axes. Panels in log_panels get a log y axis of
    their own (quantities of other units or orders of magnitude)."""
    fig, axes = _grid(len(series), sharey=not log_panels)
    for ax, (panel, by_design) in zip(axes, series.items(), strict=False):
        if panel in log_panels:
            ax.set_yscale("log")
        for design, points in by_design.items():
            columns = list(zip(*sorted(points), strict=True))
            line, = ax.plot(columns[0], columns[1], label=design, **STYLE.get(design, {}))
            if len(columns) == 4:
                ax.fill_between(columns[0], columns[2], columns[3], alpha=0.2, color=line.get_color())
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel, fontsize=8)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bars(groups: list[str], values: dict[str, list[float | None]], errors: dict[str, list[tuple[float, float]]] | None,
         ylabel: str, title: str, path: Path, log: bool = False) -> Path:
    """Grouped bars: one group per recipe, one bar per design, optional (low, high) whiskers."""
    fig, ax = plt.subplots(figsize=(min(14.0, max(6.0, 0.4 * len(groups) * len(values))), 4.2))
    width = 0.8 / len(values)
    x = np.arange(len(groups))
    for i, (design, ys) in enumerate(values.items()):
        heights = [np.nan if y is None else y for y in ys]
        yerr = None
        if errors:
            yerr = np.array([[h - lo, hi - h] if h == h else [0, 0]
                             for h, (lo, hi) in zip(heights, errors[design], strict=True)]).T
        ax.bar(x + (i - (len(values) - 1) / 2) * width, heights, width, yerr=yerr, capsize=2, label=design,
               color=STYLE.get(design, {}).get("color"))
    ax.set_xticks(x, groups, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def training_curves(curves: dict[tuple[str, int], dict], path: Path) -> Path:
    """Training loss in bits per byte per (design, seed); each curve holds means over `every`-step bins."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for (design, seed), curve in curves.items():
        steps = (np.arange(len(curve["bits"])) + 0.5) * curve["every"]
        ax.plot(steps, curve["bits"], label=f"{design} seed {seed}", color=STYLE.get(design, {}).get("color"),
                linestyle=STYLE.get(design, {}).get("linestyle"), alpha=0.9 - 0.2 * min(seed, 3))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (bits per byte)")
    ax.set_title("The trained pair")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def intervals(rows: list[tuple[str, float, float, float, str]], xlabel: str, title: str, path: Path) -> Path:
    """A forest plot: one row per (label, point, low, high, verdict), log x, a line at 1 (no difference)."""
    colors = {"A": STYLE["A"]["color"], "B": STYLE["B"]["color"], "none": "#555555", "broken": "#bbbbbb"}
    fig, ax = plt.subplots(figsize=(7.0, 0.9 + 0.28 * len(rows)))
    for y, (_, point, low, high, verdict) in enumerate(reversed(rows)):
        ax.errorbar(point, y, xerr=[[max(point - low, 0)], [max(high - point, 0)]], fmt="o", capsize=3,
                    color=colors.get(verdict, "#555555"), markersize=4)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [r[0] for r in reversed(rows)], fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
