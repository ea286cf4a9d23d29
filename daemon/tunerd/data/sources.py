"""Load raw rows from local files or the Hugging Face hub, through the `datasets` library.

A source is a path (file, directory), a hub dataset id, a dict `{path, name, split, revision,
streaming, token}` or a list of those. Every row becomes a `Record`: its columns plus an
`origin` ("data/train.jsonl:12", "org/ds[train]#7") that error messages and reports name.

Local text files are checked before `datasets` reads them, so that bad input gets a message a
person can act on: undecodable bytes (file, byte offset, line), empty files, malformed JSON
(file:line). A UTF-8 byte-order mark is accepted.
"""
from __future__ import annotations

import codecs
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .errors import DataError

EXTENSIONS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv",
              ".parquet": "parquet", ".txt": "text", ".text": "text", ".md": "text"}
_SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"),
                  "test": ("test",)}
_BOM = codecs.BOM_UTF8


@dataclass
class Record:
    data: dict
    origin: str       # the row: "data/train.jsonl:12", "org/ds[train]#7"
    source: str = ""  # the file or hub split it came from: "data/train.jsonl", "org/ds[train]"


@dataclass
class _Scan:
    bom: bool
    lines: list  # 1-based numbers of the non-blank lines


def _scan_text(path: Path) -> _Scan:
    """Check a text file decodes as UTF-8 and find its non-blank lines (streamed, 1 MiB chunks)."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    bom, lines, offset, line_no, blank = False, [], 0, 1, True
    with open(path, "rb") as f:
        first = True
        while True:
            chunk = f.read(1 << 20)
            final = not chunk
            if first and chunk.startswith(_BOM):
                bom, chunk, offset = True, chunk[len(_BOM):], len(_BOM)
            first = False
            try:
                text = decoder.decode(chunk, final=final)
            except UnicodeDecodeError as e:
                at = offset + e.start
                line = line_no + chunk[:e.start].count(b"\n")
                raise DataError(f"{path}:{line}: not valid UTF-8 at byte offset {at} "
                                f"(byte 0x{chunk[e.start]:02x}); save the file as UTF-8") from None
            for ch_line in text.split("\n")[:-1]:
                blank = blank and not ch_line.strip()
                if not blank:
                    lines.append(line_no)
                line_no, blank = line_no + 1, True
            tail = text.rsplit("\n", 1)[-1] if "\n" in text else text
            blank = blank and not tail.strip()
            offset += len(chunk)
            if final:
                if not blank:
                    lines.append(line_no)
                break
    return _Scan(bom, lines)


def _diagnose_json(path: Path) -> Optional[str]:
    """The first malformed spot of a JSON / JSON Lines file as 'file:line: what', or None."""
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):  # one JSON array of objects
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            return f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})"
        if not all(isinstance(r, dict) for r in doc):
            return f"{path}: expected a JSON array of objects"
        return None
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            try:  # a pretty-printed single document is fine
                json.loads(text)
                return None
            except json.JSONDecodeError:
                return f"{path}:{n}: malformed JSON ({e.msg} at column {e.colno})"
        if not isinstance(row, dict):
            return f"{path}:{n}: expected a JSON object per line, got {type(row).__name__}"
    return None


_LOAD_LOCK = threading.Lock()


def _load_dataset(*args, **kw):
    """datasets.load_dataset, one at a time: the daemon checks data on concurrent request threads
    (submit, data inspect), and a first, concurrent import of datasets/transformers fails half way
    ("module 'transformers' has no attribute ...", seen in a burst of submits), as can two loads
    sharing a cache folder."""
    with _LOAD_LOCK:
        import datasets
        import transformers

        transformers.PreTrainedTokenizerBase   # noqa: B018 (datasets' hashing reads it: load it fully first)

        datasets.disable_progress_bars()
        return datasets.load_dataset(*args, **kw)


def load_file(path: Path, head: Optional[int] = None) -> list[Record]:
    """All rows of one local file; with `head`, a JSON Lines file's first `head` rows only (read
    line by line; the UTF-8 scan still covers the whole file)."""
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    builder = EXTENSIONS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of "
                        f"{', '.join(sorted(EXTENSIONS))}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (no rows)")
    scan = None
    kw: dict[str, Any] = {}
    if builder != "parquet":
        scan = _scan_text(path)
        if not scan.lines:
            raise DataError(f"{path}: file is empty (only whitespace, no rows)")
        if builder in ("csv", "text"):
            kw["encoding"] = "utf-8-sig"
        if path.suffix.lower() == ".tsv":
            kw["delimiter"] = "\t"
        if builder == "json" and head:
            rows = _json_lines_head(path, head)
            if rows is not None:
                return rows
        if builder == "json":
            problem = _diagnose_json(path)
            if problem:
                raise DataError(problem)
    try:
        ds = _load_dataset(builder, data_files=str(path), split="train", **kw)
    except Exception as e:  # datasets wraps parser errors; name the file and the cause
        cause = e.__cause__ or e.__context__ or e
        why = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise DataError(f"{path}: could not read as {builder}: {why}") from None
    rows = ds.to_list()
    if builder == "text":
        rows = [r for r in rows if r.get("text", "").strip()]
    if not rows:
        raise DataError(f"{path}: file has no rows")
    if scan is not None and builder in ("json", "text") and len(scan.lines) == len(rows):
        return [Record(r, f"{path}:{line}", str(path)) for r, line in zip(rows, scan.lines)]
    return [Record(r, f"{path}: row {i}", str(path)) for i, r in enumerate(rows, start=1)]


def _json_lines_head(path: Path, head: int) -> Optional[list[Record]]:
    """The first `head` rows of a JSON Lines file, or None when it is not one line per object (a
    JSON array, a pretty-printed document, a malformed line: the full load then says what)."""
    out: list[Record] = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            line = raw.decode("utf-8").lstrip("\ufeff") if n == 1 else raw.decode("utf-8")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                return None
            if not isinstance(row, dict):
                return None
            out.append(Record(row, f"{path}:{n}", str(path)))
            if len(out) >= head:
                break
    return out or None


def _split_files(directory: Path, split: str) -> list[Path]:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS
                   and not any(part.startswith(".") for part in p.relative_to(directory).parts))
    if not files:
        raise DataError(f"{directory}: directory has no data files ({', '.join(sorted(EXTENSIONS))})")
    named = {s: [p for p in files if p.stem.lower().startswith(aliases)]
             for s, aliases in _SPLIT_ALIASES.items()}
    if any(named.values()):  # mlx-lm layout: train.jsonl, valid.jsonl, test.jsonl
        return named.get(split, [])
    return files if split == "train" else []


def split_files_in(directory: Path, split: str) -> list[Path]:
    """The files of `split` in a directory: `train*`/`valid*`/`test*` when named so, else all for train."""
    return _split_files(directory, split)


def looks_local(spec: str) -> bool:
    p = Path(spec)
    return (spec.startswith((".", "/", "~")) or p.suffix.lower() in EXTENSIONS
            or spec.count("/") > 1 or "\\" in spec)


def _load_hub(path: str, name=None, split="train", revision=None, streaming=False, token=None,
              max_rows: Optional[int] = None) -> list[Record]:
    from .. import hub
    fix = "use a local file, or start tunerd where the hub can be reached (HF_HUB_OFFLINE=1: the datasets cache only)"
    if not hub.offline(datasets=True):   # offline, `datasets` reads its cache at once; unreachable, it retries
        hub.require(f"dataset {path!r}", fix, detail="cannot be loaded", datasets=True)
    try:
        ds = _load_dataset(path, name, split=split, revision=revision, streaming=streaming, token=token)
    except ConnectionError:   # the one offline rule (hub.py): UNAVAILABLE
        hub.require(f"dataset {path!r}", fix, datasets=True)
        raise
    except FileNotFoundError as e:
        raise FileNotFoundError(f"dataset not found (no local path, not on the hub): {path} ({e})") from None
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if type(e).__name__ in ("DatasetNotFoundError", "DataFilesNotFoundError", "FileNotFoundDatasetsError"):
            raise FileNotFoundError(f"dataset not found (no local path, not on the hub): {path}: {msg}") from None
        raise DataError(f"could not load dataset {path!r} (name={name}, split={split}): {msg}") from None
    if streaming:
        import itertools

        rows = list(itertools.islice(iter(ds), max_rows)) if max_rows else list(ds)
    else:
        if max_rows:
            ds = ds.select(range(min(max_rows, len(ds))))
        rows = ds.to_list()
    if not rows:
        raise DataError(f"dataset {path!r} split {split!r} has no rows")
    return [Record(r, f"{path}[{split}]#{i}", f"{path}[{split}]") for i, r in enumerate(rows)]


def load_source(spec: Any, base_dir: Path, split: str = "train", *, name=None, revision=None,
                streaming: bool = False, token=None, max_rows: Optional[int] = None,
                head: Optional[int] = None) -> list[Record]:
    """All rows of a source spec (see module docstring). `split` picks files in a directory and
    the hub split; a dict spec's own keys override the keyword defaults. `head`: JSON Lines files
    give their first `head` rows only (submit's bounded check, data/inspect.check_for_submit)."""
    if spec is None:
        return []
    if isinstance(spec, (list, tuple)):
        out: list[Record] = []
        for item in spec:
            out.extend(load_source(item, base_dir, split, name=name, revision=revision,
                                   streaming=streaming, token=token, max_rows=max_rows, head=head))
        return out
    if isinstance(spec, dict):
        known = {"path", "name", "split", "revision", "streaming", "token"}
        unknown = set(spec) - known
        if unknown or "path" not in spec:
            raise DataError(f"data source {spec!r}: needs 'path'; allowed keys are {', '.join(sorted(known))}"
                            + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else ""))
        path = str(spec["path"])
        local = (base_dir / Path(path).expanduser())
        if local.exists() or looks_local(path):
            return load_source(path, base_dir, spec.get("split", split), head=head)
        return _load_hub(path, spec.get("name", name), spec.get("split") or split,
                         spec.get("revision", revision), bool(spec.get("streaming", streaming)),
                         spec.get("token", token), max_rows)
    if not isinstance(spec, (str, Path)):
        raise DataError(f"data source {spec!r}: expected a path, a hub dataset id, a dict or a list")
    spec = str(spec)
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if path.is_dir():
        files = _split_files(path, split)
        if not files:
            raise DataError(f"{path}: no {split} files in this directory")
        return [r for f in files for r in load_file(f, head)]
    if path.exists() or looks_local(spec):
        return load_file(path, head)
    return _load_hub(spec, name, split, revision, streaming, token, max_rows)
