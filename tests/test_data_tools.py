"""Tool-calling chat rows (OpenAI format: an assistant turn with `tool_calls` and no content, a
`tool` turn with the result, a `tools` column of function schemas) through the data pipeline,
rendered by a tools-capable chat template: Qwen2.5's, written here compactly with the same
output (tests are offline) and set on the demo's locally trained tokenizer. The tool calls and
the end of their turn carry loss, the tool result does not; a template without tool support is
an error naming the row; `tunerctl data inspect` shows such a row through a real daemon."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from daemon_utils import cli, json_lines
from tunerd.config.schema import DataConfig, TrainConfig
from tunerd.data import DataError, prepare
from tunerd.data.masking import segments

# Qwen2.5-Instruct's chat template (tools part as released), whitespace-control compacted.
QWEN25_TOOLS = r"""
{%- if tools %}
{{- '<|im_start|>system\n' }}
{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}
{%- else %}{{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}{%- endif %}
{{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
{%- for tool in tools %}{{- "\n" }}{{- tool | tojson }}{%- endfor %}
{{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
{%- else %}{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}{%- endif %}
{%- endif %}
{%- for message in messages %}
{%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
{%- elif message.role == "assistant" %}
{{- '<|im_start|>' + message.role }}
{%- if message.content %}{{- '\n' + message.content }}{%- endif %}
{%- for tool_call in message.tool_calls %}
{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
{{- '\n<tool_call>\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}{{- tool_call.arguments | tojson }}{{- '}\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\n' }}
{%- elif message.role == "tool" %}
{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\n<tool_response>\n' }}{{- message.content }}{{- '\n</tool_response>' }}
{%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
"""
# Qwen3's idiom: the last assistant turn opens with an empty think block, so an earlier tool-call
# turn renders differently as the end of a prefix than within the row (the masks search for it).
QWEN3_TOOLS = (
    "{%- if tools %}{{- '<|im_start|>system\\n# Tools\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}{{- '\\n</tools><|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if loop.last %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{{- message.content }}"
    "{%- for tc in message.tool_calls or [] %}{{- '<tool_call>\\n{\"name\": \"' + tc.function.name + "
    "'\", \"arguments\": ' + (tc.function.arguments | tojson) + '}\\n</tool_call>' }}{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
# A template that refuses tools outright, as some models' do.
REFUSES_TOOLS = ("{%- if tools %}{{ raise_exception('This model does not support tools.') }}{%- endif %}"
                 "{%- for message in messages %}"
                 "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
                 "{%- endfor %}")
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
ROW = {"messages": [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 22 C"},
    {"role": "assistant", "content": "It is sunny and 22 C in Paris."}],
    "tools": TOOLS}
PLAIN = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def _tokenizer(model_dir, template):
    tok = AutoTokenizer.from_pretrained(model_dir, chat_template=None)
    tok.chat_template = template
    return tok


def _prepare(tmp_path, tok, rows):
    p = tmp_path / "tools.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = TrainConfig(data=DataConfig(train=str(p), shuffle=False, test_size=0.0), max_seq_length=1024)
    return p, prepare(cfg, tok)


def test_tool_calling_rows_are_rendered_by_the_template_and_the_calls_supervised(tiny_model_dir, tmp_path):
    tok = _tokenizer(tiny_model_dir, QWEN25_TOOLS)
    _, data = _prepare(tmp_path, tok, [ROW, PLAIN])
    assert data.report["format"] == "messages" and data.report["train_rows"] == 2
    row = data.train[0]
    # exactly what the template renders for the row (as TRL renders it: tools=, arguments as an object)
    msgs = [dict(m) for m in ROW["messages"]]
    msgs[1] = {**msgs[1], "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": {"city": "Paris"}}}]}
    expected = tok.apply_chat_template(msgs, tools=TOOLS, tokenize=False)
    assert tok.decode(row.ids) == expected
    assert CALL in expected and "Sunny, 22 C" in expected
    assert json.dumps(TOOLS[0]) in expected  # the tools column reached the template
    supervised = [t for t, s in segments(tok, row) if s]
    unsupervised = "".join(t for t, s in segments(tok, row) if not s)
    assert supervised == [CALL + "<|im_end|>", "It is sunny and 22 C in Paris.<|im_end|>"]
    assert "<tool_response>\nSunny, 22 C\n</tool_response>" in unsupervised
    assert "get_weather" in unsupervised  # the schema in the system turn: context, not a target
    assert [t for t, s in segments(tok, data.train[1]) if s] == ["Hello.<|im_end|>"]


def test_a_tool_result_object_and_flat_calls_are_accepted(tiny_model_dir, tmp_path):
    tok = _tokenizer(tiny_model_dir, QWEN25_TOOLS)
    row = json.loads(json.dumps(ROW))
    row["messages"][1] = {"role": "assistant", "content": "Let me check.",
                          "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}
    row["messages"][2]["content"] = {"sky": "sunny", "celsius": 22}
    row["tools"] = json.dumps(TOOLS)  # a JSON string column, as hub data sets often store it
    _, data = _prepare(tmp_path, tok, [row])
    supervised = [t for t, s in segments(tok, data.train[0]) if s]
    assert supervised[0] == "Let me check.\n" + CALL + "<|im_end|>"
    assert '{"sky": "sunny", "celsius": 22}' in tok.decode(data.train[0].ids)


# The same conversation in ShareGPT format as LLaMA-Factory writes tool calling (its
# glaive_toolcall demo): the call and the result are turns of their own, `tools` a JSON string
# of flat schemas.
SHAREGPT_ROW = {"conversations": [
    {"from": "human", "value": "What is the weather in Paris?"},
    {"from": "function_call", "value": "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}"},
    {"from": "observation", "value": "Sunny, 22 C"},
    {"from": "gpt", "value": "It is sunny and 22 C in Paris."}],
    "tools": json.dumps([TOOLS[0]["function"]])}


def test_sharegpt_function_call_and_observation_turns_are_tool_calls_and_results(tiny_model_dir, tmp_path):
    tok = _tokenizer(tiny_model_dir, QWEN25_TOOLS)
    _, openai = _prepare(tmp_path, tok, [ROW])
    _, data = _prepare(tmp_path, tok, [SHAREGPT_ROW])
    assert data.report["format"] == "messages"
    row = data.train[0]
    # the same rendering as the OpenAI row (less the call id the template does not show), the same mask
    assert tok.decode(row.ids) == tok.decode(openai.train[0].ids)
    assert json.dumps(TOOLS[0]) in tok.decode(row.ids)   # the flat schema nested as templates read it
    assert [t for t, s in segments(tok, row) if s] == [CALL + "<|im_end|>", "It is sunny and 22 C in Paris.<|im_end|>"]
    assert "Sunny, 22 C" in "".join(t for t, s in segments(tok, row) if not s)
    # parallel calls: a list of calls in one function_call turn
    two = json.loads(json.dumps(SHAREGPT_ROW))
    two["conversations"][1]["value"] = [{"name": "get_weather", "arguments": {"city": "Paris"}},
                                        {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}]
    _, data = _prepare(tmp_path, tok, [two])
    assert [t for t, s in segments(tok, data.train[0]) if s][0] == \
        CALL + CALL.replace("Paris", "Rome").replace("<tool_call>", "\n<tool_call>", 1) + "<|im_end|>"
    bad = json.loads(json.dumps(SHAREGPT_ROW))
    bad["conversations"][1]["value"] = "get_weather(city=Paris)"
    with pytest.raises(DataError, match=r"tools.jsonl:1: conversations\[1\].value is not valid JSON"):
        _prepare(tmp_path, tok, [bad])
    bad["conversations"][1]["value"] = '{"arguments": {"city": "Paris"}}'
    with pytest.raises(DataError, match=r"conversations\[1\].value\[0\] has no function name"):
        _prepare(tmp_path, tok, [bad])
    with pytest.raises(DataError, match=r"tools.jsonl:1: the tokenizer.s own chat template does not render the call "
                                        r"to .get_weather. in messages\[1\]"):
        _prepare(tmp_path, AutoTokenizer.from_pretrained(tiny_model_dir), [SHAREGPT_ROW])   # ChatML: no tools


def test_a_tool_call_turn_rendered_differently_as_the_last_is_found_in_the_row(tiny_model_dir, tmp_path):
    tok = _tokenizer(tiny_model_dir, QWEN3_TOOLS)
    _, data = _prepare(tmp_path, tok, [ROW])
    row = data.train[0]
    call_turn = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
        "name": "get_weather", "arguments": {"city": "Paris"}}}]}
    prefix = tok.apply_chat_template([ROW["messages"][0], call_turn], tools=TOOLS, tokenize=False)
    assert "<think>" in prefix and not tok.decode(row.ids).startswith(prefix)  # not a prefix of the row
    supervised = [t for t, s in segments(tok, row) if s]
    assert supervised[0] == CALL + "<|im_end|>"
    assert supervised[-1].endswith("It is sunny and 22 C in Paris.<|im_end|>")
    assert "Sunny, 22 C" not in "".join(supervised)


def test_a_template_without_tool_support_names_the_row(tiny_model_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)  # the demo's ChatML template: it drops tool_calls
    with pytest.raises(DataError) as e:
        _prepare(tmp_path, tok, [PLAIN, ROW])
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'tools.jsonl'}:2: the tokenizer's own chat template does not render "
                          "the call to 'get_weather' in messages[1]")
    assert "tools-capable chat template" in msg
    with pytest.raises(DataError) as e:
        _prepare(tmp_path, _tokenizer(tiny_model_dir, REFUSES_TOOLS), [ROW])
    msg = str(e.value)
    assert f"{tmp_path / 'tools.jsonl'}:1: the tokenizer's own chat template failed on this tool-calling row" in msg
    assert "does not support tools" in msg and "tools-capable chat template" in msg


def test_bad_tool_calls_name_the_row_and_field(tiny_model_dir, tmp_path):
    tok = _tokenizer(tiny_model_dir, QWEN25_TOOLS)
    row = json.loads(json.dumps(ROW))
    row["messages"][1]["tool_calls"][0]["function"]["arguments"] = "{city: Paris"
    with pytest.raises(DataError, match=r"tools.jsonl:1: messages\[1\].tool_calls\[0\].function.arguments "
                                        "is not valid JSON"):
        _prepare(tmp_path, tok, [row])
    row["messages"][1] = {"role": "assistant", "content": None, "tool_calls": []}
    with pytest.raises(DataError, match=r"tools.jsonl:1: field 'messages\[1\].content' is empty"):
        _prepare(tmp_path, tok, [row])


def test_data_inspect_shows_a_tool_calling_example(daemon, tiny_model_dir, tmp_path):
    model = tmp_path / "tools-model"  # the tiny tokenizer with the tools-capable template
    model.mkdir()
    for f in Path(tiny_model_dir).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, model / f.name)
    _tokenizer(tiny_model_dir, QWEN25_TOOLS).save_pretrained(model)
    data = tmp_path / "calls.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [PLAIN] * 4 + [ROW]), encoding="utf-8")
    p = cli(daemon.home, "data", "inspect", str(data), "--model", str(model), "--json")
    r = json_lines(p.stdout)[-1]
    assert p.returncode == 0 and r["row_error_count"] == 0 and r["train_rows"] == 5, r
    shown = [ex["segments"] for ex in r["examples"]]
    tool = next(s for s in shown if any("<tool_call>" in seg["text"] for seg in s))
    assert [seg["text"] for seg in tool if seg.get("supervised")] == [CALL + "<|im_end|>",
                                                                       "It is sunny and 22 C in Paris.<|im_end|>"]
    assert "Sunny, 22 C" in "".join(seg["text"] for seg in tool if not seg.get("supervised"))
    p = cli(daemon.home, "data", "inspect", str(data), "--json")  # rows alone: the calls as turns
    r = json_lines(p.stdout)[-1]
    assert p.returncode == 0, r
    tool = next(ex["segments"] for ex in r["examples"] if any("[call]" in s["text"] for s in ex["segments"]))
    assert any(s.get("supervised") and s["text"] == '[call] get_weather({"city": "Paris"})' for s in tool)
    text = cli(daemon.home, "data", "inspect", str(data), "--model", str(model)).stdout
    assert "get_weather" in text
    p = cli(daemon.home, "data", "inspect", str(data), "--model", tiny_model_dir, "--json")  # ChatML: no tools
    r = json_lines(p.stdout)[-1]
    assert p.returncode == 1 and r["error"]["code"] == "INVALID_ARGUMENT", r
    assert (f"{data}:5: the tokenizer's own chat template does not render the call to 'get_weather'"
            in r["error"]["message"]) and "tools-capable" in r["error"]["message"]


def test_the_real_smollm2_tokenizer(daemon, tmp_path):
    """Where the issue was found: SmolLM2-135M-Instruct's own template (ChatML, no tools) used to
    fail every row with "field 'messages[2].content' is empty"; now the row is named and a
    tools-capable template is asked for. Its real tokenizer with Qwen2.5's template masks the calls."""
    from real_model import smollm2_checkpoint

    model = smollm2_checkpoint()
    data = tmp_path / "calls.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [PLAIN, ROW]), encoding="utf-8")
    p = cli(daemon.home, "data", "inspect", str(data), "--model", str(model), "--json")
    r = json_lines(p.stdout)[-1]
    assert p.returncode == 1 and "is empty" not in r["error"]["message"], r
    assert f"{data}:2: the tokenizer's own chat template does not render the call to 'get_weather'" \
        in r["error"]["message"] and "tools-capable chat template" in r["error"]["message"]
    tok = _tokenizer(model, QWEN25_TOOLS)
    _, prepared = _prepare(tmp_path, tok, [PLAIN, ROW])
    supervised = [t for t, s in segments(tok, prepared.train[1]) if s]
    assert len(supervised) == 2 and CALL in supervised[0] and supervised[0].endswith("<|im_end|>")
    assert supervised[1].strip().endswith("It is sunny and 22 C in Paris.<|im_end|>")
    assert "Sunny, 22 C" in "".join(t for t, s in segments(tok, prepared.train[1]) if not s)
