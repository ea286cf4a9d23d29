"""Running out of disk space, said the same way everywhere:

    no space left on tmpfs at /mnt/small while writing /mnt/small/run/checkpoint-20
    (needs ~12.6 MB, 0.4 MB free)

`NoSpace` is that error (an OSError with errno ENOSPC). `writing(path, needed)` wraps a write:
an OSError ENOSPC/EDQUOT, or any other failure of a library writer (torch's "unexpected pos",
safetensors', MLX's) while the disk holding `path` has less than `needed` bytes free, becomes
`NoSpace`; other errors pass through unchanged.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, Path]
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class NoSpace(OSError):
    def __init__(self, path: PathLike, needed: int):
        self.path, self.needed = Path(path), int(needed)
        self.free = free_bytes(self.path)
        super().__init__(errno.ENOSPC, f"no space left on {device_of(self.path)} while writing {self.path} "
                                       f"(needs ~{_mb(self.needed)} MB, {_mb(self.free)} MB free)")

    def __str__(self) -> str:
        return self.strerror


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f}" if n < 10e6 else f"{n / 1e6:.0f}"


def existing_parent(path: PathLike) -> Path:
    """`path` or its nearest ancestor that exists (the folder a write would land in)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: PathLike) -> int:
    try:
        return shutil.disk_usage(existing_parent(path)).free
    except OSError:
        return 0


def mount_point(path: PathLike) -> Path:
    p = existing_parent(path).resolve()
    dev = p.stat().st_dev
    while p != p.parent and p.parent.stat().st_dev == dev:
        p = p.parent
    return p


def device_of(path: PathLike) -> str:
    """'tmpfs at /mnt/small', '/dev/sda1 at /' (Linux), or the mount point alone elsewhere."""
    try:
        mount = mount_point(path)
    except OSError:
        return str(path)
    try:
        with open("/proc/self/mounts") as f:
            sources = {fields[1]: fields[0] for fields in (line.split() for line in f) if len(fields) > 1}
    except OSError:
        return str(mount)
    source = sources.get(str(mount))
    return f"{source} at {mount}" if source else str(mount)


def folder_size(path: PathLike) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def is_full_error(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in FULL_ERRNOS


@contextlib.contextmanager
def writing(path: PathLike, needed: int) -> Iterator[None]:
    """Translate a failed write of about `needed` bytes at `path` into NoSpace when the disk is
    why it failed (see the module docstring)."""
    try:
        yield
    except NoSpace:
        raise
    except Exception as e:
        if is_full_error(e) or free_bytes(path) < max(needed, 1 << 20):
            raise NoSpace(path, needed) from e
        raise
