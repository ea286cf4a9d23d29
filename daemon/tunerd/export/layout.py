"""Export one layout of a saved adapter (`tunerctl adapters export --layout peft|mlx`).

A saved adapter folder holds the PEFT layout at its top and mlx-lm's in `mlx/`
(backends/adapter_layout.py); exporting one layout copies that layout's files only, through
files.write_output_dir: into a new or empty folder, one exported before, or with `force` (never
through a link, never removing a file it did not write).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ..backends import adapter_layout as layout
from ..files import MARKER, TMP, write_output_dir

KIND = "adapter export"
MARKERS = {"peft": layout.PEFT_WEIGHTS, "mlx": layout.MLX_WEIGHTS}


def export_adapter(src, out_dir, layout_name: str = "peft", force: bool = False) -> Path:
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
    skip = {MARKER} | ({layout.MLX_SUBDIR} if layout_name == "peft" else set())

    def fill(tmp: Path) -> None:
        for entry in sorted(found.parent.iterdir()):
            if entry.name in skip or entry.name.startswith(TMP):
                continue
            if entry.is_dir():
                shutil.copytree(entry, tmp / entry.name)
            else:
                shutil.copy2(entry, tmp / entry.name)
    return write_output_dir(Path(out_dir).expanduser(), fill, KIND, force=force, layout=layout_name,
                            source=str(src))
