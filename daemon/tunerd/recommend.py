"""`tunerctl recommend`: hyper-parameters read from the model, the data and the memory free.

    recommend(model, config_path, train_rows, data_path, base_dir, tokenizer_for) -> Recommendation

The seed's rules (DESIGN.md §3) are the starting point:
    model size  < 1B: LoRA r 32;  1-7B: QLoRA r 16;  > 7B: QLoRA r 8
    data size   < 1K rows: lr 1e-4, 10 epochs;  1K-10K: 5e-5, 5;  > 10K: 2e-5, 3
and the data and host decide the rest:
    rows        counted through the data pipeline (JSON arrays, JSONL, CSV, parquet, directories,
                hub datasets), after data.fraction / max_rows / the validation split of a config
    max_seq_length  from the rows' token lengths (chat template included): the longest row rounded
                up to 64 when it is within 1.5x of the 95th percentile, else the 95th percentile
                (the few longer rows get their prompts cut from the left), capped at the context
    packing     auto when most rows are much shorter than max_seq_length (padding to win back)
    batch, gradient checkpointing, LoRA vs QLoRA   the largest batch whose estimated peak memory
                (training/memory.py) fits in 90% of the memory free now
The model's size comes from its config.json (local, or that one file from the hub; no weights).
Warnings: many passes over a small data set (evaluation/retain.py: > 5 passes over < 1,000 rows,
as the < 1K rule's 10 epochs are) may make the model forget what it knew; the written config then
tracks the built-in retain set (data.retain: general) unless the config names one.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable, Optional

from . import host
from .config.loader import load_config
from .config.schema import TrainConfig
from .model_config import CONFIG_FILE, read_model_config

SAMPLE_ROWS = 2000   # rows tokenized for the length distribution
ROUND = 64


def _model_config(model: str) -> dict:
    c = read_model_config(model)   # a local folder's, or the hub cache's
    if c is None:
        from huggingface_hub import hf_hub_download

        from . import hub
        hub.require(f"model {model!r}", detail="has no local config.json and is not in the Hugging Face cache")
        try:
            c = json.loads(Path(hf_hub_download(model, CONFIG_FILE)).read_text())
        except Exception as e:  # noqa: BLE001 - offline, gated, or no such repo
            raise FileNotFoundError(f"model {model!r}: no local config.json and the hub gave none ({e})") from None
    return c.get("text_config", c)


def _params(c: dict) -> float:
    h, layers = c.get("hidden_size", 0), c.get("num_hidden_layers", 0)
    inter, vocab = c.get("intermediate_size", 4 * h), c.get("vocab_size", 0)
    embed = vocab * h * (1 if c.get("tie_word_embeddings") else 2)
    return float(layers * (4 * h * h + 3 * h * inter) + embed)


def _percentile(sorted_values: list[int], q: float) -> int:
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


def token_lengths(cfg: TrainConfig, records: list, spec, tokenizer) -> list[int]:
    """Tokens per row as training renders them (template, special tokens), on a sample of rows."""
    from .data.formats import to_examples
    from .data.masking import tokenize_example
    from .data.templates import setup_template
    template = None if spec.format == "text" else setup_template(tokenizer, cfg.data.template, install=False)
    step = max(1, len(records) // SAMPLE_ROWS)
    examples = to_examples(records[::step][:SAMPLE_ROWS], spec)
    return sorted(len(tokenize_example(tokenizer, template, ex, cfg.data.train_on_prompt).ids) for ex in examples)


def _choose_length(lengths: list[int], context: Optional[int]) -> tuple[int, str]:
    p50, p95, longest = _percentile(lengths, 0.5), _percentile(lengths, 0.95), lengths[-1]
    target = longest if longest <= 1.5 * p95 else p95
    n = max(ROUND, math.ceil(target / ROUND) * ROUND)
    if context:
        n = min(n, context)
    over = sum(1 for x in lengths if x > n)
    why = f"token lengths p50 {p50}, p95 {p95}, max {longest}: max_seq_length {n} "
    why += "holds every row" if not over else (
        f"holds {100 * (1 - over / len(lengths)):.1f}% of rows; the {over} longer get their prompts cut from "
        "the left (data.overlong decides for answers that alone do not fit)")
    if context and n == context and longest > context:
        why += f" (capped at the model's context, {context})"
    return n, why


def _backend_and_dtype(cfg: TrainConfig) -> tuple[str, str]:
    try:
        from .backends.auto import choose_backend
        backend = cfg.backend if cfg.backend != "auto" else choose_backend(cfg)
    except Exception:  # noqa: BLE001 - advice must not need every backend installed
        backend = "torch"
    if cfg.dtype != "auto":
        return backend, cfg.dtype
    return backend, "bfloat16" if host.is_apple_silicon() else "float32"


@dataclasses.dataclass(frozen=True)
class Recommendation:
    config: dict          # the recommended config keys (TrainingConfig names)
    reasons: list         # one line per choice, saying why
    train_rows: int
    tokens_p50: int       # the rows' token lengths (chat template included)
    tokens_p95: int
    tokens_max: int
    config_yaml: str      # a commented, ready config (to_yaml)
    warnings: list = dataclasses.field(default_factory=list)   # e.g. many passes: the model may forget


def recommend(model: str = "", config_path: str = "", train_rows: int = 0, data_path: str = "",
              base_dir: str = "", tokenizer_for: Optional[Callable[[str], object]] = None) -> Recommendation:
    from .data.prepare import load_records
    from .evaluation.retain import many_passes_warnings
    from .training import memory

    base = Path(base_dir) if base_dir else None
    cfg = None
    if config_path:
        path = Path(base_dir or ".", config_path)
        cfg = load_config(path)
        base = base or path.resolve().parent   # data in the config: the request's base dir, as at submit
        model = model or cfg.model
    if not model:
        raise ValueError("model: required (--model, or a --config that names one)")
    if data_path:
        doc = {"model": model, "data": {"train": data_path, "test_size": 0.0}}
        cfg = dataclasses.replace(cfg, data=load_config(doc=doc).data) if cfg else load_config(doc=doc)
    cfg = cfg or TrainConfig(model=model)
    cfg = dataclasses.replace(cfg, model=model)
    reasons: list[str] = []
    mc = _model_config(model)
    params = _params(mc)
    out: dict = {"model": model}
    if params < 1e9:
        out.update(peft_adapter="lora", quantization="none", lora_r=32, lora_alpha=64.0)
        reasons.append(f"{params / 1e6:.1f}M parameters (< 1B): LoRA r 32 on the full-precision base")
    elif params <= 7.5e9:
        out.update(peft_adapter="lora", quantization="4bit", lora_r=16, lora_alpha=32.0)
        reasons.append(f"{params / 1e9:.1f}B parameters (1-7B): QLoRA (4-bit base) r 16")
    else:
        out.update(peft_adapter="lora", quantization="4bit", lora_r=8, lora_alpha=16.0)
        reasons.append(f"{params / 1e9:.1f}B parameters (> 7B): QLoRA (4-bit base) r 8")

    lengths: list[int] = []
    if cfg.data.train is not None:
        loaded = load_records(cfg, base)
        train_rows = train_rows or len(loaded.train)
        if tokenizer_for is not None:
            lengths = token_lengths(cfg, loaded.train, loaded.spec, tokenizer_for(model))
    if train_rows and train_rows < 1000:
        out.update(learning_rate=1e-4, num_epochs=10.0)
    elif train_rows and train_rows <= 10000:
        out.update(learning_rate=5e-5, num_epochs=5.0)
    elif train_rows:
        out.update(learning_rate=2e-5, num_epochs=3.0)
    if train_rows:
        reasons.append(f"{train_rows} training rows: learning_rate {out['learning_rate']}, "
                       f"{out['num_epochs']:.0f} epochs")

    context = mc.get("max_position_embeddings")
    if lengths:
        seq, why = _choose_length(lengths, context)
        reasons.append(why)
        p50 = _percentile(lengths, 0.5)
        out["packing"] = "auto" if p50 * 2 <= seq else False
        reasons.append(f"packing {'auto' if out['packing'] else 'false'}: the median row is {p50} of {seq} tokens"
                       + ("; packing wins back the padding on GPUs/Metal (auto leaves it off on a CPU)"
                          if out["packing"] else "; rows fill most of a sequence, packing gains little"))
    else:
        seq = min(2048, context or 2048)
        reasons.append(f"no data to measure: max_seq_length {seq}")
    out["max_seq_length"] = seq

    backend, dtype = _backend_and_dtype(cfg)
    _, avail = host.memory()
    budget = int(0.9 * avail)
    trial = dataclasses.replace(cfg, peft_adapter=out["peft_adapter"], quantization=out["quantization"],
                                lora_r=out["lora_r"], lora_target_modules="all-linear")
    options = []
    for quant in dict.fromkeys([out["quantization"], "4bit" if out["quantization"] == "none" else "none"]):
        for gc in (False, True):
            for bs in (8, 4, 2, 1):
                c = dataclasses.replace(trial, quantization=quant, gradient_checkpointing=gc)
                options.append((quant, gc, bs, memory.estimate(mc, c, backend, seq, dtype, batch_size=bs).total))
    fits = [o for o in options if o[3] <= budget]
    chosen = fits[0] if fits else min(options, key=lambda o: o[3])
    quant, gc, bs, need = chosen
    if quant != out["quantization"]:
        reasons.append(f"{out['quantization']} does not fit; quantization {quant} does")
        out["quantization"] = quant
    out.update(per_device_train_batch_size=bs, gradient_checkpointing=gc,
               gradient_accumulation_steps=max(1, 8 // bs))
    table = ", ".join(f"{'QLoRA' if q == '4bit' else 'LoRA'} batch {b}{' +ckpt' if g else ''} "
                      f"{n / 2**30:.2f} GiB" for q, g, b, n in options if b in (8, 1))
    reasons.append(f"{avail / 2**30:.1f} GiB free ({backend}, {dtype}); estimated peak at max_seq_length {seq}: "
                   f"{table}. Chosen: batch {bs}, gradient_checkpointing {'on' if gc else 'off'} "
                   f"({need / 2**30:.2f} GiB" + (")" if fits else ", does not fit: free memory or use a smaller model)")
                   + f", gradient_accumulation_steps {out['gradient_accumulation_steps']} for an effective batch of "
                     f"{bs * out['gradient_accumulation_steps']}")
    warnings = many_passes_warnings(out.get("num_epochs", 0.0), int(train_rows), bool(cfg.data.retain)) \
        if train_rows else []
    return Recommendation(out, reasons, int(train_rows), _percentile(lengths, 0.5), _percentile(lengths, 0.95),
                          lengths[-1] if lengths else 0, to_yaml(out, reasons, cfg, warnings), warnings)


def to_yaml(out: dict, reasons: list[str], cfg: TrainConfig, warnings: Optional[list] = None) -> str:
    """A commented, ready config: the advice, then the data block it was read from (with a retain
    set when a warning says the model may forget)."""
    lines = ["# Written by `tunerctl recommend`. Why:"] + [f"#   - {r}" for r in reasons]
    lines += [f"# Warning: {w}" for w in warnings or []] + [""]
    for k, v in out.items():
        lines.append(f"{k}: {json.dumps(v)}")
    lines += ["eval_strategy: steps", "save_strategy: steps", "load_best_model_at_end: true"]
    if cfg.data.train is not None:
        lines += ["data:", f"  train: {json.dumps(cfg.data.train, default=str)}"]
        if cfg.data.validation is not None:
            lines.append(f"  validation: {json.dumps(cfg.data.validation, default=str)}")
        if cfg.data.retain is not None or warnings:
            lines.append(f"  retain: {json.dumps(cfg.data.retain or 'general', default=str)}"
                         + ("" if cfg.data.retain else "   # general prompts: retain_loss shows forgetting"))
    return "\n".join(lines) + "\n"
