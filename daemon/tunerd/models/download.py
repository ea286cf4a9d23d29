"""Fetch a hub model into the local cache before a backend loads it, reporting progress.

    fetch(model, revision, progress, cancelled) -> the cached snapshot folder (None: not a hub id)
    stream(model, revision, cancelled)          -> the same on a helper thread, its progress yielded

huggingface_hub does the work. `HfApi.model_info(files_metadata=True)` lists the repo's files with
their sizes in one request, so a missing repo (NOT_FOUND) or an unreachable hub (UNAVAILABLE) fails
here within seconds, with the model's name in the message. `hf_hub_download` then fetches each
file missing from the cache (HTTP or Xet, resumable `.incomplete` files, the cache both backends
read) and reports its bytes through its `tqdm_class` hook, which becomes a `Download` event (defined
here; the job runner emits it into the job's events, chat and load stream it): file, bytes
done/total, rate, ETA. The backends then load the hub id from the cache as before.

Which files: what either backend reads (mlx-lm's allow patterns: configs, tokenizer files, chat
templates, `model*.safetensors`); other safetensors or PyTorch `.bin` weights only when a repo has
none of those. With no network or the hub down, a model already in the cache is used as it is;
with `HF_HUB_OFFLINE=1` nothing is asked of the network here (the backend reads the cache).

A GGUF model (a `.gguf` file or `ollama:NAME[:TAG]`) is converted once into the daemon's model
cache instead (models/gguf.py), reported as one `Download` of the GGUF file (started, done), and
its folder returned: what the backends load in its place.
"""
from __future__ import annotations

import fnmatch
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..gguf_file import is_gguf

HUB_TIMEOUT = 10.0      # seconds for the listing request; a closed port or no DNS fails at once
REPORT_SECONDS = 1.0    # progress at most this often (and at each file's start, and when done)
PATTERNS = ["*.json", "*.py", "tokenizer.model", "*.tiktoken", "tiktoken.model", "*.txt", "*.jsonl", "*.jinja"]
WEIGHTS = ["model*.safetensors", "*.safetensors", "pytorch_model*.bin", "*.bin"]  # the first that matches

_fetched: dict[tuple[str, str], str] = {}   # (model, revision) -> snapshot folder, fetched by this process


@dataclass
class Download:
    """Progress of fetching a hub model; bytes of the files to fetch only. A job's event too
    (jobs/runner.py fetches before the training loop runs), streamed like training's."""
    model: str
    file: str = ""
    files_done: int = 0
    files_total: int = 0
    file_bytes_done: int = 0
    file_bytes_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    bytes_per_second: float = 0.0
    eta_seconds: float = 0.0
    elapsed_seconds: float = 0.0
    done: bool = False


class DownloadCancelled(Exception):
    """The caller went away while the model was downloading (what arrived stays in the cache)."""


def is_hub_id(model: str) -> bool:
    """A name the hub may know: `org/name` or a bare `name` (`gpt2`), that is no local path and no
    job reference. A bare id used to be left to the backend, which asked the hub on the device
    worker (stalling training, then a raw OSError); now it is asked here like `org/name`."""
    from .check import looks_local
    return bool(model) and not model.startswith("job:") and model.count("/") <= 1 and not looks_local(model)


def fetch(model: str, revision: Optional[str] = None, progress: Optional[Callable[[Download], None]] = None,
          cancelled: Optional[threading.Event] = None) -> Optional[str]:
    """Download the files of hub model `model` that are not in the cache yet; the snapshot folder.
    A local path (or job:<id>) is left alone (None); a GGUF model is converted (its folder)."""
    if is_gguf(model):
        return _convert(model, progress, cancelled)
    if not is_hub_id(model):
        return None
    key = (model, revision or "main")
    if _known(key):
        return _fetched[key]
    from huggingface_hub import HfApi, constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, RepositoryNotFoundError,
                                        RevisionNotFoundError)
    if constants.HF_HUB_OFFLINE:
        return None

    where = f"the hub ({constants.ENDPOINT})"
    try:
        info = HfApi().model_info(model, revision=revision, files_metadata=True, timeout=HUB_TIMEOUT)
    except GatedRepoError:
        raise PermissionError(f"model {model!r} is gated on {where}: accept its terms on its page and log in "
                              "(`hf auth login`, or HF_TOKEN in the daemon's environment)") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"model {model!r}: no local folder of that name, and no model repository "
                                f"{model} on {where} (or it is private: log in with `hf auth login`)") from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"model {model!r}: {where} has no revision {revision!r}") from None
    except HfHubHTTPError as e:
        return _cached_or_raise(model, revision, f"{where} answered {_first_line(e)}")
    except ValueError as e:   # HFValidationError: a name no hub repository can have ("a b", "x..y")
        raise FileNotFoundError(f"model {model!r}: no local folder of that name, and not a valid model id on "
                                f"{where} ({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - no route, no DNS, a timeout: out of reach
        return _cached_or_raise(model, revision, f"{where} is out of reach ({type(e).__name__}: {_first_line(e)})")

    sizes = {s.rfilename: (s.lfs.size if s.lfs else s.size) or 0 for s in info.siblings or []}
    wanted = select_files(list(sizes))
    missing = [f for f in wanted if not isinstance(try_to_load_from_cache(model, f, revision=info.sha), str)]
    tracker = _Tracker(model, [(f, sizes[f]) for f in missing], progress, cancelled)
    for f in missing:
        tracker.start(f)
        try:
            hf_hub_download(model, f, revision=revision, tqdm_class=tracker.bar_class(), etag_timeout=HUB_TIMEOUT)
        except DownloadCancelled:
            raise
        except Exception as e:  # noqa: BLE001 - the network went away mid-file, the disk filled ...
            raise ConnectionError(f"model {model!r}: downloading {f} from {where} failed ({type(e).__name__}: "
                                  f"{_first_line(e)}); what arrived is kept and the next load resumes") from e
        tracker.finish_file()
    if missing:
        tracker.report(force=True, done=True)
    folder = _snapshot(model, info.sha)
    if folder:
        _fetched[key] = folder
    return folder


def stream(model: str, revision: Optional[str] = None,
           cancelled: Optional[threading.Event] = None) -> Iterator[Download]:
    """`fetch` on a helper thread, its progress yielded here (for a streaming reply); raises what
    fetch raised. Nothing to yield for a local path or a model this process fetched already."""
    if is_gguf(model):
        from .gguf import cached
        if cached(model):
            return
    elif not is_hub_id(model) or _known((model, revision or "main")):
        return
    out: "queue.Queue" = queue.Queue()
    end = object()

    def run():
        try:
            fetch(model, revision, out.put, cancelled)
            out.put(end)
        except BaseException as e:  # handed to the caller's thread
            out.put(e)

    threading.Thread(target=run, name=f"download {model}", daemon=True).start()
    while (item := out.get()) is not end:
        if isinstance(item, BaseException):
            raise item
        yield item


def _convert(model: str, progress, cancelled) -> str:
    """A GGUF model's converted folder: converted now (one file's Download, started and done) or
    found in the cache (no events)."""
    from ..gguf_file import resolve
    from .gguf import cached, convert
    folder = cached(model)
    if folder:
        return folder
    size = resolve(model).stat().st_size
    t0 = time.monotonic()
    if cancelled is not None and cancelled.is_set():
        raise DownloadCancelled(f"conversion of {model} cancelled")
    if progress is not None:
        progress(Download(model=model, file=f"converting {resolve(model).name}", files_total=1,
                          file_bytes_total=size, bytes_total=size))
    folder = convert(model)
    if progress is not None:
        elapsed = time.monotonic() - t0
        progress(Download(model=model, file=f"converted to {folder}", files_done=1, files_total=1,
                          file_bytes_done=size, file_bytes_total=size, bytes_done=size, bytes_total=size,
                          bytes_per_second=size / elapsed if elapsed > 0 else 0.0, elapsed_seconds=elapsed,
                          done=True))
    return folder


def _known(key: tuple[str, str]) -> bool:
    return key in _fetched and Path(_fetched[key]).is_dir()


def select_files(files: list[str]) -> list[str]:
    """The repo files a backend reads: configs, tokenizer, templates and one kind of weights."""
    keep = [f for f in files if any(fnmatch.fnmatch(f, p) for p in PATTERNS)]
    for pattern in WEIGHTS:
        weights = [f for f in files if fnmatch.fnmatch(f, pattern)]
        if weights:
            return keep + weights
    return keep


def _snapshot(model: str, sha: Optional[str]) -> Optional[str]:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name
    if not sha:
        return None
    folder = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=model, repo_type="model") / "snapshots" / sha
    return str(folder) if folder.is_dir() else None


def _cached_or_raise(model: str, revision: Optional[str], why: str) -> str:
    """Offline: the cached snapshot when it holds weights, else ConnectionError (UNAVAILABLE)."""
    from huggingface_hub import snapshot_download
    try:
        folder = snapshot_download(model, revision=revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached (or cached in part)
        folder = None
    if folder and any(next(Path(folder).glob(p), None) for p in WEIGHTS):
        return folder
    raise ConnectionError(f"model {model!r} cannot be downloaded: {why}, and it is not in the local cache. "
                          "Check the network (or HF_ENDPOINT), or use a local folder")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "no details"


class _Tracker:
    """Bytes of the files to fetch, turned into `Download` events at most every REPORT_SECONDS."""

    def __init__(self, model: str, files: list[tuple[str, int]], progress, cancelled):
        self.model, self.sizes = model, dict(files)
        self.total = sum(self.sizes.values())
        self.progress, self.cancelled = progress, cancelled
        self.file, self.files_done, self.done_before, self.current = "", 0, 0, 0
        self.t0 = time.monotonic()
        self.last = 0.0

    def start(self, file: str) -> None:
        self.file, self.current = file, 0
        self.report(force=True)

    def add(self, n: int) -> None:
        if self.cancelled is not None and self.cancelled.is_set():
            raise DownloadCancelled(f"download of {self.model} cancelled")
        self.current += n
        self.report()

    def finish_file(self) -> None:
        self.done_before += self.sizes[self.file]
        self.files_done += 1
        self.file, self.current = "", 0

    def report(self, force: bool = False, done: bool = False) -> None:
        now = time.monotonic()
        if self.progress is None or not (force or now - self.last >= REPORT_SECONDS):
            return
        self.last = now
        size = self.sizes.get(self.file, 0)
        current = min(self.current, size) if size else self.current
        done_bytes = self.done_before + current
        elapsed = now - self.t0
        rate = done_bytes / elapsed if elapsed > 0 else 0.0
        self.progress(Download(
            model=self.model, file=self.file, files_done=self.files_done, files_total=len(self.sizes),
            file_bytes_done=current, file_bytes_total=size, bytes_done=done_bytes, bytes_total=self.total,
            bytes_per_second=rate, eta_seconds=(self.total - done_bytes) / rate if rate > 0 else 0.0,
            elapsed_seconds=elapsed, done=done))

    def bar_class(self) -> type:
        """What `hf_hub_download(tqdm_class=...)` needs. `update` counts the bytes written (HTTP:
        as they arrive; Xet: as the file is rebuilt); Xet's network bytes (`update_transfer`) are
        not counted twice."""
        tracker = self

        class Bar:
            def __init__(self, *args, total=None, initial=0, **kwargs):
                self.n, self.total = initial or 0, total
                if self.n:
                    tracker.add(self.n)   # a resumed .incomplete file

            def update(self, n=1):
                self.n += n or 0
                tracker.add(n or 0)

            def update_transfer(self, n=1):
                pass

            def set_postfix_str(self, *args, **kwargs):
                pass

            set_transfer_postfix_str = set_postfix_str
            refresh = close = set_postfix_str
            set_description = set_description_str = set_postfix_str
            format_dict: dict = {}

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        return Bar
