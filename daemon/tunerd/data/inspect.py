"""`tunerctl data inspect`: what the data looks like to the model, before any training.

    inspect_data(cfg_or_path, tokenizer=None, batch_size=None, max_seq_length=None) -> DataReport
    check_for_submit(cfg, base_dir)   the same row checks, before submit accepts a job (Core.submit)

`cfg_or_path` is a TrainConfig, a YAML config path (.yaml/.yml) or a data source (a file, a
directory, a hub id). Without a tokenizer the report is about the rows alone: format, columns,
row counts, every bad row (file:line and why, up to MAX_ROW_ERRORS) and the first rows as chat
turns (tool calls and results among them). With one it adds token lengths, truncation, padding
waste and which tokens carry loss. The examples are the first rows, one of them a tool-calling
row when the data has one. The tokenizer is not changed: when the template needs new special tokens a copy gets them.
`dataclasses.asdict(report)` is JSON-serialisable.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from ..config.schema import DataConfig, TrainConfig
from .errors import DataError
from .sources import EXTENSIONS, looks_local, split_files_in
from .formats import to_example
from .masking import fit_all, segments
from .preference import to_pair
from .packing import padding_waste
from .prepare import iterate_batches, load_records, pad_id_of, tokenize_all
from .templates import missing_tokens, resolve_name, setup_template
from .tools import has_tools

N_EXAMPLES = 3
MAX_ROW_ERRORS = 20
SUBMIT_FULL_BYTES = 64 << 20   # local data up to this size is checked in full at submit ...
SUBMIT_SAMPLE_ROWS = 5000      # ... beyond it, the first rows of each JSON Lines file


@dataclass
class Segment:
    text: str
    supervised: bool  # True where these tokens are targets that carry loss


@dataclass
class DataReport:
    source: str
    format: str
    columns: list
    train_rows: int
    validation_rows: int
    max_seq_length: int
    batch_size: int
    tokenizer: str = ""                   # the model whose tokenizer was used ("" : none, rows only)
    row_errors: list = field(default_factory=list)   # "file:line: why", the first MAX_ROW_ERRORS
    row_error_count: int = 0              # bad rows in all (training would stop at the first)
    template: Optional[str] = None        # tokenizer | chatml | llama3 | alpaca (None for text)
    end_of_turn_token: Optional[str] = None   # supervised at the end of every assistant turn
    added_tokens: list = field(default_factory=list)   # special tokens training would add
    tokens_total: int = 0
    tokens_mean: float = 0.0
    tokens_max: int = 0
    prompt_tokens_total: int = 0          # unsupervised tokens (train split)
    prompt_tokens_mean: float = 0.0
    response_tokens_total: int = 0        # supervised tokens (train split)
    response_tokens_mean: float = 0.0
    length_histogram: list = field(default_factory=list)   # [lo, hi, count]: rows with lo <= tokens < hi
    over_length_rows: int = 0             # rows longer than max_seq_length before fitting
    over_length_ids: list = field(default_factory=list)
    truncated_prompt_rows: int = 0        # fitted by cutting the prompt from the left
    overlong_rows: int = 0                # whose answer alone does not fit (see data.overlong)
    overlong_ids: list = field(default_factory=list)
    padding_waste_percent: float = 0.0    # batches in order, padded to each batch's longest row
    padding_waste_grouped_percent: float = 0.0   # length-grouped batches
    padding_waste_packed_percent: float = 0.0    # packed sequences of max_seq_length
    examples: list = field(default_factory=list)   # N_EXAMPLES lists of Segment
    warnings: list = field(default_factory=list)
    rejected_examples: list = field(default_factory=list)   # format preference: examples[i]'s rejected answer


def _config(cfg_or_path, base_dir) -> tuple[TrainConfig, Path, str]:
    if isinstance(cfg_or_path, TrainConfig):
        return cfg_or_path, Path(base_dir or "."), str(cfg_or_path.data.train)
    path = Path(str(cfg_or_path)).expanduser()
    if path.suffix.lower() in (".yaml", ".yml"):
        from ..config.loader import load_config

        return load_config(path), path.resolve().parent, str(path)
    data = DataConfig(train=str(cfg_or_path), test_size=0.0, shuffle=False)
    return TrainConfig(data=data), Path(base_dir or "."), str(cfg_or_path)


def _histogram(lengths: list[int], max_seq_length: int) -> list:
    if not lengths:
        return []
    edges, e = [0], 16
    while e <= max(lengths):
        edges.append(e)
        e *= 2
    edges.append(e)
    if max_seq_length not in edges and max_seq_length < edges[-1]:
        edges = sorted(edges + [max_seq_length])
    out = []
    for lo, hi in zip(edges, edges[1:]):
        n = sum(1 for x in lengths if lo <= x < hi)
        if n or out:
            out.append([lo, hi, n])
    while out and out[-1][2] == 0:
        out.pop()
    return out


def _examples(records: list, spec) -> tuple[list, list]:
    """The rows that make examples, and "origin: why" for every one that does not. Preference rows
    make (chosen, rejected) pairs of examples (data/preference.py)."""
    good, bad = [], []
    make = to_pair if spec.format == "preference" else to_example
    for r in records:
        try:
            good.append(make(r, spec))
        except DataError as e:
            bad.append(str(e))
    return good, bad


def _turns(example, train_on_prompt: bool) -> list[Segment]:
    """A row as its chat turns, without a tokenizer: the assistant's text and tool calls are what
    carries loss (a tool turn's result does not)."""
    if example.is_text:
        return [Segment(example.text, True)]
    out = []
    if example.tools:
        names = [str((t.get("function") or t).get("name", "?")) for t in example.tools]
        out.append(Segment(f"tools: {', '.join(names)}\n", False))
    for i, m in enumerate(example.messages):
        out.append(Segment(("\n" if i else "") + f"{m['role']}: ", False))
        supervised = train_on_prompt or m["role"] == "assistant"
        if m["content"] or not m.get("tool_calls"):
            out.append(Segment(m["content"], supervised))
        for c in m.get("tool_calls") or ():
            fn = c["function"]
            out.append(Segment(f"[call] {fn['name']}({json.dumps(fn['arguments'], ensure_ascii=False)})",
                               supervised))
    return out


def _shown(examples: list) -> list[int]:
    """The indices of the examples to show: the first N_EXAMPLES, one of them a tool-calling row
    when the data has one."""
    idx = list(range(min(N_EXAMPLES, len(examples))))
    tool = next((i for i, ex in enumerate(examples) if not ex.is_text and has_tools(ex.messages, ex.tools)), None)
    if tool is not None and tool not in idx:
        idx[-1] = tool
    return idx


def inspect_data(cfg_or_path: Union[TrainConfig, str, Path], tokenizer=None, batch_size: Optional[int] = None,
                 max_seq_length: Optional[int] = None, base_dir: Optional[Path] = None) -> DataReport:
    cfg, base, source = _config(cfg_or_path, base_dir)
    bs = batch_size or cfg.per_device_train_batch_size
    msl = max_seq_length or cfg.max_seq_length
    loaded = load_records(cfg, base)
    examples, errors = _examples(loaded.train, loaded.spec)
    _, valid_errors = _examples(loaded.validation, loaded.spec)
    errors += valid_errors
    report = DataReport(source=source, format=loaded.spec.format, columns=loaded.columns,
                        train_rows=len(loaded.train), validation_rows=len(loaded.validation),
                        max_seq_length=msl, batch_size=bs, row_errors=errors[:MAX_ROW_ERRORS],
                        row_error_count=len(errors))
    pairs = loaded.spec.format == "preference"
    if pairs:   # both answers of each shown pair; the statistics count every answer as a row
        report.rejected_examples = [_turns(examples[i][1], cfg.data.train_on_prompt)
                                    for i in range(min(N_EXAMPLES, len(examples)))]
        examples = [ex for pair in examples for ex in pair]
    if tokenizer is None:
        shown = range(0, min(2 * N_EXAMPLES, len(examples)), 2) if pairs else _shown(examples)
        report.examples = [_turns(examples[i], cfg.data.train_on_prompt) for i in shown]
        return report
    return _tokenized(report, cfg, loaded.spec, examples, tokenizer)


def _tokenized(report: DataReport, cfg: TrainConfig, spec, examples: list, tokenizer) -> DataReport:
    """`report` with what the tokenizer makes of the good rows: lengths, truncation, padding, loss."""
    msl, bs = report.max_seq_length, report.batch_size
    template, warnings, added = None, [], []
    if spec.format != "text":
        name = resolve_name(tokenizer, cfg.data.template)
        added = missing_tokens(tokenizer, name)
        if added:
            tokenizer = copy.deepcopy(tokenizer)
            warnings.append(f"training adds {len(added)} special token(s) {added}: the model's embeddings grow")
        template = setup_template(tokenizer, cfg.data.template, install=False)
    full_rows, _ = tokenize_all(examples, tokenizer, template, cfg, 10 ** 9)
    rows, facts = fit_all(full_rows, tokenizer, msl, "truncate")
    pairs = spec.format == "preference"   # rows: chosen, rejected, chosen, ... (one pair after the other)
    shown = range(0, min(2 * N_EXAMPLES, len(rows)), 2) if pairs else _shown(examples)
    lengths = [len(r.ids) for r in full_rows]
    over = [r.origin for r in full_rows if len(r.ids) > msl]
    pad = pad_id_of(tokenizer)

    def waste(**kw):
        return round(100 * padding_waste(iterate_batches(rows, bs, pad, max_seq_length=msl, shuffle=False, **kw)), 2)

    n = max(len(full_rows), 1)
    prompt = sum(r.n_prompt for r in full_rows)
    response = sum(r.n_response for r in full_rows)
    if template and rows and not cfg.data.train_on_prompt:
        eot = tokenizer.convert_tokens_to_ids(template.end_of_turn) if template.end_of_turn else None
        r0 = rows[0]
        if eot is None or not any(t == eot and m > 0 for t, m in zip(r0.ids, r0.mask)):
            warnings.append(f"the end-of-turn token {template.end_of_turn!r} is not supervised in "
                            f"{r0.origin}: the tuned model may not learn to stop")
    if facts["overlong_rows"]["count"]:
        warnings.append(f"{facts['overlong_rows']['count']} row(s) do not fit max_seq_length={msl} even "
                        f"with the prompt cut (data.overlong: {cfg.data.overlong})")
    return dataclasses.replace(
        report, tokenizer=str(getattr(tokenizer, "name_or_path", "") or "tokenizer"),
        template=template.name if template else None,
        end_of_turn_token=template.end_of_turn if template else tokenizer.eos_token, added_tokens=added,
        tokens_total=sum(lengths), tokens_mean=round(sum(lengths) / n, 2), tokens_max=max(lengths, default=0),
        prompt_tokens_total=prompt, prompt_tokens_mean=round(prompt / n, 2),
        response_tokens_total=response, response_tokens_mean=round(response / n, 2),
        length_histogram=_histogram(lengths, msl),
        over_length_rows=len(over), over_length_ids=over[:20],
        truncated_prompt_rows=facts["truncated_prompt_rows"]["count"],
        overlong_rows=facts["overlong_rows"]["count"], overlong_ids=facts["overlong_rows"]["ids"],
        padding_waste_percent=waste(group_by_length=False),
        padding_waste_grouped_percent=waste(group_by_length=True),
        padding_waste_packed_percent=waste(packing=True),
        examples=[[Segment(t, s) for t, s in segments(tokenizer, rows[i])] for i in shown],
        rejected_examples=[[Segment(t, s) for t, s in segments(tokenizer, rows[i + 1])] for i in shown] if pairs else [],
        warnings=warnings,
    )


def check_for_submit(cfg: TrainConfig, base_dir: Optional[Path] = None) -> None:
    """What `data inspect` checks without a tokenizer, before a job is accepted (issue 23, item 4):
    the files load (exist, supported type, not empty, UTF-8, JSON syntax: file:line), the format and
    columns are detected or as declared, and every row becomes an example; else DataError
    (INVALID_ARGUMENT) listing the bad rows as file:line. Local data of at most SUBMIT_FULL_BYTES is
    checked in full; beyond that the UTF-8 scan still reads every file, and the rows checked are the
    first SUBMIT_SAMPLE_ROWS of each JSON Lines file (CSV, parquet and JSON arrays load in full).
    Hub datasets are left to the job, which downloads them."""
    base = Path(base_dir or ".")
    sizes = [_local_bytes(spec, base) for spec in (cfg.data.train, cfg.data.validation) if spec is not None]
    if any(n is None for n in sizes):   # a hub dataset among the sources
        return
    head = None if sum(sizes) <= SUBMIT_FULL_BYTES else SUBMIT_SAMPLE_ROWS
    loaded = load_records(cfg, base, head=head)
    _, errors = _examples(loaded.train, loaded.spec)
    errors += _examples(loaded.validation, loaded.spec)[1]
    if errors:
        shown = "\n  ".join(errors[:MAX_ROW_ERRORS])
        more = f"\n  ... and {len(errors) - MAX_ROW_ERRORS} more" if len(errors) > MAX_ROW_ERRORS else ""
        sampled = f" (in the first {head} rows of each file)" if head else ""
        raise DataError(f"data: {len(errors)} bad row(s){sampled} in the {loaded.spec.format} data; "
                        f"`tunerctl data inspect` lists them too:\n  {shown}{more}")


def _local_bytes(spec, base: Path) -> Optional[int]:
    """The bytes of a data source's local files; None when it names a hub dataset."""
    if isinstance(spec, (list, tuple)):
        sizes = [_local_bytes(s, base) for s in spec]
        return None if any(n is None for n in sizes) else sum(sizes)
    if isinstance(spec, dict):
        spec = spec.get("path", "")
    path = base / Path(str(spec)).expanduser()
    try:
        if path.is_dir():
            return sum(f.stat().st_size for s in ("train", "validation") for f in _files_or_none(path, s))
        if path.exists():
            return path.stat().st_size
    except OSError:
        return 0   # load_records says what is wrong with it
    return 0 if looks_local(str(spec)) or Path(str(spec)).suffix.lower() in EXTENSIONS else None


def _files_or_none(path: Path, split: str) -> list:
    try:
        return split_files_in(path, split)
    except DataError:
        return []
