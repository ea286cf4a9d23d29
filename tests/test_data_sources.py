"""Data sources: local files of every type, lists, directories, sampling and splitting, bad input."""
from __future__ import annotations

import json

import pytest

from tunerd.config.schema import DataConfig, TrainConfig
from tunerd.data import DataError, prepare
from tunerd.data.prepare import load_records
from tunerd.data.sources import load_source

ROWS = [{"prompt": f"What is {i}?", "completion": f"It is {i}."} for i in range(10)]


def jsonl(path, rows, prefix=b""):
    path.write_bytes(prefix + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    return path


def cfg(train, **data):
    return TrainConfig(data=DataConfig(train=str(train), **data), max_seq_length=256)


def test_jsonl_rows_name_their_line(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n")
    recs = load_source(str(p), tmp_path)
    assert [r.data for r in recs] == ROWS[:2]
    assert [r.origin for r in recs] == [f"{p}:1", f"{p}:3"]


def test_json_array_file(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps(ROWS[:3], indent=2))
    assert [r.data for r in load_source(str(p), tmp_path)] == ROWS[:3]


def test_csv_file(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("prompt,completion\nhi,hello\n\"a, b\",c\n")
    assert [r.data for r in load_source(str(p), tmp_path)] == [
        {"prompt": "hi", "completion": "hello"}, {"prompt": "a, b", "completion": "c"}]


def test_parquet_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS[:4]), p)
    assert [r.data for r in load_source(str(p), tmp_path)] == ROWS[:4]


def test_text_file_rows_are_non_blank_lines(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("first line\n\nsecond line\n")
    recs = load_source(str(p), tmp_path)
    assert [r.data["text"] for r in recs] == ["first line", "second line"]
    assert recs[1].origin == f"{p}:3"


def test_list_of_files_concatenates(tmp_path):
    a, b = jsonl(tmp_path / "a.jsonl", ROWS[:2]), jsonl(tmp_path / "b.jsonl", ROWS[2:5])
    assert len(load_source([str(a), str(b)], tmp_path)) == 5


def test_relative_paths_resolve_against_base_dir(tmp_path):
    jsonl(tmp_path / "a.jsonl", ROWS[:2])
    assert len(load_source("a.jsonl", tmp_path)) == 2


def test_directory_with_train_and_valid_files(tmp_path):
    (tmp_path / "d").mkdir()
    jsonl(tmp_path / "d" / "train.jsonl", ROWS[:6])
    jsonl(tmp_path / "d" / "valid.jsonl", ROWS[6:8])
    jsonl(tmp_path / "d" / "test.jsonl", ROWS[8:])
    loaded = load_records(cfg(tmp_path / "d"))
    assert len(loaded.train) == 6 and len(loaded.validation) == 2


def test_directory_of_plain_files_is_all_train(tmp_path):
    (tmp_path / "d").mkdir()
    jsonl(tmp_path / "d" / "x.jsonl", ROWS[:3])
    jsonl(tmp_path / "d" / "y.jsonl", ROWS[3:5])
    assert len(load_source(str(tmp_path / "d"), tmp_path)) == 5


def test_utf8_bom_is_accepted(tmp_path):
    p = jsonl(tmp_path / "bom.jsonl", ROWS[:2], prefix=b"\xef\xbb\xbf")
    assert [r.data for r in load_source(str(p), tmp_path)] == ROWS[:2]
    c = tmp_path / "bom.csv"
    c.write_bytes(b"\xef\xbb\xbfprompt,completion\nx,y\n")
    assert load_source(str(c), tmp_path)[0].data == {"prompt": "x", "completion": "y"}


def test_korean_round_trips_exactly(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "서울의 수도는 어디인가요?", "completion": "대한민국의 수도는 서울입니다. 🇰🇷"}]
    p = jsonl(tmp_path / "ko.jsonl", rows)
    assert load_source(str(p), tmp_path)[0].data == rows[0]
    data = prepare(cfg(p, test_size=0.0), tiny_tokenizer)
    row = data.train[0]
    text = tiny_tokenizer.decode(row.ids)
    assert rows[0]["prompt"] in text and rows[0]["completion"] in text
    answer = tiny_tokenizer.decode([t for t, m in zip(row.ids, row.mask) if m])
    assert answer == rows[0]["completion"] + "<|im_end|>"


def test_fraction_shuffle_and_test_size(tmp_path):
    p = jsonl(tmp_path / "a.jsonl", ROWS)
    loaded = load_records(cfg(p, fraction=0.5, test_size=0.2, seed=3))
    assert len(loaded.train) + len(loaded.validation) == 5 and len(loaded.validation) == 1
    again = load_records(cfg(p, fraction=0.5, test_size=0.2, seed=3))
    assert [r.data for r in again.train] == [r.data for r in loaded.train]
    ordered = load_records(cfg(p, shuffle=False, test_size=0.0))
    assert [r.data for r in ordered.train] == ROWS


def test_max_rows_caps_train(tmp_path):
    p = jsonl(tmp_path / "a.jsonl", ROWS)
    assert len(load_records(cfg(p, max_rows=4, test_size=0.0)).train) == 4


def test_validation_file_is_used_instead_of_split(tmp_path):
    t, v = jsonl(tmp_path / "t.jsonl", ROWS[:8]), jsonl(tmp_path / "v.jsonl", ROWS[8:])
    loaded = load_records(cfg(t, validation=str(v)))
    assert len(loaded.train) == 8 and [r.data for r in loaded.validation] == ROWS[8:]


# ---- bad input ---------------------------------------------------------------------------------

def test_missing_file_is_file_not_found_with_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_source(str(tmp_path / "nope.jsonl"), tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(DataError, match=r"e\.jsonl: file is empty"):
        load_source(str(tmp_path / "e.jsonl"), tmp_path)


def test_whitespace_only_file(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n  \n")
    with pytest.raises(DataError, match="empty"):
        load_source(str(tmp_path / "e.jsonl"), tmp_path)


def test_malformed_json_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + "\n{\"prompt\": \"x\",\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:3: malformed JSON"):
        load_source(str(p), tmp_path)


def test_json_line_that_is_not_an_object(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: expected a JSON object"):
        load_source(str(p), tmp_path)


def test_undecodable_bytes_name_file_and_byte_offset(tmp_path):
    p = tmp_path / "latin1.jsonl"
    good = (json.dumps(ROWS[0]) + "\n").encode()
    p.write_bytes(good + '{"prompt": "caf\xe9", "completion": "x"}\n'.encode("latin-1"))
    with pytest.raises(DataError) as e:
        load_source(str(p), tmp_path)
    offset = len(good) + len('{"prompt": "caf')
    assert f"latin1.jsonl:2: not valid UTF-8 at byte offset {offset}" in str(e.value)


def test_unsupported_extension(tmp_path):
    (tmp_path / "a.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"unsupported file type '\.xlsx'"):
        load_source(str(tmp_path / "a.xlsx"), tmp_path)


def test_directory_without_data_files(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.bin").write_text("x")
    with pytest.raises(DataError, match="no data files"):
        load_source(str(tmp_path / "d"), tmp_path)


def test_hub_dataset_offline_is_a_clear_error(tmp_path):
    with pytest.raises(ConnectionError, match="no-such-org/no-such-dataset.*offline"):   # UNAVAILABLE: hub.py
        load_source("no-such-org/no-such-dataset", tmp_path)


def test_bad_source_dict_lists_allowed_keys(tmp_path):
    with pytest.raises(DataError, match="allowed keys are name, path"):
        load_source({"pth": "x"}, tmp_path)


def test_hub_source_passes_name_split_revision_streaming_token(tmp_path, monkeypatch):
    import datasets

    from tunerd.data import sources

    calls = []

    def fake_load(path, name=None, **kw):
        calls.append((path, name, kw))
        rows = [{"text": f"row {i}"} for i in range(10)]
        return iter(rows) if kw.get("streaming") else datasets.Dataset.from_list(rows)

    monkeypatch.setattr(sources, "_load_dataset", fake_load)
    spec = {"path": "org/ds", "name": "cfg", "split": "test", "revision": "v1", "streaming": True, "token": "t"}
    recs = load_source(spec, tmp_path, max_rows=3)
    assert calls[-1] == ("org/ds", "cfg", {"split": "test", "revision": "v1", "streaming": True, "token": "t"})
    assert [r.data["text"] for r in recs] == ["row 0", "row 1", "row 2"] and recs[0].origin == "org/ds[test]#0"
    data = DataConfig(train="org/ds", name="cfg", split="train", revision="main", test_size=0.2)
    loaded = load_records(TrainConfig(data=data), tmp_path)
    assert calls[-1] == ("org/ds", "cfg", {"split": "train", "revision": "main", "streaming": False, "token": None})
    assert len(loaded.train) == 8 and len(loaded.validation) == 2 and loaded.spec.format == "text"
