"""Line and bar plots as SVG text, drawn with matplotlib (`pip install 'mactuner[report]'`): one
drawing for `tunerctl report`'s figures and the loss plot of a Hub model card (export/model_card.py).

    svg(series, title, ylabel, xlabel="step", widths=None) -> str     ImportError without matplotlib
"""
from __future__ import annotations

import io
from typing import Optional


def svg(series: dict, title: str, ylabel: str, xlabel: str = "step", widths: Optional[list] = None) -> str:
    """{name: (xs, ys)} as lines (or, with `widths`, bars from x to x + width) in one SVG document."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "tunerctl"})
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    for name, (xs, ys) in series.items():
        if widths:
            ax.bar(xs, ys, width=widths, label=name, align="edge", edgecolor="white")
        else:
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]
