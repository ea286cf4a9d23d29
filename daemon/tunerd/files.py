"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

    atomic_write_text(path, text)       a text file (utf-8)
    atomic_write_bytes(path, data)      a binary file
    atomic_write_file(path, write)      `write(tmp_path)` makes the file (safetensors, torch.save)
    atomic_write_dir(path, fill)        `fill(tmp_dir)` makes a folder (checkpoints, adapters)
    remove_stale_temporaries(folder)    what a process killed inside atomic_write_dir left behind

Each writes beside the target (same file system) and renames over it with `os.replace`. A file's
temporary is `.NAME.<pid>.<random>.tmp`; a folder's is `.tmp-NAME-<pid>`, and the folder it replaces
is moved to `.old-NAME-<pid>` for the moment between the two renames. Atomic against a killed
process; there is no fsync, so a power cut may still lose the newest write.
"""
from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Callable, Optional, Union

PathLike = Union[str, Path]


def atomic_write_file(path: PathLike, write: Callable[[str], None], mode: Optional[int] = None) -> Path:
    """Create `path` with `write(tmp)`, which writes the whole file at the path string `tmp`.
    `mode` sets the permission bits (e.g. 0o600 for a secret), else the umask decides."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode))
        write(str(tmp))
        if mode is not None:
            os.chmod(tmp, mode)   # `write` may have replaced the file we created
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_bytes(path: PathLike, data: bytes, mode: Optional[int] = None) -> Path:
    return atomic_write_file(path, lambda tmp: Path(tmp).write_bytes(data), mode)


def atomic_write_text(path: PathLike, text: str, mode: Optional[int] = None) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), mode)


def atomic_write_dir(path: PathLike, fill: Callable[[Path], object]) -> Path:
    """Build a folder with `fill(tmp_dir)` and rename it to `path`, replacing an old one."""
    final = Path(path)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


def remove_stale_temporaries(folder: PathLike) -> list[str]:
    """What a process killed inside `atomic_write_dir` leaves in `folder`: `.tmp-*` folders (never
    complete: removed) and `.old-*` ones (removed, or renamed back when the kill came between the
    two renames). Only for folders that no running process writes to."""
    d = Path(folder)
    done: list[str] = []
    if not d.is_dir():
        return done
    for p in sorted(d.iterdir()):
        if not p.is_dir() or not p.name.startswith((".tmp-", ".old-")):
            continue
        name = p.name.split("-", 1)[1].rsplit("-", 1)[0]  # .tmp-checkpoint-40-1234 -> checkpoint-40
        if p.name.startswith(".old-") and name and not (d / name).exists():
            os.replace(p, d / name)
            done.append(f"restored {d / name} from {p.name}")
        else:
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed {p}")
    return done
