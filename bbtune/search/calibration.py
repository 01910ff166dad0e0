"""Per-label bias calibration, fitted inside the search: scores become ``s + b`` with one bias per label word.

Why: a small LM prefers some label words whatever the input (SmolLM2-135M answers `` great`` after
``It was`` for almost every review), so a prompt is judged mostly by that preference and not by how well it
separates the classes. Fitting ``b`` for each candidate (cross-entropy on its own training scores, a convex
problem in L-1 free numbers) makes the loss measure what the prompt adds
beyond a bias. It needs only label scores, so it works through any API, like contextual or batch
calibration (Zhao et al., 2021; Zhou et al., 2024), but learned from the few-shot labels.

    >>> fit_label_bias(np.log([[0.9, 0.1], [0.8, 0.2]]), np.array([0, 1])).round(2)
    array([-0.88,  0.88])
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from bbtune.search.losses import label_log_softmax

# A weak L2 prior: enough to make the fit unique (a constant shift of all biases changes nothing) and finite
# when the classes are separable; small next to the log-prob gaps (several nats) that it must correct.
DEFAULT_L2 = 0.01


def fit_label_bias(logp: np.ndarray, labels: np.ndarray, l2: float = DEFAULT_L2) -> np.ndarray:
    """(L,) bias minimising mean CE of ``logp + b`` (B, L) on `labels` (B,) plus ``l2/2 * |b|^2``.

    Convex and smooth, so L-BFGS finds the optimum even when label scores are tens of nats apart (where a
    plain Newton step overshoots). Rows with a missing label score (NaN) are left out; with none left, zero.
    """
    usable = np.all(np.isfinite(logp), axis=1)
    logp, labels = logp[usable], labels[usable]
    n_labels = logp.shape[1]
    if len(labels) == 0:
        return np.zeros(n_labels)
    onehot = np.eye(n_labels)[labels]

    def objective(bias: np.ndarray) -> tuple[float, np.ndarray]:
        logq = label_log_softmax(logp + bias)
        loss = -(logq * onehot).sum(axis=1).mean() + 0.5 * l2 * bias @ bias
        return float(loss), (np.exp(logq) - onehot).mean(axis=0) + l2 * bias

    bias = minimize(objective, np.zeros(n_labels), jac=True, method="L-BFGS-B").x
    return bias - bias.mean()


def fit_label_biases(logp: np.ndarray, labels: np.ndarray, l2: float = DEFAULT_L2) -> np.ndarray:
    """(P, L) biases, one per candidate prompt, for scores (P, B, L)."""
    return np.stack([fit_label_bias(scores, labels, l2) for scores in logp])


def apply_bias(logp: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """Scores (P, B, L) or (B, L) plus per-prompt biases (P, L) or one bias (L,); None leaves them as they are."""
    if bias is None:
        return logp
    bias = np.asarray(bias, dtype=float)
    return logp + (bias[:, None, :] if bias.ndim == 2 else bias)
