"""The API cannot drift from the config: the proto's TrainingConfig (and its DataConfig) has the
same fields as TrainConfig (config/schema.py), of compatible types, and every one of them reaches
the config a submit builds (api/convert.py -> the loader)."""
from __future__ import annotations

import dataclasses
import typing

from google.protobuf.descriptor import FieldDescriptor as F
from tuner.v1 import tuner_pb2 as pb

from tunerd.api.convert import training_config
from tunerd.config.loader import from_dict
from tunerd.config.schema import DataConfig, TrainConfig

SCALARS = {str: {F.TYPE_STRING}, int: {F.TYPE_INT32, F.TYPE_INT64}, float: {F.TYPE_DOUBLE, F.TYPE_FLOAT},
           bool: {F.TYPE_BOOL}}
MAPPING = ("google.protobuf.Struct",)


def _problems(schema_cls, message) -> list[str]:
    hints = typing.get_type_hints(schema_cls)
    ours = {f.name for f in dataclasses.fields(schema_cls)}
    theirs = {f.name: f for f in message.DESCRIPTOR.fields}
    p = [f"{message.DESCRIPTOR.name} lacks {k}" for k in sorted(ours - set(theirs))]
    p += [f"{message.DESCRIPTOR.name}.{k} is not in {schema_cls.__name__}" for k in sorted(set(theirs) - ours)]
    for name in sorted(ours & set(theirs)):
        fd, hint = theirs[name], hints[name]
        args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]   # Optional[X] -> X
        where = f"{message.DESCRIPTOR.name}.{name} ({hint})"
        if hint is typing.Any:
            continue                                  # data.train: a path, a list, source dicts
        if dataclasses.is_dataclass(args[0]):          # data, distributed (Optional: unset, one process)
            hint = args[0]
            ok = fd.message_type is not None and not fd.is_repeated
            p += [] if ok else [f"{where}: not a message"]
            p += _problems(hint, getattr(pb, fd.message_type.name)) if ok else []
        elif hint is dict:
            if fd.is_repeated or fd.message_type is None or fd.message_type.full_name not in MAPPING:
                p.append(f"{where}: a mapping needs a google.protobuf.Struct")
        elif hint is list:
            if not fd.is_repeated:
                p.append(f"{where}: a list needs a repeated field")
        elif list in args:                            # lora_target_modules: a list or 'all-linear'
            if not fd.is_repeated or fd.type != F.TYPE_STRING:
                p.append(f"{where}: needs repeated string")
        elif fd.is_repeated or fd.message_type is not None or not any(fd.type in SCALARS.get(a, ()) for a in args):
            p.append(f"{where}: proto type {fd.type} does not fit")
        elif not fd.has_presence:
            p.append(f"{where}: needs `optional` (an unset field keeps the config's value)")
    return p


def test_training_config_has_every_schema_key_with_a_fitting_type():
    assert _problems(TrainConfig, pb.TrainingConfig) == []


def test_the_keys_the_proto_lacked_reach_the_config():
    msg = pb.TrainingConfig(model="m", bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=False, adam_beta1=0.8,
                            adam_beta2=0.95, adam_epsilon=1e-6, greater_is_better=True,
                            early_stopping_threshold=0.01, lr_scheduler_type="reduce_lr_on_plateau",
                            data=pb.DataConfig(train=["t.jsonl"], token="hf_x"))
    msg.lr_scheduler_kwargs.update({"patience": 3, "factor": 0.5, "mode": "min"})
    msg.data.operations.add().update({"select_rows": {"start": 0, "end": 10}})
    cfg = from_dict(training_config(msg))
    assert (cfg.bnb_4bit_quant_type, cfg.bnb_4bit_use_double_quant, cfg.adam_beta1, cfg.adam_beta2,
            cfg.adam_epsilon, cfg.greater_is_better, cfg.early_stopping_threshold) == (
        "fp4", False, 0.8, 0.95, 1e-6, True, 0.01)
    assert cfg.lr_scheduler_kwargs == {"patience": 3, "factor": 0.5, "mode": "min"}
    assert type(cfg.lr_scheduler_kwargs["patience"]) is int
    assert cfg.data.token == "hf_x" and cfg.data.operations == [{"select_rows": {"start": 0, "end": 10}}]
    assert cfg.data.train == "t.jsonl"
