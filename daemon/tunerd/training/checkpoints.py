"""Checkpoint directories: atomic writes, `latest` lookup, rotation, and the trainer state.

    output_dir/checkpoint-N/          written as .tmp-checkpoint-N-<pid>/ then renamed
        trainer_state.json            TrainerState below (step, data position, scheduler, RNG, best, config)
        ...                           whatever backend.save_checkpoint wrote (adapter, optimizer, backend RNG)
"""
from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

STATE_FILE = "trainer_state.json"
PREFIX = "checkpoint-"


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


def write_atomically(final: Path, fill) -> Path:
    """Build a directory with `fill(tmp_dir)` and rename it to `final` (replacing an old one)."""
    final = Path(final)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


def remove_stale_temporaries(output_dir: Path) -> list[str]:
    """What a process killed inside `write_atomically` leaves: `.tmp-*` folders (never
    complete: removed) and `.old-*` ones (removed, or renamed back when the kill came between
    the two renames). Only for output dirs that no running job writes to."""
    d = Path(output_dir)
    done: list[str] = []
    if not d.is_dir():
        return done
    for p in sorted(d.iterdir()):
        if not p.is_dir() or not p.name.startswith((".tmp-", ".old-")):
            continue
        name = p.name.split("-", 1)[1].rsplit("-", 1)[0]  # .tmp-checkpoint-40-1234 -> checkpoint-40
        if p.name.startswith(".old-") and name and not (d / name).exists():
            os.replace(p, d / name)
            done.append(f"restored {d / name} from {p.name}")
        else:
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed {p}")
    return done


def rotate(output_dir: Path, limit: Optional[int], keep: tuple = ()) -> list[Path]:
    """Delete the oldest checkpoints beyond `limit`, never the newest nor those in `keep` (best)."""
    if not limit or limit <= 0:
        return []
    found = list_checkpoints(output_dir)
    protected = {Path(k).resolve() for k in keep if k} | ({found[-1].resolve()} if found else set())
    removed = []
    for p in found:
        if len(found) - len(removed) <= limit:
            break
        if p.resolve() in protected:
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed
