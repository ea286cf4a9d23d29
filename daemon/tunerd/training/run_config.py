"""What a run trains with, decided before the first step (the Trainer's set-up uses these):

    resolve_config(cfg, base_dir)    debug mode applied, output_dir absolute, validated (once: not a job's again)
    resolve_packing(requested, info) packing on or off, and why
    config_identity(cfg)             the keys a resume must not change, and their hash
    best_metric_rule(cfg)            the eval metric that picks the best checkpoint, and its direction
    remote_code_warning(model)       what trust_remote_code: true lets run, said in Started
    add_tokens(backend, report)      the chat special tokens the data added, grown into the model
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Optional

from ..config.debug import apply_debug
from ..config.loader import ConfigError
from ..config.rules import validate
from ..config.schema import TrainConfig

# Keys that may change between a run and its resume without changing the math.
RESUME_FREE_KEYS = {"output_dir", "resume_from_checkpoint", "logging_steps", "eval_strategy", "eval_steps",
                    "save_strategy", "save_steps", "save_total_limit", "load_best_model_at_end",
                    "early_stopping_patience", "early_stopping_threshold", "max_steps", "num_epochs",
                    "per_device_eval_batch_size", "device", "backend", "eval_generate_rows",
                    "eval_generate_max_tokens", "eval_metric_tokenizer"}


def resolve_config(cfg: TrainConfig, base_dir: Optional[Path] = None, validated: bool = False) -> TrainConfig:
    """Apply debug mode (config/debug.py) and make output_dir absolute (relative paths resolve
    against base_dir); validate a config built in code (`validated`: a submitted job's, which the
    loader checked at submit)."""
    if not cfg.output_dir:
        raise ValueError("output_dir: not set; the caller must choose one (e.g. $TUNER_HOME/runs/<job>)")
    out = Path(cfg.output_dir).expanduser()
    if not out.is_absolute():
        out = Path(base_dir or ".").resolve() / out
    cfg = apply_debug(dataclasses.replace(cfg, output_dir=str(out)))
    problems = [] if validated else validate(cfg)  # the loader's validator
    if problems:
        raise ConfigError(problems)
    return cfg


# packing: auto -- on where packed batches were measured faster than length-grouped padded ones
# (GPUs: 2.3x TRL's tokens/s on a 1B model, DESIGN.md §2), off on a CPU, where the longer packed
# rows make attention cost more than the padding they save (bench/bench_torch.py, bench_scale.py).
def resolve_packing(requested, info) -> tuple[bool, str]:
    if requested is True or requested is False:
        return requested, "set in the config"
    if not info.packing_supported:
        return False, f"model type {info.config.get('model_type')!r} cannot be packed exactly on {info.backend}"
    if info.device_kind == "cpu":
        return False, "off on a CPU, where packed batches were measured slower than length-grouped ones"
    return True, f"on for {info.device_kind}, where packed batches were measured faster (same loss)"


def config_identity(cfg: TrainConfig) -> tuple[dict, str]:
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUME_FREE_KEYS}
    d.pop("distributed", None)   # of the launch only the world size changes the math (the global batch)
    if cfg.distributed is not None and cfg.distributed.world_size > 1:
        d["world_size"] = cfg.distributed.world_size
    text = json.dumps(d, sort_keys=True, default=str)
    return json.loads(text), hashlib.sha256(text.encode()).hexdigest()[:16]


def best_metric_rule(cfg: TrainConfig) -> tuple[str, bool]:
    """(the eval metric that picks the best checkpoint and drives early stopping, greater is better)."""
    name = cfg.metric_for_best_model or "eval_loss"
    if not name.startswith("eval_"):
        name = "eval_" + name
    greater = cfg.greater_is_better
    if greater is None:
        greater = not (name.endswith("loss") or name.endswith("perplexity"))
    return name, greater


def remote_code_warning(model: str) -> str:
    return (f"trust_remote_code: true: the Python code that comes with {model} (its own modeling "
            "files, if it has any) runs inside tunerd with your user's rights; use it only for a model whose "
            "code you have read or trust")


def add_tokens(backend, report: dict) -> None:
    """The backend grows its embeddings (and head) by the chat special tokens the data added."""
    if not backend.supports_added_tokens:
        raise ValueError(f"data.template: the chat template needs {report['added_tokens']} new special "
                         f"tokens ({report.get('added_token_list')}), and the {backend.name} backend "
                         f"cannot add tokens yet; use a model whose tokenizer has them or data.template: auto")
    tok = backend.tokenizer
    backend.resize_token_embeddings(
        len(tok), token_ids=[int(i) for i in tok.convert_tokens_to_ids(report["added_token_list"])],
        end_of_turn=report.get("end_of_turn_token"), chat_template=report.get("chat_template"))
