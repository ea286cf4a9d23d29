"""An adapter's base model: the one its folder names, read in one place.

A PEFT adapter names it in adapter_config.json (`base_model_name_or_path`, which tunerd writes on
every save: backends/adapter_layout.py). Chat by adapter folder, fuse without --model and
evaluation of an adapter all take the base from here.
"""
from __future__ import annotations

import json
from pathlib import Path

from .adapter_layout import PEFT_CONFIG as ADAPTER_CONFIG

BASE_KEY = "base_model_name_or_path"   # as PEFT names it (adapter_layout.peft_config writes it)


def adapter_base(path) -> str:
    """The base model the adapter folder `path` names, or "" (no adapter_config.json, a damaged
    one, or none named)."""
    f = Path(path) / ADAPTER_CONFIG if path else None
    try:
        if f is None or not f.is_file():
            return ""
        doc = json.loads(f.read_text())
    except (OSError, ValueError):
        return ""
    return (doc.get(BASE_KEY) or "") if isinstance(doc, dict) else ""
