"""The rows an evaluation runs on: the same split, tokens and max_seq_length as training's eval.

    eval_config(cfg, split)            the config whose data.validation is the split to evaluate
    build_eval_set(cfg, tokenizer, base_dir, split, ...) -> EvalSet
        .rows        tokenized rows with loss masks (what training's evaluate() sees)
        .generation  (prompt ids, reference) per chat row: the conversation up to its last
                     assistant turn, rendered with the training template + generation prompt
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..config.schema import TrainConfig
from ..data.formats import Example, to_examples
from ..data.prepare import load_records, tokenize_all
from ..data.templates import ChatTemplate, render, setup_template

SPLITS = ("validation", "test")


@dataclass
class GenRow:
    index: int
    prompt: str          # the last user turn (what a person reads in a report)
    prompt_ids: list
    reference: str


@dataclass
class EvalSet:
    rows: list
    generation: list = field(default_factory=list)
    split: str = "validation"


def eval_config(cfg: TrainConfig, split: str = "") -> tuple[TrainConfig, str]:
    """`split` "" means test when the config has data.test, else validation."""
    split = split or ("test" if cfg.data.test else "validation")
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not one of {', '.join(SPLITS)}")
    if split == "test":
        if not cfg.data.test:
            raise ValueError("split test: the config has no data.test")
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, validation=cfg.data.test))
    return cfg, split


def generation_rows(examples: list[Example], tokenizer, template: Optional[ChatTemplate],
                    max_prompt_tokens: int) -> list[GenRow]:
    """Chat rows whose last message is the assistant's: prompt = everything before it."""
    out = []
    for i, ex in enumerate(examples):
        if ex.is_text or not ex.messages or ex.messages[-1]["role"] != "assistant":
            continue
        history = ex.messages[:-1]
        text = render(tokenizer, template, history, add_generation_prompt=True, tools=ex.tools)
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(ids) > max_prompt_tokens:  # as training fits rows: the prompt is cut from the left
            ids = ids[len(ids) - max_prompt_tokens:]
        user = next((m["content"] for m in reversed(history) if m["role"] == "user"), "")
        out.append(GenRow(i, user, ids, ex.messages[-1]["content"]))
    return out


def build_eval_set(cfg: TrainConfig, tokenizer, base_dir: Optional[Path] = None, split: str = "",
                   generate_rows: int = 0, max_new_tokens: int = 128) -> EvalSet:
    cfg, split = eval_config(cfg, split)
    loaded = load_records(cfg, base_dir)
    template = None if loaded.spec.format == "text" else setup_template(tokenizer, cfg.data.template)
    examples = to_examples(loaded.validation, loaded.spec)
    rows, _ = tokenize_all(examples, tokenizer, template, cfg, cfg.max_seq_length)  # debug: capped by load_records
    gen = []
    if generate_rows > 0:
        if template is None:
            raise ValueError("generation metrics need prompt/response or chat rows; the data is plain text")
        gen = generation_rows(examples[:generate_rows], tokenizer, template,
                              max(cfg.max_seq_length - max_new_tokens, cfg.max_seq_length // 2))
    return EvalSet(rows, gen, split)
