"""Fuse an adapter into its base model and write a standalone Hugging Face-format model.

    fuse(model_path, adapter_path, out_dir, dequantize=False, backend="auto", force=False) -> Path

The backend (`backend: auto` -> backends.auto's rule) loads the base in float32 and merges the
adapter with its own library (`Backend.fuse`: PEFT's merge_and_unload on torch, mlx-lm's LoRA fuse
on MLX); the result is saved in the base's float dtype, and `mlx_lm.load(out_dir)` and
`transformers.AutoModelForCausalLM.from_pretrained(out_dir)` both load it, whichever backend wrote
it. The adapter may be in either layout (PEFT dir, mlx-lm dir, or our `adapter/` with both).

A QLoRA run quantizes the base in memory only; its base on disk is float, and the adapter is merged
into that float base. If the base *on disk* is quantized (an mlx-community 4-bit model, a
bitsandbytes checkpoint), merging and re-quantizing can silently wash the adapter out (mlx-lm
#1172), so that is refused (FuseError) unless `dequantize=True`, which writes a float model.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..backends import own_base
from ..backends.base import ModelSpec
from ..backends.registry import get_backend, resolve_backend
from ..files import check_destination, write_output_dir
from ..model_config import read_model_config

KIND = "fused model"
GENERATION_CONFIG = "generation_config.json"


def fuse(model_path, adapter_path, out_dir, dequantize: bool = False, backend: str = "auto",
         force: bool = False) -> Path:
    """Write the fused model at `out_dir` (files.write_output_dir: a new or empty folder, one fused
    before, or with `force`; nothing there that MacTuner did not write is removed)."""
    out = Path(out_dir).expanduser()
    check_destination(out, KIND, force=force)   # before the slow load; write_output_dir checks again
    spec = ModelSpec(model=str(model_path), backend=backend, dtype="float32")
    be = get_backend(_fuse_backend(spec))
    be.load(spec)

    def fill(tmp: Path) -> None:
        be.fuse(Path(adapter_path), tmp, dequantize=dequantize)
        _stop_at_end_of_turn(tmp, Path(model_path).expanduser(), own_base.read_added_tokens(adapter_path),
                             be.tokenizer)

    return write_output_dir(out, fill, KIND, force=force, source=str(adapter_path),
                            base=str(model_path))


def _fuse_backend(spec: ModelSpec) -> str:
    """`auto` -> backends.auto's rule, except that only MLX reads a base quantized in MLX's format
    (config.json key `quantization`)."""
    if spec.backend == "auto" and "quantization" in (read_model_config(spec.model, spec.revision) or {}):
        return "mlx"
    return resolve_backend(spec)


def _stop_at_end_of_turn(out: Path, src: Path, added, tokenizer) -> None:
    """The base's generation config, with an added end-of-turn token (adapter_layout: added
    tokens) among its stop tokens."""
    if not (out / GENERATION_CONFIG).exists() and (src / GENERATION_CONFIG).exists():
        shutil.copy(src / GENERATION_CONFIG, out / GENERATION_CONFIG)
    if added is None or not added.get("end_of_turn") or not (out / GENERATION_CONFIG).exists():
        return
    gen = json.loads((out / GENERATION_CONFIG).read_text())
    eos = gen.get("eos_token_id")
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    eot = int(tokenizer.convert_tokens_to_ids(added["end_of_turn"]))
    gen["eos_token_id"] = eos if eot in eos else eos + [eot]
    (out / GENERATION_CONFIG).write_text(json.dumps(gen, indent=2))
