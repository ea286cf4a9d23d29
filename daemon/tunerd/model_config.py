"""A model's config.json, read in one place (never downloaded here: models/download.py fetches).

    config_file(model)        where it is: `<model>/config.json` of a local folder, else the hub
                              cache's copy of a hub id (with `cache`), else None
    read_model_config(model)  its contents (a dict), or None when there is none or it is not JSON
    context_positions(model)  (positions the model was trained for, where that was read), or None

Every reader takes the same arguments: `revision` for the hub cache, `base_dir` for a relative
local path (the submitter's directory), `cache=False` to look at local folders only.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

CONFIG_FILE = "config.json"
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length")

PathLike = Union[str, Path]


def config_file(model: str, revision: Optional[str] = None, base_dir: Optional[PathLike] = None,
                cache: bool = True) -> Optional[Path]:
    """The config.json a local model folder holds, else (with `cache`) the hub cache's copy."""
    if not model:
        return None
    path = Path(model).expanduser()
    local = (path if path.is_absolute() or base_dir is None else Path(base_dir) / path) / CONFIG_FILE
    try:
        if local.is_file():
            return local
    except OSError:
        return None
    if not cache:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
        cached = try_to_load_from_cache(model, CONFIG_FILE, revision=revision)
    except Exception:  # noqa: BLE001 - not a repo id, no cache: nothing to read
        return None
    return Path(cached) if isinstance(cached, str) else None


def read_model_config(model: str, revision: Optional[str] = None, base_dir: Optional[PathLike] = None,
                      cache: bool = True) -> Optional[dict]:
    """A model's config.json (see config_file), or None."""
    f = config_file(model, revision, base_dir, cache)
    return _read(f) if f is not None else None


def context_positions(model: str, revision: Optional[str] = None, base_dir: Optional[PathLike] = None,
                      cache: bool = True) -> Optional[tuple[int, str]]:
    """(positions, "<key> in <file>") from the model's config.json (or its text_config), or None."""
    f = config_file(model, revision, base_dir, cache)
    doc = _read(f) if f is not None else None
    if doc is None:
        return None
    for d in (doc, doc.get("text_config") or {}):
        for key in CONTEXT_KEYS:
            if isinstance(d, dict) and isinstance(d.get(key), int) and d[key] > 0:
                return d[key], f"{key} in {f}"
    return None


def _read(f: Path) -> Optional[dict]:
    try:
        doc = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
