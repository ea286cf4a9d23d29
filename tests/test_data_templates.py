"""Masks on the idioms of real models' own chat templates (written here in their style, since
tests are offline): a default system prompt (Qwen2.5), a date header and trimmed content with
bos_token (Llama 3.1), a system prompt folded into the first user turn (Gemma), and a final
turn rendered differently from earlier ones (Qwen3's think block)."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from tunerd.data.formats import Example
from tunerd.data.masking import segments, tokenize_example
from tunerd.data.templates import add_chat_tokens, setup_template

QWEN25 = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) or message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA31 = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n' }}"
    "{{- system_message + '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
GEMMA = (
    "{%- if messages[0]['role'] == 'system' %}{%- set first = messages[0]['content'] + '\\n\\n' %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set first = '' %}{%- set loop_messages = messages %}{%- endif %}"
    "{%- for message in loop_messages %}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{- '<start_of_turn>' + role + '\\n' + (first if loop.first else '') + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
)
QWEN3_THINK = (
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' and loop.last %}"
    "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
CHAT = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the river of Quenta?"},
        {"role": "assistant", "content": "The river of Quenta is Coralis."},
        {"role": "user", "content": "And its poet?"},
        {"role": "assistant", "content": "The poet of Quenta is Lumora."}]
ANSWERS = ["The river of Quenta is Coralis.", "The poet of Quenta is Lumora."]


def tokenizer_with(model_dir, template, extra=()):
    tok = AutoTokenizer.from_pretrained(model_dir, chat_template=None)
    if extra:
        tok.add_tokens(list(extra), special_tokens=True)
    tok.chat_template = template
    return tok


def supervised_runs(tok, row):
    return [text for text, sup in segments(tok, row) if sup]


def check_ids(tok, row):
    out = tok.apply_chat_template(CHAT, tokenize=True)
    assert row.ids == list(out["input_ids"] if hasattr(out, "keys") else out)


def test_qwen25_style_default_system_prompt(tiny_model_dir):
    tok = tokenizer_with(tiny_model_dir, QWEN25)
    tpl = setup_template(tok, "auto")
    assert tpl.name == "tokenizer" and tpl.end_of_turn == "<|im_end|>"
    row = tokenize_example(tok, tpl, Example("x", messages=CHAT))
    check_ids(tok, row)
    assert supervised_runs(tok, row) == [a + "<|im_end|>" for a in ANSWERS]
    row = tokenize_example(tok, tpl, Example("x", messages=CHAT[1:3]))
    assert "You are Qwen" in tok.decode(row.ids) and supervised_runs(tok, row) == [ANSWERS[0] + "<|im_end|>"]


def test_llama31_style_date_header_and_bos(tiny_model_dir):
    tok = tokenizer_with(tiny_model_dir, LLAMA31)
    add_chat_tokens(tok, "llama3")
    tok.add_special_tokens({"bos_token": "<|begin_of_text|>"})
    tpl = setup_template(tok, "auto")
    assert tpl.name == "tokenizer" and tpl.end_of_turn == "<|eot_id|>"  # found from the rendering
    row = tokenize_example(tok, tpl, Example("x", messages=CHAT))
    check_ids(tok, row)
    assert row.ids[0] == tok.bos_token_id
    assert supervised_runs(tok, row) == [a + "<|eot_id|>" for a in ANSWERS]


def test_llama31_style_trimmed_content(tiny_model_dir):
    tok = tokenizer_with(tiny_model_dir, LLAMA31)
    add_chat_tokens(tok, "llama3")
    tpl = setup_template(tok, "auto")
    msgs = [{"role": "user", "content": "  hi "}, {"role": "assistant", "content": "  Hello there.\n"}]
    row = tokenize_example(tok, tpl, Example("x", messages=msgs))
    assert supervised_runs(tok, row) == ["Hello there.<|eot_id|>"]


def test_gemma_style_system_folded_into_first_turn(tiny_model_dir):
    tok = tokenizer_with(tiny_model_dir, GEMMA, extra=("<start_of_turn>", "<end_of_turn>"))
    tpl = setup_template(tok, "auto")
    assert tpl.end_of_turn == "<end_of_turn>"
    row = tokenize_example(tok, tpl, Example("x", messages=CHAT))
    check_ids(tok, row)
    assert supervised_runs(tok, row) == [a + "<end_of_turn>" for a in ANSWERS]
    assert "Be brief." in tok.decode(row.ids)


def test_final_turn_rendered_differently_falls_back_to_content_search(tiny_model_dir):
    tok = tokenizer_with(tiny_model_dir, QWEN3_THINK)
    tpl = setup_template(tok, "auto")
    row = tokenize_example(tok, tpl, Example("x", messages=CHAT))
    check_ids(tok, row)
    runs = supervised_runs(tok, row)
    assert runs[0] == ANSWERS[0] + "<|im_end|>"
    assert runs[1] == "<think>\n\n</think>\n\n" + ANSWERS[1] + "<|im_end|>"


@pytest.mark.parametrize("name", ["chatml", "qwen", "llama3", "alpaca"])
def test_builtin_names_resolve(tiny_model_dir, name):
    tok = tokenizer_with(tiny_model_dir, None)
    tpl = setup_template(tok, name)
    assert tpl.name == {"qwen": "chatml"}.get(name, name)
    row = tokenize_example(tok, tpl, Example("x", messages=CHAT))
    assert [r.rstrip() for r in supervised_runs(tok, row)] == [a + tpl.end_of_turn for a in ANSWERS]


def test_unknown_template_name_is_a_data_error(tiny_model_dir):
    from tunerd.data import DataError

    with pytest.raises(DataError, match="data.template: 'vicuna' is not one of"):
        setup_template(tokenizer_with(tiny_model_dir, None), "vicuna")
