"""Evaluation (DESIGN.md §7): loss and perplexity, ROUGE/BLEU/exact match on generations with
tokenisation that works for Korean and other non-Latin scripts, base vs tuned side by side.

    loss         eval_batches + mean_loss -> (loss, tokens), perplexity(loss): training's evals and Evaluate
    metrics      tokenize(text, kind), score(predictions, references, tokenizer) -> Scores
    data         the rows an evaluation runs on (same split/tokens/max_seq_length as training's eval)
    generation   generate_text(backend, ids, sampling); GenerationEval for training's evals
    runs         EvalPlan + run_plan (progress, then the result); score_predictions (no model)
"""
from .metrics import TOKENIZERS, Scores, score, tokenize
from .runs import EvalPlan, run_plan, score_predictions

__all__ = ["TOKENIZERS", "Scores", "score", "tokenize", "EvalPlan", "run_plan", "score_predictions"]
