"""Resolve a training config: YAML (with `_base_` inheritance) + typed fields + `key=value`
overrides -> a validated `TrainConfig`.

Unknown keys are errors that name the closest valid key; every problem is reported at once
(`ConfigError.problems`), like torchtune's `tune validate`.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from .. import quantization
from .debug import apply_debug
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
    if path.is_dir():
        raise ConfigError(["is a directory; give the YAML file inside it (e.g. config.yaml)"], str(path))
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError([f"not a UTF-8 text file ({e.reason} at byte {e.start})"], str(path)) from None
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
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError([f"override {text!r}: the value is not valid YAML "
                           f"({getattr(e, 'problem', None) or e}); quote it, e.g. {key}='\"...\"'"]) from None
    keys = key.strip().split(".")
    if not all(keys):
        raise ConfigError([f"override {text!r}: empty key"])
    return keys, value


def apply_overrides(doc: dict, overrides: list[str], problems: Optional[list[str]] = None) -> dict:
    """Overrides on top of `doc`. With a `problems` list, bad overrides are added to it (and
    skipped) instead of raising, so every problem is reported at once."""
    doc = dict(doc)
    found: list[str] = []
    for text in overrides:
        try:
            keys, value = parse_override(text)
        except ConfigError as e:
            found += e.problems
            continue
        node = doc
        for i, k in enumerate(keys[:-1]):
            if node.get(k) is not None and not isinstance(node.get(k), dict):
                found.append(f"override {text!r}: {'.'.join(keys[:i + 1])} is a value "
                             f"({node[k]!r}), not a section with keys")
                break
            node[k] = dict(node.get(k) or {})
            node = node[k]
        else:
            node[keys[-1]] = value
    if found and problems is None:
        raise ConfigError(found)
    if problems is not None:
        problems += found
    return doc


def _coerce(name: str, value: Any, hint: Any, problems: list[str]) -> Any:
    if value is None:
        return None
    origin = get_origin(hint)
    if origin is Union:
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return _coerce(name, value, args[0], problems)
        if bool in args and isinstance(value, str) and value.lower() in ("true", "false", "auto"):
            return {"true": True, "false": False}.get(value.lower(), "auto")   # bool | "auto" (packing)
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
        if hints[key] is not dict and isinstance(value, dict):
            problems.append(f"{full}: expected a single value, not a mapping (got {value!r})")
            continue
        before = len(problems)
        coerced = _coerce(full, value, hints[key], problems)
        if len(problems) == before:  # a value that failed keeps the default, so the rules below
            kwargs[key] = coerced     # check the rest without tripping over it
    return cls(**kwargs)


_CHOICES = {
    "backend": ("auto", "mlx", "torch"),
    "device": ("auto", "cuda", "mps", "cpu"),
    "dtype": ("auto", "float32", "float16", "bfloat16"),
    "quantization": quantization.NAMES,
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


EVAL_METRICS = ("eval_loss", "eval_perplexity", "eval_tokens")  # what the training loop's evaluation reports
# ... and, with eval_generate_rows > 0, these generation metrics (tunerd.evaluation.metrics)
GENERATION_METRICS = ("eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_rougeLsum", "eval_bleu", "eval_exact_match")


def validate(cfg: TrainConfig, base_dir: Optional[Union[str, Path]] = None, check_paths: bool = False) -> list[str]:
    """Every problem with a config, as messages naming the key, the value and what is allowed.
    The one validator: submit runs it with `check_paths` (output_dir writable, max_seq_length
    within a local model's context); the training loop runs it again before it starts."""
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
    p += _run_rules(cfg)
    if check_paths:
        p += _path_rules(cfg, Path(base_dir or "."))
    return p


def _run_rules(cfg: TrainConfig) -> list[str]:
    """Length, cadence, best-model, early-stopping and scheduler rules."""
    from ..training.schedulers import kwargs_problems

    p: list[str] = []
    if isinstance(cfg.max_steps, int) and cfg.max_steps != -1 and cfg.max_steps <= 0:
        p.append(f"max_steps: must be > 0, or -1 to train for num_epochs; got {cfg.max_steps}")
    if isinstance(cfg.num_epochs, float) and not math.isfinite(cfg.num_epochs):
        p.append(f"num_epochs: must be a finite number, got {cfg.num_epochs}")
    for key, value in (("seed", cfg.seed), ("data.seed", cfg.data.seed)):
        if isinstance(value, int) and not 0 <= value < 2 ** 32:
            p.append(f"{key}: must be in [0, 2**32), got {value}")
    if cfg.load_best_model_at_end:
        if cfg.eval_strategy == "no" or cfg.save_strategy == "no":
            p.append("load_best_model_at_end: needs eval_strategy and save_strategy other than 'no'")
        elif cfg.eval_strategy != cfg.save_strategy:
            p.append(f"load_best_model_at_end: eval_strategy ({cfg.eval_strategy}) and save_strategy "
                     f"({cfg.save_strategy}) must match")
        elif cfg.save_strategy == "steps" and isinstance(cfg.save_steps, int) and isinstance(cfg.eval_steps, int) \
                and cfg.eval_steps > 0 and cfg.save_steps % cfg.eval_steps:
            p.append(f"load_best_model_at_end: save_steps ({cfg.save_steps}) must be a multiple of "
                     f"eval_steps ({cfg.eval_steps})")
    if cfg.early_stopping_patience is not None:
        if cfg.eval_strategy == "no":
            p.append("early_stopping_patience: needs eval_strategy steps or epoch")
        if not isinstance(cfg.early_stopping_patience, int) or cfg.early_stopping_patience < 1:
            p.append(f"early_stopping_patience: must be >= 1, got {cfg.early_stopping_patience!r}")
    metric = cfg.metric_for_best_model or "eval_loss"
    metric = metric if metric.startswith("eval_") else "eval_" + metric
    if metric in GENERATION_METRICS and not (isinstance(cfg.eval_generate_rows, int) and cfg.eval_generate_rows > 0):
        p.append(f"metric_for_best_model: {cfg.metric_for_best_model!r} needs generation at eval; "
                 f"set eval_generate_rows to the number of validation rows to generate for (e.g. 32)")
    elif metric not in EVAL_METRICS + GENERATION_METRICS:
        p.append(f"metric_for_best_model: {cfg.metric_for_best_model!r} is not an eval metric; "
                 f"choose one of {', '.join(EVAL_METRICS + GENERATION_METRICS)}")
    if isinstance(cfg.eval_generate_rows, int) and cfg.eval_generate_rows < 0:
        p.append(f"eval_generate_rows: must be >= 0 (0: off), got {cfg.eval_generate_rows}")
    if cfg.eval_metric_tokenizer not in ("whitespace", "char", "morpheme"):
        p.append(f"eval_metric_tokenizer: {cfg.eval_metric_tokenizer!r} is not one of whitespace, char, morpheme")
    p += kwargs_problems(cfg.lr_scheduler_type, cfg.lr_scheduler_kwargs, cfg.learning_rate)
    return p


def _path_rules(cfg: TrainConfig, base: Path) -> list[str]:
    """output_dir can be created and written; max_seq_length fits a local model's context."""
    p: list[str] = []
    if cfg.output_dir:
        out = Path(cfg.output_dir).expanduser()
        out = out if out.is_absolute() else base / out
        probe = out
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            p.append(f"output_dir: {out} cannot be created: {probe} is not a directory")
        elif not os.access(probe, os.W_OK | os.X_OK):
            p.append(f"output_dir: {out} is not writable ({probe} does not let you write)")
    ctx = model_context(cfg.model, base)
    if ctx and isinstance(cfg.max_seq_length, int) and cfg.max_seq_length > ctx[0]:
        p.append(f"max_seq_length: {cfg.max_seq_length} is beyond the model's context of {ctx[0]} positions "
                 f"({ctx[1]}); use max_seq_length <= {ctx[0]}")
    return p


def model_context(model: str, base: Path = Path(".")) -> Optional[tuple[int, str]]:
    """(positions, where it was read) for a local model directory with a config.json, else None."""
    import json
    if not model:
        return None
    path = Path(model).expanduser()
    cfg_file = (path if path.is_absolute() else base / path) / "config.json"
    try:
        doc = json.loads(cfg_file.read_text())
    except (OSError, ValueError):
        return None
    for d in (doc, doc.get("text_config") or {}):
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            if isinstance(d.get(key), int) and d[key] > 0:
                return d[key], f"{key} in {cfg_file}"
    return None


def from_dict(doc: dict, source: str = "", base_dir: Optional[Union[str, Path]] = None,
              check_paths: bool = False, problems: Optional[list[str]] = None) -> TrainConfig:
    """A validated TrainConfig, or a ConfigError with every problem (those in `problems`, e.g.
    from overrides, included)."""
    problems = list(problems or [])
    cfg = expand_home(_build(TrainConfig, doc, "", problems))
    problems += validate(cfg, base_dir, check_paths)
    if problems:
        raise ConfigError(problems, source)
    return apply_debug(cfg)


_PATH_KEYS = ("model", "output_dir", "resume_from_checkpoint")
_DATA_PATH_KEYS = ("train", "validation", "test")


def expand_home(cfg: TrainConfig) -> TrainConfig:
    """`~` and `~user` at the start of a config's paths (model, output_dir,
    resume_from_checkpoint, data sources) become the home directory, as a shell would expand
    them; relative paths stay relative (to the submitter's directory). Hub ids never start
    with `~`, so they are left alone."""
    def expand(value):
        if isinstance(value, str):
            return os.path.expanduser(value) if value.startswith("~") else value
        if isinstance(value, list):
            return [expand(v) for v in value]
        if isinstance(value, dict) and "path" in value:
            return {**value, "path": expand(value["path"])}
        return value

    for key in _PATH_KEYS:
        setattr(cfg, key, expand(getattr(cfg, key)))
    for key in _DATA_PATH_KEYS:
        setattr(cfg.data, key, expand(getattr(cfg.data, key)))
    return cfg


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def load_config(path: Optional[Union[str, Path]] = None, overrides: Optional[list[str]] = None,
                doc: Optional[dict] = None, base_dir: Optional[Union[str, Path]] = None,
                check_paths: bool = False) -> TrainConfig:
    """The one way to resolve a config: file (with _base_), then a dict layer, then overrides.
    Problems that an override caused name it ("(from --set lora_r=0)")."""
    merged = read_yaml(path) if path else {}
    if doc:
        merged = merge(merged, doc)
    if isinstance(merged.get("data"), (str, list)):
        merged["data"] = {"train": merged["data"]}
    problems: list[str] = []
    merged = apply_overrides(merged, overrides or [], problems)
    try:
        return from_dict(merged, str(path or ""), base_dir, check_paths, problems)
    except ConfigError as e:
        raise ConfigError([_blame(msg, overrides or []) for msg in e.problems], str(path or "")) from None


def _blame(problem: str, overrides: list[str]) -> str:
    """Name the override (the last one, as that one won) that set the key a problem is about."""
    if problem.startswith("override "):
        return problem
    field = problem.split(":", 1)[0].split(" ", 1)[0]
    for text in reversed(overrides):
        key = text.split("=", 1)[0].strip()
        if key == field or key.startswith(field + ".") or field.startswith(key + "."):
            return f"{problem} (from --set {text})"
    return problem
