"""Is a file whole? One cheap check, used before a library opens a file we wrote (an adapter for
chat, a checkpoint for resume), so a truncated copy fails naming the file instead of deep inside
safetensors or torch.

    file_problem(path)   why the file cannot be read ('' when it looks whole)

safetensors: the header's length and JSON, and every tensor's bytes inside the file; torch.save
archives (.pt/.bin/.pth): the zip directory; .json: it parses. Contents are not checksummed, so
garbage inside tensor data is not found.
"""
from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

MAX_SAFETENSORS_HEADER = 100 * 2**20   # safetensors itself refuses larger headers


def file_problem(f: Path) -> str:
    f = Path(f)
    size = f.stat().st_size
    try:
        if f.suffix == ".safetensors":
            return _safetensors_problem(f, size)
        if f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix in (".pt", ".bin", ".pth"):
            with zipfile.ZipFile(f):
                pass
    except (ValueError, KeyError, TypeError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        return f"unreadable ({size} bytes: {e})"
    return ""


def _safetensors_problem(f: Path, size: int) -> str:
    with open(f, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"truncated: {size} bytes, no safetensors header"
        n = struct.unpack("<Q", head)[0]
        if n > MAX_SAFETENSORS_HEADER:
            return f"unreadable: its header claims {n} bytes"
        if 8 + n > size:
            return f"truncated: {size} bytes, its header alone needs {8 + n}"
        header = json.loads(fh.read(n))
    if not isinstance(header, dict):
        return "unreadable: its safetensors header is not an object"
    end = 8 + n + max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    return f"truncated: {size} bytes of {end}" if end > size else ""   # (trailing bytes: not our concern)
