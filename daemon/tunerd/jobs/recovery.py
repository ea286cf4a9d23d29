"""What a daemon that stopped uncleanly left, put right at start-up: job records rebuilt from the
job folders in $TUNER_HOME/runs/ when jobs.db is missing or empty, and half-written folders removed.

A job's folder holds what a record needs: config.json (the resolved config, written before the
first step), metrics.jsonl (its steps and evals), its checkpoints, once it finished, adapter/, and
exports.jsonl (what was exported from it: jobs/exports.py), which refills the exports table.
A job with its final adapter becomes succeeded; any other becomes interrupted, so `tunerctl jobs
resume` continues it from its newest checkpoint. Its events are a StateChanged saying so, then the
Step and Eval events of metrics.jsonl. Jobs whose output_dir was outside runs/ are not found.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .. import files
from ..training import events as ev
from ..training.checkpoints import TrainerState, list_checkpoints, step_of
from .exports import in_folder
from .store import INTERRUPTED, RUNNING, SUCCEEDED, JobRecord, JobStore

log = logging.getLogger(__name__)
CONFIG_FILE = "config.json"
ADAPTER_DIR = "adapter"


def remove_stale_temporaries(store: JobStore) -> list[str]:
    """Half-written folders (checkpoints, adapters) in the output folders of jobs that are not
    running (at start-up: none runs); only those provably ours (files.remove_stale_temporaries)."""
    done = []
    for rec in store.list():
        if rec.output_dir and rec.state != RUNNING:
            done += [f"job {rec.id}: {what}" for what in files.remove_stale_temporaries(Path(rec.output_dir))]
    return done


def rebuild_from_runs(store: JobStore, runs_dir: Path) -> list[str]:
    """Insert a record for each job folder in `runs_dir` that the store lacks; what was done, as
    lines for the log (folders that cannot be rebuilt are named there too)."""
    runs_dir = Path(runs_dir)
    done: list[str] = []
    if not runs_dir.is_dir():
        return done
    for folder in sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if store.ids_starting_with(folder.name) == [folder.name]:
            continue
        try:
            rec, events = job_from_folder(folder)
        except (OSError, ValueError) as e:
            done.append(f"{folder}: not rebuilt ({e})")
            continue
        store.restore(rec, events, in_folder(folder))
        done.append(f"job {rec.id}: rebuilt as {rec.state} (step {rec.step}) from {folder}")
    return done


def job_from_folder(folder: Path) -> tuple[JobRecord, list]:
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        raise ValueError(f"no {CONFIG_FILE}: the job stopped before its first step")
    config = json.loads(cfg_path.read_text())
    metrics = _metrics(folder / "metrics.jsonl")
    train = [m for m in metrics if m.get("type") == "train"]
    evals = [m for m in metrics if m.get("type") == "eval"]
    checkpoints = list_checkpoints(folder)
    adapter = folder / ADAPTER_DIR
    succeeded = (adapter / "adapter_config.json").exists() or (adapter / "config.json").exists()
    state = SUCCEEDED if succeeded else INTERRUPTED
    step = max([int(m.get("step", 0)) for m in train] + [step_of(c) for c in checkpoints[-1:]], default=0)
    total = TrainerState.read(checkpoints[-1]).total_steps if checkpoints else int(config.get("max_steps") or 0)
    created = _created_at(folder.name, cfg_path)
    finished = max((p.stat().st_mtime for p in (folder / "metrics.jsonl", adapter) if p.exists()), default=created)
    reason = (f"rebuilt from {folder} (jobs.db was missing or empty)" +
              ("" if succeeded else f"; resume it with `tunerctl jobs resume {folder.name}`"))
    rec = JobRecord(id=folder.name, state=state, created_at=created, config_json=json.dumps(config),
                    started_at=created, finished_at=finished, model=str(config.get("model", "")),
                    backend=str(config.get("backend", "")), output_dir=str(folder),
                    adapter_path=str(adapter) if succeeded else "", error="" if succeeded else reason,
                    step=step, total_steps=total, last_loss=float(train[-1]["loss"]) if train else 0.0,
                    best_eval_loss=min((float(m["eval_loss"]) for m in evals), default=0.0))
    events = [(kind, _payload(kind, m), float(m.get("time", created)))
              for m in metrics for kind in [{"train": "Step", "eval": "Eval"}.get(m.get("type"))] if kind]
    events.append(("StateChanged", {"state": state, "reason": reason}, time.time()))
    return rec, events


def _metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    found = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue   # a line cut short by a kill
    return found


def _payload(kind: str, record: dict) -> dict:
    """A metrics.jsonl record as the event the loop emitted (its fields only)."""
    fields = ev.EVENT_TYPES[kind].__dataclass_fields__
    return {k: v for k, v in record.items() if k in fields}


def _created_at(job_id: str, config: Path) -> float:
    """From the id (YYYYmmdd-HHMMSS-xxxxxx, local time), else config.json's time."""
    try:
        return time.mktime(time.strptime(job_id[:15], "%Y%m%d-%H%M%S"))
    except ValueError:
        return config.stat().st_mtime
