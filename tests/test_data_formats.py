"""Row formats: each format, column mapping, auto-detection, and the errors for bad rows."""
from __future__ import annotations

import json

import pytest

from tunerd.config.schema import DataConfig, TrainConfig
from tunerd.data import DataError, prepare
from tunerd.data.formats import detect_format, to_example
from tunerd.data.prepare import load_records
from tunerd.data.sources import Record


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def examples(tmp_path, rows, **data):
    p = jsonl(tmp_path / "d.jsonl", rows)
    cfg = TrainConfig(data=DataConfig(train=str(p), shuffle=False, test_size=0.0, **data))
    loaded = load_records(cfg)
    return loaded.spec, [to_example(r, loaded.spec) for r in loaded.train]


def test_text_format(tmp_path):
    spec, ex = examples(tmp_path, [{"text": "hello world"}])
    assert spec.format == "text" and ex[0].text == "hello world"


def test_prompt_completion(tmp_path):
    spec, ex = examples(tmp_path, [{"prompt": "Q", "completion": "A"}])
    assert spec.format == "prompt_response"
    assert ex[0].messages == [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]


def test_prompt_response_with_system(tmp_path):
    _, ex = examples(tmp_path, [{"system": "S", "prompt": "Q", "response": "A"}])
    assert [m["role"] for m in ex[0].messages] == ["system", "user", "assistant"]
    assert ex[0].messages[0]["content"] == "S" and ex[0].messages[2]["content"] == "A"


def test_alpaca_with_and_without_input(tmp_path):
    spec, ex = examples(tmp_path, [{"instruction": "Translate", "input": "hi", "output": "안녕"},
                                   {"instruction": "Say hi", "input": "", "output": "hi"}])
    assert spec.format == "alpaca"
    assert ex[0].messages[0] == {"role": "user", "content": "Translate\n\nhi"}
    assert ex[0].messages[1] == {"role": "assistant", "content": "안녕"}
    assert ex[1].messages[0]["content"] == "Say hi"


def test_messages_multi_turn(tmp_path):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "u1"},
            {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
            {"role": "assistant", "content": "a2"}]
    spec, ex = examples(tmp_path, [{"messages": msgs}])
    assert spec.format == "messages" and ex[0].messages == msgs


def test_sharegpt_conversations(tmp_path):
    conv = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    _, ex = examples(tmp_path, [{"conversations": conv}])
    assert ex[0].messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def test_column_mapping(tmp_path):
    spec, ex = examples(tmp_path, [{"q": "Q", "a": "A", "ctx": "S"}],
                        prompt_column="q", response_column="a", system_column="ctx")
    assert spec.columns == {"prompt": "q", "response": "a", "system": "ctx"}
    assert [m["content"] for m in ex[0].messages] == ["S", "Q", "A"]


def test_text_column_mapping(tmp_path):
    spec, ex = examples(tmp_path, [{"body": "some text", "prompt": "x"}], text_column="body")
    assert spec.format == "text" and ex[0].text == "some text"


def test_declared_format_wins_over_detection(tmp_path):
    spec, ex = examples(tmp_path, [{"text": "t", "prompt": "p", "completion": "c"}], format="text")
    assert spec.format == "text" and ex[0].text == "t"


def test_question_answer_names_are_detected(tmp_path):
    spec, _ = examples(tmp_path, [{"question": "Q", "answer": "A"}])
    assert spec.format == "prompt_response" and spec.columns["prompt"] == "question"


def test_text_and_prompt_column_together_is_an_error():
    with pytest.raises(DataError, match="text_column and data.prompt_column"):
        detect_format(["a", "b"], DataConfig(text_column="a", prompt_column="b"))


def test_misnamed_column_lists_the_columns(tmp_path):
    msg = r"data.prompt_column 'question' not found; the columns are: prompt, completion"
    with pytest.raises(DataError, match=msg):
        examples(tmp_path, [{"prompt": "Q", "completion": "A"}], prompt_column="question")


def test_undetectable_format_lists_the_columns(tmp_path):
    with pytest.raises(DataError, match=r"cannot detect the data format from the columns: foo, bar"):
        examples(tmp_path, [{"foo": 1, "bar": 2}])


def test_declared_format_missing_its_column(tmp_path):
    with pytest.raises(DataError, match=r"output column 'output' not found; the columns are: instruction, answer"):
        examples(tmp_path, [{"instruction": "I", "answer": "A"}], format="alpaca")


def test_empty_response_names_file_and_line(tmp_path, tiny_tokenizer):
    p = jsonl(tmp_path / "d.jsonl", [{"prompt": "Q", "completion": "A"}, {"prompt": "Q2", "completion": "  "}])
    with pytest.raises(DataError, match=r"d\.jsonl:2: field 'completion' is empty"):
        prepare(TrainConfig(data=DataConfig(train=str(p), test_size=0.0)), tiny_tokenizer)


def test_missing_response_value_is_empty(tmp_path):
    with pytest.raises(DataError, match=r"d\.jsonl:2: field 'completion' is empty"):
        examples(tmp_path, [{"prompt": "Q", "completion": "A"}, {"prompt": "Q2"}])


def test_empty_assistant_message(tmp_path):
    msgs = [{"role": "user", "content": "u"}, {"role": "assistant", "content": ""}]
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'messages\[1\].content' is empty"):
        examples(tmp_path, [{"messages": msgs}])


def test_bad_role_names_the_message(tmp_path):
    msgs = [{"role": "narrator", "content": "u"}, {"role": "assistant", "content": "a"}]
    with pytest.raises(DataError, match=r"messages\[0\].role 'narrator'"):
        examples(tmp_path, [{"messages": msgs}])


def test_messages_without_assistant(tmp_path):
    with pytest.raises(DataError, match="no assistant message"):
        examples(tmp_path, [{"messages": [{"role": "user", "content": "u"}]}])


def test_non_text_field_is_named():
    spec = detect_format(["prompt", "completion"], DataConfig())
    with pytest.raises(DataError, match=r"x:7: field 'completion' must be text, got list"):
        to_example(Record({"prompt": "p", "completion": ["a"]}, "x:7"), spec)


# -- data.system_prompt: one system prompt for a whole data set --------------------------------------
def test_system_prompt_reaches_the_tokenized_rows(tmp_path, tiny_tokenizer):
    p = jsonl(tmp_path / "d.jsonl", [{"prompt": "Q1", "completion": "A1"},
                                     {"system": "Own rule", "prompt": "Q2", "completion": "A2"}])
    data = prepare(TrainConfig(data=DataConfig(train=str(p), shuffle=False, test_size=0.0,
                                                system_prompt="Answer in French.")), tiny_tokenizer)
    first, second = (tiny_tokenizer.decode(r.ids) for r in data.train)
    assert "Answer in French." in first
    assert "Own rule" in second and "Answer in French." not in second  # a row's own system prompt wins
    sup = [tiny_tokenizer.decode([t for t, m in zip(r.ids[1:], r.mask[1:]) if m]) for r in data.train]
    assert all("French" not in s for s in sup)  # part of the prompt: no loss on it


@pytest.mark.parametrize("rows, roles", [
    ([{"instruction": "I", "output": "O"}], ["system", "user", "assistant"]),
    ([{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}],
     ["system", "user", "assistant"]),
])
def test_system_prompt_in_every_chat_format(tmp_path, rows, roles):
    _, ex = examples(tmp_path, rows, system_prompt="S")
    assert [m["role"] for m in ex[0].messages] == roles and ex[0].messages[0]["content"] == "S"


def test_system_prompt_leaves_a_system_message_alone(tmp_path):
    msgs = [{"role": "system", "content": "mine"}, {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a"}]
    _, ex = examples(tmp_path, [{"messages": msgs}], system_prompt="S")
    assert ex[0].messages == msgs


def test_system_prompt_on_plain_text_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"data\.system_prompt: the rows are plain text"):
        examples(tmp_path, [{"text": "t"}], system_prompt="S")


# -- a data set whose files do not share their columns -----------------------------------------------
def test_mixed_directory_names_the_file_and_the_missing_column(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    jsonl(d / "part1.jsonl", [{"prompt": "Q", "completion": "A"}])
    (d / "part2.csv").write_text("prompt,response\nQ2,A2\n", encoding="utf-8")
    cfg = TrainConfig(data=DataConfig(train=str(d), shuffle=False, test_size=0.0))
    with pytest.raises(DataError, match=r"part2\.csv: no column 'completion', which the prompt_response format "
                                        r"of data\.train needs; its columns are: prompt, response"):
        load_records(cfg)


def test_row_without_a_column_is_not_called_empty():
    spec = detect_format(["prompt", "completion"], DataConfig())
    with pytest.raises(DataError, match=r"x\.csv: row 3: no column 'completion' \(prompt_response format\); "
                                        r"this row's columns are: prompt, response"):
        to_example(Record({"prompt": "Q", "response": "A"}, "x.csv: row 3"), spec)
