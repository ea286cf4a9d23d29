"""Turn a config's data block into tokenized rows with loss masks, and rows into batches.

Public API (the training loop and the daemon use only these):
    prepare(cfg, tokenizer, base_dir) -> PreparedData(train, validation, report)
    iterate_batches(rows, batch_size, pad_id, *, packing, max_seq_length, shuffle, seed, epoch,
                    group_by_length) -> list[Batch]
    TrainBatches(rows, ..., shard)  epoch by epoch, grouped into optimizer steps, for one rank
    DataError (a ValueError); a missing file is a FileNotFoundError.

The steps, in order (each in its own module):
    sources     load data.train / data.validation (files, directories, hub) as Records
    prepare     shuffle (data.seed), take data.fraction and data.max_rows of train; split
                data.test_size off train when no validation set is given
    operations  data.operations, per split
    formats     detect or take the declared format and column mapping; rows -> Examples
    templates   resolve data.template; add missing chat special tokens (report["added_tokens"])
    masking     render + tokenize with exact per-turn loss masks; cut long prompts from the left
    packing     length-grouped or packed batches, deterministic in (seed, epoch)
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..config.debug import cap_rows
from ..config.schema import TrainConfig
from .batch import Batch, Shard, collate_sequences, pad_id_of
from .errors import DataError
from .formats import Example, FormatSpec, columns_of, detect_format, to_examples
from .masking import TokenizedRow, fit_all, fit_row, tokenize_example
from .operations import apply_operations, parse
from .packing import batch_order, epoch_rng, pack, padding_waste
from .preference import iterate_pair_batches, to_pairs, tokenize_pairs
from .sources import load_source, split_files_in
from .templates import ChatTemplate, setup_template

__all__ = ["prepare", "iterate_batches", "TrainBatches", "StepBatches", "PreparedData", "TokenizedRow",
           "DataError", "pad_id_of", "load_records", "Loaded"]

OVERLONG = ("truncate", "drop", "error")


@dataclass
class PreparedData:
    train: list
    validation: list
    report: dict = field(default_factory=dict)


@dataclass
class Loaded:
    """Raw rows of both splits after sampling, splitting and operations, with their format."""
    train: list
    validation: list
    spec: FormatSpec
    columns: list


def _data_seed(cfg: TrainConfig) -> int:
    return cfg.data.seed if cfg.data.seed is not None else cfg.seed


def _check(cfg: TrainConfig) -> None:
    d = cfg.data
    if d.train is None:
        raise DataError("data.train: no training data given (a file, a list of files, a directory "
                        "or a hub dataset id)")
    if d.text_column and d.prompt_column:
        raise DataError("data.text_column and data.prompt_column: declare one or the other, not both")
    if not 0 < d.fraction <= 1:
        raise DataError(f"data.fraction: must be in (0, 1], got {d.fraction}")
    if not 0 <= d.test_size < 1:
        raise DataError(f"data.test_size: must be in [0, 1), got {d.test_size}")
    if d.overlong not in OVERLONG:
        raise DataError(f"data.overlong: {d.overlong!r} is not one of {', '.join(OVERLONG)}")
    parse(d.operations)


def load_records(cfg: TrainConfig, base_dir: Optional[Path] = None, head: Optional[int] = None) -> Loaded:
    """Load, sample, split and transform the raw rows of both splits; detect their format.
    `head`: JSON Lines files give their first `head` rows only (sources.load_source)."""
    _check(cfg)
    d, base = cfg.data, Path(base_dir or ".")
    hub = dict(name=d.name, revision=d.revision, streaming=d.streaming, token=d.token, head=head)
    seed = _data_seed(cfg)
    train = load_source(d.train, base, d.split or "train", max_rows=d.max_rows if d.streaming else None, **hub)
    valid_spec = d.validation
    if valid_spec is None and isinstance(d.train, str) and (base / Path(d.train).expanduser()).is_dir():
        files = split_files_in(base / Path(d.train).expanduser(), "validation")
        valid_spec = [str(f) for f in files] or None
    valid = load_source(valid_spec, base, "validation", **hub)
    if d.shuffle:
        random.Random(seed).shuffle(train)
    keep = len(train) if d.fraction >= 1 else max(1, math.ceil(len(train) * d.fraction))
    if d.max_rows:
        keep = min(keep, d.max_rows)
    train = train[:keep]
    if valid_spec is None and d.test_size > 0 and len(train) > 1:
        n_val = min(len(train) - 1, max(1, round(len(train) * d.test_size)))
        valid, train = train[:n_val], train[n_val:]

    def load(spec):
        return load_source(spec, base, "train", **hub)

    train = apply_operations(train, d.operations, "train", load=load, seed=seed, prompt_column=d.prompt_column)
    valid = apply_operations(valid, d.operations, "validation", load=load, seed=seed,
                             prompt_column=d.prompt_column)
    train, valid = cap_rows(cfg, train, valid)   # debug: true
    if not train:
        raise DataError("data.train: no rows left after data.operations / data.fraction")
    columns = columns_of(train)
    spec = detect_format(columns, d, _source_name(d.train))
    check_columns(train, spec, "data.train")
    check_columns(valid, spec, "data.validation")
    return Loaded(train, valid, spec, columns)


def check_columns(records: list, spec: FormatSpec, split: str) -> None:
    """Every file (or hub split) of a split has the columns its format needs, or a DataError names
    the file, the missing columns and the ones it has: a directory that mixes files of different
    formats (a csv of question/answer beside jsonl prompt/completion rows) fails here, not later
    as "field 'completion' is empty" on a row of the odd file."""
    by_source: dict = {}
    for r in records:
        by_source.setdefault(r.source, []).append(r)
    for source, rows in by_source.items():
        have = columns_of(rows)
        missing = [c for c in spec.required if c not in have]
        if missing:
            raise DataError(f"{source or split}: no column {', '.join(map(repr, missing))}, which the "
                            f"{spec.format} format of {split} needs; its columns are: {', '.join(have)}. "
                            "All files of a data set need the same columns: convert this file, or move it out")


def _source_name(spec) -> str:
    if isinstance(spec, dict):
        return str(spec.get("path", spec))
    if isinstance(spec, (list, tuple)):
        return ", ".join(_source_name(s) for s in spec[:3]) + (" ..." if len(spec) > 3 else "")
    return str(spec)


def tokenize_all(examples: list[Example], tokenizer, template: Optional[ChatTemplate], cfg: TrainConfig,
                 max_seq_length: int) -> tuple[list[TokenizedRow], dict]:
    """Tokenize and fit every example; returns the rows and the truncation facts."""
    rows = [tokenize_example(tokenizer, template, ex, cfg.data.train_on_prompt) for ex in examples]
    return fit_all(rows, tokenizer, max_seq_length, cfg.data.overlong)


def prepare(cfg: TrainConfig, tokenizer, base_dir: Optional[Path] = None) -> PreparedData:
    """Load, format, template, tokenize and mask the data of `cfg` (see the module docstring).

    May add chat special tokens to `tokenizer` (`report["added_tokens"]` says how many: the
    backend must resize its embeddings), and installs a built-in template as the tokenizer's
    chat template when it had none (`report["chat_template"]`, to save with the adapter)."""
    loaded = load_records(cfg, base_dir)
    template = None if loaded.spec.format == "text" else setup_template(tokenizer, cfg.data.template)
    if loaded.spec.format == "preference":   # pairs of rows (task dpo / orpo): data/preference.py
        tokenized, iterate = (lambda recs: tokenize_pairs(to_pairs(recs, loaded.spec), tokenizer, template, cfg,
                                                          cfg.max_seq_length)), iterate_pair_batches
    else:
        tokenized, iterate = (lambda recs: tokenize_all(to_examples(recs, loaded.spec), tokenizer, template, cfg,
                                                        cfg.max_seq_length)), iterate_batches
    train, facts = tokenized(loaded.train)
    valid, vfacts = tokenized(loaded.validation)
    if not train:
        raise DataError("data.train: every row was dropped (data.overlong: drop); raise max_seq_length")
    pad = pad_id_of(tokenizer)
    batches = iterate(train, cfg.per_device_train_batch_size, pad, packing=cfg.packing,
                      max_seq_length=cfg.max_seq_length, seed=_data_seed(cfg), epoch=0,
                      group_by_length=cfg.data.group_by_length)
    report = {
        "train_rows": len(train), "validation_rows": len(valid),
        "format": loaded.spec.format, "columns": loaded.columns,
        "template": template.name if template else None,
        "chat_template": template.template if template else None,
        "end_of_turn_token": template.end_of_turn if template else tokenizer.eos_token,
        "added_tokens": len(template.added_tokens) if template else 0,
        "added_token_list": list(template.added_tokens) if template else [],
        "pad_id": pad,
        "train_tokens": sum(len(r.ids) for r in train),
        "supervised_tokens": sum(r.n_response for r in train),
        "padding_waste": round(100 * padding_waste(batches), 2),
        **facts,
        "validation_overlong_rows": vfacts["overlong_rows"],
    }
    return PreparedData(train, valid, report)


def iterate_batches(rows: list[TokenizedRow], batch_size: int, pad_id: int, *, packing: bool = False,
                    max_seq_length: int = 2048, shuffle: bool = True, seed: int = 0,
                    epoch: int = 0, group_by_length: bool = True) -> list[Batch]:
    """The batches of one epoch, deterministic in (seed, epoch) so a resume can skip to a position.

    Without packing each batch holds `batch_size` rows padded to its own longest row (rows of
    similar length together with `group_by_length`). With packing each batch holds `batch_size`
    sequences of up to `max_seq_length` tokens, each packing several rows (position ids restart
    per row, segment ids tell them apart). Rows longer than `max_seq_length` are fitted the way
    `prepare` does (prompt cut from the left)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    fitted = [fit_row(r, max_seq_length)[0] if len(r.ids) > max_seq_length else r for r in rows]
    fitted = [r for r in fitted if len(r.ids) >= 2]
    pairs = [(r.ids, r.mask) for r in fitted]
    lengths = [len(r.ids) - 1 for r in fitted]
    if not pairs:
        return []
    if packing:
        order = list(range(len(pairs)))
        rng = epoch_rng(seed, epoch)
        if shuffle:
            rng.shuffle(order)
        bins = pack(lengths, max_seq_length, order)
        if shuffle:
            rng.shuffle(bins)
        return [collate_sequences([[pairs[i] for i in b] for b in bins[k:k + batch_size]], pad_id)
                for k in range(0, len(bins), batch_size)]
    groups = batch_order(lengths, batch_size, shuffle=shuffle, group_by_length=group_by_length,
                         seed=seed, epoch=epoch)
    return [collate_sequences([[pairs[i]] for i in g], pad_id) for g in groups]


@dataclass
class StepBatches:
    """The micro-batches of one optimizer step."""
    batches: list          # the whole step's, every rank's, in order: the loss is normalised by all of them
    mine: list             # those this rank runs (Shard.take)
    ends_epoch: bool       # the step consumes its epoch's last micro-batch

    @property
    def n_targets(self) -> int:
        return sum(b.n_targets for b in self.batches)

    @property
    def n_tokens(self) -> int:
        return sum(b.n_tokens for b in self.batches)


class TrainBatches:
    """The training micro-batches, epoch by epoch, grouped into optimizer steps, for one rank.

    Epoch e's batches are `iterate_batches(rows, ..., seed, epoch=e)`: the same on every rank and
    after a resume, so a data position is (epoch, micro-batches consumed in it). A step takes the
    next `accumulation` micro-batches of its epoch (fewer at the epoch's end, never across it);
    `shard` picks the ones this rank runs. With packing the count varies a little from epoch to
    epoch; each epoch ends at its own last batch. The latest epoch's batches are kept."""

    def __init__(self, rows: list, batch_size: int, accumulation: int, pad_id: int, *, packing: bool,
                 max_seq_length: int, seed: int, group_by_length: bool = True, shard: Shard = Shard(),
                 iterate=None):
        self.rows, self.accumulation, self.shard = rows, accumulation, shard
        self._iterate = iterate or iterate_batches   # a task's own (preference pairs: iterate_pair_batches)
        self._kw = dict(batch_size=batch_size, pad_id=pad_id, packing=packing, max_seq_length=max_seq_length,
                        shuffle=True, seed=seed, group_by_length=group_by_length)
        self._epoch, self._batches = -1, []

    def epoch(self, e: int) -> list[Batch]:
        """Every micro-batch of epoch `e` (all ranks')."""
        if e != self._epoch:
            self._batches, self._epoch = self._iterate(self.rows, epoch=e, **self._kw), e
        return self._batches

    def step(self, epoch: int, start: int) -> StepBatches:
        """The step that begins at micro-batch `start` of epoch `epoch`."""
        batches = self.epoch(epoch)
        group = batches[start:start + self.accumulation]
        return StepBatches(group, self.shard.take(group), start + len(group) >= len(batches))

    def progress(self, epoch: int, start: int) -> float:
        """Epochs done as a fraction, at micro-batch `start` of `epoch` (the latest epoch's length)."""
        return epoch + start / max(len(self._batches), 1)
