"""What a run writes in output_dir besides its checkpoints (checkpoints.py) and final adapter:

    .tunerd-output.json        the folder's marker: kind `job` and the job's id (files.claim_dir;
                               the daemon writes it at submit, a run outside the daemon names no job)
    config.json, config.yaml   the resolved config (debug applied, dtype and packing decided)
    metrics.jsonl              one JSON record per logged step and per eval; a resume drops the
                               records after the step it resumes from
    tensorboard/               TensorBoard event files (a new file per run or resume)

They are shared by every rank of a run: only the writer (rank 0) writes them.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Optional

from ..config.schema import TrainConfig
from ..disk import writing
from ..files import atomic_write_text, claim_dir, read_marker
from .tensorboard import EventWriter

JOB_FOLDER = "job"      # the marker kind of a job's output_dir
ADAPTER = "adapter"     # ... and of its final adapter folder


def claim_output_dir(out: Path, job: str = "") -> str:
    """The job whose output folder `out` is: the one its marker names, else `job`, marking a new or
    empty folder as its own (files.claim_dir refuses one holding files MacTuner did not write)."""
    marker = read_marker(out)
    if marker and marker.get("kind") == JOB_FOLDER:
        return marker.get("job", "")
    claim_dir(out, JOB_FOLDER, job)
    return job


def write_resolved_config(cfg: TrainConfig, out: Path) -> None:
    d = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    atomic_write_text(out / "config.json", json.dumps(d, indent=2))
    try:
        import yaml
    except ImportError:  # pragma: no cover
        return
    atomic_write_text(out / "config.yaml", yaml.safe_dump(d, sort_keys=False))


class RunLog:
    """metrics.jsonl and tensorboard/ of one run; `resume_step` None starts metrics.jsonl afresh."""

    def __init__(self, out: Path, resume_step: Optional[int], writer: bool = True):
        self.path, self.writer = out / "metrics.jsonl", writer
        if not writer:
            return
        if resume_step is not None and self.path.exists():  # drop records after the checkpoint we resume from
            keep = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self.board = EventWriter(out / "tensorboard")

    def record(self, kind: str, event, scalars: dict) -> None:
        """`event` (a Step or an Eval) as a metrics.jsonl record of `kind`, and `scalars` for TensorBoard."""
        if not self.writer:
            return
        rec = {"type": kind, **dataclasses.asdict(event), "time": time.time()}
        with writing(self.path, 1 << 16):
            with open(self.path, "a") as f:
                f.write(json.dumps(rec, default=float) + "\n")
            self.board.scalars(event.step, scalars)
