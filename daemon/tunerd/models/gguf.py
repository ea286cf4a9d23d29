"""A GGUF model (a `.gguf` file or `ollama:NAME[:TAG]`, tunerd.gguf_file) converted once into an
ordinary Hugging Face folder in the daemon's model cache, which both backends then load.

    use_home(home)          the daemon's home: the cache is <home>/models/gguf (Core sets it)
    cached(model)           the converted folder when this GGUF version is converted already, else None
    convert(model)          convert (dequantised) and return the folder; a second call reuses it
    source_of(folder)       where a converted folder came from ({"source", "gguf", ...}) or None

transformers' GGUF loading does the reading and dequantising (`from_pretrained(dir, gguf_file=)`,
model and tokenizer with its chat template); the weights are copied into a model built from that
config without `quantization_config` and saved as safetensors in bfloat16 (the dtype real
checkpoints ship in; the backends' `dtype: auto` then picks the device's). The folder is keyed by
the GGUF file's name, size and mtime, written under a temporary name and renamed (atomic; one
converter at a time per folder, a lock file), and holds `gguf_source.json`: what was converted.
models/download.fetch calls this: it is the one way a model becomes a local folder.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Optional

from ..gguf_file import check, resolve
from ..paths import default_home

SOURCE_FILE = "gguf_source.json"
_home: Optional[Path] = None


def use_home(home) -> None:
    global _home
    _home = Path(home)


def cache_root() -> Path:
    home = _home or default_home()
    return home / "models" / "gguf"


def _folder(path: Path) -> Path:
    real = path.resolve()
    st = real.stat()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", real.name.removesuffix(".gguf"))[:80]
    return cache_root() / f"{stem}-{st.st_size}-{st.st_mtime_ns}"


def cached(model: str, base_dir=None) -> Optional[str]:
    out = _folder(resolve(model, base_dir))
    return str(out) if (out / SOURCE_FILE).is_file() else None


def convert(model: str, base_dir=None) -> str:
    """The converted folder of GGUF model `model` (converted now when it is not in the cache)."""
    path = check(model, base_dir)   # a missing file, not GGUF, an architecture transformers cannot read
    out = _folder(path)
    if (out / SOURCE_FILE).is_file():
        return str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / SOURCE_FILE).is_file():
            _convert(model, path, out)
    return str(out)


def dequantised(gguf: Path, dtype: str = "bfloat16"):
    """(model, tokenizer) of the GGUF file `gguf`, dequantised by transformers' GGUF loader into an
    ordinary model in `dtype` (no quantization_config: save_pretrained writes a plain checkpoint)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict())
    return fresh.to(getattr(torch, dtype)), tokenizer


def _convert(model: str, path: Path, out: Path) -> None:
    t0 = time.monotonic()
    real = path.resolve()
    try:
        fresh, tokenizer = dequantised(real)
    except Exception as e:  # noqa: BLE001 - transformers' own reason (a tensor type it cannot dequantise ...)
        raise ValueError(f"model {model!r}: transformers cannot convert the GGUF file {path} "
                         f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})") from e
    config = fresh.config
    for stale in out.parent.glob(f".{out.name}.tmp-*"):   # a converter that died (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        fresh.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        st = real.stat()
        (tmp / SOURCE_FILE).write_text(json.dumps({
            "source": model, "gguf": str(path), "gguf_size": st.st_size, "gguf_mtime_ns": st.st_mtime_ns,
            "architecture": config.model_type, "converted_at": time.time(),
            "seconds": round(time.monotonic() - t0, 1)}, indent=1) + "\n")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def source_of(folder: str) -> Optional[dict]:
    try:
        doc = json.loads((Path(folder) / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
