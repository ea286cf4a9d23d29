"""Export one layout of a saved adapter (`tunerctl adapters export --layout peft|mlx`).

A saved adapter folder holds the PEFT layout at its top and mlx-lm's in `mlx/`
(backends/adapter_layout.py); exporting one layout copies that layout's files only.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ..backends import adapter_layout as layout

MARKERS = {"peft": layout.PEFT_WEIGHTS, "mlx": layout.MLX_WEIGHTS}


def export_adapter(src, out_dir, layout_name: str = "peft") -> Path:
    """Copy the `layout_name` files of the adapter at `src` (an adapter folder, or a folder
    holding one, e.g. a job's output) into `out_dir`; returns `out_dir`."""
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"adapter not found: {src}")
    if layout_name not in MARKERS:
        raise ValueError(f"layout: {layout_name!r} is not {' or '.join(MARKERS)}")
    found = next(iter(sorted(src.rglob(MARKERS[layout_name]))), None)
    if found is None:
        raise FileNotFoundError(f"{src} has no {layout_name} layout ({MARKERS[layout_name]})")
    out = Path(out_dir).expanduser()
    skip = shutil.ignore_patterns(layout.MLX_SUBDIR) if layout_name == "peft" else None
    shutil.copytree(found.parent, out, dirs_exist_ok=True, ignore=skip)
    return out
