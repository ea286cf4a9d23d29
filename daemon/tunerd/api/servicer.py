"""The gRPC servicer: request -> core call -> response, nothing else.

Errors leave through one decorator (`_errors`) that maps exceptions to status codes.
"""
from __future__ import annotations

import functools
import inspect
import logging
import threading

import grpc
from tuner.v1 import tuner_pb2 as pb
from tuner.v1 import tuner_pb2_grpc as pb_grpc

from ..core import Core
from ..errors import status_for
from . import convert

log = logging.getLogger(__name__)


def _errors(fn):
    def fail(context, e):
        code, msg = status_for(e)
        if code == grpc.StatusCode.INTERNAL:
            log.exception("%s failed", fn.__name__)
        context.abort(code, msg)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(self, request, context):
            try:
                yield from fn(self, request, context)
            except Exception as e:  # noqa: BLE001
                fail(context, e)
        return stream

    @functools.wraps(fn)
    def unary(self, request, context):
        try:
            return fn(self, request, context)
        except Exception as e:  # noqa: BLE001
            fail(context, e)
    return unary


def _cancel_event(context) -> threading.Event:
    ev = threading.Event()
    context.add_callback(ev.set)
    return ev


class TunerServicer(pb_grpc.TunerServicer):
    def __init__(self, core: Core):
        self.core = core

    @_errors
    def GetInfo(self, request, context):
        return convert.info(self.core.info())

    # -- models
    @_errors
    def LoadModel(self, request, context):
        return convert.model_status(self.core.load_model(
            request.model, request.backend or "auto", request.quantization or "none", request.dtype or "auto",
            request.keep_alive_seconds, adapter=request.adapter))

    @_errors
    def LoadModelStream(self, request, context):
        for p in self.core.load_model_stream(
                request.model, request.backend or "auto", request.quantization or "none", request.dtype or "auto",
                request.keep_alive_seconds, adapter=request.adapter, cancelled=_cancel_event(context)):
            yield convert.load_progress(p)

    @_errors
    def UnloadModel(self, request, context):
        n = self.core.unload_model(request.model, request.adapter, request.backend, request.quantization,
                                   request.dtype)
        return pb.UnloadModelResponse(unloaded=n > 0, count=n)

    @_errors
    def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[convert.model_status(m) for m in self.core.list_models()])

    # -- jobs
    @_errors
    def SubmitJob(self, request, context):
        return convert.job(self.core.submit(
            config_path=request.config_path, config_yaml=request.config_yaml,
            doc=convert.training_config(request.config) if request.HasField("config") else None,
            overrides=list(request.overrides), base_dir=request.base_dir, name=request.name))

    @_errors
    def WatchJob(self, request, context):
        for e in self.core.watch_job(request.job_id, request.from_sequence, request.follow, context.is_active):
            yield convert.event(e)

    @_errors
    def GetJob(self, request, context):
        return convert.job(self.core.get_job(request.job_id))

    @_errors
    def ListJobs(self, request, context):
        states = [convert.STATE_NAMES[s] for s in request.states if s in convert.STATE_NAMES]
        return pb.ListJobsResponse(jobs=[convert.job(r) for r in self.core.list_jobs(request.limit, states)])

    @_errors
    def CancelJob(self, request, context):
        return convert.job(self.core.cancel_job(request.job_id))

    @_errors
    def ResumeJob(self, request, context):
        return convert.job(self.core.resume_job(request.job_id))

    # -- chat
    @_errors
    def Chat(self, request, context):
        for d in self.core.chat(convert.chat_params(request), _cancel_event(context)):
            yield convert.chat_chunk(d)

    @_errors
    def Generate(self, request, context):
        for d in self.core.chat(convert.chat_params(request), _cancel_event(context)):
            yield convert.chat_chunk(d)

    # -- data, evaluation, recommendation
    @_errors
    def InspectData(self, request, context):
        r = self.core.inspect_data(config_path=request.config_path, data_path=request.data_path,
                                   model=request.model, overrides=list(request.overrides),
                                   base_dir=request.base_dir, batch_size=request.batch_size,
                                   max_seq_length=request.max_seq_length, job_id=request.job_id)
        return convert.data_report(r)

    @_errors
    def Evaluate(self, request, context):
        for p in self.core.evaluate_stream(_cancel_event(context), **convert.evaluate_request(request)):
            if p.result is not None:   # the last message
                return convert.evaluate_response(p.result)

    @_errors
    def EvaluateStream(self, request, context):
        for p in self.core.evaluate_stream(_cancel_event(context), **convert.evaluate_request(request)):
            yield convert.evaluate_progress(p)

    @_errors
    def Recommend(self, request, context):
        r = self.core.recommend(model=request.model, config_path=request.config_path,
                                train_rows=request.train_rows, data_path=request.data_path,
                                base_dir=request.base_dir)
        return convert.recommendation(r)

    # -- adapters
    @_errors
    def ListAdapters(self, request, context):
        return pb.ListAdaptersResponse(adapters=[convert.adapter(a) for a in self.core.list_adapters()])

    @_errors
    def ExportAdapter(self, request, context):
        return pb.ExportAdapterResponse(path=self.core.export_adapter(request.adapter,
                                                                      **convert.export_request(request)))

    @_errors
    def Export(self, request, context):
        for p in self.core.export_stream(request.adapter, **convert.export_request(request)):
            yield convert.export_progress(p)

    @_errors
    def FuseAdapter(self, request, context):
        return pb.FuseAdapterResponse(path=self.core.fuse_adapter(request.adapter, request.out_dir,
                                                                  request.model, request.dequantize, request.force))
