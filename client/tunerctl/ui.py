"""Terminal output: one console, tables, JSON lines."""
from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def table(headers: list[str], rows: list[list], empty: str = "") -> None:
    if not rows and empty:
        console.print(f"[dim]{empty}[/]")
        return
    t = Table(*headers, box=None, header_style="bold", pad_edge=False)
    for r in rows:
        t.add_row(*[str(c) for c in r])
    console.print(t)


def print_data_report(r) -> None:
    console.print(f"[bold]format[/] {r.format}   [bold]rows[/] train {r.train_rows}, validation {r.validation_rows}"
                  + (f"   [bold]columns[/] {', '.join(r.columns)}" if r.columns else ""))
    console.print(f"[bold]tokens[/] prompt {r.prompt_tokens}, response {r.response_tokens}   "
                  f"[bold]padding waste[/] {r.padding_waste_percent:.1f}%")
    if r.rows_over_max_seq_length:
        ids = ", ".join(map(str, r.over_length_row_ids[:10]))
        console.print(f"[yellow]{r.rows_over_max_seq_length} rows exceed max_seq_length "
                      f"(prompts cut from the left): rows {ids}[/]")
    if r.length_histogram:
        console.print("[bold]token lengths[/]")
        peak = max(b.count for b in r.length_histogram) or 1
        for b in r.length_histogram:
            console.print(f"  {b.lo:>6}-{b.hi:<6} {'█' * max(1, int(30 * b.count / peak)) if b.count else ''} {b.count}")
    for i, ex in enumerate(r.examples, 1):
        console.print(f"[bold]example {i}[/] ([green]green[/] = carries loss)")
        t = Text()
        for seg in ex.segments:
            t.append(seg.text, style="green" if seg.supervised else "dim")
        console.print(t)


def as_dict(msg, with_defaults: bool = False) -> dict:
    """A proto message as plain JSON-able Python: int64 stays a number, enums become lower-case
    names (state: "succeeded"), unset fields are left out unless `with_defaults`."""
    out = {}
    fields = msg.DESCRIPTOR.fields if with_defaults else [f for f, _ in msg.ListFields()]
    for f in fields:
        if with_defaults and f.message_type and not f.is_repeated and not msg.HasField(f.name):
            continue
        v = getattr(msg, f.name)
        if f.message_type and f.message_type.GetOptions().map_entry:
            vf = f.message_type.fields_by_name["value"]
            out[f.name] = {k: as_dict(x) if vf.message_type else x for k, x in v.items()}
        elif f.is_repeated:
            out[f.name] = [as_dict(x) if f.message_type else _scalar(f, x) for x in v]
        elif f.message_type:
            out[f.name] = as_dict(v, with_defaults)
        else:
            out[f.name] = _scalar(f, v)
    return out


def _scalar(f, v):
    if f.enum_type is not None:
        return f.enum_type.values_by_number[v].name.lower() if v in f.enum_type.values_by_number else v
    return v
