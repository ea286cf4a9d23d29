"""Core values <-> proto messages. Pure translation, no logic."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from google.protobuf import json_format
from tuner.v1 import tuner_pb2 as pb

from ..backends.generation import Sampling
from ..chat import ChatDelta, ChatParams
from ..evaluation.runs import EvalProgress, EvalResult
from ..export.progress import ExportProgress, ExportRecord
from ..jobs.store import JobRecord, StoredEvent
from ..models.registry import ModelStatus
from ..results import AdapterInfo, Info, LoadProgress

_STATE = {"queued": pb.QUEUED, "running": pb.RUNNING, "succeeded": pb.SUCCEEDED, "failed": pb.FAILED,
          "cancelled": pb.CANCELLED, "interrupted": pb.INTERRUPTED}
STATE_NAMES = {v: k for k, v in _STATE.items()}
STRUCT = "google.protobuf.Struct"

# core event kind -> (oneof field, proto message)
_EVENTS = {
    "StateChanged": ("state_changed", pb.StateChanged),
    "Started": ("started", pb.TrainingStarted),
    "Log": ("log", pb.LogMessage),
    "Step": ("step", pb.StepMetrics),
    "Eval": ("eval", pb.EvalMetrics),
    "CheckpointSaved": ("checkpoint", pb.CheckpointSaved),
    "Finished": ("finished", pb.TrainingFinished),
    "Failed": ("failed", pb.TrainingFailed),
    "Cancelled": ("cancelled", pb.TrainingCancelled),
    "Download": ("download", pb.DownloadProgress),
}


def job(rec: JobRecord) -> pb.Job:
    return pb.Job(id=rec.id, name=rec.name, state=_STATE[rec.state], created_at=rec.created_at,
                  started_at=rec.started_at, finished_at=rec.finished_at, model=rec.model,
                  backend=rec.backend, output_dir=rec.output_dir, adapter_path=rec.adapter_path,
                  error=rec.error, step=rec.step, total_steps=rec.total_steps, last_loss=rec.last_loss,
                  best_eval_loss=rec.best_eval_loss, config_json=rec.config_json,
                  last_sequence=rec.last_sequence, queue_position=rec.queue_position,
                  metrics_path=str(Path(rec.output_dir) / "metrics.jsonl") if rec.output_dir else "",
                  tensorboard_dir=str(Path(rec.output_dir) / "tensorboard") if rec.output_dir else "",
                  exports=[export_record(r) for r in rec.exports])


def info(i: Info) -> pb.Info:
    return pb.Info(**{k: v for k, v in dataclasses.asdict(i).items() if k not in ("backends", "devices")},
                   backends=[pb.BackendInfo(**b) for b in i.backends],
                   devices=[pb.Device(**d) for d in i.devices])


def chat_params(r) -> ChatParams:
    """A ChatRequest (messages) or a GenerateRequest (a plain prompt)."""
    common = dict(model=r.model, adapter=r.adapter, backend=r.backend or "auto", sampling=sampling(r.sampling))
    if isinstance(r, pb.GenerateRequest):
        return ChatParams(prompt=r.prompt, **common)
    return ChatParams(messages=[{"role": m.role, "content": m.content} for m in r.messages], **common)


def chat_chunk(d: ChatDelta) -> pb.ChatChunk:
    return pb.ChatChunk(delta=d.text, finish_reason=d.finish_reason,
                        usage=pb.Usage(**dataclasses.asdict(d.usage)) if d.usage else None,
                        download=download(d.download) if d.download else None)


def model_status(m: ModelStatus) -> pb.ModelStatus:
    return pb.ModelStatus(model=m.model, backend=m.backend, quantization=m.quantization, dtype=m.dtype,
                          dtype_reason=m.dtype_reason, requested_dtype=m.requested_dtype,
                          memory_bytes=m.memory_bytes, base_bytes=m.base_bytes, loaded_at=m.loaded_at,
                          last_used_at=m.last_used_at, expires_at=m.expires_at, adapters=m.adapters,
                          attached=[pb.AttachedAdapter(**dataclasses.asdict(a)) for a in m.attached],
                          active_sequences=m.active_sequences, peak_active_sequences=m.peak_active_sequences,
                          context_length=m.context_length)


def load_progress(p: LoadProgress) -> pb.LoadModelProgress:
    if p.loaded is not None:   # the last message
        return pb.LoadModelProgress(status=model_status(p.loaded))
    return pb.LoadModelProgress(download=download(p.download))


def adapter(a: AdapterInfo) -> pb.Adapter:
    fields = {f.name: getattr(a, f.name) for f in dataclasses.fields(a) if f.name != "exports"}
    return pb.Adapter(**fields, exports=[export_record(r) for r in a.exports])


def export_record(r: ExportRecord) -> pb.ExportRecord:
    return pb.ExportRecord(**dataclasses.asdict(r))


def export_progress(p: ExportProgress) -> pb.ExportProgress:
    fields = {f.name: getattr(p, f.name) for f in dataclasses.fields(p) if f.name != "record"}
    return pb.ExportProgress(**fields, record=export_record(p.record) if p.record else None)


def export_request(r: pb.ExportAdapterRequest) -> dict:
    """ExportAdapterRequest -> jobs/exports.py Exports.stream's arguments (same names)."""
    return dict(out_dir=r.out_dir, layout=r.layout or "peft", force=r.force, format=r.format, quant=r.quant,
                out_file=r.out_file, model=r.model, name=r.name, repo=r.repo, private=r.private, fused=r.fused,
                gguf_quant=r.gguf_quant)


def download(d) -> pb.DownloadProgress:
    """`models.download.Download` -> proto (same field names)."""
    return pb.DownloadProgress(**dataclasses.asdict(d))


def event(e: StoredEvent) -> pb.JobEvent:
    out = pb.JobEvent(job_id=e.job_id, sequence=e.seq, time=e.time)
    if e.kind not in _EVENTS:  # an event kind this build does not know: show it as a log line
        out.log.CopyFrom(pb.LogMessage(level="info", message=f"{e.kind}: {json.dumps(e.payload)}"))
        return out
    name, cls = _EVENTS[e.kind]
    payload = dict(e.payload)
    if e.kind == "StateChanged":
        payload["state"] = _STATE.get(payload.get("state"), pb.JOB_STATE_UNSPECIFIED)
    known = {f.name for f in cls.DESCRIPTOR.fields}
    msg = cls(**{k: v for k, v in payload.items() if k in known and v is not None})
    getattr(out, name).CopyFrom(msg)
    return out


def training_config(msg: pb.TrainingConfig) -> dict:
    """Only the fields the client set (presence), as a config dict."""
    return _fields(msg)


def _fields(msg) -> dict:
    doc = {}
    for fd, value in msg.ListFields():
        struct = fd.message_type is not None and fd.message_type.full_name == STRUCT
        if struct:   # a mapping key (lr_scheduler_kwargs, data.operations)
            doc[fd.name] = [_mapping(v) for v in value] if fd.is_repeated else _mapping(value)
        elif fd.message_type is not None and not fd.is_repeated:
            doc[fd.name] = _fields(value)
        elif fd.is_repeated:
            doc[fd.name] = list(value)
        else:
            doc[fd.name] = value
    data = doc.get("data")
    if data:
        for k in ("train", "validation", "test", "retain"):
            if k in data and len(data[k]) == 1:
                data[k] = data[k][0]
    return doc


def _mapping(value) -> dict:
    """A Struct as the dict a YAML config would give: JSON numbers are doubles in a Struct, so a
    whole one (patience: 3) becomes an int again."""
    def plain(v):
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v
    return plain(json_format.MessageToDict(value))


def data_report(report) -> pb.DataReport:
    """data/inspect.py's DataReport -> proto: same field names; buckets and examples nested."""
    r = dataclasses.asdict(report)
    def rendered(examples):
        return [pb.RenderedExample(segments=[pb.TextSegment(text=seg["text"], supervised=seg["supervised"])
                                             for seg in ex]) for ex in examples]
    out = pb.DataReport(
        length_histogram=[pb.HistogramBucket(lo=lo, hi=hi, count=n) for lo, hi, n in r.get("length_histogram", [])],
        examples=rendered(r.get("examples", [])), rejected_examples=rendered(r.get("rejected_examples", [])))
    for f in pb.DataReport.DESCRIPTOR.fields:
        if f.message_type is not None or r.get(f.name) is None:
            continue
        value = r[f.name]
        if f.is_repeated:
            getattr(out, f.name).extend(str(v) if f.type == f.TYPE_STRING else v for v in value)
        else:
            setattr(out, f.name, value)
    return out


def sampling(s: pb.SamplingParams, default_max_tokens: int = 256) -> Sampling:
    fields = {f.name: v for f, v in s.ListFields() if f.name != "stop"}
    fields.setdefault("max_tokens", default_max_tokens)
    return Sampling(**fields, stop=list(s.stop))


def evaluate_request(r: pb.EvaluateRequest) -> dict:
    return dict(model=r.model, adapter=r.adapter, backend=r.backend, data_path=r.data_path,
                config_path=r.config_path, job_id=r.job_id, adapters=list(r.adapters),
                compare_base=r.compare_base, base_dir=r.base_dir, split=r.split,
                max_generations=r.max_generations, sampling=sampling(r.sampling, default_max_tokens=128),
                tokenizer=r.tokenizer or "whitespace", predictions=list(r.predictions),
                references=list(r.references), retain=r.retain,
                **({"generate_batch_size": r.generate_batch_size} if r.generate_batch_size else {}))


def evaluate_response(r: EvalResult) -> pb.EvaluateResponse:
    runs = [pb.EvaluateRun(label=u.label, adapter=u.adapter, loss=u.loss, perplexity=u.perplexity,
                           rows=u.rows, metrics=u.metrics, deltas=u.deltas,
                           generations=[pb.GenerationResult(**dataclasses.asdict(g)) for g in u.generations],
                           retain_generations=[pb.GenerationResult(**dataclasses.asdict(g))
                                               for g in u.retain_generations])
            for u in r.runs]
    return pb.EvaluateResponse(loss=r.loss, perplexity=r.perplexity, rows=r.rows, metrics=r.metrics,
                               runs=runs, tokenizer=r.tokenizer, split=r.split)


def evaluate_progress(p: EvalProgress) -> pb.EvaluateProgress:
    if p.result is not None:   # the last message
        return pb.EvaluateProgress(result=evaluate_response(p.result))
    return pb.EvaluateProgress(run=p.run, rows_done=p.rows_done, rows_total=p.rows_total,
                               eta_seconds=p.eta_seconds, elapsed_seconds=p.elapsed_seconds)


def recommendation(r) -> pb.Recommendation:
    """recommend.py's Recommendation -> proto."""
    cfg = {k: v for k, v in r.config.items() if not (k == "packing" and v == "auto")}  # unset = auto
    return pb.Recommendation(config=pb.TrainingConfig(**cfg), reasons=r.reasons, train_rows=r.train_rows,
                             tokens_p50=r.tokens_p50, tokens_p95=r.tokens_p95, tokens_max=r.tokens_max,
                             config_yaml=r.config_yaml, warnings=r.warnings)
