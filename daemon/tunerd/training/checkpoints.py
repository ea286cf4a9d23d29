"""Checkpoint directories: saving (rank 0, atomically), `latest` lookup, resuming, rotation, and the trainer state.

    output_dir/checkpoint-N/          written as .tmp-checkpoint-N-<pid>-<random>/ then renamed (files.write_output_dir)
        trainer_state.json            TrainerState below (step, data position, scheduler, RNG, best, config)
        .tunerd-output.json           the marker: kind `checkpoint`, the job, the entries written
        ...                           whatever backend.save_checkpoint wrote (adapter, optimizer, backend RNG)

Rotation deletes only checkpoints whose marker names this job, and in them only what the marker lists.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..disk import folder_size
from ..files import is_ours, read_marker, remove_output_dir, write_output_dir
from ..integrity import file_problem

STATE_FILE = "trainer_state.json"
PREFIX = "checkpoint-"
KIND = "checkpoint"


@dataclass
class TrainerState:
    global_step: int = 0
    epoch: int = 0                 # index of the epoch in progress
    batch_in_epoch: int = 0        # micro-batches of that epoch already consumed
    total_steps: int = 0
    trained_tokens: int = 0
    best_metric: Optional[float] = None        # best checkpoint's metric
    best_checkpoint: str = ""
    best_eval_metric: Optional[float] = None   # best eval so far (early stopping)
    evals_without_improvement: int = 0
    last_loss: float = float("nan")
    scheduler: dict = field(default_factory=dict)
    python_rng: list = field(default_factory=list)
    numpy_rng: list = field(default_factory=list)
    config_hash: str = ""
    config: dict = field(default_factory=dict)  # the hashed keys, to name what changed on resume

    def capture_rng(self) -> None:
        v, s, g = random.getstate()
        self.python_rng = [v, list(s), g]
        name, keys, pos, has_gauss, cached = np.random.get_state()
        self.numpy_rng = [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]

    def restore_rng(self) -> None:
        if self.python_rng:
            v, s, g = self.python_rng
            random.setstate((v, tuple(s), g))
        if self.numpy_rng:
            name, keys, pos, has_gauss, cached = self.numpy_rng
            np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))

    def to_json(self) -> str:
        d = asdict(self)
        d["last_loss"] = None if d["last_loss"] != d["last_loss"] else d["last_loss"]
        return json.dumps(d, indent=1)

    @classmethod
    def read(cls, path: Path) -> "TrainerState":
        d = json.loads((Path(path) / STATE_FILE).read_text())
        if d.get("last_loss") is None:
            d["last_loss"] = float("nan")
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})


def step_of(path: Path) -> int:
    try:
        return int(Path(path).name[len(PREFIX):])
    except ValueError:
        return -1


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints (with a trainer state), oldest first."""
    d = Path(output_dir)
    if not d.exists():
        return []
    found = [p for p in d.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and step_of(p) >= 0
             and (p / STATE_FILE).exists()]
    return sorted(found, key=step_of)


def find_checkpoint(spec: Optional[str], output_dir: Path, base_dir: Optional[Path] = None) -> Optional[Path]:
    """`latest` -> newest complete checkpoint in output_dir (None if there is none); a path -> it."""
    if not spec:
        return None
    if spec == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    p = Path(spec).expanduser()
    if not p.is_absolute() and base_dir is not None and not p.exists():
        p = Path(base_dir) / p
    if not (p / STATE_FILE).exists():
        raise FileNotFoundError(f"resume_from_checkpoint: {p} is not a checkpoint (no {STATE_FILE})")
    return p


def resume_point(spec: Optional[str], output_dir: Path, base_dir: Optional[Path], config: dict,
                 config_hash: str, total_steps: int) -> tuple[Optional[Path], Optional[TrainerState], list]:
    """(checkpoint, its state made this run's, [(level, note)] for the run's log) for
    resume_from_checkpoint `spec`: the checkpoint checked intact (a truncated file is named, with
    the previous one to use); a note names the keys a resume must not change that did (`config`:
    this run's, hashed `config_hash`). (None, None, notes) when there is nothing to resume from."""
    ckpt = find_checkpoint(spec, output_dir, base_dir)
    if ckpt is None:
        return None, None, [("info", f"resume_from_checkpoint latest: no checkpoint in {output_dir}; starting "
                                     "from step 0")] if spec == "latest" else []
    check_intact(ckpt)
    saved, notes = TrainerState.read(ckpt), []
    if saved.config_hash != config_hash:
        changed = sorted(k for k in set(config) | set(saved.config) if config.get(k) != saved.config.get(k))
        notes.append(("warning", f"resuming {ckpt.name} with a changed config: {', '.join(changed)}; "
                                 f"losses will not match an uninterrupted run"))
    saved.total_steps, saved.config_hash, saved.config = total_steps, config_hash, config
    return ckpt, saved, notes


class CheckpointDamaged(ValueError):
    """A checkpoint file is truncated or unreadable; the message names it and the previous checkpoint."""


def check_intact(ckpt: Path) -> None:
    """Raise CheckpointDamaged naming the first file of `ckpt` that is cut short or unreadable
    (safetensors: header and data sizes; torch.save zips; JSON), and how to resume without it."""
    for f in sorted(p for p in Path(ckpt).rglob("*") if p.is_file()):
        problem = file_problem(f)
        if problem:
            raise CheckpointDamaged(damaged_message(Path(ckpt), f, problem))


def damaged_message(ckpt: Path, f: Path, problem: str) -> str:
    older = [c for c in list_checkpoints(ckpt.parent) if step_of(c) < step_of(ckpt)]
    aside = f"`mv {ckpt} {ckpt}.damaged`"
    offer = (f"the previous checkpoint {older[-1].name} is in {ckpt.parent}: move the damaged one aside ({aside}) "
             f"and resume the job again to continue from {older[-1].name}, or set resume_from_checkpoint: {older[-1]}"
             if older else f"there is no earlier checkpoint: move it aside ({aside}) and resume the job again to "
                           "start from step 0")
    return f"checkpoint {ckpt} is damaged: {f.relative_to(ckpt)} is {problem}; {offer}"


def checkpoint_path(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / f"{PREFIX}{step}"


def checkpoint_bytes(output_dir: Path, trainable_params: int) -> int:
    """About what a checkpoint takes on disk: the newest one's size, or before the first, the
    trainable weights 4x in float32 (the adapter in two layouts, the optimizer's two moments)."""
    found = list_checkpoints(output_dir)
    return folder_size(found[-1]) if found else 4 * 4 * trainable_params + (64 << 10)


def save_checkpoint(output_dir: Path, state: TrainerState, save_backend: Callable[[Path], object],
                    rank: int = 0, job: str = "") -> Path:
    """output_dir/checkpoint-<step>/: what `save_backend(folder)` writes (adapter, optimizer, the
    backend's RNG) and the trainer state, written atomically, marked as `job`'s. The folder is
    shared by the ranks of a run: rank 0 writes it, the others only learn its path."""
    final = checkpoint_path(output_dir, state.global_step)
    if rank != 0:
        return final

    def fill(tmp: Path) -> None:
        save_backend(tmp)
        (tmp / STATE_FILE).write_text(state.to_json())
    return write_output_dir(final, fill, KIND, job, last=(STATE_FILE,))


def rotate(output_dir: Path, limit: Optional[int], keep: tuple = (), rank: int = 0, job: str = "") -> list[Path]:
    """Delete the oldest of `job`'s checkpoints beyond `limit`, never the newest nor those in `keep`
    (best); rank 0 deletes, other ranks delete nothing. Checkpoints not marked as this job's are
    neither counted nor deleted."""
    if not limit or limit <= 0 or rank != 0:
        return []
    found = [p for p in list_checkpoints(output_dir) if is_ours(read_marker(p), KIND, job)]
    protected = {Path(k).resolve() for k in keep if k} | ({found[-1].resolve()} if found else set())
    removed = []
    for p in found:
        if len(found) - len(removed) <= limit:
            break
        if p.resolve() in protected:
            continue
        if remove_output_dir(p, KIND, job, first=(STATE_FILE,)):
            removed.append(p)
    return removed
