"""The Trainer's seams: ranks share out each step's micro-batches, only rank 0 writes, and the
one-fact helpers it uses (atomic writes, pad id, perplexity, debug mode)."""
from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from test_training_loop import FakeBackend, _cfg
from tunerd.config.debug import apply_debug
from tunerd.config.loader import load_config
from tunerd.data.batch import Shard, pad_id_of
from tunerd.data.masking import TokenizedRow
from tunerd.data.prepare import TrainBatches
from tunerd.evaluation.loss import perplexity
from tunerd.files import (MARKER, atomic_write_file, atomic_write_text, remove_stale_temporaries,
                          write_output_dir)
from tunerd.training import events as ev
from tunerd.training.loop import train

ROWS = [TokenizedRow(ids=list(range(4 + i, 6 + i + i % 7)), mask=[0.0, 0.0] + [1.0] * (i % 7), origin=f"r{i}")
        for i in range(23)]


def _key(batch) -> bytes:
    return batch.inputs.tobytes() + batch.loss_mask.tobytes() + bytes(batch.inputs.shape)


def _steps(batches: TrainBatches, epochs: int):
    """Every step of `epochs` epochs: (all micro-batches, this rank's) as byte keys."""
    for e in range(epochs):
        start, n = 0, len(batches.epoch(e))
        while start < n:
            step = batches.step(e, start)
            yield [_key(b) for b in step.batches], [_key(b) for b in step.mine], step.n_targets
            start += len(step.batches)


@pytest.mark.parametrize("world, accumulation", [(2, 3), (3, 2), (2, 1)])
def test_ranks_together_run_exactly_the_batches_of_one_rank(world, accumulation):
    kw = dict(batch_size=2, accumulation=accumulation, pad_id=0, packing=False, max_seq_length=64, seed=5)
    one = list(_steps(TrainBatches(ROWS, **kw), epochs=2))
    ranks = [list(_steps(TrainBatches(ROWS, shard=Shard(r, world), **kw), epochs=2)) for r in range(world)]
    for i, (group, mine, n_targets) in enumerate(one):
        assert mine == group                                   # world 1 runs the whole step
        parts = [ranks[r][i][1] for r in range(world)]
        assert sorted(k for p in parts for k in p) == sorted(group), i   # together: each micro-batch once
        assert all(ranks[r][i][0] == group and ranks[r][i][2] == n_targets for r in range(world))


def test_a_shard_needs_a_rank_inside_the_world():
    with pytest.raises(ValueError, match="rank 2 of world_size 2"):
        Shard(2, 2)


class RecordingBackend(FakeBackend):
    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.steps_seen, self._cur = [], []

    def forward_backward(self, batch):
        self._cur.append(_key(batch))
        return super().forward_backward(batch)

    def optimizer_step(self, lr, grad_scale, max_grad_norm):
        self.steps_seen.append((sorted(self._cur), grad_scale))
        self._cur = []
        return super().optimizer_step(lr, grad_scale, max_grad_norm)


def test_two_trainer_ranks_split_every_step_and_only_rank_0_writes(demo_bundle, tiny_tokenizer, tmp_path):
    kw = dict(max_steps=5, gradient_accumulation_steps=3, per_device_train_batch_size=2, eval_strategy="steps",
              eval_steps=2, save_strategy="steps", save_steps=2)
    one = RecordingBackend(tiny_tokenizer)   # one process, the same global batch: accumulation x world
    train(_cfg(demo_bundle, tmp_path / "one", **{**kw, "gradient_accumulation_steps": 6}), one, lambda e: None)
    ranks, seen = [RecordingBackend(tiny_tokenizer) for _ in range(2)], []
    for r, be in enumerate(ranks):
        seen.append([])
        fin = train(_cfg(demo_bundle, tmp_path / f"rank{r}", **kw), be, seen[r].append, rank=r, world_size=2)
        assert fin.steps == 5
    for i, (whole, scale) in enumerate(one.steps_seen):
        assert sorted(ranks[0].steps_seen[i][0] + ranks[1].steps_seen[i][0]) == whole
        assert ranks[0].steps_seen[i][1] == ranks[1].steps_seen[i][1] == pytest.approx(scale)  # 1 / the step's targets
    written = {p.name for p in (tmp_path / "rank0" / "run").iterdir()}
    assert {"config.json", "metrics.jsonl", "tensorboard", "checkpoint-4", "adapter"} <= written
    assert list((tmp_path / "rank1" / "run").iterdir()) == []     # shared files: rank 0 writes them
    assert [e.step for e in seen[1] if isinstance(e, ev.Step)] == [1, 2, 3, 4, 5]


def test_atomic_writes_replace_whole_files_and_folders(tmp_path):
    f = tmp_path / "token"
    atomic_write_text(f, "old")
    atomic_write_text(f, "new\n", mode=0o600)
    assert f.read_text() == "new\n" and stat.S_IMODE(f.stat().st_mode) == 0o600
    d = write_output_dir(tmp_path / "checkpoint-1", lambda tmp: (tmp / "a").write_text("1"), "checkpoint")
    assert (d / "a").read_text() == "1"

    def half_written(tmp):
        Path(tmp, "a").write_text("2") if Path(tmp).is_dir() else Path(tmp).write_text("2")
        raise OSError("disk full")
    with pytest.raises(OSError):
        write_output_dir(d, half_written, "checkpoint")
    with pytest.raises(OSError):
        atomic_write_file(f, half_written)
    assert (d / "a").read_text() == "1" and f.read_text() == "new\n"    # the old ones, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "token"]   # no temporaries left
    assert sorted(p.name for p in d.iterdir()) == [MARKER, "a"]


def test_start_up_clean_up_removes_only_temporaries_it_can_prove_its_own(tmp_path):
    """A kill mid-write leaves `.tmp-NAME-<pid>-<random>/` with our marker naming a dead pid (or,
    killed between mkdir and the marker, empty): removed. A user's `.tmp-*` / `.old-*` stay."""
    killed = tmp_path / ".tmp-checkpoint-4-99999-0a1b2c"
    killed.mkdir()
    (killed / MARKER).write_text('{"temporary": true, "kind": "checkpoint", "pid": 99999}')
    (killed / "adapters.safetensors").write_bytes(b"half")
    (tmp_path / ".tmp-checkpoint-5-99999-0a1b2d").mkdir()            # killed before its marker
    merge = write_output_dir(tmp_path / "checkpoint-3", lambda t: (t / "a").write_text("1"), "checkpoint")
    (merge / ".tmp-merge-99999-0a1b2e").mkdir()
    (merge / ".tmp-merge-99999-0a1b2e" / MARKER).write_text('{"temporary": true, "pid": 99999}')
    users = [tmp_path / ".tmp-notes", tmp_path / ".old-checkpoint-3-123", tmp_path / ".tmp-x-99999-0a1b2f"]
    for u in users:
        u.mkdir()
        (u / "mine.txt").write_text("keep")
    done = remove_stale_temporaries(tmp_path)
    assert len(done) == 3, done
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["checkpoint-3"] + [u.name for u in users])
    assert sorted(p.name for p in merge.iterdir()) == [MARKER, "a"]
    assert all((u / "mine.txt").read_text() == "keep" for u in users)


def test_pad_id_is_pad_then_eos_then_the_models_eos():
    class Tok:
        def __init__(self, pad, eos):
            self.pad_token_id, self.eos_token_id = pad, eos
    assert pad_id_of(Tok(3, 2), [7]) == 3
    assert pad_id_of(Tok(None, 2), [7]) == 2
    assert pad_id_of(Tok(None, None), [7, 8]) == 7
    assert pad_id_of(Tok(None, None)) == 0


def test_perplexity_overflows_to_infinity():
    assert perplexity(1.0) == pytest.approx(np.e) and perplexity(800.0) == float("inf")


def test_debug_mode_is_one_rule_applied_once(demo_bundle, tmp_path):
    loaded = load_config(doc={"model": "m", "debug": True, "data": {"train": "x", "max_rows": 20}})
    assert (loaded.num_epochs, loaded.per_device_eval_batch_size, loaded.data.max_rows) == (1.0, 2, 20)
    assert apply_debug(loaded) == loaded                          # the loop may apply it again
    built = _cfg(demo_bundle, tmp_path, per_device_eval_batch_size=16)
    assert apply_debug(built) == built                            # off: unchanged
    on = apply_debug(dataclasses.replace(built, debug=True))
    assert (on.max_steps, on.per_device_train_batch_size, on.data.max_rows) == (-1, 2, 50)
