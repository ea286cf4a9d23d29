"""Data operations from `data.operations`: each one, its split, and its errors."""
from __future__ import annotations

import json

import pytest

from tunerd.config.schema import DataConfig, TrainConfig
from tunerd.data import DataError
from tunerd.data.prepare import load_records

ROWS = [{"q": f"question {i}", "a": f"answer {i}", "lang": "ko" if i % 2 else "en"} for i in range(6)]


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def load(tmp_path, ops, rows=ROWS, **data):
    p = jsonl(tmp_path / "d.jsonl", rows)
    data.setdefault("test_size", 0.0)
    cfg = TrainConfig(data=DataConfig(train=str(p), shuffle=False, operations=ops,
                                      prompt_column="q", response_column="a", **data))
    return load_records(cfg, tmp_path)


def test_concat_adds_rows_of_another_source(tmp_path):
    jsonl(tmp_path / "more.jsonl", ROWS[:2])
    out = load(tmp_path, [{"concat": "more.jsonl"}])
    assert len(out.train) == 8 and out.train[-1].origin.endswith("more.jsonl:2")


def test_select_columns(tmp_path):
    out = load(tmp_path, [{"select_columns": ["q", "a"]}])
    assert all(set(r.data) == {"q", "a"} for r in out.train)


def test_select_rows_slice(tmp_path):
    out = load(tmp_path, [{"select_rows": "1:5:2"}])
    assert [r.data["q"] for r in out.train] == ["question 1", "question 3"]


def test_select_rows_indices(tmp_path):
    out = load(tmp_path, [{"select_rows": [0, -1]}])
    assert [r.data["q"] for r in out.train] == ["question 0", "question 5"]


def test_filter_equals(tmp_path):
    out = load(tmp_path, [{"filter": {"column": "lang", "equals": "ko"}}])
    assert [r.data["q"] for r in out.train] == ["question 1", "question 3", "question 5"]


def test_filter_regex_and_length_together(tmp_path):
    out = load(tmp_path, [{"filter": {"column": "q", "regex": "[0-2]$", "min_length": 10}}])
    assert [r.data["q"] for r in out.train] == ["question 0", "question 1", "question 2"]


def test_filter_not_empty_and_in(tmp_path):
    rows = ROWS[:3] + [{"q": "x", "a": "", "lang": "fr"}]
    out = load(tmp_path, [{"filter": {"column": "a", "not_empty": True}},
                          {"filter": {"column": "lang", "in": ["en", "ko"]}}], rows=rows)
    assert len(out.train) == 3


def test_map_with_a_template(tmp_path):
    out = load(tmp_path, [{"map": {"to": "q", "template": "[{lang}] {q} {{literal}}"}}])
    assert out.train[1].data["q"] == "[ko] question 1 {literal}"


def test_map_unknown_field_lists_columns(tmp_path):
    with pytest.raises(DataError, match=r"template field \{nope\} is not a column; the columns are: q, a, lang"):
        load(tmp_path, [{"map": {"to": "q", "template": "{nope}"}}])


def test_map_template_cannot_reach_attributes(tmp_path):
    out = load(tmp_path, [{"map": {"to": "q", "template": "{q.__class__}"}}])
    assert out.train[0].data["q"] == "{q.__class__}"


def test_augment_instructions(tmp_path):
    ops = [{"augment_instructions": {"column": "q", "phrasings": ["Please: {instruction}", "Q: {instruction}"]}}]
    out = load(tmp_path, ops, rows=ROWS[:2])
    assert [r.data["q"] for r in out.train] == [
        "question 0", "Please: question 0", "Q: question 0", "question 1", "Please: question 1", "Q: question 1"]
    assert all(r.data["a"] == ROWS[i // 3]["a"] for i, r in enumerate(out.train))


def test_augment_instructions_n_phrasings_without_original(tmp_path):
    ops = [{"augment_instructions": {"n": 2, "keep_original": False}}]
    out = load(tmp_path, ops, rows=ROWS[:3])
    assert len(out.train) == 6
    assert all(r.data["q"] != ROWS[i // 2]["q"] and ROWS[i // 2]["q"] in r.data["q"] for i, r in enumerate(out.train))


def test_operations_apply_in_order(tmp_path):
    out = load(tmp_path, [{"select_rows": "0:4"}, {"filter": {"column": "lang", "equals": "en"}}])
    assert [r.data["q"] for r in out.train] == ["question 0", "question 2"]


def test_augment_touches_train_only_and_map_every_split(tmp_path):
    v = jsonl(tmp_path / "v.jsonl", ROWS[:2])
    ops = [{"augment_instructions": {"column": "q", "phrasings": ["X {instruction}"]}},
           {"map": {"to": "a", "template": "<{a}>"}}]
    out = load(tmp_path, ops, validation=str(v))
    assert len(out.train) == 12 and len(out.validation) == 2
    assert out.validation[0].data["a"] == "<answer 0>" and out.train[0].data["a"] == "<answer 0>"


def test_split_key_overrides_the_default(tmp_path):
    v = jsonl(tmp_path / "v.jsonl", ROWS[:4])
    out = load(tmp_path, [{"select_rows": "0:1", "split": "validation"}], validation=str(v))
    assert len(out.train) == 6 and len(out.validation) == 1


def test_unknown_operation_suggests_the_closest(tmp_path):
    with pytest.raises(DataError, match=r"data.operations\[0\]: unknown operation 'filtr'; did you mean filter\?"):
        load(tmp_path, [{"filtr": {"column": "q", "equals": 1}}])


def test_select_columns_missing_lists_columns(tmp_path):
    with pytest.raises(DataError, match=r"column\(s\) 'b' not found; the columns are: q, a, lang"):
        load(tmp_path, [{"select_columns": ["q", "b"]}])


def test_filter_bad_condition(tmp_path):
    with pytest.raises(DataError, match="filter condition"):
        load(tmp_path, [{"filter": {"column": "q", "bigger": 3}}])


def test_select_rows_out_of_range(tmp_path):
    with pytest.raises(DataError, match="out of range for 6 rows"):
        load(tmp_path, [{"select_rows": [10]}])


def test_wrongly_typed_argument_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"data.operations\[0\] \(filter\): invalid argument"):
        load(tmp_path, [{"filter": {"column": "q", "min_length": "ten"}}])
