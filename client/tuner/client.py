"""`tuner.Client`: the daemon's gRPC API (proto/tuner/v1/tuner.proto) as Python methods.

    from tuner import Client, TunerError

    with Client.connect() as c:                       # $TUNER_HOME's socket (or home=, address=, token=)
        job = c.submit(config_path="/abs/path/train.yaml")
        for event in c.watch(job.id):                 # stored events, then live ones until the end
            print(event)
        for chunk in c.chat([{"role": "user", "content": "Hi"}], adapter=f"job:{job.id}"):
            print(chunk.delta, end="")

Methods return the proto messages (`tuner.v1.tuner_pb2`); server streams return a `Stream` to
iterate (and cancel). Every failure is a `TunerError` with `.code` (a grpc.StatusCode) and
`.details`. tunerctl is a client of exactly this class.
"""
from __future__ import annotations

from pathlib import Path
from typing import Generic, Iterable, Iterator, Mapping, Optional, TypeVar, Union

import grpc
from google.protobuf import json_format

from .connection import Target, healthy_channel, is_healthy, target
from .errors import TunerError
from .v1 import tuner_pb2 as pb
from .v1 import tuner_pb2_grpc

T = TypeVar("T")
Message = Union[pb.ChatMessage, Mapping[str, str]]
Sampling = Union[pb.SamplingParams, Mapping, None]


class Stream(Generic[T]):
    """A server stream: iterate it for its messages; `cancel()` ends it (the daemon stops the work)."""

    def __init__(self, call):
        self._call = call

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        try:
            return next(self._call)
        except grpc.RpcError as e:
            raise TunerError.from_rpc(e) from None

    def cancel(self) -> None:
        self._call.cancel()


def _sampling(sampling: Sampling) -> Optional[pb.SamplingParams]:
    if sampling is None or isinstance(sampling, pb.SamplingParams):
        return sampling
    return pb.SamplingParams(**sampling)


def _messages(messages: Iterable[Message]) -> list:
    return [m if isinstance(m, pb.ChatMessage) else pb.ChatMessage(**m) for m in messages]


def _request(cls, request, fields: dict):
    """A request given whole, or built from its fields (unknown names are a ValueError)."""
    if request is not None:
        if fields:
            raise TypeError(f"pass a {cls.__name__} or its fields, not both")
        return request
    return cls(**fields)


class Client:
    """A connection to one tunerd. Use `Client.connect(...)`, or `Client(channel)` for a channel you
    made yourself. A context manager: leaving it closes the channel."""

    def __init__(self, channel: grpc.Channel, target: Optional[Target] = None, timeout: Optional[float] = None):
        self.channel = channel
        self.target = target
        self.timeout = timeout      # seconds for every call (None: no deadline; a watch may take hours)
        self.stub = tuner_pb2_grpc.TunerStub(channel)

    @classmethod
    def connect(cls, home: Union[str, Path, None] = None, address: str = "", token: str = "", *,
                socket: Union[str, Path, None] = None, tls_ca: str = "", autostart: bool = False,
                timeout: Optional[float] = None) -> "Client":
        """The daemon of `home` (default $TUNER_HOME or ~/.tuner) on its Unix socket, or the one at
        `address` ("HOST:PORT" over TCP, or "unix:///path"). Over TCP the bearer `token` defaults to
        HOME/token, else $TUNER_TOKEN; `tls_ca` (a CA file) turns on TLS. `autostart` starts a local
        daemon when none answers. DaemonUnavailable (a TunerError) when none answers."""
        t = target(Path(home) if home else None, address, token, Path(socket) if socket else None, tls_ca)
        return cls(healthy_channel(t, autostart=autostart), t, timeout)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _unary(self, method: str, request):
        try:
            return getattr(self.stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise TunerError.from_rpc(e) from None

    def _stream(self, method: str, request) -> Stream:
        return Stream(getattr(self.stub, method)(request, timeout=self.timeout))

    # -- the host --------------------------------------------------------------------------------
    def healthy(self, timeout: float = 1.0) -> bool:
        """Whether the daemon answers its health check."""
        return is_healthy(self.channel, timeout)

    def info(self) -> pb.Info:
        """Version, backends, devices and memory of the host."""
        return self._unary("GetInfo", pb.GetInfoRequest())

    # -- resident models -------------------------------------------------------------------------
    def models(self) -> list[pb.ModelStatus]:
        """The models held in memory, each with its attached adapters."""
        return list(self._unary("ListModels", pb.ListModelsRequest()).models)

    def load(self, model: str, **fields) -> pb.ModelStatus:
        """Load `model` (hub id or path) and keep it resident; `fields` are LoadModelRequest's
        (backend, quantization, dtype, revision, keep_alive_seconds, adapter)."""
        return self._unary("LoadModel", pb.LoadModelRequest(model=model, **fields))

    def load_stream(self, model: str, **fields) -> Stream[pb.LoadModelProgress]:
        """`load`, with download progress while a hub model is fetched; the last message has `status`."""
        return self._stream("LoadModelStream", pb.LoadModelRequest(model=model, **fields))

    def unload(self, model: str = "", **fields) -> pb.UnloadModelResponse:
        """Free a resident base with its adapters, or with `adapter=` only that adapter; `fields` are
        UnloadModelRequest's (adapter, backend, quantization, dtype); empty ones match every model."""
        return self._unary("UnloadModel", pb.UnloadModelRequest(model=model, **fields))

    # -- jobs ------------------------------------------------------------------------------------
    def submit(self, config: Union[pb.TrainingConfig, Mapping, None] = None, **fields) -> pb.Job:
        """Submit a training job; it returns at once (queued or running). `config`: typed keys (a
        TrainingConfig or a dict of its fields); or `config_path=` (a YAML on the daemon's host) /
        `config_yaml=` (its text); `fields` are SubmitJobRequest's (base_dir, overrides, name)."""
        if isinstance(config, Mapping):
            try:
                config = json_format.ParseDict(config, pb.TrainingConfig())
            except json_format.ParseError as e:   # an unknown key or a wrong type, named
                raise ValueError(f"config: {e}") from None
        return self._unary("SubmitJob", pb.SubmitJobRequest(config=config, **fields))

    def watch(self, job_id: str, from_sequence: int = 0, follow: bool = True) -> Stream[pb.JobEvent]:
        """A job's events from `from_sequence` on: stored ones, then (with `follow`) live ones until it ends."""
        return self._stream("WatchJob", pb.WatchJobRequest(job_id=job_id, from_sequence=from_sequence,
                                                           follow=follow))

    def job(self, job_id: str) -> pb.Job:
        """One job (an id, a unique prefix of one, or latest)."""
        return self._unary("GetJob", pb.GetJobRequest(job_id=job_id))

    def jobs(self, limit: int = 0, states: Iterable[int] = ()) -> list[pb.Job]:
        """Jobs, newest first (`limit` 0: all), optionally only in these JobStates."""
        return list(self._unary("ListJobs", pb.ListJobsRequest(limit=limit, states=list(states))).jobs)

    def cancel(self, job_id: str) -> pb.Job:
        """Cancel a queued or running job (a running one checkpoints, then stops)."""
        return self._unary("CancelJob", pb.CancelJobRequest(job_id=job_id))

    def resume(self, job_id: str) -> pb.Job:
        """Resume an interrupted, failed or cancelled job from its latest checkpoint (same id)."""
        return self._unary("ResumeJob", pb.ResumeJobRequest(job_id=job_id))

    # -- chat ------------------------------------------------------------------------------------
    def chat(self, messages: Iterable[Message], *, model: str = "", adapter: str = "", backend: str = "",
             sampling: Sampling = None) -> Stream[pb.ChatChunk]:
        """Stream an answer to `messages` (ChatMessages or {"role", "content"} dicts): text deltas,
        then a chunk with finish_reason and usage. `adapter`: a folder, or job:<id>; `sampling`: a
        SamplingParams or a dict of its fields (temperature, max_tokens, stop, ...)."""
        return self._stream("Chat", pb.ChatRequest(model=model, adapter=adapter, backend=backend,
                                                   messages=_messages(messages), sampling=_sampling(sampling)))

    def generate(self, prompt: str, *, model: str = "", adapter: str = "", backend: str = "",
                 sampling: Sampling = None) -> Stream[pb.ChatChunk]:
        """Plain completion: continue `prompt` as it is (no chat template), streamed as `chat`."""
        return self._stream("Generate", pb.GenerateRequest(model=model, adapter=adapter, backend=backend,
                                                           prompt=prompt, sampling=_sampling(sampling)))

    # -- evaluation, data, advice ----------------------------------------------------------------
    def evaluate(self, request: Optional[pb.EvaluateRequest] = None, **fields) -> pb.EvaluateResponse:
        """Loss, perplexity and (with max_generations) ROUGE/BLEU; an EvaluateRequest or its fields
        (model, adapter, job_id, data_path, adapters, compare_base, predictions, references, ...)."""
        return self._unary("Evaluate", _request(pb.EvaluateRequest, request, fields))

    def evaluate_stream(self, request: Optional[pb.EvaluateRequest] = None,
                        **fields) -> Stream[pb.EvaluateProgress]:
        """`evaluate` with progress per generated row; the last message carries `result`."""
        return self._stream("EvaluateStream", _request(pb.EvaluateRequest, request, fields))

    def inspect_data(self, request: Optional[pb.InspectDataRequest] = None, **fields) -> pb.DataReport:
        """What a data set looks like to the model: an InspectDataRequest or its fields (config_path,
        data_path, job_id, model, overrides, base_dir, batch_size, max_seq_length)."""
        return self._unary("InspectData", _request(pb.InspectDataRequest, request, fields))

    def recommend(self, request: Optional[pb.RecommendRequest] = None, **fields) -> pb.Recommendation:
        """Hyper-parameters for a model and data set: a RecommendRequest or its fields (model,
        config_path, train_rows, data_path, base_dir)."""
        return self._unary("Recommend", _request(pb.RecommendRequest, request, fields))

    # -- adapters --------------------------------------------------------------------------------
    def adapters(self) -> list[pb.Adapter]:
        """The adapters jobs produced."""
        return list(self._unary("ListAdapters", pb.ListAdaptersRequest()).adapters)

    def export(self, adapter: str, out_dir: str, *, layout: str = "peft", force: bool = False, format: str = "",
               quant: str = "", out_file: str = "", model: str = "", name: str = "") -> pb.ExportAdapterResponse:
        """Copy an adapter (a folder, or job:<id>) in one layout (peft | mlx) into `out_dir`; with
        format="gguf", fuse it into its base (or `model`) and write one GGUF file at `out_file`
        (quant f16 | bf16 | q8_0); format="ollama": the GGUF + a Modelfile into `out_dir`, for
        `ollama create name`."""
        return self._unary("ExportAdapter", pb.ExportAdapterRequest(
            adapter=adapter, out_dir=out_dir, layout=layout, force=force, format=format, quant=quant,
            out_file=out_file, model=model, name=name))

    def export_stream(self, adapter: str, **fields) -> Stream[pb.ExportProgress]:
        """`export` with progress (stage, bytes done/total, ETA); the last message (done) has the
        path (or Hub repo URL) and its record. `fields`: ExportAdapterRequest's (out_dir, layout,
        format adapter|gguf|hub, quant, out_file, model, repo, private, fused, gguf_quant, force)."""
        return self._stream("Export", pb.ExportAdapterRequest(adapter=adapter, **fields))

    def fuse(self, adapter: str, out_dir: str, *, model: str = "", dequantize: bool = False,
             force: bool = False) -> pb.FuseAdapterResponse:
        """Merge an adapter into its base (or `model`) and write a standalone model into `out_dir`."""
        return self._unary("FuseAdapter", pb.FuseAdapterRequest(adapter=adapter, model=model, out_dir=out_dir,
                                                                dequantize=dequantize, force=force))
