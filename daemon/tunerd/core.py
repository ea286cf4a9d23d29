"""The daemon's core: jobs, resident models, chat, data, adapters. Knows nothing of gRPC.

The one front door: `tunerd.api.servicer` (and the HTTP layer) translate requests into calls on
one `Core` and results back, and call nothing else. Here every job reference is resolved
(jobs/refs.py: ids, unique prefixes, `latest`, `job:...`) and every path in a request resolved
against the request's base dir (paths.py); host facts come from host.py. Results are dataclasses
(results.py, and the registry's ModelStatus), never dicts.

Core owns the one device worker (jobs/worker.py): it makes it and hands it to the job manager,
chat and the model registry. Work on models goes through `self.worker`; request threads read the
resident models only from the registry's published snapshot (`ModelRegistry.snapshot`).
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional

import yaml

from . import __version__, host
from .backends.families import check_family
from .backends.peak import keep_peaks_in
from .backends.registry import resolve_backend
from .chat import ChatDelta, ChatParams, ChatService, check_request
from .config.loader import ConfigError, load_config, merge
from .data.inspect import check_for_submit
from .gguf_file import OLLAMA_PREFIX, is_gguf
from .files import OutputRefused, check_destination
from .jobs import folders, refs
from .jobs.exports import Exports
from .jobs.job_config import job_config
from .jobs.manager import JobManager
from .jobs.recovery import rebuild_from_runs, remove_stale_temporaries
from .jobs.runner import run_training as train_job
from .jobs.store import RUNNING, SUCCEEDED, JobNotFound, JobRecord, JobStore, StoredEvent
from .jobs.worker import DeviceWorker
from .models import download
from .backends.adapter_base import ADAPTER_CONFIG, adapter_base
from .models.check import check_adapter, check_model
from .models.fit import check_fits
from .models.gguf import use_home as use_gguf_home
from .models.registry import ModelRegistry, ModelStatus
from .paths import local_or_id, looks_like_hub_id, resolve_path
from .results import AdapterInfo, Info, LoadProgress, ModelId
from .training.outputs import JOB_FOLDER

if TYPE_CHECKING:
    from .data.inspect import DataReport
    from .evaluation.runs import EvalProgress, EvalResult
    from .export.progress import ExportProgress
    from .recommend import Recommendation


class Core:
    def __init__(self, home: Path, run_training=None, keep_alive: float = 300.0):
        self.home = Path(home)
        keep_peaks_in(self.home / "device_peak.json")   # the device's measured FLOP/s, once per home
        self.started_at = time.time()
        self.store = JobStore(self.home / "jobs.db")   # StoreDamaged: the daemon refuses to start
        self.rebuilt_on_start = rebuild_from_runs(self.store, self.home / "runs") if self.store.was_missing else []
        self.interrupted_on_start = self.store.mark_orphans_interrupted()
        self.cleaned_on_start = remove_stale_temporaries(self.store)
        use_gguf_home(self.home)   # GGUF models are converted into <home>/models/gguf
        self.worker = DeviceWorker()
        self.registry = ModelRegistry(resolve_backend, keep_alive, self.worker)   # evicts when the worker idles
        # a running job lends its model to chat on its base (models/registry.py Lease)
        self.jobs = JobManager(self.store, self.home / "runs", self.worker,
                               run_training or partial(train_job, lend=self.registry.lend))
        self.chat_service = ChatService(self.worker, self.registry, self.store)
        self.exports = Exports(self.store, self.home, self.worker, self.resolve_adapter)
        self._tokenizers: dict = {}
        self._submit_lock = threading.Lock()   # checking an output folder and claiming it: one submit at a time

    def start(self) -> None:
        self.worker.start()

    def shutdown(self, timeout: float = 60.0) -> None:
        self.chat_service.close()  # chats end at once; the running job checkpoints at its next step
        self.jobs.shutdown()
        self.worker.stop(timeout)
        self.store.close()

    # -- info ----------------------------------------------------------------------------------
    def info(self) -> Info:
        total, avail = host.memory()
        return Info(__version__, "tuner.v1", tuple(host.backend_status()), tuple(host.devices()),
                    host.default_backend(), str(self.home), os.getpid(), time.time() - self.started_at, total, avail)

    # -- jobs (every `ref` is an id, a unique prefix of one, or latest: jobs/refs.py) -------------
    def submit(self, config_path: str = "", config_yaml: str = "", doc: Optional[dict] = None,
               overrides: Optional[list] = None, base_dir: str = "", name: str = "") -> JobRecord:
        """Relative paths (the config file, the model, data in the config) resolve against
        base_dir (the client's cwd); without one, against the config file's folder."""
        layer = dict(doc or {})
        if config_yaml:
            try:
                parsed = yaml.safe_load(config_yaml) or {}
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                raise ConfigError([f"invalid YAML ({getattr(e, 'problem', None) or e})"],
                                  "config_yaml" + (f":{mark.line + 1}" if mark else "")) from None
            if not isinstance(parsed, dict):
                raise ValueError("config_yaml: top level must be a mapping")
            if "_base_" in parsed:
                raise ValueError("config_yaml: `_base_` needs a file; send config_path instead")
            layer = merge(parsed, layer)
        path = resolve_path(config_path, base_dir)
        base_dir = base_dir or (str(Path(path).parent) if path else "")
        cfg = load_config(path or None, overrides or [], layer, base_dir=base_dir or None, check_paths=True)
        if cfg.model and not looks_like_hub_id(cfg.model, base_dir) and not cfg.model.startswith(OLLAMA_PREFIX):
            model_path = Path(resolve_path(cfg.model, base_dir))
            if not model_path.exists():
                raise FileNotFoundError(f"model: local path not found: {model_path}")
            cfg = dataclasses.replace(cfg, model=str(model_path.resolve()))
        elif cfg.model and not cfg.model.startswith(OLLAMA_PREFIX):
            check_model(cfg.model)   # an uncached hub id, the hub out of reach: UNAVAILABLE now (hub.py)
        check_for_submit(cfg, Path(base_dir or "."))   # bad rows: INVALID_ARGUMENT now, not when the job runs
        check_family(cfg.model, resolve_backend(cfg), cfg.revision, auto=cfg.backend == "auto")   # naming one that can
        check_fits(cfg.model, resolve_backend(cfg), cfg.quantization, job=cfg)   # RESOURCE_EXHAUSTED: what fits
        if cfg.output_dir:
            cfg = dataclasses.replace(cfg, output_dir=resolve_path(cfg.output_dir, base_dir))
        with self._submit_lock:
            if cfg.output_dir:
                self._check_job_output(cfg.output_dir)
            return self._with_position(self.jobs.submit(cfg, name=name, base_dir=base_dir))

    def _check_job_output(self, out: str) -> None:
        """A new job's output_dir: not the home, runs/ or another job's folder (jobs/folders.py),
        and new, empty or ours (files.check_destination); else INVALID_ARGUMENT naming why."""
        folders.refuse_claimed(self.store, self.home, out, "output_dir:", fix="choose a new folder, or leave "
                               "output_dir unset (each job then gets its own, $TUNER_HOME/runs/<job id>)")
        try:
            check_destination(out, JOB_FOLDER)
        except OutputRefused as e:
            raise OutputRefused(f"output_dir: {e}") from None

    def get_job(self, ref: str) -> JobRecord:
        return self._with_position(refs.get(self.store, ref))

    def list_jobs(self, limit: int = 0, states: Optional[list[str]] = None) -> list[JobRecord]:
        return [self._with_position(r) for r in self.store.list(limit=limit, states=states or None)]

    def cancel_job(self, ref: str) -> JobRecord:
        return self._with_position(self.jobs.cancel(refs.resolve_id(self.store, ref)))

    def resume_job(self, ref: str) -> JobRecord:
        return self._with_position(self.jobs.resume(refs.resolve_id(self.store, ref)))

    def watch_job(self, ref: str, from_sequence: int = 0, follow: bool = True,
                  is_active: Callable[[], bool] = lambda: True) -> Iterator[StoredEvent]:
        return self.jobs.watch(refs.resolve_id(self.store, ref), from_sequence, follow, is_active)

    def _with_position(self, rec: JobRecord) -> JobRecord:
        return dataclasses.replace(rec, queue_position=self.jobs.queue_position(rec.id),
                                   exports=self.exports.of_job(rec.id))

    # -- models --------------------------------------------------------------------------------
    def load_model(self, model: str, backend: str = "auto", quantization: str = "none",
                   dtype: str = "auto", keep_alive: float = 0.0, adapter: str = "") -> ModelStatus:
        t = refs.target(self.store, model, adapter, backend)
        if not t.model:
            raise ValueError("model: required (a hub id, a local path, or job:<id>)")
        check_model(t.model)      # a file, a folder without config.json, an unknown id: refused here
        if t.adapter:
            check_adapter(t.adapter)
        download.fetch(t.model)   # here: the device worker keeps working meanwhile
        return self.worker.call(lambda: self.registry.get(
            t.model, t.backend, quantization, dtype, adapter=t.adapter, name=t.adapter_name,
            keep_alive=keep_alive or None).status()).result()

    def load_model_stream(self, model: str, backend: str = "auto", quantization: str = "none", dtype: str = "auto",
                          keep_alive: float = 0.0, adapter: str = "", cancelled=None) -> Iterator[LoadProgress]:
        """Download progress while a hub model is fetched (here, not on the device worker), then
        (the last message, `loaded`) the resident's status."""
        t = refs.target(self.store, model, adapter, backend)
        if t.model:
            check_model(t.model)
        for d in download.stream(t.model, cancelled=cancelled):
            yield LoadProgress(download=d)
        yield LoadProgress(loaded=self.load_model(model, backend, quantization, dtype, keep_alive, adapter))

    def unload_model(self, model: str = "", adapter: str = "", backend: str = "", quantization: str = "",
                     dtype: str = "") -> int:
        name = refs.adapter_name(self.store, adapter)
        return self.worker.call(lambda: self.registry.unload(model, name, backend, quantization, dtype)).result()

    def list_models(self) -> tuple[ModelStatus, ...]:
        return self.registry.snapshot()

    # -- chat ----------------------------------------------------------------------------------
    def chat(self, params: ChatParams, cancelled: threading.Event) -> Iterator[ChatDelta]:
        """A chat reply (params.messages) or a plain completion (params.prompt), streamed; first
        the download of a hub model not in the cache yet (here, not on the device worker). What the
        request names is checked first, so a bad one never starts a download or reaches the worker."""
        check_request(params)
        t = refs.target(self.store, params.model, params.adapter, params.backend)
        if t.model:
            check_model(t.model)
        for d in download.stream(t.model, cancelled=cancelled):
            yield ChatDelta(download=d)
        yield from self.chat_service.stream(params, cancelled)

    def model_ids(self) -> list[ModelId]:
        """Every name a request can use as one model id (the OpenAI-compatible /v1/models):
        resident bases, their attached adapters, finished jobs' adapters and running jobs
        (job:<id>: the latest checkpoint)."""
        out: dict[str, ModelId] = {}
        for m in self.registry.snapshot():
            out.setdefault(m.model, ModelId(m.model, int(m.loaded_at), "base"))
            for a in m.chat_adapters:
                out.setdefault(a.name, ModelId(a.name, int(a.loaded_at), "adapter", m.model))
        for rec in self.store.list(states=[RUNNING, SUCCEEDED]):
            if rec.state == SUCCEEDED and not (rec.adapter_path and Path(rec.adapter_path).exists()):
                continue
            out.setdefault(f"job:{rec.id}", ModelId(f"job:{rec.id}", int(rec.created_at),
                                                    "job" if rec.state == RUNNING else "adapter", rec.model))
        return list(out.values())

    def resolve_model_id(self, model_id: str) -> tuple[str, str, str]:
        """One model id -> (model, adapter, backend) for ChatParams: job:<id>; an adapter attached
        to a resident base; an adapter folder (its base from adapter_config.json); else a model."""
        if not model_id:
            raise ValueError("model: required (see GET /v1/models)")
        if refs.is_ref(model_id):
            return "", model_id, "auto"
        resident = self.registry.snapshot()
        for m in resident:
            if any(a.name == model_id for a in m.chat_adapters):
                return m.model, model_id, m.backend
        for m in resident:
            if m.model == model_id:
                return model_id, "", m.backend
        path = Path(model_id).expanduser()
        if (path / ADAPTER_CONFIG).is_file():
            check_adapter(str(path))
            base = adapter_base(path)
            if not base:
                raise ValueError(f"model: adapter {model_id} does not name its base model")
            return base, str(path.resolve()), "auto"
        check_model(model_id)   # a file, /dev/zero, ~, an unknown id: a clear error here, never INTERNAL
        return model_id, "", "auto"

    # -- adapters ------------------------------------------------------------------------------
    def list_adapters(self) -> list[AdapterInfo]:
        out = []
        for rec in self.store.list(states=[SUCCEEDED]):
            if not rec.adapter_path or not Path(rec.adapter_path).exists():
                continue
            cfg = rec.config
            p = Path(rec.adapter_path)
            layouts = [name for name, f in (("peft", "adapter_model.safetensors"), ("mlx", "adapters.safetensors"))
                       if (p / f).exists() or any(p.rglob(f))]
            out.append(AdapterInfo(rec.adapter_path, rec.id, rec.model, cfg.get("peft_adapter", ""),
                                   cfg.get("lora_r", 0), rec.finished_at, tuple(layouts),
                                   self.exports.of_job(rec.id)))
        return out

    def resolve_adapter(self, ref: str) -> str:
        """The folder an adapter reference names: a job's adapter or latest checkpoint (`job:ID`, or a
        bare id, unique prefix or `latest` that is not an existing path), or a path."""
        if refs.is_ref(ref):
            return refs.adapter_of(self.store, ref)
        path = resolve_path(ref)
        if not ref or os.path.lexists(path):
            return path
        try:
            return refs.adapter_of(self.store, ref)
        except JobNotFound:
            raise FileNotFoundError(f"adapter {ref!r}: no such folder ({path}), and no job id starts with it "
                                    "(see `tunerctl jobs list`)") from None

    def export_stream(self, adapter: str, **request) -> Iterator[ExportProgress]:
        """An export's progress (jobs/exports.py); the last message (done) names what was written."""
        return self.exports.stream(adapter, **request)

    def export_adapter(self, adapter: str, out_dir: str, layout: str = "peft", force: bool = False,
                       format: str = "", quant: str = "", out_file: str = "", model: str = "", **request) -> str:
        last = None
        for last in self.exports.stream(adapter, out_dir=out_dir, layout=layout, force=force, format=format,
                                        quant=quant, out_file=out_file, model=model, **request):
            pass
        return last.path

    def fuse_adapter(self, adapter: str, out_dir: str, model: str = "", dequantize: bool = False,
                     force: bool = False) -> str:
        return self.exports.fuse(adapter, out_dir, model, dequantize, force)

    # -- data --------------------------------------------------------------------------------------
    def inspect_data(self, config_path: str = "", data_path: str = "", model: str = "",
                     overrides: Optional[list] = None, base_dir: str = "", batch_size: int = 0,
                     max_seq_length: int = 0, job_id: str = "") -> DataReport:
        from .data.inspect import inspect_data
        if job_id:
            source, _, job_base = job_config(self.store, refs.resolve_id(self.store, job_id))
            model, base_dir = model or source.model, job_base or base_dir
        elif config_path:
            cfg = load_config(resolve_path(config_path, base_dir), overrides or [])
            model = model or cfg.model
            source = cfg
        elif data_path and overrides:   # --set data.format=... on a data file: a config around it
            source = load_config(doc={"model": model or "-", "data": {"train": local_or_id(data_path, base_dir),
                                                                      "test_size": 0.0, "shuffle": False}},
                                 overrides=overrides)
            model = model or ("" if source.model == "-" else source.model)
        elif data_path:
            source = local_or_id(data_path, base_dir)
        else:
            raise ValueError("inspect needs a config_path or a data_path")
        tokenizer = self._tokenizer(model, base_dir) if model else None  # none: the rows alone
        report = inspect_data(source, tokenizer, batch_size=batch_size or None,
                              max_seq_length=max_seq_length or None, base_dir=Path(resolve_path(".", base_dir)))
        return report

    def _tokenizer(self, model: str, base_dir: str):
        """Tokenizers for inspection are cheap and thread-safe to load; keep them cached."""
        key = local_or_id(model, base_dir)
        if is_gguf(key):
            key = download.fetch(key)   # a GGUF model: its converted folder (converted once)
        if key not in self._tokenizers:
            from transformers import AutoTokenizer
            if not os.path.isdir(key):   # a folder needs only its tokenizer files here
                check_model(key)   # an uncached hub id, the hub out of reach: UNAVAILABLE at once (hub.py)
            try:
                self._tokenizers[key] = AutoTokenizer.from_pretrained(key)
            except OSError as e:  # not a local dir, and the hub is unreachable or has no such repo
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise FileNotFoundError(f"model {model!r}: not a local directory, and its tokenizer could "
                                        f"not be loaded from the hub ({first})") from None
        return self._tokenizers[key]

    # -- evaluation and advice -------------------------------------------------------------------
    def evaluate_stream(self, cancelled: Optional[threading.Event] = None, predictions: Optional[list] = None,
                        references: Optional[list] = None, **request) -> Iterator[EvalProgress]:
        """Progress, the last message carrying the `result` (EvalResult: tunerd.evaluation.runs).
        With predictions and references: score them, no model."""
        from .chat import rng_untouched
        from .evaluation import plan as eval_plan
        from .evaluation.runs import EvalProgress, run_plan, score_predictions
        if predictions or references:
            yield EvalProgress(result=score_predictions(list(predictions or []), list(references or []),
                                                        request.get("tokenizer") or "whitespace"))
            return
        plan, model, backend = eval_plan.resolve(partial(job_config, self.store), self.resolve_adapter,
                                                 **self._eval_request(**request))
        dtype, quant = plan.cfg.dtype, plan.cfg.quantization

        def on_device(fn):
            def guarded():
                with rng_untouched():  # evaluation between a job's steps must not move its RNGs
                    return fn()
            return self.worker.call(guarded).result()

        def model_for(adapter: str):
            return self.registry.get(model, backend, quant, dtype, adapter=adapter).serve(adapter)

        stop = cancelled.is_set if cancelled is not None else (lambda: False)
        yield from run_plan(plan, on_device, model_for, stop)

    def _eval_request(self, base_dir: str = "", job_id: str = "", adapter: str = "",
                      adapters: Optional[list] = None, config_path: str = "", data_path: str = "",
                      model: str = "", **rest) -> dict:
        """The request with its job references canonical (`job:<full id>`) and its paths resolved
        against base_dir, before evaluation/plan.py reads it."""
        def adapter_ref(ref: str) -> str:
            return refs.canonical(self.store, ref) if refs.is_ref(ref) else resolve_path(ref, base_dir)
        return dict(rest, base_dir=base_dir, job_id=refs.resolve_id(self.store, job_id) if job_id else "",
                    adapter=adapter_ref(adapter), adapters=[adapter_ref(a) for a in adapters or []],
                    config_path=resolve_path(config_path, base_dir), data_path=local_or_id(data_path, base_dir),
                    model=local_or_id(model, base_dir))

    def evaluate(self, **request) -> EvalResult:
        return next(e.result for e in self.evaluate_stream(**request) if e.result is not None)

    def recommend(self, model: str = "", config_path: str = "", train_rows: int = 0, data_path: str = "",
                  base_dir: str = "") -> Recommendation:
        from .recommend import recommend
        return recommend(local_or_id(model, base_dir), resolve_path(config_path, base_dir), train_rows,
                         local_or_id(data_path, base_dir), base_dir,
                         tokenizer_for=lambda m: self._tokenizer(m, base_dir))
