"""RejectionRule: the thresholds of a confident identification and their JSON form."""

from __future__ import annotations

import json
import math

import pytest

from shared.confidence import RejectionRule, rule_from_meta
from shared.errors import ConfigError


def test_confident_above_both() -> None:
    rule = RejectionRule(min_score=0.5, min_margin=0.1)
    assert rule.is_confident([0.8, 0.6, 0.1])


def test_low_score_rejected() -> None:
    rule = RejectionRule(min_score=0.5, min_margin=0.1)
    assert not rule.is_confident([0.45, 0.1])


def test_small_margin_rejected() -> None:
    rule = RejectionRule(min_score=0.5, min_margin=0.1)
    assert not rule.is_confident([0.9, 0.85])


def test_thresholds_inclusive() -> None:
    rule = RejectionRule(min_score=0.5, min_margin=0.25)
    assert rule.is_confident([0.5, 0.25])


def test_single_score_ignores_margin() -> None:
    rule = RejectionRule(min_score=0.5, min_margin=0.3)
    assert rule.is_confident([0.6])


def test_single_low_score_rejected() -> None:
    assert not RejectionRule(min_score=0.5, min_margin=0.0).is_confident([0.4])


def test_no_scores_not_confident() -> None:
    assert not RejectionRule().is_confident([])


def test_default_rule_accepts_positive_scores() -> None:
    assert RejectionRule().is_confident([0.01, 0.01])


def test_round_trip() -> None:
    rule = RejectionRule(min_score=0.4321, min_margin=0.0123)
    assert RejectionRule.from_dict(json.loads(json.dumps(rule.to_dict()))) == rule


def test_calibration_record_allowed() -> None:
    rule = RejectionRule.from_dict({"min_score": 0.3, "min_margin": 0.02, "calibration": {"criterion": "f1"}})
    assert rule == RejectionRule(0.3, 0.02)


def test_unknown_key_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown rejection rule key"):
        RejectionRule.from_dict({"min_score": 0.3, "min_margin": 0.0, "max_score": 1})


def test_missing_key_rejected() -> None:
    with pytest.raises(ConfigError, match="missing key.*min_margin"):
        RejectionRule.from_dict({"min_score": 0.3})


def test_not_an_object_rejected() -> None:
    with pytest.raises(ConfigError, match="JSON object"):
        RejectionRule.from_dict([0.3, 0.1])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("score", "margin", "key"),
    [
        (1.5, 0.0, "min_score"),
        (-1.5, 0.0, "min_score"),
        (0.2, -0.1, "min_margin"),
        (0.2, 2.5, "min_margin"),
        (math.nan, 0.0, "min_score"),
        ("0.3", 0.0, "min_score"),
        (True, 0.0, "min_score"),
    ],
)
def test_invalid_values_rejected(score, margin, key) -> None:
    with pytest.raises(ConfigError, match=key):
        RejectionRule(min_score=score, min_margin=margin)


def test_meta_without_rule() -> None:
    assert rule_from_meta({"species": []}) is None


def test_meta_with_rule() -> None:
    meta = {"rejection": {"min_score": 0.25, "min_margin": 0.05}}
    assert rule_from_meta(meta) == RejectionRule(0.25, 0.05)
