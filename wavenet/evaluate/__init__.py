"""Held-out evaluation: bits per sample against baselines, and gating against the champion.

The modules, in the order a run uses them:

* :mod:`~wavenet.evaluate.scoring`: the model's score is the negative
  log-likelihood of the validation split in bits per predicted sample
  (``-log2 p(x_t | x_<t)``, averaged) over deterministic windows; on exactly the
  same predicted samples three baselines are scored (uniform, unigram, bigram of
  the training split), so a number means something on its own;
* :mod:`~wavenet.evaluate.gating`: :func:`gate` (``evaluate(..., gate=True)``):
  the new model and the registered model's ``champion`` are scored in one pass
  over the same windows; the new model is registered and becomes champion only
  when it is better by ``evaluate.promotion_margin_bits`` (the first model
  becomes champion);
* :mod:`~wavenet.evaluate.verb`: :func:`evaluate`, the verb: checks, one MLflow
  run, the scores (or the gate), metrics and ``metrics.json``.

This package's namespace holds what callers import.
"""

from wavenet.evaluate.gating import TEST_PAUSE_ENV, decide, gate
from wavenet.evaluate.scoring import (
    CodeCounts,
    baseline_bits,
    baseline_log2_probs,
    count_codes,
    score_models,
    smoothed_log2_probs,
    training_code_counts,
)
from wavenet.evaluate.verb import METRICS_FILE, evaluate, holdout_kinds

__all__ = [
    "METRICS_FILE",
    "TEST_PAUSE_ENV",
    "CodeCounts",
    "baseline_bits",
    "baseline_log2_probs",
    "count_codes",
    "decide",
    "evaluate",
    "gate",
    "holdout_kinds",
    "score_models",
    "smoothed_log2_probs",
    "training_code_counts",
]
