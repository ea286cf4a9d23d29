"""Resolve a training config: YAML (with `_base_` inheritance) + typed fields + `key=value`
overrides -> a validated `TrainConfig`.

Unknown keys are errors that name the closest valid key; every problem is reported at once
(`ConfigError.problems`), like torchtune's `tune validate`.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from .schema import DataConfig, TrainConfig


class ConfigError(ValueError):
    def __init__(self, problems: list[str], source: str = ""):
        self.problems = problems
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(problems))


def merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`, recursively for nested mappings (the data block)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: Union[str, Path], _seen: Optional[set] = None) -> dict:
    """Read a YAML config, following `_base_` (a path or a list, relative to the file)."""
    path = Path(path).expanduser().resolve()
    _seen = set() if _seen is None else _seen
    if path in _seen:
        raise ConfigError([f"_base_ cycle through {path}"])
    _seen.add(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError([f"invalid YAML ({getattr(e, 'problem', e)})"], f"{path}{line}") from None
    if not isinstance(doc, dict):
        raise ConfigError(["top level must be a mapping of keys to values"], str(path))
    bases = doc.pop("_base_", None)
    merged: dict = {}
    for b in ([bases] if isinstance(bases, str) else bases or []):
        merged = merge(merged, read_yaml(path.parent / b, _seen))
    return merge(merged, doc)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`lora_r=8`, `data.train=a.jsonl`, `lora_target_modules=[q_proj,v_proj]` -> (keys, value)."""
    if "=" not in text:
        raise ConfigError([f"override {text!r} is not key=value"])
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    return key.strip().split("."), value


def apply_overrides(doc: dict, overrides: list[str]) -> dict:
    doc = dict(doc)
    for text in overrides:
        keys, value = parse_override(text)
        node = doc
        for k in keys[:-1]:
            node[k] = dict(node.get(k) or {})
            node = node[k]
        node[keys[-1]] = value
    return doc


def _coerce(name: str, value: Any, hint: Any, problems: list[str]) -> Any:
    if value is None:
        return None
    origin = get_origin(hint)
    if origin is Union:
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return _coerce(name, value, args[0], problems)
        return value  # e.g. list | str
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        problems.append(f"{name}: expected true/false, got {value!r}")
        return value
    if hint in (int, float):
        if isinstance(value, bool):
            problems.append(f"{name}: expected a number, got {value!r}")
            return value
        try:
            out = hint(value) if hint is float else int(float(value)) if float(value).is_integer() else None
        except (TypeError, ValueError):
            out = None
        if out is None:
            problems.append(f"{name}: expected {'an integer' if hint is int else 'a number'}, got {value!r}")
            return value
        return out
    if hint is str and not isinstance(value, str):
        return str(value)
    return value


def _build(cls, doc: dict, prefix: str, problems: list[str]):
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in doc.items():
        full = prefix + key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            hint = f"; did you mean {prefix + close[0]}?" if close else ""
            problems.append(f"{full}: unknown key{hint}")
            continue
        if key == "data":
            if isinstance(value, (str, list)):
                value = {"train": value}
            if not isinstance(value, dict):
                problems.append("data: expected a mapping (train, validation, format, ...)")
                continue
            kwargs[key] = _build(DataConfig, value, "data.", problems)
            continue
        kwargs[key] = _coerce(full, value, hints[key], problems)
    return cls(**kwargs)


_CHOICES = {
    "backend": ("auto", "mlx", "torch"),
    "device": ("auto", "cuda", "mps", "cpu"),
    "dtype": ("auto", "float32", "float16", "bfloat16"),
    "quantization": ("none", "4bit", "nf4", "int4", "8bit", "int8"),
    "peft_adapter": ("lora", "dora", "full"),
    "lora_bias": ("none", "all", "lora_only"),
    "lr_scheduler_type": ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                          "constant_with_warmup", "inverse_sqrt", "cosine_with_min_lr",
                          "warmup_stable_decay", "reduce_lr_on_plateau"),
    "eval_strategy": ("no", "steps", "epoch"),
    "save_strategy": ("no", "steps", "epoch"),
    "bnb_4bit_quant_type": ("nf4", "fp4"),
}
_DATA_CHOICES = {"format": ("auto", "text", "prompt_response", "alpaca", "messages"),
                 "template": ("auto", "chatml", "qwen", "llama3", "alpaca"),
                 "overlong": ("truncate", "drop", "error")}


def validate(cfg: TrainConfig) -> list[str]:
    """Every problem with a config, as messages naming the key, the value and what is allowed."""
    p: list[str] = []
    for key, allowed in _CHOICES.items():
        if getattr(cfg, key) not in allowed:
            p.append(f"{key}: {getattr(cfg, key)!r} is not one of {', '.join(allowed)}")
    for key, allowed in _DATA_CHOICES.items():
        if getattr(cfg.data, key) not in allowed:
            p.append(f"data.{key}: {getattr(cfg.data, key)!r} is not one of {', '.join(allowed)}")

    def positive(key, value, allow_zero=False):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value) \
                or (value < 0 if allow_zero else value <= 0):
            p.append(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")

    if not cfg.model:
        p.append("model: required (a hub id such as Qwen/Qwen2.5-0.5B-Instruct, or a local path)")
    for key in ("lora_r", "per_device_train_batch_size", "per_device_eval_batch_size",
                "gradient_accumulation_steps", "learning_rate", "max_seq_length", "logging_steps",
                "eval_steps", "save_steps", "group_size"):
        positive(key, getattr(cfg, key))
    for key in ("lora_alpha", "weight_decay", "max_grad_norm", "warmup_steps", "warmup_ratio"):
        positive(key, getattr(cfg, key), allow_zero=True)
    if isinstance(cfg.learning_rate, float) and cfg.learning_rate > 1.0:
        p.append(f"learning_rate: {cfg.learning_rate} is far too large (typical: 1e-5 .. 5e-4)")
    if isinstance(cfg.lora_dropout, (int, float)) and not 0 <= cfg.lora_dropout < 1:
        p.append(f"lora_dropout: must be in [0, 1), got {cfg.lora_dropout}")
    if isinstance(cfg.warmup_ratio, (int, float)) and cfg.warmup_ratio >= 1:
        p.append(f"warmup_ratio: must be < 1, got {cfg.warmup_ratio}")
    if isinstance(cfg.max_steps, int) and cfg.max_steps <= 0 and not (
            isinstance(cfg.num_epochs, (int, float)) and cfg.num_epochs > 0):
        p.append("num_epochs / max_steps: set num_epochs > 0 or max_steps > 0")
    if cfg.bits not in (2, 3, 4, 5, 6, 8):
        p.append(f"bits: {cfg.bits} is not one of 2, 3, 4, 5, 6, 8")
    if not (isinstance(cfg.lora_target_modules, list) and cfg.lora_target_modules
            or cfg.lora_target_modules == "all-linear"):
        p.append(f"lora_target_modules: a non-empty list of module names or 'all-linear', "
                 f"got {cfg.lora_target_modules!r}")
    if isinstance(cfg.packing, str) and cfg.packing.lower() in ("true", "false", "auto"):
        cfg.packing = {"true": True, "false": False}.get(cfg.packing.lower(), "auto")
    if cfg.packing not in (True, False, "auto"):
        p.append(f"packing: {cfg.packing!r} is not one of true, false, auto")
    if cfg.save_total_limit is not None and cfg.save_total_limit < 1:
        p.append(f"save_total_limit: must be >= 1, got {cfg.save_total_limit}")
    d = cfg.data
    if d.train is None:
        p.append("data.train: required (a file, a list of files, a directory or a hub dataset id)")
    if d.text_column and d.prompt_column:
        p.append("data.text_column and data.prompt_column: declare one or the other, not both")
    if isinstance(d.fraction, (int, float)) and not 0 < d.fraction <= 1:
        p.append(f"data.fraction: must be in (0, 1], got {d.fraction}")
    if isinstance(d.test_size, (int, float)) and not 0 <= d.test_size < 1:
        p.append(f"data.test_size: must be in [0, 1), got {d.test_size}")
    return p


def from_dict(doc: dict, source: str = "") -> TrainConfig:
    problems: list[str] = []
    cfg = _build(TrainConfig, doc, "", problems)
    if not problems:
        problems = validate(cfg)
    if problems:
        raise ConfigError(problems, source)
    if cfg.debug:
        cfg.num_epochs, cfg.max_steps = 1.0, -1
        cfg.per_device_train_batch_size = cfg.per_device_eval_batch_size = 2
        cfg.data.max_rows = 50
    return cfg


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def load_config(path: Optional[Union[str, Path]] = None, overrides: Optional[list[str]] = None,
                doc: Optional[dict] = None) -> TrainConfig:
    """The one way to resolve a config: file (with _base_), then a dict layer, then overrides."""
    merged = read_yaml(path) if path else {}
    if doc:
        merged = merge(merged, doc)
    if isinstance(merged.get("data"), (str, list)):
        merged["data"] = {"train": merged["data"]}
    merged = apply_overrides(merged, overrides or [])
    return from_dict(merged, str(path or ""))
