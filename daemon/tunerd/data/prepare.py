"""Turn a config's data block into tokenized rows with loss masks, and rows into batches.

Public API (the training loop and the daemon use only these):
    prepare(cfg, tokenizer, base_dir) -> PreparedData
    iterate_batches(rows, batch_size, pad_id, packing, max_seq_length, shuffle, seed, epoch) -> list[Batch]

MINIMAL FIRST VERSION: local jsonl with prompt/completion or messages rows, rendered with the
tokenizer's chat template. Issue #3 extends it to every format, source and operation.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..config.schema import TrainConfig
from .batch import Batch, collate


class DataError(ValueError):
    """Bad data input; the message names the file, line and field."""


@dataclass
class TokenizedRow:
    ids: list
    mask: list  # 1.0 where token j is supervised (as a target), else 0.0


@dataclass
class PreparedData:
    train: list
    validation: list
    report: dict = field(default_factory=dict)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not rows:
        raise DataError(f"{path}: file has no rows")
    return rows


def _to_messages(row: dict, where: str) -> list[dict]:
    if "messages" in row:
        return row["messages"]
    if "prompt" in row and ("completion" in row or "response" in row):
        msgs = [{"role": "system", "content": row["system"]}] if row.get("system") else []
        return msgs + [{"role": "user", "content": row["prompt"]},
                       {"role": "assistant", "content": row.get("completion", row.get("response"))}]
    raise DataError(f"{where}: no known columns; found {sorted(row)}")


def _ids(tokenizer, messages, add_generation_prompt=False) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def tokenize_messages(tokenizer, messages: list[dict], train_on_prompt: bool = False) -> TokenizedRow:
    """Render with the chat template; supervise each assistant turn (incl. its end-of-turn token)."""
    ids = _ids(tokenizer, messages)
    mask = [1.0 if train_on_prompt else 0.0] * len(ids)
    if not train_on_prompt:
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            start = len(_ids(tokenizer, messages[:i], add_generation_prompt=True))
            end = len(_ids(tokenizer, messages[: i + 1]))
            for j in range(start, min(end, len(ids))):
                mask[j] = 1.0
    return TokenizedRow(ids, mask)


def _load_split(spec, base_dir: Path, tokenizer, cfg: TrainConfig) -> list[TokenizedRow]:
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    out = []
    for n, row in enumerate(_read_jsonl(path), start=1):
        out.append(tokenize_messages(tokenizer, _to_messages(row, f"{path}:{n}"), cfg.data.train_on_prompt))
    return out


def prepare(cfg: TrainConfig, tokenizer, base_dir: Optional[Path] = None) -> PreparedData:
    base_dir = Path(base_dir or ".")
    if cfg.data.train is None:
        raise DataError("data.train: no training data given")
    train = _load_split(cfg.data.train, base_dir, tokenizer, cfg)
    if cfg.data.validation is not None:
        valid = _load_split(cfg.data.validation, base_dir, tokenizer, cfg)
    else:
        rng = random.Random(cfg.seed)
        order = list(range(len(train)))
        rng.shuffle(order)
        n_val = max(1, int(len(train) * cfg.data.test_size)) if len(train) > 1 else 0
        valid = [train[i] for i in order[:n_val]]
        train = [train[i] for i in order[n_val:]]
    return PreparedData(train, valid, {"train_rows": len(train), "validation_rows": len(valid)})


def iterate_batches(rows: list[TokenizedRow], batch_size: int, pad_id: int, *, packing: bool = False,
                    max_seq_length: int = 2048, shuffle: bool = True, seed: int = 0,
                    epoch: int = 0) -> list[Batch]:
    """The batches of one epoch, deterministic in (seed, epoch) so a resume can skip to a position."""
    order = list(range(len(rows)))
    if shuffle:
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
    batches = []
    for i in range(0, len(order), batch_size):
        chunk = [rows[j] for j in order[i:i + batch_size]]
        chunk = [(r.ids[-max_seq_length:], r.mask[-max_seq_length:]) for r in chunk]
        batches.append(collate(chunk, pad_id, pack_into=max_seq_length if packing else 0))
    return batches
