"""Preference rows for task dpo / orpo: {prompt, chosen, rejected}, as pairs of tokenized rows.

    (detection: formats.is_preference / preference_spec -> FormatSpec("preference", {prompt, chosen, rejected, system}))
    to_pair(record, spec) -> (chosen Example, rejected Example)
    tokenize_pairs(examples, tokenizer, template, cfg, max_seq_length) -> (pairs, facts)
    PairRow(chosen, rejected, origin)       the two TokenizedRows of one pair
    iterate_pair_batches(pairs, batch_size, pad_id, ...) -> list[Batch]

A row (TRL's preference format, standard or conversational):
    prompt     text, or messages (system / user / earlier assistant turns: context, never supervised);
               optional when chosen and rejected are whole conversations sharing their prompt turns
    chosen     text, or messages ending with the preferred assistant turn(s)
    rejected   the same for the dispreferred answer
    system     optional (data.system_column / "system"; else data.system_prompt)
Each answer becomes one conversation, prompt + answer, rendered and masked like an SFT row (only the
answer's assistant turns are supervised; a long prompt is cut from the left). A pair whose answers
are empty or identical, or that lacks a column, is a DataError naming its file:line.

A batch of B pairs is one Batch of 2B rows, the B chosen rows first and then the B rejected ones in
the same order (TRL's concatenated order), all padded to the longest; pairs are never packed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config.schema import TrainConfig
from .batch import Batch, collate_sequences
from .errors import DataError
from .formats import _ROLES, Example, FormatSpec, _messages, _str
from .masking import TokenizedRow, fit_all, tokenize_example
from .packing import batch_order
from .sources import Record

def _turns(value, origin: str, col: str, role: str) -> list[dict]:
    """Text as one `role` turn; a list as its messages (an answer must have an assistant turn)."""
    if isinstance(value, list):
        if role == "assistant":
            return _messages(value, origin, col)
        out = []
        for i, m in enumerate(value):
            if not isinstance(m, dict) or m.get("role", m.get("from")) not in _ROLES:
                raise DataError(f"{origin}: {col}[{i}] must be a {{role, content}} message "
                                f"(role system, user or assistant)")
            out.append({"role": _ROLES[m.get("role", m.get("from"))],
                        "content": _str(m.get("content", m.get("value")), origin, f"{col}[{i}].content",
                                        required=False)})
        return out
    return [{"role": role, "content": _str(value, origin, col, required=True)}]


def _split_answer(msgs: list[dict]) -> tuple[list[dict], list[dict]]:
    """A whole conversation as (its prompt turns, its final assistant turns)."""
    k = len(msgs)
    while k and msgs[k - 1]["role"] == "assistant":
        k -= 1
    return msgs[:k], msgs[k:]


def to_pair(record: Record, spec: FormatSpec) -> tuple[Example, Example]:
    """The chosen and the rejected conversation of one row (prompt + answer each)."""
    row, origin, c = record.data, record.origin, spec.columns
    missing = [col for col in (c["chosen"], c["rejected"]) if col not in row]
    if missing:
        raise DataError(f"{origin}: no column {', '.join(map(repr, missing))} (preference format: prompt, "
                        f"chosen, rejected); this row's columns are: {', '.join(row) or 'none'}")
    answers, prompts = [], []
    for col in (c["chosen"], c["rejected"]):
        prompt, answer = _split_answer(_turns(row[col], origin, col, "assistant"))
        if not answer or not any(m["content"].strip() or m.get("tool_calls") for m in answer):
            raise DataError(f"{origin}: field {col!r} is empty (it needs an answer)")
        answers.append(answer)
        prompts.append(prompt)
    if answers[0] == answers[1]:
        raise DataError(f"{origin}: {c['chosen']!r} and {c['rejected']!r} are the same answer; a pair must "
                        f"differ to teach a preference")
    if prompts[0] != prompts[1]:
        raise DataError(f"{origin}: {c['chosen']!r} and {c['rejected']!r} have different prompt turns; "
                        f"put the shared prompt in a prompt column")
    prompt = prompts[0]
    if c.get("prompt") and c["prompt"] in row:
        prompt = _turns(row[c["prompt"]], origin, c["prompt"], "user") + prompt
    if not prompt:
        raise DataError(f"{origin}: no prompt (a {c['prompt'] or 'prompt'!r} column, or prompt turns in "
                        f"{c['chosen']!r} and {c['rejected']!r})")
    system = _str(row.get(c["system"]), origin, c["system"], required=False) if c.get("system") else ""
    system = system if system.strip() else spec.system_prompt or ""
    if system and not any(m["role"] == "system" for m in prompt):
        prompt = [{"role": "system", "content": system}] + prompt
    return tuple(Example(origin, messages=prompt + a, first_supervised=len(prompt)) for a in answers)


def to_pairs(records: list[Record], spec: FormatSpec) -> list[tuple[Example, Example]]:
    return [to_pair(r, spec) for r in records]


@dataclass
class PairRow:
    chosen: TokenizedRow
    rejected: TokenizedRow
    origin: str = ""

    def __len__(self) -> int:
        return max(len(self.chosen), len(self.rejected))

    @property
    def ids(self) -> list:   # the longer sequence: what lengths and reports count
        return self.chosen.ids if len(self.chosen) >= len(self.rejected) else self.rejected.ids

    @property
    def n_response(self) -> int:
        return self.chosen.n_response + self.rejected.n_response


def tokenize_pairs(pairs: list[tuple[Example, Example]], tokenizer, template, cfg: TrainConfig,
                   max_seq_length: int) -> tuple[list[PairRow], dict]:
    """Tokenize both answers of every pair and fit each into max_seq_length (prompt cut from the
    left, as for SFT rows); the facts count pairs (a pair is cut or dropped when either answer is)."""
    chosen = [tokenize_example(tokenizer, template, c, cfg.data.train_on_prompt) for c, _ in pairs]
    rejected = [tokenize_example(tokenizer, template, r, cfg.data.train_on_prompt) for _, r in pairs]
    fc, facts_c = fit_all(chosen, tokenizer, max_seq_length, "truncate")
    fr, facts_r = fit_all(rejected, tokenizer, max_seq_length, "truncate")
    facts = {}
    for key in facts_c:
        ids = list(dict.fromkeys(facts_c[key]["ids"] + facts_r[key]["ids"]))
        facts[key] = {"count": len(set(facts_c[key]["ids"]) | set(facts_r[key]["ids"])), "ids": ids[:20]}
    over = set(facts["overlong_rows"]["ids"])
    if over and cfg.data.overlong == "error":
        raise DataError(f"{facts['overlong_rows']['count']} pair(s) do not fit max_seq_length={max_seq_length} "
                        f"even with the prompt cut: {', '.join(sorted(over)[:5])}; raise max_seq_length or set "
                        f"data.overlong to truncate or drop")
    out = [PairRow(c, r, c.origin) for c, r in zip(fc, fr)]
    if cfg.data.overlong == "drop":
        out = [p for p in out if p.origin not in over]
        facts["dropped_rows"] = {"count": len(over), "ids": sorted(over)[:20]}
    return out, facts


def iterate_pair_batches(pairs: list[PairRow], batch_size: int, pad_id: int, *, packing: bool = False,
                         max_seq_length: int = 2048, shuffle: bool = True, seed: int = 0, epoch: int = 0,
                         group_by_length: bool = True) -> list[Batch]:
    """The batches of one epoch (deterministic in (seed, epoch)), `batch_size` pairs each: rows
    [chosen..., rejected...]. `packing` is ignored (pairs are not packed); rows are fitted already."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pairs = [p for p in pairs if len(p.chosen) >= 2 and len(p.rejected) >= 2]
    if not pairs:
        return []
    groups = batch_order([len(p) - 1 for p in pairs], batch_size, shuffle=shuffle, group_by_length=group_by_length,
                         seed=seed, epoch=epoch)
    return [collate_sequences([[(pairs[i].chosen.ids, pairs[i].chosen.mask)] for i in g]
                              + [[(pairs[i].rejected.ids, pairs[i].rejected.mask)] for i in g], pad_id)
            for g in groups]
