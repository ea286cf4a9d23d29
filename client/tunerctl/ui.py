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


def print_json_lines(messages) -> int:
    """One JSON object per line for each message (a `list --json`); exit code 0."""
    for m in messages:
        print_json(as_dict(m))
    return 0


def table(headers: list[str], rows: list[list], empty: str = "", keep: tuple = ()) -> None:
    """`keep`: indexes of columns never shortened on a narrow terminal (ids a person types)."""
    if not rows and empty:
        console.print(f"[dim]{empty}[/]")
        return
    t = Table(box=None, header_style="bold", pad_edge=False)
    for i, h in enumerate(headers):
        widest = max([len(str(r[i])) for r in rows] + [len(h)]) if i in keep else None
        t.add_column(h, no_wrap=i in keep, min_width=widest)
    for r in rows:
        t.add_row(*[str(c) for c in r])
    console.print(t)


def print_data_report(r) -> None:
    console.print(f"[bold]{r.source}[/]: format [bold]{r.format}[/]"
                  + (f", template {r.template} (end of turn {r.end_of_turn_token!r})" if r.template else "")
                  + (f", columns {', '.join(r.columns)}" if r.columns else ""))
    console.print(f"rows: train {r.train_rows}, validation {r.validation_rows}")
    if r.row_error_count:
        console.print(f"[bold red]{r.row_error_count} bad row(s)[/] (training stops at the first):")
        for e in r.row_errors:
            console.print(f"  {e}", markup=False)
        if r.row_error_count > len(r.row_errors):
            console.print(f"  ... and {r.row_error_count - len(r.row_errors)} more")
    if r.tokenizer:
        _print_token_figures(r)
    else:
        console.print("[dim]no tokenizer: pass --model MODEL (or inspect a config) for token lengths, truncation, "
                      "padding and loss masks[/]")
    for w in r.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    for i, ex in enumerate(r.examples, 1):
        what = "tokens carry loss, [dim]dim[/] ones do not" if r.tokenizer else "text carries loss, [dim]dim[/] does not"
        console.print(f"[bold]example {i}[/] ([green]green[/] {what})")
        t = Text()
        for seg in ex.segments:
            t.append(seg.text, style="green" if seg.supervised else "dim")
        console.print(t)


def _print_token_figures(r) -> None:
    console.print(f"tokens per row ({r.tokenizer}): mean {r.tokens_mean:.1f}, max {r.tokens_max}; prompt "
                  f"{r.prompt_tokens_total} (mean {r.prompt_tokens_mean:.1f}), response {r.response_tokens_total} "
                  f"(mean {r.response_tokens_mean:.1f}) — only response tokens carry loss")
    console.print(f"padding waste at batch {r.batch_size}: {r.padding_waste_percent:.1f}% in order, "
                  f"{r.padding_waste_grouped_percent:.1f}% length-grouped, {r.padding_waste_packed_percent:.1f}% packed")
    if r.over_length_rows:
        console.print(f"[yellow]{r.over_length_rows} rows exceed max_seq_length={r.max_seq_length}: "
                      f"{r.truncated_prompt_rows} fit by cutting the prompt from the left, {r.overlong_rows} do not "
                      f"({', '.join(list(r.overlong_ids)[:5] or list(r.over_length_ids)[:5])})[/]")
    if r.length_histogram:
        console.print("[bold]token lengths[/]")
        peak = max(b.count for b in r.length_histogram) or 1
        for b in r.length_histogram:
            bar = "█" * max(1, int(40 * b.count / peak)) if b.count else ""
            console.print(f"  {b.lo:>6} - {b.hi:<6} {bar} {b.count}")


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
            out[f.name] = [as_dict(x, with_defaults) if f.message_type else _scalar(f, x) for x in v]
        elif f.message_type:
            out[f.name] = as_dict(v, with_defaults)
        else:
            out[f.name] = _scalar(f, v)
    return out


def _scalar(f, v):
    if f.enum_type is not None:
        return f.enum_type.values_by_number[v].name.lower() if v in f.enum_type.values_by_number else v
    return v
