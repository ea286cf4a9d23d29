"""Exporting a trained adapter, the one owner of it in the daemon (Core delegates; no gRPC here).

    Exports(store, home, worker, resolve_adapter)
      .stream(adapter, format=..., ...) -> Iterator[ExportProgress]   stage, bytes, ETA; the last
                                           message (done) carries the path and the ExportRecord
      .fuse(adapter, out_dir, model, dequantize, force) -> path      a fused Hugging Face model
      .of_job(job_id) -> [ExportRecord]                              what was exported, oldest first

Formats: adapter (one layout, export/layout.py), gguf (fused, one file: export/gguf.py), ollama
(a folder with that GGUF and a Modelfile: export/ollama.py) and hub
(a Hub repo: export/hub.py, with the model card of export/model_card.py). Everything is checked
before the slow work (the destination, the quant type, the Hub's reach and token); the work that
needs the device (fusing, converting) runs on the device worker, the upload on the request's thread.
Each export of a job's adapter is recorded with the job (the store's exports table); a path
inside a job's output folder counts as that job's.
"""
from __future__ import annotations

import dataclasses
import os
import queue
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Callable, Iterator

from ..backends.adapter_base import adapter_base
from ..export.progress import ExportProgress, ExportRecord, Reporter, size_of
from ..files import OutputRefused, check_destination, overlaps
from ..paths import resolve_path
from . import folders, refs
from .store import JobStore

FORMATS = ("adapter", "gguf", "ollama", "hub")


class Exports:
    def __init__(self, store: JobStore, home: Path, worker, resolve_adapter: Callable[[str], str]):
        self.store, self.home, self.worker, self.resolve_adapter = store, Path(home), worker, resolve_adapter

    def stream(self, adapter: str, out_dir: str = "", layout: str = "peft", force: bool = False, format: str = "",
               quant: str = "", out_file: str = "", model: str = "", name: str = "", repo: str = "", private: bool = False,
               fused: bool = False, gguf_quant: str = "") -> Iterator[ExportProgress]:
        format = format or "adapter"
        if format not in FORMATS:
            raise ValueError(f"format {format}: not one of {', '.join(FORMATS)}")
        src = self.resolve_adapter(adapter)
        job_id = self._job_of(adapter, src)
        q: "queue.SimpleQueue[ExportProgress]" = queue.SimpleQueue()
        report = Reporter(q.put)
        if format == "hub":
            path, record = yield from self._hub(src, job_id, model, repo, private, fused, gguf_quant, report, q)
        else:
            if format in ("gguf", "ollama"):   # fusing needs the device: on the worker
                work, rec = (self._gguf(src, out_file or out_dir, quant, model, force, report) if format == "gguf"
                             else self._ollama(src, out_dir or out_file, quant, model, force, name, report))
                path = yield from _pump(q, self.worker.call(work))
            else:                  # a copy: here
                work, rec = self._layout(src, out_dir, layout, force)
                path = yield from _pump(q, _in_thread(work))
            record = dataclasses.replace(rec, target=path, size_bytes=size_of(path))
        record = dataclasses.replace(record, time=time.time(), job_id=job_id)
        if job_id:
            self.store.add_export(job_id, dataclasses.asdict(record))
        yield report.finish(record.target, record)

    def of_job(self, job_id: str) -> tuple:
        return tuple(ExportRecord(**{k: v for k, v in r.items() if k in _FIELDS}) for r in self.store.exports(job_id))

    # -- the formats ----------------------------------------------------------------------------
    def _layout(self, src: str, out_dir: str, layout: str, force: bool):
        from ..export.layout import KIND, export_adapter
        out = resolve_path(out_dir)
        self.check_output(out, KIND, force, {"adapter": src})
        return (lambda: str(export_adapter(src, out, layout, force=force))), ExportRecord("adapter", out, layout=layout)

    def _gguf(self, src: str, out_file: str, quant: str, model: str, force: bool, report: Reporter):
        from ..export.gguf import check_quant, export_gguf
        model = self._base(src, model)
        if not out_file:
            raise ValueError("out_file: required (the .gguf file to write)")
        quant = check_quant(quant or "f16")
        out = resolve_path(out_file)
        folders.refuse_claimed(self.store, self.home, out, "out_file", fix="choose a file elsewhere")
        return ((lambda: str(export_gguf(model, src, out, quant=quant, force=force, progress=report))),
                ExportRecord("gguf", out, quant=quant))

    def _ollama(self, src: str, out_dir: str, quant: str, model: str, force: bool, name: str, report: Reporter):
        from ..export.gguf import check_quant
        from ..export.ollama import KIND, export_ollama
        model = self._base(src, model)
        if not out_dir:
            raise ValueError("out_dir: required (the folder for the GGUF and the Modelfile)")
        quant = check_quant(quant or "f16")
        out = resolve_path(out_dir)
        self.check_output(out, KIND, force, {"adapter": src})
        return ((lambda: str(export_ollama(model, src, out, quant=quant, force=force, name=name, progress=report))),
                ExportRecord("ollama", out, quant=quant))

    def _hub(self, src, job_id, model, repo, private, fused, gguf_quant, report, q):
        """A generator: the progress of staging (on the worker) and of the upload (here)."""
        from ..export import hub
        from ..export.gguf import check_quant
        model = self._base(src, model) if (fused or gguf_quant) else (model or adapter_base(src))
        gguf_quant = check_quant(gguf_quant) if gguf_quant else ""
        endpoint, token = hub.check_hub(repo)   # UNAVAILABLE in about 2 s: offline, no token, out of reach
        facts = self.facts(job_id, model)
        self.home.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".hub-", dir=self.home) as tmp:
            files = yield from _pump(q, self.worker.call(
                lambda: hub.stage(Path(tmp), Path(src), model, facts, repo, fused, gguf_quant, report)))
            report("upload", 0, sum(f.stat().st_size for _, f in files), message=f"uploading to {repo}")
            url = yield from _pump(q, _in_thread(lambda: hub.push(endpoint, token, repo, private, files, report)))
            size = sum(f.stat().st_size for _, f in files)
        return url, ExportRecord("hub", url, quant=gguf_quant, size_bytes=size, layout="fused" if fused else "adapter")

    def facts(self, job_id: str, model: str = "") -> dict:
        """What the model card tells of a job (export/model_card.py): its record and its events."""
        out = {"job_id": job_id, "base_model": model, "config": {}, "started": {}, "steps": [], "evals": [],
               "finished": {}}
        if not job_id:
            return out
        rec = self.store.get(job_id)
        out.update(base_model=model or rec.model, config=rec.config)
        seq = 0
        while True:
            events = self.store.events(job_id, seq + 1, limit=1000)
            if not events:
                return out
            for e in events:
                if e.kind in ("Started", "Finished"):
                    out[e.kind.lower()] = e.payload
                elif e.kind in ("Step", "Eval"):
                    out[e.kind.lower() + "s"].append(e.payload)
            seq = events[-1].seq

    # -- fuse, and the checks every export makes -------------------------------------------------
    def fuse(self, adapter: str, out_dir: str, model: str = "", dequantize: bool = False, force: bool = False) -> str:
        from ..export.fuse import KIND, fuse
        src = self.resolve_adapter(adapter)
        model = self._base(src, model)
        out = resolve_path(out_dir)
        self.check_output(out, KIND, force, {"adapter": src, "base model": model} if os.path.exists(model)
                          else {"adapter": src})
        return str(self.worker.call(lambda: fuse(model, src, out, dequantize=dequantize, force=force)).result())

    def check_output(self, out: str, kind: str, force: bool, sources: dict) -> None:
        """Before any slow work: an export or fuse destination is not the home or a job's folder
        (jobs/folders.py), not one of its own sources, and new, empty, ours or forced
        (files.check_destination); else INVALID_ARGUMENT naming why."""
        if not out:
            raise ValueError("out_dir: required (a new or empty folder)")
        folders.refuse_claimed(self.store, self.home, out, "out_dir")
        for what, src in sources.items():
            if overlaps(out, src):
                raise OutputRefused(f"out_dir {out} is (or holds, or is inside) the {what} {src} it is made from; "
                                    "choose a new folder")
        try:
            check_destination(out, kind, force=force)
        except OutputRefused as e:
            raise OutputRefused(f"out_dir {e}") from None

    @staticmethod
    def _base(src: str, model: str) -> str:
        model = model or adapter_base(src)
        if not model:
            raise ValueError("model: the adapter does not name its base model; pass --model")
        return model

    def _job_of(self, ref: str, src: str) -> str:
        """The job whose adapter `src` is: the job `ref` names, or the one whose output folder holds it."""
        if ref and refs.is_ref(ref):
            return refs.resolve_id(self.store, ref)
        p = os.path.realpath(src)
        for rec in self.store.list():
            if rec.output_dir and (p == os.path.realpath(rec.output_dir)
                                   or p.startswith(os.path.realpath(rec.output_dir) + os.sep)):
                return rec.id
        return ""


_FIELDS = {f.name for f in dataclasses.fields(ExportRecord)}


def _in_thread(fn) -> Future:
    fut: Future = Future()

    def run() -> None:
        try:
            fut.set_result(fn())
        except BaseException as e:  # noqa: BLE001 (handed to the waiting request)
            fut.set_exception(e)
    threading.Thread(target=run, name="export-upload", daemon=True).start()
    return fut


def _pump(q: "queue.SimpleQueue", fut: Future):
    """Yield the progress `q` receives until `fut` is done; then its result (or its exception)."""
    while True:
        try:
            yield q.get(timeout=0.1)
        except queue.Empty:
            if fut.done() and q.empty():
                return fut.result()
