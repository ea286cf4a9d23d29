"""Generation metrics (tunerd.evaluation.metrics): values computed by hand, Korean included."""
from __future__ import annotations

import math

import pytest

from tunerd.evaluation.metrics import score, tokenize

REF, PRED = "나는 학교에 간다.", "나는 집에 간다"


def test_default_rouge_tokenizer_scores_korean_zero_and_ours_does_not():
    from rouge_score import rouge_scorer
    default = rouge_scorer.RougeScorer(["rouge1"]).score(REF, PRED)["rouge1"].fmeasure
    assert default == 0.0  # the library's tokenizer keeps [a-z0-9] only
    assert score([PRED], [REF], "whitespace").metrics["rouge1"] > 0


def test_whitespace_tokens_keep_every_script_and_drop_punctuation():
    assert tokenize(REF, "whitespace") == ["나는", "학교에", "간다"]
    assert tokenize("Привет, мир! Hello", "whitespace") == ["привет", "мир", "hello"]


def test_korean_rouge_whitespace_by_hand():
    # words: ref [나는 학교에 간다], pred [나는 집에 간다]: 2 of 3 unigrams shared, no bigram, LCS 2
    m = score([PRED], [REF], "whitespace").metrics
    assert m["rouge1"] == pytest.approx(2 / 3)
    assert m["rouge2"] == pytest.approx(0.0)
    assert m["rougeL"] == pytest.approx(2 / 3)
    assert m["rougeLsum"] == pytest.approx(2 / 3)


def test_korean_rouge_char_by_hand():
    # chars: ref 나 는 학 교 에 간 다 (7), pred 나 는 집 에 간 다 (6): 5 shared -> P 5/6, R 5/7
    # bigrams: ref 6, pred 5, shared 나는 에간 간다 = 3 -> P 3/5, R 3/6; LCS 나는에간다 = 5
    m = score([PRED], [REF], "char").metrics
    f1 = lambda p, r: 2 * p * r / (p + r)  # noqa: E731
    assert m["rouge1"] == pytest.approx(f1(5 / 6, 5 / 7))
    assert m["rouge2"] == pytest.approx(f1(3 / 5, 3 / 6))
    assert m["rougeL"] == pytest.approx(f1(5 / 6, 5 / 7))


def test_korean_rouge_morpheme_by_hand():
    pytest.importorskip("kiwipiepy")
    assert tokenize(REF, "morpheme") == ["나", "는", "학교", "에", "가", "ᆫ다"]
    # morphemes: 6 each, 5 shared (나 는 에 가 ㄴ다); bigrams 5 each, 3 shared (나는 에가 가ㄴ다)
    m = score([PRED], [REF], "morpheme").metrics
    assert m["rouge1"] == pytest.approx(5 / 6)
    assert m["rouge2"] == pytest.approx(3 / 5)
    assert m["rougeL"] == pytest.approx(5 / 6)


def test_bleu_on_a_known_pair():
    # clipped n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths so no brevity penalty
    m = score(["the cat sat on the mat"], ["the cat sat on a mat"]).metrics
    assert m["bleu"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-6)


def test_exact_match_and_per_row_scores():
    s = score(["Seoul", "  Busan is  big "], ["Seoul", "Busan is big."], "whitespace")
    assert [r["exact_match"] for r in s.rows] == [1.0, 0.0]
    assert s.metrics["exact_match"] == 0.5
    assert s.rows[1]["rouge1"] == 1.0 and len(s.rows) == 2


def test_mismatched_lengths_and_unknown_tokenizer_are_value_errors():
    with pytest.raises(ValueError, match="2 rows but references: 1"):
        score(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="tokenizer"):
        score(["a"], ["a"], "bpe")


def test_perplexity_is_exp_loss():
    from tunerd.evaluation.runs import perplexity
    assert perplexity(2.0) == pytest.approx(math.exp(2.0))
