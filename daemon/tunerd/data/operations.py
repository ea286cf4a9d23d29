"""Data operations from `data.operations`, applied in order to the raw rows of a split.

Each item is a mapping with one operation key (and optionally `split: train|validation|all`):

    - concat: ./more.jsonl                 # add the rows of more sources (same forms as data.train)
    - select_columns: [question, answer]   # keep only these columns
    - select_rows: "0:1000"                # a slice "start:stop[:step]" or a list of row indices
    - filter: {column: lang, equals: ko}   # keep rows meeting every condition: equals, not_equals,
                                           #   in, not_in, contains, regex, not_empty,
                                           #   min_length, max_length (characters)
    - map: {to: prompt, template: "Question: {question}\\nContext: {context}"}
                                           # write a column from a template of {column} fields
    - augment_instructions:                # N phrasings of each row's instruction
        column: prompt                     #   default: data.prompt_column, else instruction/prompt/...
        phrasings: ["{instruction}", "Please answer: {instruction}"]   # default: built-in list
        n: 2                               #   phrasings per row (default: all), chosen by seed
        keep_original: true                #   also keep the row as it is (default true)

By default concat, select_rows and augment_instructions act on train only; select_columns,
filter and map act on every split (so the splits keep the same columns).
"""
from __future__ import annotations

import difflib
import random
import re
from dataclasses import replace
from typing import Callable, Optional

from .errors import DataError
from .formats import PROMPT_NAMES, columns_of
from .sources import Record

DEFAULT_PHRASINGS = [  # the row as it is comes from keep_original
    "Please answer the following: {instruction}",
    "{instruction}\nRespond concisely.",
    "Question: {instruction}",
    "I need help with this. {instruction}",
    "Task: {instruction}\nGive the answer.",
]
_FIELD = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DEFAULT_SPLIT = {"concat": "train", "select_rows": "train", "augment_instructions": "train",
                  "select_columns": "all", "filter": "all", "map": "all"}
OPERATIONS = tuple(_DEFAULT_SPLIT)


def fill(template: str, row: dict, where: str) -> str:
    """`{column}` fields of a template from a row ({{ and }} are literal braces). No attribute
    access or code: a template from a config can only read columns."""
    def sub(m):
        if m.group(0) == "{{":
            return "{"
        if m.group(0) == "}}":
            return "}"
        key = m.group(1)
        if key not in row:
            raise DataError(f"{where}: template field {{{key}}} is not a column; the columns are: "
                            f"{', '.join(row)}")
        value = row[key]
        return "" if value is None else str(value)
    return _FIELD.sub(sub, template)


def _need_columns(cols: list[str], records: list[Record], where: str) -> None:
    have = columns_of(records)
    missing = [c for c in cols if c not in have]
    if missing:
        raise DataError(f"{where}: column(s) {', '.join(map(repr, missing))} not found; "
                        f"the columns are: {', '.join(have)}")


def _select_columns(records, arg, where, **_):
    cols = [arg] if isinstance(arg, str) else arg
    if not isinstance(cols, list) or not cols or not all(isinstance(c, str) for c in cols):
        raise DataError(f"{where}: select_columns takes a list of column names, got {arg!r}")
    _need_columns(cols, records, where)
    return [replace(r, data={c: r.data.get(c) for c in cols}) for r in records]


def _select_rows(records, arg, where, **_):
    n = len(records)
    if isinstance(arg, str):
        parts = arg.split(":")
        try:
            nums = [int(p) if p.strip() else None for p in parts]
        except ValueError:
            nums = []
        if not 2 <= len(nums) <= 3:
            raise DataError(f"{where}: select_rows takes 'start:stop[:step]' or a list of indices, got {arg!r}")
        return records[slice(*nums)]
    if isinstance(arg, int) and not isinstance(arg, bool):
        arg = [arg]
    if isinstance(arg, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in arg):
        bad = [i for i in arg if not -n <= i < n]
        if bad:
            raise DataError(f"{where}: select_rows indices {bad[:5]} out of range for {n} rows")
        return [records[i] for i in arg]
    raise DataError(f"{where}: select_rows takes 'start:stop[:step]' or a list of indices, got {arg!r}")


_CONDITIONS: dict[str, Callable] = {
    "equals": lambda v, x: v == x,
    "not_equals": lambda v, x: v != x,
    "in": lambda v, x: v in x,
    "not_in": lambda v, x: v not in x,
    "contains": lambda v, x: v is not None and str(x) in str(v),
    "regex": lambda v, x: v is not None and x.search(str(v)) is not None,
    "not_empty": lambda v, x: (v is not None and str(v).strip() != "") == bool(x),
    "min_length": lambda v, x: len(str(v or "")) >= x,
    "max_length": lambda v, x: len(str(v or "")) <= x,
}


def _filter(records, arg, where, **_):
    if not isinstance(arg, dict) or "column" not in arg:
        raise DataError(f"{where}: filter takes {{column: NAME, <condition>: VALUE}}, got {arg!r}")
    conds = {k: v for k, v in arg.items() if k != "column"}
    unknown = [k for k in conds if k not in _CONDITIONS]
    if unknown or not conds:
        raise DataError(f"{where}: filter condition(s) {unknown or 'missing'}; use one of "
                        f"{', '.join(_CONDITIONS)}")
    if "regex" in conds:
        try:
            conds["regex"] = re.compile(conds["regex"])
        except re.error as e:
            raise DataError(f"{where}: filter regex {arg['regex']!r} is invalid: {e}") from None
    for k in ("in", "not_in"):
        if k in conds and not isinstance(conds[k], list):
            raise DataError(f"{where}: filter {k} takes a list, got {conds[k]!r}")
    col = arg["column"]
    _need_columns([col], records, where)
    return [r for r in records if all(_CONDITIONS[k](r.data.get(col), x) for k, x in conds.items())]


def _map(records, arg, where, **_):
    if not isinstance(arg, dict) or not isinstance(arg.get("template"), str) or not isinstance(arg.get("to"), str):
        raise DataError(f"{where}: map takes {{to: COLUMN, template: \"...{{column}}...\"}}, got {arg!r}")
    return [replace(r, data={**r.data, arg["to"]: fill(arg["template"], r.data, f"{where} ({r.origin})")})
            for r in records]


def _augment(records, arg, where, seed=0, prompt_column=None, **_):
    arg = {} if arg in (None, True) else arg
    if not isinstance(arg, dict):
        raise DataError(f"{where}: augment_instructions takes {{column, phrasings, n, keep_original}}, got {arg!r}")
    cols = columns_of(records)
    col = arg.get("column") or prompt_column or next((c for c in ("instruction",) + PROMPT_NAMES if c in cols), None)
    if col is None:
        raise DataError(f"{where}: augment_instructions: no instruction column; set column: (the columns are: "
                        f"{', '.join(cols)})")
    _need_columns([col], records, where)
    phrasings = arg.get("phrasings") or DEFAULT_PHRASINGS
    if not isinstance(phrasings, list) or not all(isinstance(p, str) and "{instruction}" in p for p in phrasings):
        raise DataError(f"{where}: augment_instructions.phrasings must be a list of strings containing {{instruction}}")
    keep = bool(arg.get("keep_original", True))
    if keep:
        phrasings = [p for p in phrasings if p != "{instruction}"]
    n = int(arg.get("n") or len(phrasings))
    if not 1 <= n <= len(phrasings):
        raise DataError(f"{where}: augment_instructions.n must be in 1..{len(phrasings)}, got {n}")
    rng = random.Random(seed)
    out = []
    for r in records:
        if keep:
            out.append(r)
        for k, p in enumerate(phrasings[j] for j in sorted(rng.sample(range(len(phrasings)), n))):
            text = p.replace("{instruction}", str(r.data.get(col) or ""))
            out.append(replace(r, data={**r.data, col: text}, origin=f"{r.origin} (phrasing {k + 1})"))
    return out


def _concat(records, arg, where, load=None, **_):
    return records + load(arg)


_OPS = {"concat": _concat, "select_columns": _select_columns, "select_rows": _select_rows,
        "filter": _filter, "map": _map, "augment_instructions": _augment}


def parse(ops) -> list[tuple[str, object, str]]:
    """Validate `data.operations` into (name, argument, split) triples."""
    if ops is None:
        return []
    if not isinstance(ops, list):
        raise DataError(f"data.operations: expected a list of operations, got {type(ops).__name__}")
    out = []
    for i, item in enumerate(ops):
        where = f"data.operations[{i}]"
        names = [k for k in item if k != "split"] if isinstance(item, dict) else []
        if len(names) != 1:
            raise DataError(f"{where}: each operation is a mapping with one of {', '.join(OPERATIONS)} "
                            f"(and optionally split), got {item!r}")
        name = names[0]
        if name not in _OPS:
            close = difflib.get_close_matches(name, OPERATIONS, n=1)
            raise DataError(f"{where}: unknown operation {name!r}"
                            + (f"; did you mean {close[0]}?" if close else f"; use one of {', '.join(OPERATIONS)}"))
        split = item.get("split", _DEFAULT_SPLIT[name])
        if split not in ("train", "validation", "all"):
            raise DataError(f"{where}.split: {split!r} is not one of train, validation, all")
        out.append((name, item[name], split))
    return out


def apply_operations(records: list[Record], ops, split: str, *, load: Callable[[object], list[Record]],
                     seed: int = 0, prompt_column: Optional[str] = None) -> list[Record]:
    """Apply the operations meant for `split` ("train" | "validation") in order."""
    for i, (name, arg, which) in enumerate(parse(ops)):
        if which not in (split, "all") or (not records and name != "concat"):
            continue
        where = f"data.operations[{i}] ({name})"
        try:
            records = _OPS[name](records, arg, where, load=load, seed=seed + i, prompt_column=prompt_column)
        except (DataError, FileNotFoundError):
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as e:  # a wrongly typed argument
            raise DataError(f"{where}: invalid argument {arg!r} ({e})") from None
    return records
