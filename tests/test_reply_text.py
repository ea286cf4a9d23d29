"""The streamed text of a reply (backends/generation.ReplyText), shared by both backends' generate."""
from tunerd.backends.generation import ReplyText


def stream(stops, texts):
    """Feed the decoded text after each token; (what was sent per token, stopped, the rest)."""
    reply, sent = ReplyText(stops), []
    for t in texts:
        delta, stopped = reply.update(t)
        sent.append(delta)
        if stopped:
            return sent, True, ""
    return sent, False, reply.rest()


def test_a_possible_stop_is_held_back_until_known_and_the_text_before_a_stop_is_sent():
    sent, stopped, _ = stream(["END"], ["ab", "abE", "abEN", "abENx"])
    assert sent == ["ab", "", "", "ENx"] and not stopped
    sent, stopped, _ = stream(["END", " of"], ["ab", "abE", "abEND tail"])
    assert sent == ["ab", "", ""] and stopped
    sent, stopped, _ = stream([" of", "\n"], ["capital", "capital of Z"])
    assert "".join(sent) == "capital" and stopped


def test_an_incomplete_character_waits_for_its_bytes_and_a_cut_one_is_not_sent():
    sent, stopped, rest = stream([], ["\uc548", "\uc548\ufffd", "\uc548\ub155"])
    assert sent == ["\uc548", "", "\ub155"] and rest == ""
    sent, stopped, rest = stream([], ["\uc548", "\uc548\ufffd"])   # max_tokens cut the second syllable
    assert sent == ["\uc548", ""] and rest == ""
    sent, stopped, rest = stream([], ["a\ufffdb"])                  # invalid bytes inside the text are output
    assert sent == ["a\ufffdb"] and rest == ""
    sent, stopped, rest = stream(["zz"], ["abz"])                   # eos/length: the held-back part goes out
    assert sent == ["ab"] and rest == "z"


def test_incremental_detokenization_equals_decoding_the_whole_reply(tiny_tokenizer):
    """The torch backend decodes each token's window only; the text is a full decode's."""
    import random

    from tunerd.backends.torch.generate import Detokenizer

    tok = tiny_tokenizer
    samples = ["The capital of Zorblax is Fenmoor.", "안녕하세요! 반갑습니다.", "a  b\n\nc 😀 d"]
    rng = random.Random(0)
    sequences = [tok(x, add_special_tokens=False)["input_ids"] for x in samples]
    sequences += [[rng.randrange(len(tok)) for _ in range(60)] for _ in range(20)]   # any bytes, specials
    for ids in sequences:
        d = Detokenizer(tok)
        for i, t in enumerate(ids):
            assert d.add(t) == tok.decode(ids[:i + 1], skip_special_tokens=True), (ids[:i + 1])
