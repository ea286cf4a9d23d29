"""TensorBoard event files without TensorFlow, torch or tensorboard installed.

An event file is a TFRecord stream of `tensorflow.Event` protos: per record
`uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)`, little endian.
We write only what scalars need, encoding the protobuf by hand:
    Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
    Summary { repeated Value value = 1; }    Value { string tag = 1; float simple_value = 2; }
`tensorboard --logdir OUTPUT_DIR/tensorboard` shows train/loss, train/learning_rate, eval/loss, ...
"""
from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field_bytes(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int = 0, scalars: dict | None = None, file_version: str = "") -> bytes:
    msg = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
    if file_version:
        msg += _field_bytes(3, file_version.encode())
    if scalars:
        values = b"".join(_field_bytes(1, _field_bytes(1, tag.encode()) + b"\x15" + struct.pack("<f", float(v)))
                          for tag, v in scalars.items())
        msg += _field_bytes(5, values)
    return msg


def record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc(header)) + data + struct.pack("<I", masked_crc(data))


class EventWriter:
    """Append scalar summaries to one event file under `log_dir` (a new file per run/resume)."""

    def __init__(self, log_dir: Path):
        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = self.dir / name
        with open(self.path, "ab") as f:
            f.write(record(encode_event(time.time(), 0, file_version="brain.Event:2")))

    def scalars(self, step: int, values: dict) -> None:
        values = {k: v for k, v in values.items() if isinstance(v, (int, float))}
        if values:
            with open(self.path, "ab") as f:
                f.write(record(encode_event(time.time(), step, values)))
