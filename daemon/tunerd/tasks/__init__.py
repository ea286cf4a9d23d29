"""Training tasks: what differs between objectives, behind one seam (DESIGN.md §3).

    get_task(cfg) -> Task       the task `cfg.task` names (tasks/base.py says what a task owns)
    TASKS                       name -> Task class, one module of this package each

The one Trainer (training/loop.py) keeps the rest: schedule, accumulation, clipping, checkpoints,
exact resume, events, rank sharding. Adding a task is one new module here with a `Task` subclass
(its `name` listed in config/rules.TASKS, which validates configs below this floor).
"""
from __future__ import annotations

from .base import Task
from .dpo import DPO
from .orpo import ORPO
from .sft import SFT

TASKS: dict[str, type[Task]] = {t.name: t for t in (SFT, DPO, ORPO)}


def get_task(cfg) -> Task:
    if cfg.task not in TASKS:
        raise ValueError(f"task: {cfg.task!r} is not one of {', '.join(TASKS)}")
    return TASKS[cfg.task](cfg)


__all__ = ["Task", "TASKS", "get_task"]
