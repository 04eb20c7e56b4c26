"""The Markdown report: notices at the top and the sections it leaves out without data."""

from __future__ import annotations

import numpy as np

from indexer.metrics import Accuracy
from indexer.report import (
    PROXY_NOTICE,
    TEST_MODEL_NOTICE,
    ConfigurationResult,
    EvaluationReport,
    format_report,
    format_sweep,
)
from indexer.sweep import SweepResult, SweepRow

MAIN = ConfigurationResult("index as stored", 8, False, Accuracy(0.5, 0.75, 0.6, 4))


def report(**changes) -> EvaluationReport:
    values = dict(command="python -m indexer.evaluate", model_id="some/model", is_test_model=False, is_proxy=False, main=MAIN)
    values.update(changes)
    return EvaluationReport(**values)


def test_test_model_notice_first() -> None:
    lines = format_report(report(is_test_model=True)).splitlines()
    assert lines[2] == f"> {TEST_MODEL_NOTICE}"


def test_notice_says_meaningless() -> None:
    assert "meaningless" in TEST_MODEL_NOTICE


def test_real_model_has_no_notice() -> None:
    text = format_report(report())
    assert "meaningless" not in text
    assert not text.splitlines()[2].startswith(">")


def test_proxy_notice() -> None:
    lines = format_report(report(is_proxy=True, model_id="proxy:efficientnet-lite0")).splitlines()
    assert lines[2] == "> " + PROXY_NOTICE.format(model="proxy:efficientnet-lite0")


def test_uncalibrated_reason_shown() -> None:
    text = format_report(report(calibration_note="every answer is correct"))
    assert "Not calibrated: every answer is correct" in text


def test_sweep_only_report() -> None:
    text = format_report(report(main=None))
    assert "## Accuracy" not in text
    assert "## No confident match" not in text


def sweep_row(recipe: str, count: int, top1: float, gain=None) -> SweepRow:
    accuracy = Accuracy(top1, top1, top1, 10)
    return SweepRow(recipe, count, accuracy, accuracy, np.zeros(10), gain)


def test_sweep_verdict_not_measurable() -> None:
    rows = [sweep_row("light-v1", 20, 0.10), sweep_row("strong", 20, 0.12, (0.02, -0.01, 0.05))]
    sweep = SweepResult(rows, "light-v1", 8, 0, rows[1], best_is_better=False)
    text = format_sweep(sweep)

    assert "| strong | 20 | 0.120 | 0.120 | 0.120 | 0.120 | +0.020 [-0.010, +0.050] |" in text
    assert "not measurably better than light-v1" in text


def test_sweep_verdict_baseline_best() -> None:
    rows = [sweep_row("light-v1", 20, 0.20), sweep_row("strong", 20, 0.12, (-0.08, -0.12, -0.04))]
    sweep = SweepResult(rows, "light-v1", 8, 0, rows[0], best_is_better=False)
    assert "The baseline light-v1 ranks best" in format_sweep(sweep)
