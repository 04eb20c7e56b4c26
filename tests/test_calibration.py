"""Calibration of the rejection rule on synthetic top-1 scores and margins."""

from __future__ import annotations

import math

import numpy as np
import pytest

from indexer.calibration import calibrate, rejection_stats
from shared.confidence import RejectionRule
from shared.errors import ConfigError


def separable_set(seed: int = 0) -> dict[str, np.ndarray]:
    """Correct answers score high with wide margins; wrong and unknown ones low and close."""
    generator = np.random.default_rng(seed)
    correct_scores = generator.uniform(0.75, 0.95, 40)
    wrong_scores = generator.uniform(0.40, 0.65, 30)
    correct_margins = generator.uniform(0.10, 0.30, 40)
    wrong_margins = generator.uniform(0.00, 0.05, 30)
    return {
        "top1_scores": np.concatenate([correct_scores, wrong_scores]),
        "margins": np.concatenate([correct_margins, wrong_margins]),
        "correct": np.array([True] * 40 + [False] * 30),
        "unknown": np.array([False] * 50 + [True] * 20),
    }


def overlapping_set(seed: int = 1) -> dict[str, np.ndarray]:
    generator = np.random.default_rng(seed)
    correct = generator.random(200) < 0.5
    scores = np.where(correct, generator.normal(0.7, 0.08, 200), generator.normal(0.55, 0.08, 200))
    margins = np.where(correct, generator.normal(0.08, 0.04, 200), generator.normal(0.03, 0.03, 200)).clip(0, None)
    return {"top1_scores": scores, "margins": margins, "correct": correct, "unknown": ~correct & (generator.random(200) < 0.5)}


@pytest.mark.parametrize("criterion", ["keep-correct", "f1"])
def test_separable_scores_split_exactly(criterion: str) -> None:
    result = calibrate(**separable_set(), criterion=criterion)

    assert result.stats.precision == 1.0
    assert result.stats.recall == 1.0
    assert result.stats.correct_kept == 1.0
    assert result.stats.unknown_rejected == 1.0


def test_thresholds_between_groups() -> None:
    data = separable_set()
    rule = calibrate(**data, criterion="f1").rule

    correct = data["correct"]
    passes = (data["top1_scores"] >= rule.min_score) & (data["margins"] >= rule.min_margin)
    assert passes[correct].all()
    assert not passes[~correct].any()


def test_keep_correct_keeps_fraction() -> None:
    data = overlapping_set()
    result = calibrate(**data, criterion="keep-correct", keep=0.95)

    assert result.stats.correct_kept >= 0.95
    assert result.stats.recall > 0.0


def test_keep_correct_rejects_most_allowed() -> None:
    """No rule on the grid that keeps 95 % of correct answers rejects more wrong ones."""
    data = overlapping_set()
    chosen = calibrate(**data, criterion="keep-correct", keep=0.95).stats

    for score in np.linspace(0.3, 0.9, 25):
        for margin in np.linspace(0.0, 0.15, 16):
            stats = rejection_stats(RejectionRule(float(score), float(margin)), **data)
            if stats.correct_kept >= 0.95:
                assert stats.recall <= chosen.recall + 1e-12, (score, margin)


def test_f1_beats_grid() -> None:
    data = overlapping_set()
    chosen = calibrate(**data, criterion="f1").stats

    for score in np.linspace(0.3, 0.9, 25):
        for margin in np.linspace(0.0, 0.15, 16):
            stats = rejection_stats(RejectionRule(float(score), float(margin)), **data)
            assert stats.f1 <= chosen.f1 + 1e-12, (score, margin)


def test_stats_by_hand() -> None:
    stats = rejection_stats(
        RejectionRule(min_score=0.5, min_margin=0.1),
        top1_scores=np.array([0.9, 0.6, 0.4, 0.3]),
        margins=np.array([0.3, 0.05, 0.2, 0.0]),
        correct=np.array([True, True, False, False]),
        unknown=np.array([False, False, False, True]),
    )

    assert stats.rejected == 3
    assert stats.precision == pytest.approx(2 / 3)
    assert stats.recall == 1.0
    assert stats.correct_kept == 0.5
    assert stats.unknown_rejected == 1.0


def test_no_unknown_gives_nan() -> None:
    data = separable_set()
    data["unknown"] = np.zeros_like(data["unknown"])
    assert math.isnan(calibrate(**data).stats.unknown_rejected)


def test_all_correct_raises() -> None:
    data = separable_set()
    data["correct"] = np.ones_like(data["correct"])
    with pytest.raises(ConfigError, match="every answer is correct"):
        calibrate(**data)


def test_none_correct_needs_f1() -> None:
    data = separable_set()
    data["correct"] = np.zeros_like(data["correct"])
    with pytest.raises(ConfigError, match="--criterion f1"):
        calibrate(**data, criterion="keep-correct")


def test_unknown_criterion_raises() -> None:
    with pytest.raises(ConfigError, match="unknown calibration criterion"):
        calibrate(**separable_set(), criterion="accuracy")
