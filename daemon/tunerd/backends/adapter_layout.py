"""Adapter directory layouts: mlx-lm's and PEFT's, and the conversion between them.

Pure numpy + safetensors (no mlx, no torch), so both backends, the daemon and the tests use it.

The adapter directory every backend writes with `save_adapter(dir)`:

    dir/adapter_config.json         PEFT config (peft_type LORA, r, lora_alpha, target_modules, ...)
    dir/adapter_model.safetensors   PEFT tensors: base_model.model.<path>.lora_A.weight  (r, in)
                                                  base_model.model.<path>.lora_B.weight  (out, r)
                                                  base_model.model.<path>.lora_magnitude_vector (out,) [DoRA]
    dir/mlx/adapter_config.json     mlx-lm config (fine_tune_type, num_layers, lora_parameters{rank, scale,
                                    dropout, keys})
    dir/mlx/adapters.safetensors    mlx-lm tensors: <path>.lora_a (in, r), <path>.lora_b (r, out), <path>.m (out,)

`dir/` loads with `peft.PeftModel.from_pretrained(hf_model, dir)`; `dir/mlx/` loads with
`mlx_lm.load(model, adapter_path=dir/mlx)` (and Ollama's mlx-lm adapter import). `<path>` is the
module path inside the model (`model.layers.3.self_attn.q_proj`); mlx-lm's model classes use the
Hugging Face module names, so the same path works on both sides, except where `MODULE_ROOTS` says
otherwise (GPT-2: mlx-lm `model.h.0.attn.c_attn`, transformers `transformer.h.0.attn.c_attn`): the
readers and writers take the model's `model_type` for that.

The math is the same on both sides: y = W x + scale * B A x with
    mlx  lora_a = A.T, lora_b = B.T, scale = lora_alpha / r  (lora_alpha / sqrt(r) with rslora)
and DoRA rescales each output row by m / ||W + scale B A||_row (PEFT's lora_magnitude_vector == m).
mlx-lm's `scale` is the raw multiplier (its default 20.0), not alpha: `AdapterSpec.scale` converts.

Added chat special tokens (a built-in template such as `data.template: llama3` on a tokenizer that
lacks its tokens; DESIGN.md §4): the training grows the base's vocabulary and trains the new rows
of `embed_tokens` (and of an untied `lm_head`). They are saved next to the LoRA tensors:

    dir/added_tokens.safetensors    `embed_tokens` (k, hidden) and, for an untied head, `lm_head`
                                    (k, hidden): the trained rows (absolute values, not deltas) of
                                    token ids `token_ids`; metadata `tunerd_added_tokens` (JSON):
                                    {token_ids, tokens, vocab_size, end_of_turn}
    dir/tokenizer.json, tokenizer_config.json, ...   the tokenizer with those tokens and the chat
                                    template the adapter was trained with (`load_adapter` uses it)

Both backends' `load_adapter` resize the base to `vocab_size`, write the rows in, use this
tokenizer for chat and stop generation at `end_of_turn`. Plain `PeftModel.from_pretrained` and
`mlx_lm.load(adapter_path=dir/mlx)` do not know this file: resize the base and copy the rows
first (or load through tunerd).

Tensors are numpy arrays. numpy has no bfloat16: callers upcast bf16 tensors to float32 first.

Typical use:
    spec = AdapterSpec(kind="lora", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], ...)
    write_adapter(dir, mlx_weights, spec)                 # from mlx-named tensors: writes both layouts
    write_adapter(dir, peft_weights, spec, layout="peft") # from PEFT-named tensors: writes both layouts
    spec, mlx_weights = read_adapter(dir)                 # either layout (dir, dir/mlx, or PEFT-only dir)
    peft_weights = mlx_to_peft(mlx_weights)               # and peft_to_mlx(...)
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..files import atomic_write_file, atomic_write_text

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
MLX_SUBDIR = "mlx"
MLX_CONFIG = "adapter_config.json"
MLX_WEIGHTS = "adapters.safetensors"
PEFT_PREFIX = "base_model.model."
TUNERD_SIDECAR = "tunerd_adapter.json"   # num_layers / keys that PEFT's config cannot hold


# model_type -> (mlx-lm's root module, transformers' root module) where the two differ
MODULE_ROOTS = {"gpt2": ("model.", "transformer.")}
# model types whose transformers layers are Conv1D (weight stored [in, out]): PEFT's fan_in_fan_out
CONV1D_MODEL_TYPES = {"gpt2"}


def _hf_path(path: str, model_type: Optional[str]) -> str:
    mlx_root, hf_root = MODULE_ROOTS.get(model_type or "", ("", ""))
    return hf_root + path[len(mlx_root):] if mlx_root and path.startswith(mlx_root) else path


def _mlx_path(path: str, model_type: Optional[str]) -> str:
    mlx_root, hf_root = MODULE_ROOTS.get(model_type or "", ("", ""))
    return mlx_root + path[len(hf_root):] if hf_root and path.startswith(hf_root) else path


class AdapterLayoutError(ValueError):
    """An adapter directory or tensor name that neither layout recognises."""


@dataclass
class AdapterSpec:
    """What an adapter is, independent of layout."""
    kind: str = "lora"                      # lora | dora
    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    use_rslora: bool = False
    target_modules: list = field(default_factory=list)   # leaf names: ["q_proj", "v_proj"]
    layers: Optional[list] = None           # adapted layer indices (None: all layers)
    num_layers: int = -1                    # mlx-lm: adapt the last N layers (-1: all)
    keys: Optional[list] = None             # mlx-lm per-layer module keys ("self_attn.q_proj")
    base_model: Optional[str] = None
    extra: dict = field(default_factory=dict)  # kept verbatim in our own metadata

    @property
    def scale(self) -> float:
        """mlx-lm's `scale` for this alpha and rank (PEFT's `scaling`)."""
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    @staticmethod
    def alpha_from_scale(scale: float, r: int, use_rslora: bool = False) -> float:
        return scale * (math.sqrt(r) if use_rslora else r)


# ---- tensor names ---------------------------------------------------------------------------

def mlx_to_peft(weights: dict, model_type: Optional[str] = None) -> dict:
    """mlx-lm adapter tensors -> PEFT tensors (transposing A and B) of a `model_type` model."""
    out = {}
    for name, w in weights.items():
        path, _, leaf = name.rpartition(".")
        path = _hf_path(path, model_type)
        w = np.asarray(w)
        if leaf == "lora_a":
            out[f"{PEFT_PREFIX}{path}.lora_A.weight"] = np.ascontiguousarray(w.T)
        elif leaf == "lora_b":
            out[f"{PEFT_PREFIX}{path}.lora_B.weight"] = np.ascontiguousarray(w.T)
        elif leaf == "m":
            out[f"{PEFT_PREFIX}{path}.lora_magnitude_vector"] = w
        else:
            raise AdapterLayoutError(f"{name}: not a LoRA/DoRA tensor (expected .lora_a, .lora_b or .m)")
    return out


def peft_to_mlx(weights: dict, model_type: Optional[str] = None) -> dict:
    """PEFT adapter tensors -> mlx-lm tensors of a `model_type` model. Accepts keys with or without
    an adapter name (`lora_A.default.weight`) and without the `base_model.model.` prefix."""
    out = {}
    for name, w in weights.items():
        w = np.asarray(w)
        key = name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name
        parts = key.split(".")
        for leaf, mlx_leaf in (("lora_A", "lora_a"), ("lora_B", "lora_b"), ("lora_magnitude_vector", "m")):
            if leaf in parts:
                i = parts.index(leaf)
                path = _mlx_path(".".join(parts[:i]), model_type)
                out[f"{path}.{mlx_leaf}"] = w if mlx_leaf == "m" else np.ascontiguousarray(w.T)
                break
        else:
            raise AdapterLayoutError(f"{name}: not a PEFT LoRA/DoRA tensor (lora_A, lora_B, "
                                     f"lora_magnitude_vector); embeddings and modules_to_save are not supported")
    return out


def layer_index(path: str) -> Optional[int]:
    """`model.layers.3.self_attn.q_proj` -> 3."""
    parts = path.split(".")
    for i, p in enumerate(parts[:-1]):
        if p in ("layers", "h", "blocks") and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def spec_from_tensors(mlx_weights: dict, base: AdapterSpec) -> AdapterSpec:
    """Fill target_modules / layers / keys / kind from the tensors actually present."""
    paths = sorted({n.rpartition(".")[0] for n in mlx_weights})
    spec = AdapterSpec(**{**base.__dict__})
    spec.target_modules = sorted({p.rpartition(".")[2] for p in paths})
    layers = sorted({i for i in (layer_index(p) for p in paths) if i is not None})
    spec.layers = layers or None
    keys = set()
    for p in paths:
        parts = p.split(".")
        for i, q in enumerate(parts[:-1]):
            if q in ("layers", "h", "blocks") and parts[i + 1].isdigit():
                keys.add(".".join(parts[i + 2:]))
                break
    spec.keys = sorted(keys) or None
    if any(n.endswith(".m") for n in mlx_weights):
        spec.kind = "dora"
    return spec


# ---- configs --------------------------------------------------------------------------------

def peft_config(spec: AdapterSpec, model_type: Optional[str] = None) -> dict:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": spec.base_model,
        "r": spec.r,
        "lora_alpha": spec.lora_alpha,
        "lora_dropout": spec.lora_dropout,
        "target_modules": sorted(spec.target_modules),
        "layers_to_transform": spec.layers,
        "layers_pattern": None,
        "bias": "none",
        "use_rslora": spec.use_rslora,
        "use_dora": spec.kind == "dora",
        "fan_in_fan_out": model_type in CONV1D_MODEL_TYPES,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }


def tunerd_metadata(spec: AdapterSpec) -> dict:
    """What PEFT's config has no key for; kept in a sidecar (PEFT warns on unknown keys)."""
    return {"num_layers": spec.num_layers, "keys": spec.keys, **spec.extra}


def last_layers(spec: AdapterSpec, n_model_layers: Optional[int] = None) -> int:
    """mlx-lm's `num_layers` (adapt the last N) of an adapter: N covers its lowest adapted layer
    when it names its layers, else its own num_layers (-1: all)."""
    if spec.layers and n_model_layers:
        return n_model_layers - min(spec.layers)
    return spec.num_layers


def misfits(weights: dict, params: dict) -> list:
    """Names in `weights` that are not in `params` or have another shape (an adapter that does
    not fit a model): the check before loading tensors into it."""
    return [k for k, v in weights.items() if k not in params or tuple(params[k].shape) != tuple(v.shape)]


def mlx_config(spec: AdapterSpec, n_model_layers: Optional[int] = None) -> dict:
    num_layers = last_layers(spec, n_model_layers)
    return {
        "fine_tune_type": spec.kind,
        "num_layers": num_layers if num_layers > 0 else (n_model_layers or -1),
        "lora_parameters": {"rank": spec.r, "scale": spec.scale, "dropout": spec.lora_dropout,
                            "keys": spec.keys},
        "lora_alpha": spec.lora_alpha,   # ours: mlx-lm ignores it; kept so alpha survives a round trip
        "use_rslora": spec.use_rslora,
        "model": spec.base_model,
    }


def spec_from_peft_config(cfg: dict) -> AdapterSpec:
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterLayoutError(f"peft_type {cfg.get('peft_type')!r}: only LORA (incl. DoRA) adapters are supported")
    ours = cfg.get("tunerd") or {}   # the sidecar's content (read_adapter), or older configs
    tm = cfg.get("target_modules") or []
    return AdapterSpec(kind="dora" if cfg.get("use_dora") else "lora", r=int(cfg["r"]),
                       lora_alpha=float(cfg.get("lora_alpha", cfg["r"])),
                       lora_dropout=float(cfg.get("lora_dropout") or 0.0),
                       use_rslora=bool(cfg.get("use_rslora")),
                       target_modules=[tm] if isinstance(tm, str) else list(tm),
                       layers=cfg.get("layers_to_transform"), num_layers=int(ours.get("num_layers", -1)),
                       keys=ours.get("keys"), base_model=cfg.get("base_model_name_or_path"))


def spec_from_mlx_config(cfg: dict) -> AdapterSpec:
    lp = cfg.get("lora_parameters", {})
    r = int(lp.get("rank", 8))
    rs = bool(cfg.get("use_rslora", False))
    alpha = cfg.get("lora_alpha")
    if alpha is None:
        alpha = AdapterSpec.alpha_from_scale(float(lp.get("scale", 20.0)), r, rs)
    kind = cfg.get("fine_tune_type", "lora")
    if kind not in ("lora", "dora"):
        raise AdapterLayoutError(f"fine_tune_type {kind!r}: only lora and dora adapters convert to PEFT")
    keys = lp.get("keys")
    return AdapterSpec(kind=kind, r=r, lora_alpha=float(alpha), lora_dropout=float(lp.get("dropout", 0.0)),
                       use_rslora=rs, num_layers=int(cfg.get("num_layers", -1)), keys=keys,
                       target_modules=sorted({k.rpartition(".")[2] for k in keys or []}),
                       base_model=cfg.get("model"))


# ---- files ----------------------------------------------------------------------------------

def _write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def write_tensors(path: Path, tensors: dict, metadata: dict) -> None:
    from safetensors.numpy import save_file

    atomic_write_file(path, lambda tmp: save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp,
                                                  metadata=metadata))


def write_adapter(directory, weights: dict, spec: AdapterSpec, layout: str = "mlx",
                  n_model_layers: Optional[int] = None, model_type: Optional[str] = None) -> Path:
    """Write both layouts into `directory` (PEFT at the top, mlx-lm in `directory/mlx/`).

    `weights` are named in `layout` ("mlx" or "peft"). `n_model_layers` lets the mlx-lm config
    state `num_layers` exactly when only some layers are adapted; `model_type` (the base's
    config.json) names the modules each side's way (MODULE_ROOTS).
    """
    directory = Path(directory)
    mlx_w = weights if layout == "mlx" else peft_to_mlx(weights, model_type)
    spec = spec_from_tensors(mlx_w, spec)
    (directory / MLX_SUBDIR).mkdir(parents=True, exist_ok=True)
    write_tensors(directory / PEFT_WEIGHTS, mlx_to_peft(mlx_w, model_type), {"format": "pt"})
    _write_json(directory / PEFT_CONFIG, peft_config(spec, model_type))
    _write_json(directory / TUNERD_SIDECAR, tunerd_metadata(spec))
    write_tensors(directory / MLX_SUBDIR / MLX_WEIGHTS, mlx_w, {"format": "mlx"})
    _write_json(directory / MLX_SUBDIR / MLX_CONFIG, mlx_config(spec, n_model_layers))
    return directory


def find_layout(directory) -> tuple[str, Path]:
    """('mlx' | 'peft', the folder holding that layout's files). Prefers mlx-lm's when both."""
    d = Path(directory)
    if (d / MLX_SUBDIR / MLX_WEIGHTS).exists():
        return "mlx", d / MLX_SUBDIR
    if (d / MLX_WEIGHTS).exists():
        return "mlx", d
    if (d / PEFT_WEIGHTS).exists():
        return "peft", d
    if not d.exists():
        raise FileNotFoundError(f"adapter path not found: {d}")
    raise AdapterLayoutError(f"{d}: no adapter found (expected {PEFT_WEIGHTS}, {MLX_WEIGHTS} "
                             f"or {MLX_SUBDIR}/{MLX_WEIGHTS})")


def read_adapter(directory, prefer: str = "mlx", model_type: Optional[str] = None) -> tuple[AdapterSpec, dict]:
    """Read an adapter in either layout; returns (spec, tensors in mlx-lm naming for a
    `model_type` model)."""
    from safetensors.numpy import load_file

    d = Path(directory)
    layout, where = find_layout(d)
    if prefer == "peft" and (d / PEFT_WEIGHTS).exists():
        layout, where = "peft", d
    with open(where / (MLX_CONFIG if layout == "mlx" else PEFT_CONFIG)) as f:
        cfg = json.load(f)
    if layout == "mlx":
        spec = spec_from_mlx_config(cfg)
        weights = load_file(str(where / MLX_WEIGHTS))
    else:
        if (where / TUNERD_SIDECAR).exists():
            cfg["tunerd"] = json.loads((where / TUNERD_SIDECAR).read_text())
        spec = spec_from_peft_config(cfg)
        weights = peft_to_mlx(load_file(str(where / PEFT_WEIGHTS)), model_type)
    filled = spec_from_tensors(weights, spec)
    filled.keys = spec.keys or filled.keys
    return filled, weights
