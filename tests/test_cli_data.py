"""`tunerctl data inspect` through a real daemon: rows alone without a tokenizer, bad rows as
file:line, hub ids kept, mixed directories named, data.system_prompt shown."""
from __future__ import annotations

import json

from daemon_utils import cli, json_lines, write_config


def _inspect(daemon, *args, cwd=None):
    p = cli(daemon.home, "data", "inspect", *args, "--json", cwd=cwd)
    return p.returncode, json_lines(p.stdout)[-1]


def _rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_file_without_a_model_reports_its_rows(daemon, demo_bundle):
    code, r = _inspect(daemon, demo_bundle["train"])
    assert code == 0, r
    assert (r["format"], r["columns"], r["train_rows"]) == ("prompt_response", ["prompt", "completion"], 32)
    assert r["tokenizer"] == "" and r["tokens_total"] == 0 and r["row_error_count"] == 0
    first = r["examples"][0]["segments"]
    assert [s["text"] for s in first if s["supervised"]] == [demo_bundle["rows"][0]["completion"]]
    assert "".join(s["text"] for s in first).startswith("user: ")
    text = cli(daemon.home, "data", "inspect", demo_bundle["train"], check=True).stdout
    assert "no tokenizer: pass --model" in text


def test_a_named_model_counts_tokens(daemon, demo_bundle):
    code, r = _inspect(daemon, demo_bundle["train"], "--model", demo_bundle["model"])
    assert code == 0 and r["tokenizer"] and r["tokens_total"] > 0 and r["template"]


def test_bad_rows_are_listed_with_file_and_line(daemon, tmp_path):
    f = _rows(tmp_path / "bad.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": " "},
                                       {"prompt": "d", "completion": "e"}, {"prompt": "f", "completion": ["x"]}])
    code, r = _inspect(daemon, str(f))
    assert code == 1 and r["row_error_count"] == 2 and r["train_rows"] == 4
    assert r["row_errors"] == [f"{f}:2: field 'completion' is empty",
                               f"{f}:4: field 'completion' must be text, got list"]
    text = cli(daemon.home, "data", "inspect", str(f)).stdout
    assert "2 bad row(s)" in text and f"{f}:4" in text


def test_malformed_file_without_a_model_names_the_line(daemon, tmp_path):
    f = tmp_path / "broken.jsonl"
    f.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": \n')
    code, r = _inspect(daemon, str(f))
    assert code == 1 and r["error"]["code"] == "INVALID_ARGUMENT"
    assert f"{f}:2: malformed JSON" in r["error"]["message"]


def test_a_hub_dataset_id_is_not_made_a_local_path(daemon, tmp_path):
    code, r = _inspect(daemon, "no-such-org/no-such-data", cwd=tmp_path)  # offline: cannot be fetched
    assert code == 1 and "no-such-org/no-such-data" in r["error"]["message"]
    assert str(tmp_path) not in r["error"]["message"], r


def test_a_relative_file_resolves_against_our_directory(daemon, tmp_path):
    _rows(tmp_path / "t.jsonl", [{"text": "hello"}])
    code, r = _inspect(daemon, "t.jsonl", cwd=tmp_path)
    assert code == 0 and r["format"] == "text" and r["train_rows"] == 1


def test_a_mixed_directory_names_the_odd_file(daemon, tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    _rows(d / "a.jsonl", [{"prompt": "Q", "completion": "A"}])
    (d / "b.csv").write_text("prompt,response\nQ2,A2\n", encoding="utf-8")
    code, r = _inspect(daemon, str(d))
    assert code == 1
    msg = r["error"]["message"]
    assert f"{d / 'b.csv'}: no column 'completion'" in msg and "its columns are: prompt, response" in msg
    assert "is empty" not in msg


def test_system_prompt_from_the_config_and_from_set(daemon, demo_bundle, tmp_path):
    cfg = write_config(tmp_path / "s.yaml", demo_bundle, data={"system_prompt": "You are terse."})
    code, r = _inspect(daemon, str(cfg))  # the config's model tokenizes
    assert code == 0 and r["tokenizer"]
    unsupervised = "".join(s["text"] for s in r["examples"][0]["segments"] if not s["supervised"])
    assert "You are terse." in unsupervised
    code, r = _inspect(daemon, str(cfg), "--set", "data.system_prompt=Be kind.")
    assert "Be kind." in "".join(s["text"] for s in r["examples"][0]["segments"])


def test_set_overrides_apply_to_a_data_file(daemon, tmp_path):
    """`data inspect FILE --set data.prompt_column=... --set data.response_column=...`: columns no
    detector knows are read as mapped (the overrides were dropped for a data file before)."""
    f = _rows(tmp_path / "odd.jsonl", [{"frage": f"q{i}", "antwort": f"a{i}"} for i in range(3)])
    code, r = _inspect(daemon, str(f))
    assert code != 0, r   # unmapped: no format fits these columns
    code, r = _inspect(daemon, str(f), "--set", "data.prompt_column=frage", "--set", "data.response_column=antwort")
    assert code == 0 and r["format"] == "prompt_response" and r["train_rows"] == 3, r
    assert [s["text"] for s in r["examples"][0]["segments"] if s["supervised"]] == ["a0"]
