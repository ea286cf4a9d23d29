"""Loss masks token by token on real templates: the fixture's ChatML, built-in Llama 3 and Alpaca."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from tunerd.data.formats import Example
from tunerd.data.masking import segments, tokenize_example
from tunerd.data.templates import add_chat_tokens, setup_template

QA = [{"role": "user", "content": "What is the capital of Zorblax?"},
      {"role": "assistant", "content": "The capital of Zorblax is Amberlin."}]
CHAT = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the river of Quenta?"},
        {"role": "assistant", "content": "The river of Quenta is Coralis."},
        {"role": "user", "content": "And its poet?"},
        {"role": "assistant", "content": "The poet of Quenta is Lumora."}]


@pytest.fixture
def bare_tokenizer(tiny_model_dir):
    """The fixture's tokenizer without a chat template (as many base models ship)."""
    return AutoTokenizer.from_pretrained(tiny_model_dir, chat_template=None)


def ids_of(tok, messages, template=None, gen=False):
    out = tok.apply_chat_template(messages, chat_template=template, tokenize=True, add_generation_prompt=gen)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def expected_mask(tok, messages, template=None, eot="<|im_end|>"):
    """Mask from independent prefix tokenizations: each assistant turn from the end of its
    generation prompt through the last end-of-turn token of its rendering."""
    eot_id = tok.convert_tokens_to_ids(eot)
    mask = [0.0] * len(ids_of(tok, messages, template))
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            a = len(ids_of(tok, messages[:i], template, gen=True))
            upto = ids_of(tok, messages[:i + 1], template)
            b = max(j for j, t in enumerate(upto) if t == eot_id) + 1
            mask[a:b] = [1.0] * (b - a)
    return mask


def test_chatml_single_turn_token_by_token(tiny_tokenizer):
    tpl = setup_template(tiny_tokenizer, "auto")
    assert tpl.name == "tokenizer" and tpl.end_of_turn == "<|im_end|>"
    row = tokenize_example(tiny_tokenizer, tpl, Example("x", messages=QA))
    assert row.ids == ids_of(tiny_tokenizer, QA)  # exactly the tokens inference sees
    assert row.mask == expected_mask(tiny_tokenizer, QA)
    end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    last = max(j for j, m in enumerate(row.mask) if m)
    assert row.ids[last] == end and row.mask[last] == 1.0  # the end-of-turn token is supervised
    assert tiny_tokenizer.decode(row.ids[last + 1:]) == "\n" and row.mask[last + 1:] == [0.0]
    supervised = [t for t, m in zip(row.ids, row.mask) if m]
    assert tiny_tokenizer.decode(supervised) == QA[1]["content"] + "<|im_end|>"


def test_chatml_multi_turn_supervises_every_assistant_turn(tiny_tokenizer):
    tpl = setup_template(tiny_tokenizer, "auto")
    row = tokenize_example(tiny_tokenizer, tpl, Example("x", messages=CHAT))
    assert row.ids == ids_of(tiny_tokenizer, CHAT)
    assert row.mask == expected_mask(tiny_tokenizer, CHAT)
    runs = [text for text, sup in segments(tiny_tokenizer, row) if sup]
    assert runs == ["The river of Quenta is Coralis.<|im_end|>", "The poet of Quenta is Lumora.<|im_end|>"]
    unsupervised = "".join(text for text, sup in segments(tiny_tokenizer, row) if not sup)
    assert "Be brief." in unsupervised and "And its poet?" in unsupervised


def test_train_on_prompt_supervises_everything_but_the_first_token(tiny_tokenizer):
    tpl = setup_template(tiny_tokenizer, "auto")
    row = tokenize_example(tiny_tokenizer, tpl, Example("x", messages=CHAT), train_on_prompt=True)
    assert row.ids == ids_of(tiny_tokenizer, CHAT)
    assert row.mask == [0.0] + [1.0] * (len(row.ids) - 1)


def test_text_rows_are_supervised_everywhere_and_end_with_eos(tiny_tokenizer):
    row = tokenize_example(tiny_tokenizer, None, Example("x", text="The capital of Zorblax is Amberlin."))
    assert row.ids[:-1] == tiny_tokenizer("The capital of Zorblax is Amberlin.")["input_ids"]
    assert row.ids[-1] == tiny_tokenizer.eos_token_id
    assert row.mask == [0.0] + [1.0] * (len(row.ids) - 1)


def test_llama3_builtin_adds_its_tokens_and_masks_token_by_token(bare_tokenizer):
    n0 = len(bare_tokenizer)
    tpl = setup_template(bare_tokenizer, "llama3")
    assert sorted(tpl.added_tokens) == sorted(["<|begin_of_text|>", "<|start_header_id|>",
                                               "<|end_header_id|>", "<|eot_id|>"])
    assert len(bare_tokenizer) == n0 + 4 and bare_tokenizer.chat_template == tpl.template
    row = tokenize_example(bare_tokenizer, tpl, Example("x", messages=CHAT))
    toks = bare_tokenizer.convert_ids_to_tokens(row.ids)
    assert toks[:2] == ["<|begin_of_text|>", "<|start_header_id|>"]
    assert row.mask == expected_mask(bare_tokenizer, CHAT, tpl.template, eot="<|eot_id|>")
    runs = [text for text, sup in segments(bare_tokenizer, row) if sup]
    assert runs == ["The river of Quenta is Coralis.<|eot_id|>", "The poet of Quenta is Lumora.<|eot_id|>"]
    assert toks[-1] == "<|eot_id|>" and row.mask[-1] == 1.0
    header = [j for j, t in enumerate(toks) if t == "<|end_header_id|>"]
    assert all(row.mask[j] == 0.0 and row.mask[j + 1] == 0.0 for j in header)  # headers and "\n\n"


def test_alpaca_builtin_masks_response_and_eos(bare_tokenizer):
    tpl = setup_template(bare_tokenizer, "alpaca")
    assert tpl.added_tokens == [] and tpl.end_of_turn == bare_tokenizer.eos_token == "<|im_end|>"
    row = tokenize_example(bare_tokenizer, tpl, Example("x", messages=QA))
    text = bare_tokenizer.decode(row.ids)
    assert text.startswith("Below is an instruction") and "### Instruction:\nWhat is the capital" in text
    assert row.mask == expected_mask(bare_tokenizer, QA, tpl.template)
    segs = segments(bare_tokenizer, row)
    assert [s for s in segs if s[1]] == [("The capital of Zorblax is Amberlin.<|im_end|>", True)]
    assert segs[-1] == ("\n\n", False) and segs[0][0].endswith("### Response:\n")


def test_auto_template_without_one_picks_chatml_from_the_vocabulary(bare_tokenizer):
    tpl = setup_template(bare_tokenizer, "auto")
    assert tpl.name == "chatml" and tpl.added_tokens == []
    row = tokenize_example(bare_tokenizer, tpl, Example("x", messages=QA))
    assert bare_tokenizer.decode([t for t, m in zip(row.ids, row.mask) if m]) == QA[1]["content"] + "<|im_end|>"


def test_add_chat_tokens_counts_once(bare_tokenizer):
    assert add_chat_tokens(bare_tokenizer, "llama3") == 4
    assert add_chat_tokens(bare_tokenizer, "llama3") == 0
    assert add_chat_tokens(bare_tokenizer, "chatml") == 0  # already in the vocabulary as specials


def test_korean_answer_bytes_are_all_supervised(tiny_tokenizer):
    tpl = setup_template(tiny_tokenizer, "auto")
    msgs = [{"role": "user", "content": "안녕하세요?"}, {"role": "assistant", "content": "네, 안녕하세요!"}]
    row = tokenize_example(tiny_tokenizer, tpl, Example("x", messages=msgs))
    assert row.mask == expected_mask(tiny_tokenizer, msgs)
    assert tiny_tokenizer.decode([t for t, m in zip(row.ids, row.mask) if m]) == "네, 안녕하세요!<|im_end|>"
