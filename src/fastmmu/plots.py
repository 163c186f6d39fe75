"""Charts of a comparison, as PNG files (needs the ``plot`` extra: ``pip install fastmmu[plot]``).

Three charts, the ones ``fastmmu compare --plot`` writes:

- ``overhead.png``: estimated cycles per mode, stacked by cause, relative to native;
- ``tlb_miss_rate.png``: the TLB miss rate over the run, one line per mode
  (needs the runs' timelines: ``compare(..., timeline_every=N)``);
- ``exits.png``: VM exits by reason, per mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

LINE_STYLES = ("-", "--", "-.", ":")   # per mode, so that lines which coincide still all show
MARKERS = ("o", "s", "^", "D", "v", "x")
CAUSES = ("accesses", "tlb", "walks", "guest_page_faults", "guest_pt_accesses", "context_switches",
          "vm_exits", "shadow_tables")


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'fastmmu[plot]'") from None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_comparison(comparison: Any, directory: str | Path) -> list[Path]:
    """Write the three charts of ``comparison`` into ``directory``; their paths."""
    plt = _pyplot()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    results = comparison.results
    modes = list(results)
    native = results["native"].cycles or 1.0
    written = []

    fig, ax = plt.subplots(figsize=(8.5, 4))
    bottom = [0.0] * len(modes)
    for cause in CAUSES:
        values = [results[m].breakdown.get(cause, 0.0) / native for m in modes]
        if any(values):
            ax.bar(modes, values, bottom=bottom, label=cause.replace("_", " "))
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for k, total in enumerate(bottom):   # each bar's total above it, with room for the label
        ax.text(k, total, f"{total:.2f}x", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, max(bottom, default=1.0) * 1.12 or 1.0)
    ax.set_ylabel("estimated cycles / native")
    ax.set_title("Overhead by cause")
    _legend_beside(ax)
    written.append(_save(fig, directory / "overhead.png", plt))

    fig, ax = plt.subplots(figsize=(8.5, 4))
    lines = miss_rate_lines(results)
    for i, (label, accesses, rates) in enumerate(lines):
        # each line its own style and width, the first drawn widest and on top: lines that coincide all show
        ax.plot(accesses, rates, label=label, linestyle=LINE_STYLES[i % len(LINE_STYLES)],
                linewidth=2.6 - 0.5 * (i % 4), marker=MARKERS[i % len(MARKERS)],
                markevery=max(1, len(rates) // 12), markersize=4, zorder=10 - i)
    ax.set_xlabel("accesses")
    ax.set_ylabel("TLB miss rate (per interval)")
    ax.set_title("TLB miss rate over time")
    if lines:
        _legend_beside(ax)
    written.append(_save(fig, directory / "tlb_miss_rate.png", plt))

    fig, ax = plt.subplots(figsize=(8.5, 4))
    reasons = sorted({r for m in modes for r, n in results[m].exits.items() if r != "total" and n})
    width = 0.8 / max(1, len(reasons))
    for i, reason in enumerate(reasons):
        ax.bar([k + i * width for k in range(len(modes))], [results[m].exits.get(reason, 0) for m in modes],
               width=width, label=reason.replace("_", " "))
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(modes))], modes)
    ax.set_ylabel("VM exits")
    ax.set_title("VM exits by reason")
    if reasons:
        _legend_beside(ax)
    written.append(_save(fig, directory / "exits.png", plt))
    return written


def miss_rate_lines(results: dict[str, Any]) -> list[tuple[str, list[float], list[float]]]:
    """(label, accesses, TLB miss rate) per mode with a timeline; a mode whose line is exactly an
    earlier one's says so in its label ("brute_force (= native)"), since it would lie on top of it."""
    lines: list[tuple[str, list[float], list[float]]] = []
    drawn: list[tuple[str, list[float]]] = []
    for mode, result in results.items():
        if not result.timeline:
            continue
        rates = [row["tlb_miss_rate"] for row in result.timeline]
        same = next((other for other, values in drawn if values == rates), None)
        lines.append((mode if same is None else f"{mode} (= {same})", [row["accesses"] for row in result.timeline],
                      rates))
        drawn.append((mode, rates))
    return lines


def _legend_beside(ax: Any) -> None:
    """The legend to the right of the plot, where it covers no bar and no line."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


def _save(fig: Any, path: Path, plt: Any) -> Path:
    from fastmmu.traces.output import open_output

    fig.tight_layout()
    with open_output(path) as out:   # whole or not at all, as every output file
        fig.savefig(out, format="png", dpi=100)
    plt.close(fig)
    return path
