"""Calibration of the "no confident match" rule on labelled queries.

A rejection is right when the top-1 answer would be wrong: the species is not in the
index, or another species ranks first. Precision is the fraction of rejected queries
whose answer was wrong, and recall the fraction of wrong answers that were rejected.

Two criteria pick the thresholds from a grid of candidate values:

* "keep-correct" (default): keep at least `keep` (95 %) of the correct answers
  confident, and among those rules reject the most wrong answers;
* "f1": maximise the F1 score of the rejection.

Ties go to the higher precision, then to the lower thresholds. Candidate thresholds lie
halfway between neighbouring observed values, so a score that the service computes with
a different float rounding does not flip sides.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np

from shared.confidence import RejectionRule
from shared.errors import ConfigError

logger = logging.getLogger(__name__)

CRITERIA = ("keep-correct", "f1")
DEFAULT_KEEP = 0.95

# At most this many candidate values per threshold, so the grid stays small.
MAX_CANDIDATES = 200


@dataclass(frozen=True)
class RejectionStats:
    """Outcome of one rule on labelled queries. Fractions are NaN where their group is empty."""

    min_score: float
    min_margin: float
    rejected: int
    precision: float
    recall: float
    f1: float
    correct_kept: float
    unknown_rejected: float

    def to_dict(self) -> dict[str, float | int]:
        return {key: (None if isinstance(value, float) and math.isnan(value) else value) for key, value in asdict(self).items()}


@dataclass(frozen=True)
class Calibration:
    rule: RejectionRule
    stats: RejectionStats
    criterion: str
    keep: float

    def describe(self) -> str:
        """Return the criterion in words, for reports and meta.json."""
        if self.criterion == "keep-correct":
            return (
                f"keep at least {self.keep:.0%} of correct answers confident, "
                "then reject the most wrong answers"
            )
        return "maximise the F1 score of rejecting wrong answers"


def _fraction(numerator: np.ndarray, denominator: int) -> np.ndarray:
    if denominator == 0:
        return np.full(np.shape(numerator), np.nan)
    return numerator / denominator


def _candidates(values: np.ndarray, floor: float) -> np.ndarray:
    """Return `floor` plus the midpoints between sorted distinct values (subsampled)."""
    distinct = np.unique(values.astype(np.float64))
    midpoints = (distinct[:-1] + distinct[1:]) / 2.0
    if midpoints.size > MAX_CANDIDATES:
        picks = np.linspace(0, midpoints.size - 1, MAX_CANDIDATES).round().astype(int)
        midpoints = midpoints[picks]
    # A threshold just above the highest value rejects everything.
    above = distinct[-1:] + 1e-6 if distinct.size else np.array([])
    return np.concatenate([[floor], midpoints, above])


def _grid_stats(
    top1_scores: np.ndarray,
    margins: np.ndarray,
    correct: np.ndarray,
    unknown: np.ndarray,
    score_values: np.ndarray,
    margin_values: np.ndarray,
) -> dict[str, np.ndarray]:
    """Compute every statistic for each (min_score, min_margin) pair: arrays [S, M]."""
    confident = (top1_scores[None, None, :] >= score_values[:, None, None]) & (
        margins[None, None, :] >= margin_values[None, :, None]
    )
    rejected = ~confident
    wrong = ~correct

    rejected_count = rejected.sum(axis=2)
    true_rejections = (rejected & wrong).sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(rejected_count > 0, true_rejections / np.maximum(rejected_count, 1), np.nan)
        recall = _fraction(true_rejections, int(wrong.sum()))
        f1 = np.where(
            (precision + recall) > 0, 2 * precision * recall / (precision + recall), 0.0
        )
    return {
        "rejected": rejected_count,
        "precision": precision,
        "recall": recall,
        "f1": np.nan_to_num(f1, nan=0.0),
        "correct_kept": _fraction((confident & correct).sum(axis=2), int(correct.sum())),
        "unknown_rejected": _fraction((rejected & unknown).sum(axis=2), int(unknown.sum())),
    }


def rejection_stats(
    rule: RejectionRule,
    top1_scores: np.ndarray,
    margins: np.ndarray,
    correct: np.ndarray,
    unknown: np.ndarray,
) -> RejectionStats:
    """Return how `rule` splits the queries (one rule, same statistics as calibrate)."""
    grid = _grid_stats(
        np.asarray(top1_scores, dtype=np.float64),
        np.asarray(margins, dtype=np.float64),
        np.asarray(correct, dtype=bool),
        np.asarray(unknown, dtype=bool),
        np.array([rule.min_score]),
        np.array([rule.min_margin]),
    )
    return _stats_at(grid, rule, 0, 0)


def _stats_at(grid: dict[str, np.ndarray], rule: RejectionRule, i: int, j: int) -> RejectionStats:
    return RejectionStats(
        min_score=rule.min_score,
        min_margin=rule.min_margin,
        rejected=int(grid["rejected"][i, j]),
        precision=float(grid["precision"][i, j]),
        recall=float(grid["recall"][i, j]),
        f1=float(grid["f1"][i, j]),
        correct_kept=float(grid["correct_kept"][i, j]),
        unknown_rejected=float(grid["unknown_rejected"][i, j]),
    )


def calibrate(
    top1_scores: np.ndarray,
    margins: np.ndarray,
    correct: np.ndarray,
    unknown: np.ndarray,
    criterion: str = "keep-correct",
    keep: float = DEFAULT_KEEP,
) -> Calibration:
    """Pick the rule's thresholds from labelled queries by `criterion`.

    `correct` marks queries whose top-1 species is the labelled one and `unknown` those
    whose species is not in the index. Raises ConfigError for an unknown criterion, and
    when no query has a wrong answer, or (for "keep-correct") none has a correct one,
    because then the criterion cannot choose.
    """
    if criterion not in CRITERIA:
        raise ConfigError(f"unknown calibration criterion {criterion!r}: choose one of {', '.join(CRITERIA)}")
    if not 0.0 < keep <= 1.0:
        raise ConfigError(f"--keep must be in (0, 1], got {keep}")

    top1_scores = np.asarray(top1_scores, dtype=np.float64)
    margins = np.asarray(margins, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    unknown = np.asarray(unknown, dtype=bool)
    if top1_scores.size == 0:
        raise ConfigError("cannot calibrate the rejection rule without queries")
    if correct.all():
        raise ConfigError("cannot calibrate the rejection rule: every answer is correct, so nothing should be rejected")
    if criterion == "keep-correct" and not correct.any():
        raise ConfigError(
            "cannot calibrate the rejection rule with --criterion keep-correct: no answer is correct; "
            "use --criterion f1"
        )

    score_values = np.clip(_candidates(top1_scores, -1.0), -1.0, 1.0)
    margin_values = np.clip(_candidates(margins, 0.0), 0.0, 2.0)
    grid = _grid_stats(top1_scores, margins, correct, unknown, score_values, margin_values)

    if criterion == "keep-correct":
        allowed = grid["correct_kept"] >= keep - 1e-12
        goal = np.where(allowed, grid["recall"], -1.0)
    else:
        goal = grid["f1"]
    precision = np.nan_to_num(grid["precision"], nan=0.0)

    # Best goal, then best precision, then the lowest thresholds (score before margin).
    sizes = goal.shape
    score_rank, margin_rank = np.meshgrid(np.arange(sizes[0]), np.arange(sizes[1]), indexing="ij")
    order = np.lexsort((margin_rank.ravel(), score_rank.ravel(), -precision.ravel(), -goal.ravel()))
    i, j = np.unravel_index(order[0], sizes)

    rule = RejectionRule(min_score=float(score_values[i]), min_margin=float(margin_values[j]))
    stats = _stats_at(grid, rule, int(i), int(j))
    logger.info(
        "calibrated rejection rule min_score=%.4f min_margin=%.4f (%s): precision %.3f, recall %.3f",
        rule.min_score, rule.min_margin, criterion, stats.precision, stats.recall,
    )
    return Calibration(rule=rule, stats=stats, criterion=criterion, keep=keep)
