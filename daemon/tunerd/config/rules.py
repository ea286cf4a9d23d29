"""Every rule a training config must satisfy, checked at once (`validate` lists every problem).

    validate(cfg, base_dir, check_paths)   the one validator: the loader runs it on every config it
                                           builds (with the paths at submit), the training loop on
                                           a config built in code
    _CHOICES, _DATA_CHOICES                the allowed values of the keys that take a name
    EVAL_METRICS, GENERATION_METRICS       what metric_for_best_model may name
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Union

from .. import gguf_file, quantization
from ..model_config import context_positions
from .schema import TrainConfig


TASKS = ("sft", "dpo", "orpo")   # each is a module of tunerd/tasks (its registry checks this list)
PREFERENCE_TASKS = ("dpo", "orpo")   # rows {prompt, chosen, rejected}

_CHOICES = {
    "task": TASKS,
    "loss_type": ("sigmoid", "ipo", "hinge"),
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
_DATA_CHOICES = {"format": ("auto", "text", "prompt_response", "alpaca", "messages", "preference"),
                 "template": ("auto", "chatml", "qwen", "llama3", "alpaca"),
                 "overlong": ("truncate", "drop", "error")}


EVAL_METRICS = ("eval_loss", "eval_perplexity", "eval_tokens")  # what the training loop's evaluation reports
# ... and, with eval_generate_rows > 0, these generation metrics (tunerd.evaluation.metrics)
# ... and, for task dpo / orpo, the reward metrics TRL logs (tunerd/tasks/preference.py)
PREFERENCE_METRICS = ("eval_rewards/chosen", "eval_rewards/rejected", "eval_rewards/accuracies",
                      "eval_rewards/margins")
GENERATION_METRICS = ("eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_rougeLsum", "eval_bleu", "eval_exact_match")


def validate(cfg: TrainConfig, base_dir: Optional[Union[str, Path]] = None, check_paths: bool = False) -> list[str]:
    """Every problem with a config, as messages naming the key, the value and what is allowed.
    The one validator: submit runs it with `check_paths` (output_dir writable, max_seq_length
    within a local model's context), once; the training loop runs it on a config built in code
    (a job's config is not checked again: loader.from_record, jobs/runner.py)."""
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
        p.append("model: required (a hub id such as Qwen/Qwen2.5-0.5B-Instruct, a local path, a .gguf file "
                 "or ollama:NAME[:TAG])")
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
    if d.retain is not None and not (isinstance(d.retain, (str, list, dict)) and d.retain):
        p.append(f"data.retain: a file, a list of files, a directory, a hub dataset id or 'general' "
                 f"(the built-in set), got {d.retain!r}")
    if isinstance(d.fraction, (int, float)) and not 0 < d.fraction <= 1:
        p.append(f"data.fraction: must be in (0, 1], got {d.fraction}")
    if isinstance(d.test_size, (int, float)) and not 0 <= d.test_size < 1:
        p.append(f"data.test_size: must be in [0, 1), got {d.test_size}")
    p += _task_rules(cfg)
    p += _run_rules(cfg)
    p += _distributed_rules(cfg)
    if check_paths:
        p += _path_rules(cfg, Path(base_dir or "."))
    return p


def _task_rules(cfg: TrainConfig) -> list[str]:
    """The task's own keys: beta, loss_type, label_smoothing, and what a preference task needs."""
    p: list[str] = []
    if not isinstance(cfg.beta, (int, float)) or isinstance(cfg.beta, bool) or not cfg.beta > 0:
        p.append(f"beta: must be > 0, got {cfg.beta!r}")
    if not isinstance(cfg.label_smoothing, (int, float)) or not 0 <= cfg.label_smoothing < 0.5:
        p.append(f"label_smoothing: must be in [0, 0.5), got {cfg.label_smoothing!r}")
    elif cfg.label_smoothing and (cfg.task != "dpo" or cfg.loss_type != "sigmoid"):
        p.append("label_smoothing: only task dpo with loss_type sigmoid smooths labels (cDPO)")
    if cfg.task == "dpo" and cfg.full_finetune:
        p.append("task dpo: peft_adapter full has no reference model (the reference is the base with the "
                 "adapter off); use lora or dora, or task orpo, which needs no reference")
    if cfg.task in PREFERENCE_TASKS:
        if cfg.packing is True:
            p.append(f"packing: task {cfg.task} batches each pair as two rows and does not pack; "
                     f"set packing: false (or auto)")
        if cfg.data.format not in ("auto", "preference"):
            p.append(f"data.format: task {cfg.task} reads preference rows ({{prompt, chosen, rejected}}); "
                     f"got {cfg.data.format!r}")
    elif cfg.data.format == "preference" or cfg.data.chosen_column or cfg.data.rejected_column:
        p.append(f"task: preference data (chosen / rejected answers) trains with task dpo or orpo, "
                 f"not {cfg.task}")
    return p


def _run_rules(cfg: TrainConfig) -> list[str]:
    """Length, cadence, best-model, early-stopping and scheduler rules."""
    from .scheduler_kwargs import kwargs_problems

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
    elif metric in PREFERENCE_METRICS and cfg.task not in PREFERENCE_TASKS:
        p.append(f"metric_for_best_model: {cfg.metric_for_best_model!r} is a preference metric; "
                 f"it needs task dpo or orpo (task is {cfg.task!r})")
    elif metric not in EVAL_METRICS + GENERATION_METRICS + PREFERENCE_METRICS:
        p.append(f"metric_for_best_model: {cfg.metric_for_best_model!r} is not an eval metric; "
                 f"choose one of {', '.join(EVAL_METRICS + GENERATION_METRICS + PREFERENCE_METRICS)}")
    if isinstance(cfg.eval_generate_rows, int) and cfg.eval_generate_rows < 0:
        p.append(f"eval_generate_rows: must be >= 0 (0: off), got {cfg.eval_generate_rows}")
    if cfg.eval_metric_tokenizer not in ("whitespace", "char", "morpheme"):
        p.append(f"eval_metric_tokenizer: {cfg.eval_metric_tokenizer!r} is not one of whitespace, char, morpheme")
    p += kwargs_problems(cfg.lr_scheduler_type, cfg.lr_scheduler_kwargs, cfg.learning_rate)
    return p


DISTRIBUTED_BACKENDS = ("auto", "ddp", "fsdp", "mlx")


def _distributed_rules(cfg: TrainConfig) -> list[str]:
    """The distributed block: a known engine that fits the job's backend, counts and a port in range."""
    d, p = cfg.distributed, []
    if d is None:
        return p
    if d.backend not in DISTRIBUTED_BACKENDS:
        p.append(f"distributed.backend: {d.backend!r} is not one of {', '.join(DISTRIBUTED_BACKENDS)}")
    elif d.backend == "mlx" and cfg.backend == "torch" or d.backend in ("ddp", "fsdp") and cfg.backend == "mlx":
        p.append(f"distributed.backend: {d.backend} does not run the {cfg.backend} backend "
                 f"(ddp/fsdp: torch, mlx: mlx; auto picks by the job's backend)")
    elif d.backend == "fsdp":
        p.append("distributed.backend: fsdp is not built yet; use ddp (every rank holds the whole model, the "
                 "small adapter's gradients are all-reduced). FSDP's forward all-gathers need every rank to run "
                 "the same number of micro-batches each step, and a step that does not split evenly gives a "
                 "rank one fewer; only rank 0 writes checkpoints, where FSDP would gather on every rank")
    if not isinstance(d.nproc_per_node, int) or isinstance(d.nproc_per_node, bool) or d.nproc_per_node < 1:
        p.append(f"distributed.nproc_per_node: must be >= 1, got {d.nproc_per_node!r}")
    if not isinstance(d.hosts, list) or not all(isinstance(h, str) and h for h in d.hosts):
        p.append(f"distributed.hosts: a list of host names or IPs, got {d.hosts!r}")
    if d.hosts and d.hostfile:
        p.append("distributed.hosts and distributed.hostfile: give one or the other")
    if not isinstance(d.master_port, int) or not 0 <= d.master_port < 65536:
        p.append(f"distributed.master_port: must be in [0, 65535], got {d.master_port!r}")
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
    ctx = None
    if gguf_file.is_gguf(cfg.model):   # a .gguf file or ollama:NAME: there, GGUF, an architecture transformers reads
        try:
            n = gguf_file.header(gguf_file.check(cfg.model, base))["context_length"]
            ctx = (n, f"context_length in {cfg.model}") if n else None
        except (OSError, ValueError) as e:
            p.append(f"model: {e}")
    else:
        ctx = context_positions(cfg.model, base_dir=base, cache=False)
    if ctx and isinstance(cfg.max_seq_length, int) and cfg.max_seq_length > ctx[0]:
        p.append(f"max_seq_length: {cfg.max_seq_length} is beyond the model's context of {ctx[0]} positions "
                 f"({ctx[1]}); use max_seq_length <= {ctx[0]}")
    return p
