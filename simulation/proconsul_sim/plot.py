"""A run's picture: latency and throughput over time, with the nemesis windows shaded.

Top panel: the latency of every completed operation (log scale, ms) at its start time, coloured
by outcome (ok / fail / info) and shaped by function. Bottom panel: `ok` operations completed
per second. Both share the time axis (seconds since the run started) and shade each nemesis
window, so a latency spike or a throughput hole lines up with the fault that caused it.

It draws on a bare matplotlib `Figure` with the Agg canvas (no pyplot, no display, no global
backend switch), so it is safe to call from any thread of a headless run.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .history import FAIL, INFO, OK, History

OUTCOME_COLOURS = {OK: "tab:green", FAIL: "tab:red", INFO: "tab:orange"}
MARKERS = ["o", "s", "^", "v", "D", "P", "X", "<", ">", "*"]
NEMESIS_COLOURS = ["tab:purple", "tab:blue", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]


def plot_run(path: str | Path, history: History, nemesis: list[dict]) -> Path:
    """Write the PNG to `path`; returns it."""
    path = Path(path)
    done = [op for op in history.ops if op.end is not None and op.type in OUTCOME_COLOURS]
    t_end = max([op.end for op in done if op.end is not None]
                + [n["end"] for n in nemesis if n.get("end") is not None]
                + [n["start"] for n in nemesis] + [1.0])

    fig = Figure(figsize=(13, 7), dpi=100)
    FigureCanvasAgg(fig)
    lat_ax, tput_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})

    functions = sorted({op.f for op in done})
    marker_of = {f: MARKERS[i % len(MARKERS)] for i, f in enumerate(functions)}
    for f in functions:
        for outcome, colour in OUTCOME_COLOURS.items():
            pts = [(op.start, max((op.end or op.start) - op.start, 1e-6) * 1000)
                   for op in done if op.f == f and op.type == outcome]
            if pts:
                xs, ys = zip(*pts)
                lat_ax.scatter(xs, ys, s=10, c=colour, marker=marker_of[f], alpha=0.6,
                               linewidths=0, label=f"{f} {outcome} ({len(pts)})")
    lat_ax.set_yscale("log")
    lat_ax.set_ylabel("latency (ms)")
    lat_ax.grid(True, which="major", alpha=0.3)
    if done:  # outside the axes, so it hides neither points nor nemesis labels
        lat_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", markerscale=1.5,
                      title="op outcome (count)", title_fontsize="small")
    else:
        lat_ax.text(0.5, 0.5, "no completed operations", transform=lat_ax.transAxes, ha="center")

    bins = max(1, math.ceil(t_end))
    counts = [0] * bins
    for op in done:
        if op.type == OK and op.end is not None:
            counts[min(bins - 1, int(op.end))] += 1
    # Black, so the throughput line never takes a nemesis window's colour.
    tput_ax.step(range(bins + 1), [*counts, counts[-1]], where="post", color="black", linewidth=1.2)
    tput_ax.set_ylabel("ok ops/s")
    tput_ax.set_xlabel("time since start (s)")
    tput_ax.set_xlim(0, t_end)
    tput_ax.set_ylim(bottom=0)
    tput_ax.grid(True, alpha=0.3)

    colour_of: dict[str, str] = {}
    for n in sorted(nemesis, key=lambda n: n["start"]):
        colour = colour_of.setdefault(n["name"], NEMESIS_COLOURS[len(colour_of) % len(NEMESIS_COLOURS)])
        end = n.get("end") if n.get("end") is not None else t_end
        for ax in (lat_ax, tput_ax):
            ax.axvspan(n["start"], end, color=colour, alpha=0.15, linewidth=0)
        lat_ax.annotate(n["name"], xy=(n["start"], 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, -3), textcoords="offset points", va="top", fontsize="small",
                        color=colour, fontweight="bold",
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": colour, "alpha": 0.8})

    lat_ax.set_title(f"{len(done)} operations; shaded: nemesis windows")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
