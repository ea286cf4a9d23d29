"""Ollama export (issue 19): the Modelfile's TEMPLATE (export/ollama_template.py), rendered as Ollama
renders it (its SYSTEM first when a chat has none, then the Go template; llama.cpp adds the BOS),
gives exactly the tokenizer's own chat text for ChatML (the real SmolLM2 tokenizer), Llama 3 and
Gemma 2/3; an unknown template is a warning and no TEMPLATE; `tunerctl export --format ollama`
writes the GGUF + Modelfile with the training system prompt and runs `ollama create` with --create.

No Go binary here: `go_render` below interprets the subset of text/template the templates use
(range with $i/$_, if/else if/else, := and =, eq ne and or not len slice index, trim markers).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tunerd.export.ollama import modelfile
from tunerd.export.ollama_template import ollama_template

TWO_TURNS = [{"role": "user", "content": "Hi! Who are you?"},
             {"role": "assistant", "content": "A small model.\nAsk me anything."},
             {"role": "user", "content": "What is the capital of France?"}]
WITH_SYSTEM = [{"role": "system", "content": "Be brief."}] + TWO_TURNS

LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
          "{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
GEMMA2 = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
          "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
          "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")
GEMMA3 = ("{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n    {%- set first_user_prefix = "
          "messages[0]['content'] + '\n\n' -%}\n    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n"
          "    {%- set first_user_prefix = \"\" -%}\n    {%- set loop_messages = messages -%}\n{%- endif -%}\n"
          "{%- for message in loop_messages -%}\n    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
          "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
          "    {%- endif -%}\n    {%- if (message['role'] == 'assistant') -%}\n        {%- set role = \"model\" -%}\n"
          "    {%- else -%}\n        {%- set role = message['role'] -%}\n    {%- endif -%}\n"
          "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
          "    {{- message['content'] | trim }}\n    {{- '<end_of_turn>\n' }}\n{%- endfor -%}\n"
          "{%- if add_generation_prompt -%}\n    {{'<start_of_turn>model\n'}}\n{%- endif -%}\n")


# -- a Go text/template subset ---------------------------------------------------------------------
def _lex(template):
    parts, pos, trim_next = [], 0, False
    for m in re.finditer(r"\{\{(- )?(.*?)( -)?\}\}", template, re.S):
        text = template[pos:m.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        parts += [("text", text), ("action", m.group(2).strip())]
        trim_next, pos = bool(m.group(3)), m.end()
    text = template[pos:]
    parts.append(("text", text.lstrip(" \t\r\n") if trim_next else text))
    return parts


def _parse(parts, i, stops):
    """Nodes until an action in `stops`; returns (nodes, index of that action)."""
    nodes = []
    while i < len(parts):
        kind, s = parts[i]
        if kind == "text":
            nodes.append(("text", s))
            i += 1
            continue
        head = s.split()[0] if s else ""
        if head in stops or s.startswith("else"):
            return nodes, i
        if head == "if":
            branches, cond = [], s[2:]
            while True:
                body, i = _parse(parts, i + 1, ("end",))
                branches.append((cond, body))
                s = parts[i][1]
                if s == "end":
                    break
                cond = s[len("else if"):] if s.startswith("else if") else "true"
            nodes.append(("if", branches))
        elif head == "range":
            m = re.match(r"range\s+(?:(\$\w+)\s*,\s*(\$\w+)\s*:=\s*)?(.*)", s)
            body, i = _parse(parts, i + 1, ("end",))
            nodes.append(("range", m.group(1), m.group(2), m.group(3)))
            nodes[-1] = nodes[-1] + (body,)
        else:
            nodes.append(("action", s))
        i += 1
    return nodes, i


def _tokens(expr):
    return re.findall(r'"(?:\\.|[^"\\])*"|\(|\)|[^\s()]+', expr)


def _truth(v):
    return bool(v)


def _lookup(name, scopes):
    for scope in reversed(scopes):
        if name in scope:
            return scope
    raise KeyError(name)


def _operand(tok, dot, scopes):
    if tok.startswith('"'):
        return json.loads(tok)
    if tok in ("true", "false"):
        return tok == "true"
    if tok.isdigit():
        return int(tok)
    if tok == ".":
        return dot
    if tok.startswith("."):
        base, fields = dot, tok[1:].split(".")
    elif tok.startswith("$"):
        var, _, rest = tok.partition(".")
        base, fields = _lookup(var, scopes)[var], [f for f in rest.split(".") if f]
    else:
        raise ValueError(f"operand {tok!r}")
    for f in fields:
        base = base[f]
    return base


FUNCS = {"eq": lambda a, *b: any(a == x for x in b), "ne": lambda a, b: a != b, "not": lambda a: not _truth(a),
         "len": len, "slice": lambda x, i, j=None: x[i:j], "index": lambda x, i: x[i]}


def _eval(toks, dot, scopes):
    args, j = [], 0
    while j < len(toks):
        if toks[j] == "(":
            depth, k = 1, j + 1
            while depth:
                depth += {"(": 1, ")": -1}.get(toks[k], 0)
                k += 1
            args.append(("v", _eval(toks[j + 1:k - 1], dot, scopes)))
            j = k
        else:
            args.append(("t", toks[j]))
            j += 1
    if args[0][0] == "t" and args[0][1] in ("and", "or"):
        last = None
        for a in args[1:]:
            last = a[1] if a[0] == "v" else _operand(a[1], dot, scopes)
            if _truth(last) != (args[0][1] == "and"):
                return last
        return last
    if args[0][0] == "t" and args[0][1] in FUNCS:
        return FUNCS[args[0][1]](*[a[1] if a[0] == "v" else _operand(a[1], dot, scopes) for a in args[1:]])
    assert len(args) == 1, toks
    return args[0][1] if args[0][0] == "v" else _operand(args[0][1], dot, scopes)


def _exec(nodes, dot, scopes, out):
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "action":
            m = re.match(r"(\$\w+)\s*(:=|=)\s*(.*)", node[1], re.S)
            if m:
                value = _eval(_tokens(m.group(3)), dot, scopes)
                (scopes[-1] if m.group(2) == ":=" else _lookup(m.group(1), scopes))[m.group(1)] = value
            else:
                v = _eval(_tokens(node[1]), dot, scopes)
                out.append("" if v is None else str(v))
        elif node[0] == "if":
            for cond, body in node[1]:
                if _truth(_eval(_tokens(cond), dot, scopes)):
                    _exec(body, dot, scopes + [{}], out)
                    break
        elif node[0] == "range":
            _, iv, ev, expr, body = node
            for i, item in enumerate(_eval(_tokens(expr), dot, scopes)):
                _exec(body, item, scopes + [{k: v for k, v in ((iv, i), (ev, item)) if k}], out)


def go_render(template, data):
    nodes, _ = _parse(_lex(template), 0, ())
    out = []
    _exec(nodes, data, [{"$": data}], out)
    return "".join(out)


def test_go_render_knows_the_constructs():
    assert go_render('{{- $x := "a" }}\n{{ if eq $x "b" }}B{{ else if $x }}[{{ $x }}]{{ end }}', {}) == "\n[a]"
    assert go_render('{{ range $i, $_ := .M }}{{ $i }}{{ .R }}{{ if eq (len (slice $.M $i)) 1 }}!{{ end }}{{ end }}',
                     {"M": [{"R": "x"}, {"R": "y"}]}) == "0x1y!"


# -- Modelfiles -------------------------------------------------------------------------------------
def parse_modelfile(text):
    block = lambda key: (re.search(key + r' """(.*?)"""', text, re.S) or [None, None])[1]   # noqa: E731
    return {"template": block("TEMPLATE"), "system": block("SYSTEM"),
            "stops": [json.loads(s) for s in re.findall(r"^PARAMETER stop (.*)$", text, re.M)],
            "from": re.search(r"^FROM (.*)$", text, re.M).group(1)}


def ollama_render(mf, messages, bos=""):
    """What Ollama feeds llama.cpp for a chat: the Modelfile's SYSTEM first unless the chat starts
    with a system message, through the TEMPLATE; plus the BOS llama.cpp adds."""
    if mf["system"] and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": mf["system"]}] + messages
    msgs = [{"Role": m["role"], "Content": m["content"]} for m in messages]
    return bos + go_render(mf["template"], {"Messages": msgs, "System": mf["system"] or ""})


def with_template(tok, template, bos):
    import copy

    tok = copy.deepcopy(tok)
    tok.chat_template = template
    tok.bos_token = bos
    return tok


def check_family(tok, family, system=None):
    t = ollama_template(tok)
    assert t.family == family
    text, warnings = modelfile("m", "m.gguf", tok, system, "/x/Modelfile", [t.stops[0]])
    assert not warnings
    mf = parse_modelfile(text)
    assert mf["stops"] == t.stops and mf["from"] == "./m.gguf"
    for msgs in (TWO_TURNS, WITH_SYSTEM):
        full = [{"role": "system", "content": system}] + msgs if system and msgs[0]["role"] != "system" else msgs
        try:
            want = tok.apply_chat_template(full, tokenize=False, add_generation_prompt=True)
        except Exception:   # Gemma 2 refuses a system message (Ollama's Gemma template folds it in, as Gemma 3's)
            continue
        assert ollama_render(mf, msgs, t.bos) == want, family
    return t, mf


def test_chatml_smollm2_real_tokenizer_renders_exactly():
    from transformers import AutoTokenizer

    from real_model import smollm2_checkpoint

    tok = AutoTokenizer.from_pretrained(str(smollm2_checkpoint()))
    t, mf = check_family(tok, "chatml")
    assert t.bos == "" and t.default_system.startswith("You are a helpful AI assistant named SmolLM")
    assert mf["system"] == t.default_system   # Ollama then adds it as the template would
    _, mf = check_family(tok, "chatml", system="You answer in French.")
    assert mf["system"] == "You answer in French."


@pytest.mark.parametrize("family, template, bos", [("llama3", LLAMA3, "<|begin_of_text|>"),
                                                   ("gemma", GEMMA2, "<bos>"), ("gemma", GEMMA3, "<bos>")])
def test_llama3_and_gemma_render_exactly(tiny_tokenizer, family, template, bos):
    tok = with_template(tiny_tokenizer, template, bos)
    t, _ = check_family(tok, family)
    assert t.bos == bos
    check_family(tok, family, system="Answer in one word.")


def test_an_unknown_template_is_a_warning_and_no_template(tiny_tokenizer):
    tok = with_template(tiny_tokenizer, "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n"
                                        "{% endfor %}{% if add_generation_prompt %}### assistant: {% endif %}", None)
    text, warnings = modelfile("m", "m.gguf", tok, "Sys", "/x/Modelfile", ["<|im_end|>"])
    assert warnings and "not one of the recognised layouts" in warnings[0]
    mf = parse_modelfile(text)
    assert mf["template"] is None and mf["stops"] == ["<|im_end|>"] and mf["system"] == "Sys"
    assert "# warning: " in text


@pytest.mark.slow
def test_tunerctl_export_ollama_through_the_daemon(daemon, demo_bundle, tmp_path, monkeypatch):
    """Train with a system prompt, export --format ollama --create with a stand-in `ollama` on PATH
    (a script that records its arguments); then without one on PATH: says so."""
    from daemon_utils import cli, json_lines, write_config
    from transformers import AutoTokenizer

    import gguf

    cfg = write_config(tmp_path / "o.yaml", demo_bundle, backend="torch", max_steps=4, save_steps=1000,
                       data={"system_prompt": "You know made-up places."})
    job_id = json_lines(cli(daemon.home, "train", str(cfg), "--json", check=True).stdout)[0]["job_id"]
    bin_dir, record = tmp_path / "bin", tmp_path / "ollama-args.txt"
    bin_dir.mkdir()
    (bin_dir / "ollama").write_text(f'#!/bin/sh\necho "$@" > {record}\n')
    (bin_dir / "ollama").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(__import__('sys').executable).parent}:/usr/bin:/bin")
    out = tmp_path / "ollama-out"
    got = json_lines(cli(daemon.home, "export", f"job:{job_id}", "--format", "ollama", "-o", str(out), "--name",
                         "tuned-demo", "--create", "--json", check=True).stdout)[-1]
    assert got["path"] == str(out) and got["created"] and not got["warnings"]
    assert got["create"] == f"ollama create tuned-demo -f {out / 'Modelfile'}"
    assert record.read_text().split() == ["create", "tuned-demo", "-f", str(out / "Modelfile")]
    assert (out / "tuned-demo.gguf").stat().st_size == got["bytes"] > 0
    mf = parse_modelfile((out / "Modelfile").read_text())
    assert mf["from"] == "./tuned-demo.gguf" and mf["system"] == "You know made-up places."
    assert "<|im_end|>" in mf["stops"]
    r = gguf.GGUFReader(str(out / "tuned-demo.gguf"))
    assert r.fields["general.name"].contents() == "tuned-demo"
    tok = AutoTokenizer.from_pretrained(demo_bundle["model"])
    want = tok.apply_chat_template([{"role": "system", "content": mf["system"]}] + TWO_TURNS, tokenize=False,
                                   add_generation_prompt=True)
    assert ollama_render(mf, TWO_TURNS) == want

    monkeypatch.setenv("PATH", f"{Path(__import__('sys').executable).parent}:/usr/bin:/bin")
    p = cli(daemon.home, "export", f"job:{job_id}", "--format", "ollama", "-o", str(tmp_path / "o2"), "--create")
    assert p.returncode == 0, p.stderr
    assert "ollama is not on PATH" in p.stdout and "ollama create o2 -f" in p.stdout
