"""Writing files and folders without losing anyone's data.

    atomic_write_text(path, text)       a text file (utf-8)
    atomic_write_bytes(path, data)      a binary file
    atomic_write_file(path, write)      `write(tmp_path)` makes the file (safetensors, torch.save)
    write_output_dir(path, fill, kind)  `fill(tmp_dir)` makes an output folder (checkpoint, adapter, export, fused model)
    check_destination(path, kind)       whether write_output_dir may write there (OutputRefused if not)
    claim_dir(path, kind, job)          make (or keep) a folder and mark it as this job's
    remove_output_dir(path, kind, job)  delete an output folder of ours: only the entries its marker lists
    remove_stale_temporaries(folder)    what a process killed inside write_output_dir left behind

Files: written beside the target as `.NAME.<pid>.<random>.tmp` (exclusive create, never through a
link) and renamed over it with `os.replace`, which replaces a link at the path, never its target.

Folders: every output folder MacTuner writes holds a marker, `.tunerd-output.json`, naming its kind,
its job and the entries it wrote. A marker counts only when it is a regular file owned by this user.
A destination that exists is written only when it is empty, when it is our folder of the same kind
(and job), or with `force`; a link or a file there is refused. Then:
- a missing destination is built in `.tmp-NAME-<pid>-<random>/` beside it (its marker says
  `temporary` and the pid) and renamed into place: whole or not at all;
- an existing one is built in a temporary folder inside it and our entries are moved in one by one
  (each `os.replace` atomic); an entry of the same name that the marker does not list is replaced
  only with `force`, a folder of the user's never. Entries we wrote before and not now are removed;
  nothing else in the folder is ever touched.
Atomic against a killed process; there is no fsync, so a power cut may still lose the newest write.
"""
from __future__ import annotations

import glob
import json
import os
import re
import secrets
import shutil
import stat
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

PathLike = Union[str, Path]
MARKER = ".tunerd-output.json"
TMP = ".tmp-"
_OUR_TMP = re.compile(r"^\.tmp-.+-(\d+)-[0-9a-f]{6}$")   # _make_temp_dir's names: .tmp-NAME-<pid>-<random>
_SHOWN = 5   # entries named in a refusal


class OutputRefused(ValueError):
    """A destination MacTuner will not write to (INVALID_ARGUMENT): it names why and what to do."""


# -- files -------------------------------------------------------------------------------------------
def atomic_write_file(path: PathLike, write: Callable[[str], None], mode: Optional[int] = None) -> Path:
    """Create `path` with `write(tmp)`, which writes the whole file at the path string `tmp`.
    `mode` sets the permission bits (e.g. 0o600 for a secret), else the umask decides."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         0o666 if mode is None else mode))
        write(str(tmp))
        if mode is not None:
            os.chmod(tmp, mode)   # `write` may have replaced the file we created
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            tmp.unlink()
    return path


def atomic_write_bytes(path: PathLike, data: bytes, mode: Optional[int] = None) -> Path:
    def write(tmp: str) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return atomic_write_file(path, write, mode)


def atomic_write_text(path: PathLike, text: str, mode: Optional[int] = None) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), mode)


# -- markers -----------------------------------------------------------------------------------------
def read_marker(folder: PathLike) -> Optional[dict]:
    """The marker in `folder` when it is ours (a regular file, not a link, owned by this user);
    {} for an empty one (a kill between creating and writing it); None otherwise."""
    try:
        fd = os.open(Path(folder) / MARKER, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            return None
        data = os.read(fd, 1 << 20)
    finally:
        os.close(fd)
    try:
        doc = json.loads(data) if data.strip() else {}
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def is_ours(marker: Optional[dict], kind: str, job: str = "") -> bool:
    return bool(marker) and marker.get("kind") == kind and marker.get("job", "") == job and not marker.get("temporary")


def listed(marker: dict) -> set:
    """The entries a marker says we wrote: plain names in the folder (no `/`, `.` or `..`)."""
    names = marker.get("files", [])
    return {n for n in names if isinstance(n, str) and n not in ("", ".", "..") and os.sep not in n} \
        if isinstance(names, list) else set()


def _marker_doc(kind: str, job: str, files: Iterable[str], **info) -> str:
    return json.dumps({"kind": kind, "job": job, "files": sorted(files), "pid": os.getpid(),
                       "written_at": time.time(), **info}, indent=1)


def _write_marker(folder: Path, kind: str, job: str, files: Iterable[str], **info) -> None:
    atomic_write_text(folder / MARKER, _marker_doc(kind, job, files, **info))


def _make_temp_dir(parent: Path, name: str, kind: str) -> Path:
    """A new folder `.tmp-NAME-<pid>-<random>` in `parent` (exclusive mkdir; the umask's mode, which
    it keeps once renamed), its marker written first with one write() so a kill leaves it either
    empty or provably ours."""
    tmp = parent / f"{TMP}{name}-{os.getpid()}-{secrets.token_hex(3)}"
    tmp.mkdir()
    fd = os.open(tmp / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    try:
        os.write(fd, json.dumps({"temporary": True, "kind": kind, "pid": os.getpid(), "target": name}).encode())
    finally:
        os.close(fd)
    return tmp


# -- destinations --------------------------------------------------------------------------------------
def _listing(names: list[str]) -> str:
    return ", ".join(names[:_SHOWN]) + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def check_destination(path: PathLike, kind: str, job: str = "", force: Optional[bool] = None) -> Optional[dict]:
    """Whether an output of `kind` (for `job`) may be written at `path`: None when it does not exist;
    else the marker of our own folder ({} for an empty folder, or any folder with `force`). Raises
    OutputRefused for a link, a file, another user's folder or one holding files MacTuner did not
    write. `force=None`: the caller has no --force to offer (a job's own checkpoints)."""
    p = Path(path)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise OutputRefused(f"{p} is a symbolic link (to {os.path.realpath(p)}); MacTuner does not write "
                            "through links: give the folder itself, or a new one")
    if not stat.S_ISDIR(st.st_mode):
        raise OutputRefused(f"{p} is a file, not a folder; choose a new or empty folder")
    if st.st_uid != os.getuid():
        raise OutputRefused(f"{p} belongs to another user (uid {st.st_uid}); choose a folder of your own")
    marker = read_marker(p)
    if is_ours(marker, kind, job):
        return marker
    names = sorted(n + ("/" if os.path.isdir(p / n) else "") for n in os.listdir(p) if n != MARKER or marker is None)
    if not names:
        return {}
    if force:
        return {}
    what = _describe(marker) if marker else "files MacTuner did not write"
    fix = "choose an empty or new folder" + (
        ", or pass --force to write into it (files of the same names are replaced; nothing else is touched)"
        if force is not None else "")
    raise OutputRefused(f"{p} exists and holds {what} ({_listing(names)}); {fix}")


def _describe(marker: dict) -> str:
    kind, job = marker.get("kind", "output"), marker.get("job", "")
    if job:
        return f"job {job}'s " + ("output" if kind == "job" else kind)
    return f"MacTuner's {kind}"


def write_output_dir(path: PathLike, fill: Callable[[Path], object], kind: str, job: str = "",
                     force: Optional[bool] = None, last: tuple = (), **info) -> Path:
    """Write the folder `fill(tmp_dir)` makes at `path` as an output of `kind` (module docstring).
    Entries named in `last` leave first and arrive last (a checkpoint's trainer state: a folder
    caught half-replaced reads as incomplete). `info` goes into the marker (e.g. the source)."""
    final = Path(path)
    old = check_destination(final, kind, job, force)
    if old is None:
        final.parent.mkdir(parents=True, exist_ok=True)
        _sweep(final.parent, final.name)
        tmp = _make_temp_dir(final.parent, final.name, kind)
        try:
            fill(tmp)
            _write_marker(tmp, kind, job, (n for n in os.listdir(tmp) if n != MARKER), **info)
            try:
                os.rename(tmp, final)
            except OSError:
                if not os.path.lexists(final):
                    raise
                raise OutputRefused(f"{final} appeared while MacTuner was writing it; nothing in it was "
                                    "replaced: write again, or choose a new folder") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final
    _sweep(final, "merge")
    tmp = _make_temp_dir(final, "merge", kind)
    try:
        fill(tmp)
        new = sorted(n for n in os.listdir(tmp) if n != MARKER)
        mine = listed(old)
        _refuse_foreign_names(final, new, mine, force)
        _write_marker(final, kind, job, set(new) | mine, **info)   # a kill mid-merge leaves every entry ours
        trash = tmp / MARKER.replace(".json", ".replaced")
        trash.mkdir()
        stale = [n for n in mine if n not in new and os.path.lexists(final / n)]
        for n in sorted(set(stale) | {n for n in last if n in new}):
            if os.path.lexists(final / n):
                os.rename(final / n, trash / n)
        for n in sorted(new, key=lambda n: n in last):
            if os.path.lexists(final / n) and (_is_dir(final / n) or _is_dir(tmp / n)):
                os.rename(final / n, trash / n)      # a folder cannot be replaced in one step: aside, then removed
            os.replace(tmp / n, final / n)           # a file (or a link) in one step, never followed
        _write_marker(final, kind, job, new, **info)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)      # our temp and what we replaced, nothing else
    return final


def _is_dir(p: Path) -> bool:
    return os.path.isdir(p) and not os.path.islink(p)


def _refuse_foreign_names(folder: Path, new: list[str], mine: set, force: Optional[bool]) -> None:
    """Entries we are about to write whose names are taken: another user's entry (a link planted in
    a shared folder) never, the user's folders (and links to folders) never, their files with force."""
    others = [n for n in new if os.path.lexists(folder / n) and os.lstat(folder / n).st_uid != os.getuid()]
    if others:
        raise OutputRefused(f"{folder} holds entries of another user named as MacTuner's output "
                            f"({_listing(others)}); MacTuner never replaces them: choose a folder of your own")
    taken = [n for n in new if n not in mine and os.path.lexists(folder / n)]
    dirs = [n + "/" for n in taken if os.path.isdir(folder / n)]
    if dirs:
        raise OutputRefused(f"{folder} holds folders of yours named as MacTuner's output ({_listing(dirs)}); "
                            "MacTuner never replaces them: move them or choose a new folder")
    if taken and not force:
        raise OutputRefused(f"{folder} holds files of yours named as MacTuner's output ({_listing(taken)}); "
                            "choose a new folder" + (", or pass --force to replace them" if force is not None else ""))


def claim_dir(path: PathLike, kind: str, job: str, adopt: bool = False) -> Path:
    """Make `path` (parents too) this job's folder of `kind`: a new or empty folder gets the marker;
    our own keeps it; anything else is OutputRefused (check_destination). `adopt`: also mark a
    folder holding files, touching none of them (a job's folder from before markers, which the job
    store names as that job's)."""
    p = Path(path)
    adopt = adopt and read_marker(p) is None     # never a folder another marker names
    old = check_destination(p, kind, job, force=True if adopt else None)
    if old is None:
        p.mkdir(parents=True, exist_ok=True)
    if not is_ours(old, kind, job):
        _write_marker(p, kind, job, [])
    return p


def remove_output_dir(path: PathLike, kind: str, job: str = "", first: tuple = ()) -> bool:
    """Delete our output folder of `kind` (and `job`): the entries its marker lists (those in
    `first` first: a checkpoint's trainer state, so a kill midway leaves an incomplete one), the
    marker and the folder once empty. Anything else found in it stays (and so does the folder).
    False when the folder is not ours."""
    p = Path(path)
    marker = read_marker(p) if not os.path.islink(p) else None
    if not is_ours(marker, kind, job):
        return False
    for n in sorted(listed(marker), key=lambda n: n not in first):
        q = p / n
        if os.path.islink(q) or q.is_file():
            q.unlink()
        elif q.is_dir():
            shutil.rmtree(q)
    (p / MARKER).unlink()
    try:
        p.rmdir()
    except OSError:
        pass   # something that is not ours is in it
    return True


def overlaps(a: PathLike, b: PathLike) -> bool:
    """Whether two paths are the same folder or one holds the other (links resolved)."""
    ra, rb = os.path.realpath(a), os.path.realpath(b)
    return ra == rb or ra.startswith(rb.rstrip(os.sep) + os.sep) or rb.startswith(ra.rstrip(os.sep) + os.sep)


# -- clean-up ------------------------------------------------------------------------------------------
def _pid_alive(pid, at_start_up: bool) -> bool:
    """Whether the writer `pid` may still be writing; at start-up our own pid has written nothing yet
    (a pid reused from a killed daemon)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return not at_start_up
    return process_exists(pid)


def process_exists(pid: int) -> bool:
    """Whether a process `pid` (> 0) exists: signal 0 delivered, or refused for another user's."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale_temp(p: Path, at_start_up: bool = True) -> Optional[str]:
    """'removed' / 'removed empty' for a temporary folder of ours whose writer is gone, else None."""
    if not p.name.startswith(TMP) or os.path.islink(p) or not p.is_dir():
        return None
    marker = read_marker(p)
    if marker is not None and not _pid_alive(marker.get("pid"), at_start_up):
        shutil.rmtree(p, ignore_errors=True)
        return "removed"
    named = _OUR_TMP.match(p.name)
    if marker is None and named and not _pid_alive(int(named.group(1)), at_start_up) and not os.listdir(p):
        p.rmdir()      # a kill between mkdir and writing its marker: our name, empty
        return "removed empty"
    return None


def _sweep(parent: Path, name: str) -> None:
    """Before writing `name` in `parent`: the temporaries an earlier, killed write of it left."""
    for p in parent.glob(glob.escape(f"{TMP}{name}-") + "*"):
        _stale_temp(p, at_start_up=False)


def remove_stale_temporaries(folder: PathLike) -> list[str]:
    """What a process killed inside write_output_dir left in `folder` (a job's output folder) and
    in its output folders: temporary folders whose marker names a writer that is gone (or empty
    ones). Any `.tmp-*` MacTuner cannot prove its own is left alone."""
    d = Path(folder)
    done: list[str] = []
    if os.path.islink(d) or not d.is_dir():
        return done
    places = [d] + [p for p in sorted(d.iterdir()) if not p.name.startswith(TMP) and not os.path.islink(p)
                    and p.is_dir() and read_marker(p)]
    for place in places:
        for p in sorted(place.iterdir()):
            what = _stale_temp(p)
            if what:
                done.append(f"{what} {p}")
    return done
