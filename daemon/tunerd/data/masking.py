"""Tokenize examples with exact loss masks, and fit them into `max_seq_length`.

Chat rows: the conversation is rendered once with the template; each assistant turn's
character span is found by rendering the conversation up to that turn with and without the
generation prompt (the difference is the turn: its content and end-of-turn token; whitespace
the template writes after the end-of-turn token is not supervised). An assistant turn that calls
tools is such a turn too: the template renders its calls, and they are supervised; the `tool`
turns with the results are not. The full text is tokenized
once with offsets, and a token is supervised when its first character lies in such a span, so
the tokens are exactly those inference sees. Text rows are supervised everywhere.
`mask[j]` is about token j as a *target*; token 0 is never a target, so `mask[0]` is 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .errors import DataError
from .formats import Example
from .templates import ChatTemplate, render
from .tools import NEED, check_rendered, describe, has_tools


@dataclass
class TokenizedRow:
    ids: list
    mask: list  # 1.0 where token j is supervised (as a target), else 0.0
    origin: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_response(self) -> int:
        return int(sum(self.mask[1:]))

    @property
    def n_prompt(self) -> int:
        return len(self.ids) - self.n_response


def _turn_spans(tokenizer, template: ChatTemplate, messages: list[dict], full: str,
                tools=None, first: int = 0) -> list[tuple[int, int]]:
    """Character spans [a, b) of every assistant turn from message `first` on in `full` (content or
    tool calls + end-of-turn token)."""
    spans, cursor = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or i < first:
            continue
        span, floor = None, None
        try:
            before = render(tokenizer, template, messages[:i], add_generation_prompt=True, tools=tools) if i else ""
            floor = len(before) if full.startswith(before) and len(before) >= cursor else None
            upto = render(tokenizer, template, messages[:i + 1], tools=tools)
            if upto.startswith(before) and full.startswith(upto) and len(before) >= cursor:
                turn = upto[len(before):]
                span = (len(before), len(before) + len(turn.rstrip()))
        except Exception:  # templates that refuse a prefix (e.g. must end with a user turn)
            span = None
        if span is None:  # fall back: find the content, then the end-of-turn token after it
            span = _found_span(full, m, i, cursor, template.end_of_turn, floor)
        spans.append(span)
        cursor = span[1]
    return spans


def _found_span(full: str, m: dict, i: int, cursor: int, eot, floor=None) -> tuple[int, int]:
    """Assistant message `i`'s span found by searching `full` from `cursor`: its content and the
    end-of-turn token after it. A turn that calls tools runs on to the first end-of-turn token
    after its content (or its first call's name, when it has no content); one with only calls
    starts where the generation prompt before it ends (`floor`, when that rendering is a prefix
    of `full`), so the call's opening markup is supervised too."""
    names = [c["function"]["name"] for c in m.get("tool_calls") or ()]
    calls_only = bool(names) and not m["content"].strip()
    content = names[0] if calls_only else m["content"]
    start = floor if calls_only and floor is not None else cursor
    a = full.find(content, start)
    if a < 0:  # templates that trim the content
        content = content.strip()
        a = full.find(content, start)
    if a < 0:
        raise DataError(f"chat template does not render assistant message {i} verbatim; "
                        "set data.template to a built-in template (chatml, llama3, alpaca)")
    b = a + len(content)
    if calls_only and floor is not None:
        a = floor
    if names and eot and full.find(eot, b) >= 0:
        b = full.find(eot, b)  # past the calls (their arguments) to the end of the turn
    elif names:
        for name in names[1:] if calls_only else names:
            k = full.find(name, b)
            b = k + len(name) if k >= 0 else b
    if eot and full.startswith(eot, b):
        b += len(eot)
    return a, b


def _encode(tokenizer, text: str):
    """Token ids and character offsets of `text`, special tokens as written (no BOS added)."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    except NotImplementedError:  # slow tokenizers have no offsets
        return None, None


def _encode_pieces(tokenizer, text: str, spans: list[tuple[int, int]]):
    """Slow-tokenizer path: tokenize supervised and unsupervised pieces separately."""
    ids, mask, pos = [], [], 0
    for a, b in spans + [(len(text), len(text))]:
        for piece, flag in ((text[pos:a], 0.0), (text[a:b], 1.0)):
            if piece:
                part = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids += part
                mask += [flag] * len(part)
        pos = b
    return ids, mask


def tokenize_example(tokenizer, template: Optional[ChatTemplate], ex: Example,
                     train_on_prompt: bool = False) -> TokenizedRow:
    if ex.is_text:
        ids = list(tokenizer(ex.text, add_special_tokens=True)["input_ids"])
        if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids.append(tokenizer.eos_token_id)
        return TokenizedRow(ids, [0.0] + [1.0] * (len(ids) - 1), ex.origin)
    tools = has_tools(ex.messages, ex.tools)
    try:
        full = render(tokenizer, template, ex.messages, tools=ex.tools)
    except Exception as e:
        if tools:
            raise DataError(f"{ex.origin}: {describe(template)} failed on this tool-calling row ({e}); "
                            f"{NEED}") from None
        raise DataError(f"{ex.origin}: the chat template failed on this row: {e}") from None
    if tools:
        check_rendered(full, ex.messages, ex.tools, template, ex.origin)
    try:
        spans = [] if train_on_prompt else _turn_spans(tokenizer, template, ex.messages, full, ex.tools,
                                                       ex.first_supervised)
    except DataError as e:
        raise DataError(f"{ex.origin}: {e}") from None
    ids, offsets = _encode(tokenizer, full)
    if ids is None:
        ids, mask = _encode_pieces(tokenizer, full, spans)
    else:
        mask, k = [], 0
        for start, _ in offsets:
            while k < len(spans) and start >= spans[k][1]:
                k += 1
            mask.append(1.0 if k < len(spans) and spans[k][0] <= start < spans[k][1] else 0.0)
    if train_on_prompt:
        mask = [1.0] * len(ids)
    if ids:
        mask[0] = 0.0
    return TokenizedRow(ids, mask, ex.origin)


def fit_row(row: TokenizedRow, max_len: int, keep_head: int = 0) -> tuple[TokenizedRow, str]:
    """Fit a row into `max_len` tokens. Returns (row, status):
    "ok" (fits), "prompt_cut" (prompt tokens cut from the left, the answer kept whole), or
    "answer_cut" (the last answer alone does not fit: all of its prompt but `keep_head` tokens
    is cut, and the answer's end too). `keep_head` tokens (e.g. a BOS) are always kept."""
    n = len(row.ids)
    if n <= max_len:
        return row, "ok"
    mask = row.mask
    if all(m > 0 for m in mask[1:]) or not any(m > 0 for m in mask):  # nothing to cut but the end
        return TokenizedRow(row.ids[:max_len], mask[:max_len], row.origin), "answer_cut"
    last_start = max(j for j, m in enumerate(mask) if m > 0)
    while last_start > 1 and mask[last_start - 1] > 0:
        last_start -= 1  # first token of the final supervised run
    removable = max(0, last_start - 1 - keep_head)  # keep the token that predicts it
    k = n - max_len
    cut = min(k, removable)
    ids = row.ids[:keep_head] + row.ids[keep_head + cut:]
    mask = row.mask[:keep_head] + row.mask[keep_head + cut:]
    if keep_head == 0 and mask:
        mask[0] = 0.0
    if len(ids) <= max_len:
        return TokenizedRow(ids, mask, row.origin), "prompt_cut"
    return TokenizedRow(ids[:max_len], mask[:max_len], row.origin), "answer_cut"


def segments(tokenizer, row: TokenizedRow) -> list[tuple[str, bool]]:
    """The row as (text, supervised) runs: how `data inspect` shows what carries loss."""
    out: list[tuple[str, bool]] = []
    start = 0
    for j in range(1, len(row.ids) + 1):
        if j == len(row.ids) or (row.mask[j] > 0) != (row.mask[start] > 0):
            out.append((tokenizer.decode(row.ids[start:j]), bool(row.mask[start] > 0)))
            start = j
    return out


REPORT_IDS = 20   # the row ids a report names


def fit_all(rows: list[TokenizedRow], tokenizer, max_seq_length: int,
            overlong: str = "truncate") -> tuple[list[TokenizedRow], dict]:
    """Fit rows into max_seq_length (prompt cut from the left, a BOS kept); count and name the
    rows cut, and apply `overlong` to those whose answer alone does not fit."""
    bos = tokenizer.bos_token_id
    out, cut, over, dropped = [], [], [], []
    for row in rows:
        keep_head = 1 if bos is not None and row.ids and row.ids[0] == bos else 0
        fitted, status = fit_row(row, max_seq_length, keep_head)
        if status == "prompt_cut":
            cut.append(row.origin)
        elif status == "answer_cut":
            over.append(row.origin)
            if overlong == "drop":
                dropped.append(row.origin)
                continue
        out.append(fitted)
    if over and overlong == "error":
        raise DataError(f"{len(over)} row(s) do not fit max_seq_length={max_seq_length} even with the "
                        f"prompt cut: {', '.join(over[:5])}{' ...' if len(over) > 5 else ''}; raise "
                        "max_seq_length or set data.overlong to truncate or drop")
    facts = {"truncated_prompt_rows": {"count": len(cut), "ids": cut[:REPORT_IDS]},
             "overlong_rows": {"count": len(over), "ids": over[:REPORT_IDS]},
             "dropped_rows": {"count": len(dropped), "ids": dropped[:REPORT_IDS]}}
    return out, facts
