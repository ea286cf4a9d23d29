"""Truncation, packing, length-grouped batching, the prepare report and `inspect_data`."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from tunerd.config.schema import DataConfig, TrainConfig
from tunerd.data import DataError, TokenizedRow, inspect_data, iterate_batches, prepare
from tunerd.data.masking import fit_row
from tunerd.data.packing import padding_waste


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def cfg(train, max_seq_length=256, **data):
    data.setdefault("test_size", 0.0)
    return TrainConfig(data=DataConfig(train=str(train), **data), max_seq_length=max_seq_length,
                       per_device_train_batch_size=2)


def row(n_prompt, n_answer, origin=""):
    """A synthetic row: token ids 1..n, the last n_answer supervised."""
    n = n_prompt + n_answer
    return TokenizedRow(list(range(1, n + 1)), [0.0] * n_prompt + [1.0] * n_answer, origin)


def supervised_text(tok, r):
    return tok.decode([t for t, m in zip(r.ids, r.mask) if m])


# ---- truncation ----------------------------------------------------------------------------------

LONG_PROMPT = " ".join(["What is the capital of Zorblax?"] * 20)
ANSWER = "The capital of Zorblax is Amberlin."


def test_long_prompt_is_cut_from_the_left_and_the_answer_kept(tmp_path, tiny_tokenizer):
    p = jsonl(tmp_path / "d.jsonl", [{"prompt": LONG_PROMPT, "completion": ANSWER},
                                     {"prompt": "Hi", "completion": "Yo"}])
    data = prepare(cfg(p, max_seq_length=40, shuffle=False), tiny_tokenizer)
    long = data.train[0]
    assert len(long.ids) == 40
    assert supervised_text(tiny_tokenizer, long) == ANSWER + "<|im_end|>"
    assert tiny_tokenizer.decode(long.ids).endswith("<|im_start|>assistant\n" + ANSWER + "<|im_end|>\n")
    assert data.report["truncated_prompt_rows"] == {"count": 1, "ids": [f"{p}:1"]}
    assert data.report["overlong_rows"]["count"] == 0


def test_answer_longer_than_the_limit_is_reported_never_silently_dropped(tmp_path, tiny_tokenizer):
    p = jsonl(tmp_path / "d.jsonl", [{"prompt": "Q", "completion": LONG_PROMPT}, {"prompt": "Hi", "completion": "Yo"}])
    data = prepare(cfg(p, max_seq_length=30, shuffle=False), tiny_tokenizer)
    assert len(data.train) == 2 and len(data.train[0].ids) == 30
    assert data.report["overlong_rows"] == {"count": 1, "ids": [f"{p}:1"]}


def test_overlong_drop_removes_and_reports(tmp_path, tiny_tokenizer):
    p = jsonl(tmp_path / "d.jsonl", [{"prompt": "Q", "completion": LONG_PROMPT}, {"prompt": "Hi", "completion": "Yo"}])
    data = prepare(cfg(p, max_seq_length=30, shuffle=False, overlong="drop"), tiny_tokenizer)
    assert len(data.train) == 1 and data.report["dropped_rows"] == {"count": 1, "ids": [f"{p}:1"]}


def test_overlong_error_names_the_rows(tmp_path, tiny_tokenizer):
    p = jsonl(tmp_path / "d.jsonl", [{"prompt": "Q", "completion": LONG_PROMPT}])
    with pytest.raises(DataError, match=rf"1 row\(s\) do not fit max_seq_length=30.*{p.name}:1"):
        prepare(cfg(p, max_seq_length=30, overlong="error"), tiny_tokenizer)


def test_fit_row_keeps_the_token_before_the_answer_and_a_head():
    r = row(10, 3)
    fitted, status = fit_row(r, 6, keep_head=1)
    assert status == "prompt_cut" and fitted.ids == [1, 9, 10, 11, 12, 13]
    assert fitted.mask == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def test_text_rows_are_cut_from_the_right():
    r = TokenizedRow(list(range(1, 11)), [0.0] + [1.0] * 9)
    fitted, status = fit_row(r, 4)
    assert status == "answer_cut" and fitted.ids == [1, 2, 3, 4]


def test_multi_turn_cut_drops_oldest_turns_first():
    r = TokenizedRow(list(range(1, 13)), [0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0])
    fitted, status = fit_row(r, 8)
    assert status == "prompt_cut" and fitted.ids == list(range(5, 13))
    assert fitted.mask == [0, 0, 0, 0, 1, 1, 1, 0]


# ---- batching ------------------------------------------------------------------------------------

ROWS = [row(3 + i % 7, 2 + i % 5, f"r{i}") for i in range(30)]


def test_batches_pad_only_to_their_longest_row():
    for b in iterate_batches(ROWS, 4, 0, seed=1):
        lengths = (b.segment_ids > 0).sum(axis=1)
        assert b.inputs.shape[1] == lengths.max()
        assert (b.loss_mask[b.segment_ids == 0] == 0).all()


def test_every_row_once_per_epoch_and_deterministic():
    a = iterate_batches(ROWS, 4, 0, seed=7, epoch=2)
    b = iterate_batches(ROWS, 4, 0, seed=7, epoch=2)
    assert all(np.array_equal(x.inputs, y.inputs) for x, y in zip(a, b)) and len(a) == len(b) == 8
    assert sum(x.inputs.shape[0] for x in a) == len(ROWS)
    assert sum(x.n_targets for x in a) == sum(r.n_response for r in ROWS)
    c = iterate_batches(ROWS, 4, 0, seed=7, epoch=3)
    assert any(not np.array_equal(x.inputs, y.inputs) for x, y in zip(a, c))


def test_length_grouping_wastes_less_padding():
    grouped = padding_waste(iterate_batches(ROWS, 4, 0, seed=0, group_by_length=True))
    plain = padding_waste(iterate_batches(ROWS, 4, 0, seed=0, group_by_length=False))
    assert grouped < plain


def test_the_longest_batch_comes_first():
    batches = iterate_batches(ROWS, 4, 0, seed=5)
    assert batches[0].inputs.shape[1] == max(b.inputs.shape[1] for b in batches)


def _rows_of(batch):
    """(inputs, targets, mask, positions) of every packed row, in order."""
    out = []
    for i in range(batch.inputs.shape[0]):
        for s in range(1, batch.segment_ids[i].max() + 1):
            sel = batch.segment_ids[i] == s
            out.append((tuple(batch.inputs[i, sel]), tuple(batch.targets[i, sel]),
                        tuple(batch.loss_mask[i, sel]), tuple(batch.position_ids[i, sel])))
    return out


def test_packing_keeps_every_target_and_mask_and_restarts_positions():
    packed = iterate_batches(ROWS, 2, 0, packing=True, max_seq_length=32, seed=3)
    plain = iterate_batches(ROWS, 2, 0, packing=False, shuffle=False, group_by_length=False)
    assert any(b.is_packed for b in packed)
    assert all(b.inputs.shape[1] <= 32 for b in packed)
    p_rows, u_rows = [r for b in packed for r in _rows_of(b)], [r for b in plain for r in _rows_of(b)]
    assert sorted(p_rows) == sorted(u_rows)  # same tokens, targets, masks, per row
    assert all(r[3] == tuple(range(len(r[0]))) for r in p_rows)  # positions restart at 0 per row
    assert sum(b.n_targets for b in packed) == sum(b.n_targets for b in plain)
    assert len(packed) < len(plain)


def test_packed_rows_never_attend_across_rows():
    b = iterate_batches(ROWS, 2, 0, packing=True, max_seq_length=32, seed=3)[0]
    m = b.block_causal_mask()
    seg = b.segment_ids
    cross = (seg[:, :, None] != seg[:, None, :])
    assert not (m & cross).any()


def test_packing_real_rows(tmp_path, tiny_tokenizer, demo_bundle):
    data = prepare(cfg(demo_bundle["train"], max_seq_length=64), tiny_tokenizer)
    packed = iterate_batches(data.train, 2, 3, packing=True, max_seq_length=64)
    plain = iterate_batches(data.train, 2, 3)
    assert sorted(r for b in packed for r in _rows_of(b)) == sorted(r for b in plain for r in _rows_of(b))
    assert padding_waste(packed) < 0.2


# ---- reports -------------------------------------------------------------------------------------

def test_prepare_report(tmp_path, tiny_tokenizer, demo_bundle):
    data = prepare(TrainConfig(data=DataConfig(train=demo_bundle["train"]), max_seq_length=64), tiny_tokenizer)
    r = data.report
    assert r["train_rows"] + r["validation_rows"] == 32 and r["validation_rows"] == 3
    assert r["format"] == "prompt_response" and r["template"] == "tokenizer" and r["added_tokens"] == 0
    assert r["end_of_turn_token"] == "<|im_end|>" and 0 <= r["padding_waste"] < 100
    json.dumps(r)


def test_prepare_reports_added_tokens(tmp_path, tiny_model_dir, demo_bundle):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir, chat_template=None)
    data = prepare(TrainConfig(data=DataConfig(train=demo_bundle["train"], template="llama3")), tok)
    assert data.report["added_tokens"] == 4 and "<|eot_id|>" in data.report["added_token_list"]
    assert data.report["chat_template"] == tok.chat_template


def test_inspect_data_on_a_file(tiny_tokenizer, demo_bundle):
    rep = inspect_data(demo_bundle["train"], tiny_tokenizer, batch_size=4, max_seq_length=20)
    assert rep.train_rows == 32 and rep.format == "prompt_response" and rep.columns == ["prompt", "completion"]
    assert sum(c for _, _, c in rep.length_histogram) == 32
    assert rep.over_length_rows == 32 and rep.truncated_prompt_rows == 32 and rep.overlong_rows == 0
    assert rep.response_tokens_total > 0 and rep.prompt_tokens_mean > rep.response_tokens_mean
    ex = rep.examples[0]
    assert len(rep.examples) == 3
    assert [s.text for s in ex if s.supervised] == [demo_bundle["rows"][0]["completion"] + "<|im_end|>"]
    assert rep.padding_waste_packed_percent <= rep.padding_waste_percent + 1e-9 or rep.padding_waste_percent == 0
    json.dumps(dataclasses.asdict(rep))


def test_inspect_data_on_a_config_does_not_change_the_tokenizer(tmp_path, tiny_model_dir, demo_bundle):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir, chat_template=None)
    n = len(tok)
    y = tmp_path / "c.yaml"
    y.write_text(f"model: {tiny_model_dir}\nmax_seq_length: 128\nper_device_train_batch_size: 8\n"
                 f"data:\n  train: {demo_bundle['train']}\n  template: llama3\n  test_size: 0.25\n")
    rep = inspect_data(y, tok)
    assert len(tok) == n and tok.chat_template is None
    assert rep.template == "llama3" and len(rep.added_tokens) == 4 and rep.batch_size == 8
    assert rep.train_rows == 24 and rep.validation_rows == 8
    assert any(s.supervised and s.text.endswith("<|eot_id|>") for s in rep.examples[0])


def test_inspect_data_reports_padding_waste_variants(tmp_path, tiny_tokenizer):
    rows = [{"text": " ".join(["Zorblax"] * (1 + 5 * (i % 4)))} for i in range(16)]
    p = jsonl(tmp_path / "t.jsonl", rows)
    rep = inspect_data(p, tiny_tokenizer, batch_size=4, max_seq_length=64)
    assert rep.format == "text" and rep.template is None
    assert rep.padding_waste_grouped_percent < rep.padding_waste_percent
    assert all(s.supervised for s in rep.examples[0][1:])


def test_inspect_data_bad_file_is_a_data_error(tmp_path, tiny_tokenizer):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "a", "completion": "b"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: malformed JSON"):
        inspect_data(p, tiny_tokenizer)
