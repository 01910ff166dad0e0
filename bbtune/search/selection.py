"""Which evaluated prompt a run returns: one rule, used by BBT's tuner and the gradient baselines alike.

Every point scored on dev gets a key (lower wins). With 16 examples per class a dev accuracy moves in steps of
1/32, so the default breaks its ties by dev cross-entropy; the loss rules trade that coarseness for noise.

    >>> from bbtune.search.evaluate import Evaluation
    >>> selection_key(Selection.DEV_ACC, 0.4, 32, Evaluation(0.75, 0.5, 32)) < selection_key(
    ...     Selection.DEV_ACC, 0.3, 32, Evaluation(0.70, 0.4, 32))
    True
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from math import comb

import numpy as np

from bbtune.search.evaluate import Evaluation


class Selection(str, Enum):
    """How the returned prompt is chosen among the points evaluated on dev (lower key wins)."""

    DEV_ACC = "dev_acc"  # dev accuracy, ties broken by dev cross-entropy
    DEV_LOSS = "dev_loss"  # dev cross-entropy
    TRAIN_DEV_LOSS = "train_dev_loss"  # cross-entropy on train and dev together (more sentences, less noise)


def selection_key(rule: Selection, train_ce: float, n_train: int, dev: Evaluation) -> tuple[float, ...]:
    """A dev-evaluated point's key under `rule` (lower wins), from its training CE and its dev evaluation."""
    if rule is Selection.DEV_ACC:
        return (-dev.accuracy, dev.loss)
    if rule is Selection.DEV_LOSS:
        return (dev.loss,)
    return ((train_ce * n_train + dev.loss * dev.n) / (n_train + dev.n),)


class Guard(str, Enum):
    """When the tuned prompt may replace the (calibrated) manual prompt a run starts from."""

    NONE = "none"  # whenever its selection key is lower (one dev example decides)
    AGREE = "agree"  # only when its dev accuracy is no lower and its dev cross-entropy not significantly higher
    PAIRED = "paired"  # only when a paired test on the dev examples says it is better, not just luckier


@dataclass(frozen=True)
class Decision:
    """Why a run returned the tuned or the manual prompt: the margins on dev and how sure they are."""

    replace: bool
    dev_acc_margin: float  # tuned minus manual dev accuracy
    dev_loss_margin: float  # manual minus tuned dev cross-entropy (positive: tuned better)
    wins: int  # dev examples the tuned prompt gets right and the manual prompt wrong
    losses: int  # ... and the other way round
    p_value: float  # one-sided exact McNemar test on those: the tuned prompt is right no more often
    loss_p_value: float  # one-sided paired sign-flip test on the per-example CE: the tuned prompt is no better
    reason: str
    loss_worse_p_value: float = 1.0  # ... the other side: the tuned prompt's CE is no worse (Guard.AGREE decides)


def decide(tuned: Evaluation, manual: Evaluation, tuned_wins_by_key: bool, guard: Guard, alpha: float,
           seed: int = 0) -> Decision:
    """Keep the manual prompt unless the tuned one wins by the selection key, and by the guard:
    - `Guard.AGREE`: its dev accuracy is no lower, and its per-example dev cross-entropy is not significantly
      higher (a paired sign-flip test at level `alpha`). 32 dev examples make a 3-point accuracy gain one
      example; a gain the per-example losses contradict (one example flipped, every other one less sure) is a
      lucky step of 1/32, not a better prompt. An equal CE does not refuse: on AG News (Gemma) a pick 3 examples
      up at a CE 0.002 higher was +3.5 points on held-out pool examples.
    - `Guard.PAIRED`: an exact McNemar test at level `alpha` on the dev examples the two prompts disagree on: 4
      wins and no loss pass at 0.1, 1 does not. Stricter: on held-out pool examples it refused real gains (SST-2
      Gemma: 5 wins, 2 losses, +4.5 held-out). (A sign-flip test on per-example losses was tried before it: it
      refused a candidate with 5 wins and no loss that was 5 points better, p = 0.2; it is kept as a record.)"""
    diff = np.asarray(manual.example_losses) - np.asarray(tuned.example_losses)
    wins = int(np.sum(np.asarray(tuned.example_correct) & ~np.asarray(manual.example_correct)))
    lost = int(np.sum(np.asarray(manual.example_correct) & ~np.asarray(tuned.example_correct)))
    p, (better_p, worse_p) = mcnemar_p_value(wins, lost), sign_flip_p_values(diff, seed)
    acc_margin, loss_margin = tuned.accuracy - manual.accuracy, manual.loss - tuned.loss
    if not tuned_wins_by_key:
        replace, reason = False, "the tuned prompt did not beat the manual prompt on dev by the selection rule"
    elif guard is Guard.NONE:
        replace, reason = True, "the tuned prompt beat the manual prompt on dev by the selection rule"
    elif acc_margin < 0:
        replace, reason = False, f"the tuned prompt gets {lost - wins} fewer dev examples right"
    elif guard is Guard.AGREE and worse_p <= alpha:
        replace, reason = False, (f"the tuned prompt's dev advantage is within noise ({wins} examples won, {lost} "
                                  f"lost, but its dev cross-entropy is higher, {tuned.loss:.3f} against "
                                  f"{manual.loss:.3f}: paired p = {worse_p:.3f} <= {alpha})")
    elif guard is Guard.AGREE:
        replace, reason = True, (f"the tuned prompt is no worse on dev by accuracy ({wins} examples won, {lost} lost) "
                                 f"nor, beyond noise, by cross-entropy ({tuned.loss:.3f} against {manual.loss:.3f})")
    elif p > alpha:
        replace, reason = False, (f"the tuned prompt's dev advantage is within noise ({wins} examples won, {lost} "
                                  f"lost: McNemar p = {p:.2f} > {alpha})")
    else:
        replace, reason = True, (f"the tuned prompt is better on dev ({wins} examples won, {lost} lost: McNemar "
                                 f"p = {p:.3f} <= {alpha})")
    return Decision(replace, acc_margin, loss_margin, wins, lost, p, better_p, reason, worse_p)


def mcnemar_p_value(wins: int, losses: int) -> float:
    """One-sided exact McNemar p-value: the chance of `wins` or more among the discordant examples if each were a
    fair coin between the two prompts."""
    n = wins + losses
    return float(sum(comb(n, k) for k in range(wins, n + 1)) / 2**n) if n else 1.0


def sign_flip_p_values(diff: np.ndarray, seed: int = 0, draws: int = 4000) -> tuple[float, float]:
    """One-sided p-values of mean(diff) > 0 and of mean(diff) < 0 under random sign flips of the per-example
    differences (a paired permutation test: no normality assumed, exact enough with 4000 draws). Both sides come
    from one null distribution: flipping the signs of -diff draws the same means."""
    if diff.size == 0 or not np.any(diff):
        return 1.0, 1.0
    signs = np.random.default_rng(seed).choice((-1.0, 1.0), size=(draws, diff.size))
    null = (signs * np.abs(diff)).mean(axis=1)
    return (float((1 + np.sum(null >= diff.mean())) / (draws + 1)),
            float((1 + np.sum(null >= -diff.mean())) / (draws + 1)))
