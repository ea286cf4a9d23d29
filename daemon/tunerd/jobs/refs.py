"""Job references, written once: every request that names a job goes through here.

A job is named by
- its id (`20261123-135534-1a2b3c`) or a unique prefix of it (git/docker style: `20261123-135534`);
- `latest`: the job submitted last;
- any of these behind `job:` where a field also takes a path or a model id (chat's model and
  adapter, evaluate's adapters, models load/unload, adapters export/fuse): `job:<id>`,
  `job:<prefix>`, `job:latest`. Adapters export/fuse also take them bare, as the README writes
  `adapters fuse ID DIR`: an existing path of that name wins (Core.resolve_adapter).

An unknown reference is `JobNotFound` (NOT_FOUND); a prefix that fits several jobs is
`AmbiguousJobRef` (INVALID_ARGUMENT, with the candidates).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..backends.adapter_base import adapter_base
from ..paths import resolve_path
from ..training.checkpoints import list_checkpoints
from .store import JobNotFound, JobRecord, JobStore

PREFIX = "job:"
LATEST = "latest"
_SHOWN = 5  # candidates named in an ambiguity error


class AmbiguousJobRef(ValueError):
    """A prefix that fits more than one job."""

    def __init__(self, ref: str, candidates: list[str]):
        shown = ", ".join(candidates[:_SHOWN]) + (f" and {len(candidates) - _SHOWN} more"
                                                  if len(candidates) > _SHOWN else "")
        super().__init__(f"job {ref!r} is ambiguous: it is the start of {len(candidates)} job ids ({shown}); "
                         "type more of the id")
        self.ref, self.candidates = ref, candidates


def is_ref(text: str) -> bool:
    """Whether a field that also takes paths and model ids names a job (`job:...`)."""
    return text.startswith(PREFIX)


def resolve_id(store: JobStore, ref: str) -> str:
    """The full id of the job `ref` names (an id, a unique prefix, `latest`, each with or
    without `job:`)."""
    key = ref[len(PREFIX):] if is_ref(ref) else ref
    key = key.strip()
    if not key:
        raise ValueError("job id: required (an id, a unique prefix of one, or latest)")
    if key == LATEST:
        newest = store.list(limit=1)
        if not newest:
            raise JobNotFound(ref)
        return newest[0].id
    matches = store.ids_starting_with(key)
    if key in matches:
        return key
    if not matches:
        raise JobNotFound(ref)
    if len(matches) > 1:
        raise AmbiguousJobRef(ref, matches)
    return matches[0]


def get(store: JobStore, ref: str) -> JobRecord:
    return store.get(resolve_id(store, ref))


def canonical(store: JobStore, text: str) -> str:
    """`job:<prefix>` / `job:latest` -> `job:<full id>`; anything else (a path, a model id) as it is.
    Names that stay stable: a resident adapter is keyed by this, an evaluation run labelled by it."""
    return PREFIX + resolve_id(store, text) if is_ref(text) else text


def model_of(store: JobStore, ref: str) -> str:
    """The base model the job trains."""
    return get(store, ref).model


def adapter_of(store: JobStore, ref: str) -> str:
    """The job's final adapter, else its latest checkpoint (a running job's)."""
    rec = get(store, ref)
    if rec.adapter_path and Path(rec.adapter_path).exists():
        return rec.adapter_path
    ckpts = list_checkpoints(Path(rec.output_dir)) if rec.output_dir else []
    if not ckpts:
        raise FileNotFoundError(f"job {rec.id} has no adapter or checkpoint yet (state {rec.state})")
    return str(ckpts[-1])


def as_ref(store: JobStore, text: str) -> str:
    """A bare job id (or a unique prefix, or `latest`) that is not an existing path -> `job:<id>`,
    so it works wherever `job:ID` does; anything else as it is (issue 23, item 7)."""
    if not text or is_ref(text) or os.path.lexists(resolve_path(text)):
        return text
    try:
        return PREFIX + resolve_id(store, text)
    except JobNotFound:   # not a job: a path or id for the caller to judge (an ambiguous prefix says so)
        return text


def adapter_name(store: JobStore, adapter: str) -> str:
    """The name a resident adapter is known by: `job:<full id>` for a job, else the folder's
    absolute path ('' for none)."""
    if is_ref(adapter):
        return canonical(store, adapter)
    return str(Path(resolve_path(adapter)).resolve()) if adapter else ""


@dataclass
class Target:
    """What a request's model / adapter / backend fields name, job references resolved."""
    model: str
    adapter: str = ""        # the folder to read ("" for the bare base)
    adapter_name: str = ""   # the name a resident adapter is known by: `job:<full id>` or the folder
    backend: str = "auto"


def target(store: JobStore, model: str = "", adapter: str = "", backend: str = "auto") -> Target:
    """`adapter: job:<ref>` -> that job's adapter or latest checkpoint, its base model (unless
    `model` is given) and its backend (unless one is asked for); `model: job:<ref>` -> the job's
    base model; an adapter folder -> its absolute path, and (unless `model` is given) the base
    model its adapter_config.json names."""
    backend = backend or "auto"
    adapter = as_ref(store, adapter)
    name = adapter_name(store, adapter)
    path = name
    if is_ref(adapter):
        rec = store.get(name[len(PREFIX):])
        path = adapter_of(store, rec.id)
        model = model or rec.model
        if backend == "auto":
            backend = rec.backend or backend   # the job's own backend
    elif path and not model:   # an adapter folder alone: the base it names (adapter_config.json)
        model = adapter_base(path)
    if is_ref(model):
        model = model_of(store, model)
    return Target(model, path, name, backend)
