"""Forgetting: a retain set of general prompts, evaluated next to the task's own rows, and the
warning when a plan makes many passes over a small data set (issue 18: 60 steps, ~12 passes over
40 rows of made-up facts taught a real model that the capital of France is "Quillon").

    GENERAL = "general"                  data.retain: general -> the built-in set (retain_general.jsonl:
                                         36 short general-knowledge questions with reference answers)
    retain_config(cfg) -> TrainConfig | None     the config whose validation split is the retain set
    build_retain_set(cfg, tokenizer, base_dir, generate_rows, max_new_tokens) -> EvalSet | None
    RetainEval.for_training(cfg, backend, base_dir, pad_id)   training's retain_* metrics at each eval
    changed(predictions, before) -> int  answers that differ from the first (base) run's
    many_passes_warnings(passes, rows, retain) -> [str]   [] unless passes > MAX_PASSES on < SMALL_ROWS rows

The retain set's rows are read with their own format (auto-detected, no column mapping or
operations: those are the training data's); the chat template, system prompt and max_seq_length
are the run's, so the prompts look as the tuned model will see them.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from ..config.schema import DataConfig, TrainConfig
from .data import EvalSet, build_eval_set
from .generation import GenerationEval, generate_all
from .loss import eval_batches, mean_loss, perplexity

GENERAL = "general"
GENERAL_FILE = Path(__file__).with_name("retain_general.jsonl")
MAX_PASSES = 5        # more passes than this over ...
SMALL_ROWS = 1000     # ... fewer rows than this: Started and recommend warn
PREFIX = "retain_"


def retain_source(retain):
    """data.retain as a data source: `general` is the built-in set."""
    return str(GENERAL_FILE) if retain == GENERAL else retain


def retain_config(cfg: TrainConfig) -> Optional[TrainConfig]:
    if not cfg.data.retain:
        return None
    d, src = cfg.data, retain_source(cfg.data.retain)
    data = DataConfig(train=src, validation=src, test_size=0.0, shuffle=False, template=d.template,
                      system_prompt=d.system_prompt, train_on_prompt=d.train_on_prompt, overlong=d.overlong,
                      token=d.token)
    return dataclasses.replace(cfg, data=data)


def build_retain_set(cfg: TrainConfig, tokenizer, base_dir: Optional[Path] = None, generate_rows: int = 0,
                     max_new_tokens: int = 128) -> Optional[EvalSet]:
    """The retain set's tokenized rows (+ its first `generate_rows` prompts); None without data.retain."""
    rc = retain_config(cfg)
    if rc is None:
        return None
    try:
        return build_eval_set(rc, tokenizer, base_dir, "validation", generate_rows, max_new_tokens)
    except ValueError as e:
        raise ValueError(f"data.retain: {e}") from None


def changed(predictions: list[str], before: list[str]) -> int:
    return sum(" ".join(p.split()) != " ".join(b.split()) for p, b in zip(predictions, before))


class RetainEval:
    """Training's retain metrics: retain_loss, retain_perplexity, retain_tokens, and with
    eval_generate_rows the first N retain prompts answered greedily: retain_rouge*/bleu/exact_match
    against the references and retain_changed, the answers that differ from the model's before
    the first step (the base model's: a fresh adapter changes nothing)."""

    def __init__(self, batches: list, gen: Optional[GenerationEval], before: list[str]):
        self.batches, self.gen, self.before = batches, gen, before

    @classmethod
    def for_training(cls, cfg: TrainConfig, backend, base_dir: Optional[Path], pad_id: int) -> Optional["RetainEval"]:
        n = max(cfg.eval_generate_rows, 0)
        rs = build_retain_set(cfg, backend.tokenizer, base_dir, n, cfg.eval_generate_max_tokens)
        if rs is None:
            return None
        gen = GenerationEval(rs.generation, cfg.eval_generate_max_tokens, cfg.eval_metric_tokenizer) \
            if rs.generation else None
        before = generate_all(backend, [r.prompt_ids for r in gen.rows], gen.sampling) if gen else []
        return cls(eval_batches(rs.rows, cfg, pad_id), gen, before)

    def metrics(self, backend) -> dict:
        loss, n = mean_loss(backend, self.batches)
        out = {"retain_loss": loss, "retain_perplexity": perplexity(loss), "retain_tokens": n}
        if self.gen:
            predictions, scores = self.gen.predict(backend)
            out.update({PREFIX + k: v for k, v in scores.items()})
            out["retain_changed"] = changed(predictions, self.before)
        return out


def many_passes_warnings(passes: float, rows: int, retain: bool = False) -> list[str]:
    """[the warning] when `passes` over `rows` training rows are many for a small set, else []."""
    if not (passes > MAX_PASSES and 0 < rows < SMALL_ROWS):
        return []
    see = ("data.retain is set: watch retain_loss rise in the evals" if retain else
           "set data.retain: general to track general prompts' loss and answers next to eval_loss")
    return [f"{passes:.1f} passes over {rows} training rows: the model may learn them by heart and forget "
            f"what it knew (a real 135M model answered 'What is the capital of France?' with a made-up fact "
            f"after ~12 passes over 40 rows). Consider fewer epochs/steps (num_epochs <= {MAX_PASSES}, or "
            f"max_steps) or a lower learning_rate; {see}, and compare with `tunerctl evaluate --base`"]
