"""The evaluation report: Markdown text and PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.calibration import Calibration, RejectionStats
from indexer.metrics import Accuracy
from indexer.sweep import SweepResult

ACCURACY_PLOT = "accuracy_by_configuration.png"
SCORES_PLOT = "top1_scores.png"
SWEEP_PLOT = "sweep_top1.png"

TEST_MODEL_NOTICE = (
    "**These numbers are meaningless: the encoder is the tiny randomly initialised test model.** "
    "The report only shows that the pipeline runs. Pass real CLIP weights with --model for real numbers."
)
PROXY_NOTICE = (
    "The encoder is a development proxy ({model}: ImageNet EfficientNet-Lite0 features), not CLIP. "
    "The numbers are measured with real pretrained weights, but they predict CLIP's only loosely."
)


@dataclass(frozen=True)
class ConfigurationResult:
    """Accuracy of one ablation: where the prototypes come from, query views, centring."""

    prototypes: str
    views: int
    centred: bool
    accuracy: Accuracy

    @property
    def label(self) -> str:
        view_word = "view" if self.views == 1 else "views"
        centring = ", centred" if self.centred else ""
        return f"{self.prototypes}, {self.views} {view_word}{centring}"


@dataclass(frozen=True)
class ScoreSample:
    """Top-1 scores of the queries of the main configuration, for the score plot."""

    top1_scores: np.ndarray
    correct: np.ndarray
    unknown: np.ndarray


@dataclass
class EvaluationReport:
    """Everything the Markdown report and the plots show. Sections without data are left out."""

    command: str
    model_id: str
    is_test_model: bool
    is_proxy: bool
    index_location: str | None = None
    index_version: str | None = None
    species_count: int = 0
    augmentation: str = ""
    queries: str = ""
    known_queries: int = 0
    unknown_queries: int = 0
    relabelled: int = 0
    main: ConfigurationResult | None = None
    configurations: list[ConfigurationResult] = field(default_factory=list)
    per_species: dict[str, Accuracy] = field(default_factory=dict)
    species_names: dict[str, str] = field(default_factory=dict)
    calibration: Calibration | None = None
    calibration_note: str | None = None
    operating_points: list[tuple[str, RejectionStats]] = field(default_factory=list)
    stored_rule: str | None = None
    scores: ScoreSample | None = None
    prototype_agreement: float | None = None
    sweep: SweepResult | None = None
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    encoded_images: int = 0
    plots: list[str] = field(default_factory=list)


def _number(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _percent(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.1%}"


# Markdown.


def format_report(report: EvaluationReport) -> str:
    """Return the whole report as Markdown."""
    lines = ["# Evaluation report", ""]
    if report.is_test_model:
        lines += [f"> {TEST_MODEL_NOTICE}", ""]
    elif report.is_proxy:
        lines += [f"> {PROXY_NOTICE.format(model=report.model_id)}", ""]

    lines += _setup_lines(report)
    if report.main is not None:
        lines += _accuracy_lines(report)
        lines += _rejection_lines(report)
    if report.sweep is not None:
        lines += ["## Augmentation sweep", ""] + format_sweep(report.sweep).splitlines() + [""]
    if report.per_species:
        lines += _species_lines(report)
    if report.plots:
        lines += ["## Plots", ""] + [f"![{Path(plot).stem}]({plot})" for plot in report.plots] + [""]
    return "\n".join(lines).rstrip() + "\n"


def _setup_lines(report: EvaluationReport) -> list[str]:
    lines = [f"- Command: `{report.command}`", f"- Encoder: `{report.model_id}`"]
    if report.index_location is not None:
        lines.append(
            f"- Index: `{report.index_location}`, version {report.index_version}, {report.species_count} species"
        )
    if report.augmentation:
        lines.append(f"- Prototypes: {report.augmentation}")
    if report.queries:
        lines.append(f"- Queries: {report.queries}")
    lines.append(
        f"- {report.known_queries} queries of species in the index, {report.unknown_queries} of species "
        "that are not in the index"
    )
    if report.relabelled:
        lines.append(
            f"- {report.relabelled} queries are labelled with species that are not in the index, "
            "so they count as unknown species"
        )
    if report.prototype_agreement is not None:
        lines.append(
            f"- Rebuilt prototypes against the stored ones: mean cosine {report.prototype_agreement:.4f} "
            "(1.0000 when --images holds the photos the index was built from)"
        )
    lines += [f"- {note}" for note in report.notes]
    lines.append(f"- Encoded {report.encoded_images} images in {report.elapsed_s:.0f} s")
    return lines + [""]


def _accuracy_lines(report: EvaluationReport) -> list[str]:
    assert report.main is not None
    lines = [
        "## Accuracy",
        "",
        f"Top-1, top-5 and mean reciprocal rank (MRR) over the {report.main.accuracy.count} queries of species "
        "in the index. The first row is the product's query path on the index as stored.",
        "",
        "| prototypes | query views | centred | top-1 | top-5 | MRR |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for result in [report.main] + [row for row in report.configurations if row is not report.main]:
        accuracy = result.accuracy
        lines.append(
            f"| {result.prototypes} | {result.views} | {'yes' if result.centred else 'no'} | "
            f"{_number(accuracy.top1)} | {_number(accuracy.top5)} | {_number(accuracy.mrr)} |"
        )
    return lines + [""]


def _stats_row(name: str, stats: RejectionStats) -> str:
    return (
        f"| {name} | {stats.min_score:.4f} | {stats.min_margin:.4f} | {stats.rejected} | "
        f"{_number(stats.precision)} | {_number(stats.recall)} | {_number(stats.f1)} | "
        f"{_percent(stats.correct_kept)} | {_percent(stats.unknown_rejected)} |"
    )


def _rejection_lines(report: EvaluationReport) -> list[str]:
    lines = [
        "## No confident match",
        "",
        "An answer is confident when its top-1 score is at least min_score and leads the second species "
        "by at least min_margin. A rejection is right when the top-1 answer would be wrong (a species "
        "that is not in the index, or another species ranked first). Precision: rejected queries whose "
        "answer was wrong. Recall: wrong answers rejected.",
        "",
    ]
    if report.stored_rule:
        lines += [f"Rule stored in the index: {report.stored_rule}.", ""]
    if report.calibration is None:
        return lines + [f"Not calibrated: {report.calibration_note}", ""]

    calibration = report.calibration
    lines += [
        f"Calibrated by the criterion \"{calibration.criterion}\": {calibration.describe()}. "
        f"Chosen rule: min_score {calibration.rule.min_score:.4f}, min_margin {calibration.rule.min_margin:.4f}.",
        "",
        "| rule | min_score | min_margin | rejected | precision | recall | F1 | correct kept | unknown rejected |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [_stats_row(name, stats) for name, stats in report.operating_points]
    return lines + [""]


def _species_lines(report: EvaluationReport) -> list[str]:
    assert report.main is not None
    lines = [
        "## Per species",
        "",
        f"The product's query path ({report.main.label}).",
        "",
        "| plant id | name | queries | top-1 | top-5 | MRR |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for plant_id, accuracy in report.per_species.items():
        name = report.species_names.get(plant_id, "").replace("|", "/")
        lines.append(
            f"| {plant_id} | {name} | {accuracy.count} | {_number(accuracy.top1, 2)} | "
            f"{_number(accuracy.top5, 2)} | {_number(accuracy.mrr, 2)} |"
        )
    return lines + [""]


def format_sweep(sweep: SweepResult) -> str:
    """Return the sweep as a Markdown table with a closing verdict line."""
    largest = max(row.count for row in sweep.rows)
    lines = [
        f"Seed {sweep.seed}. Top-1 gain: against {sweep.baseline} with {largest} augmentations, "
        f"{sweep.views} query views, mean and 95 % paired bootstrap interval over the queries.",
        "",
        f"| recipe | augmentations | top-1, 1 view | top-1, {sweep.views} views | top-5, {sweep.views} views | "
        f"MRR, {sweep.views} views | top-1 gain |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in sweep.rows:
        gain = "baseline" if row.gain is None else f"{row.gain[0]:+.3f} [{row.gain[1]:+.3f}, {row.gain[2]:+.3f}]"
        lines.append(
            f"| {row.recipe} | {row.count} | {_number(row.one_view.top1)} | {_number(row.multi_view.top1)} | "
            f"{_number(row.multi_view.top5)} | {_number(row.multi_view.mrr)} | {gain} |"
        )

    best = sweep.best
    if best.recipe == sweep.baseline:
        verdict = f"The baseline {sweep.baseline} ranks best with {largest} augmentations."
    elif sweep.best_is_better:
        verdict = f"{best.recipe} is measurably better than {sweep.baseline}: its interval lies above zero."
    else:
        verdict = (
            f"{best.recipe} scores highest, but its interval includes zero, so it is not measurably "
            f"better than {sweep.baseline}."
        )
    return "\n".join(lines + ["", verdict]) + "\n"


# Plots.


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def plot_accuracy(labels: Sequence[str], accuracies: Sequence[Accuracy], path: Path, title: str) -> None:
    """Write a horizontal bar chart of top-1, top-5 and MRR per configuration."""
    pyplot = _pyplot()
    positions = np.arange(len(labels))
    height = 0.27
    figure, axes = pyplot.subplots(figsize=(9, 1.0 + 0.55 * len(labels)))
    for offset, (name, values) in enumerate(
        (
            ("top-1", [accuracy.top1 for accuracy in accuracies]),
            ("top-5", [accuracy.top5 for accuracy in accuracies]),
            ("MRR", [accuracy.mrr for accuracy in accuracies]),
        )
    ):
        axes.barh(positions + (offset - 1) * height, np.nan_to_num(values), height, label=name)
    axes.set_yticks(positions, labels, fontsize=8)
    axes.invert_yaxis()
    largest = max((np.nanmax([accuracy.top1, accuracy.top5, accuracy.mrr]) for accuracy in accuracies), default=1.0)
    axes.set_xlim(0, min(1.0, max(0.1, float(np.nan_to_num(largest)) * 1.15)))
    axes.set_xlabel("fraction of queries of species in the index")
    axes.set_title(title)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def plot_scores(sample: ScoreSample, path: Path, min_score: float | None) -> None:
    """Write histograms of the top-1 score for correct answers, wrong answers and unknown species.

    Each group gets its own panel on a shared score axis, so a small group stays visible.
    """
    pyplot = _pyplot()
    scores = np.asarray(sample.top1_scores, dtype=np.float64)
    groups = [
        (name, mask, colour)
        for name, mask, colour in (
            ("correct (species in the index)", sample.correct & ~sample.unknown, "tab:green"),
            ("wrong (species in the index)", ~sample.correct & ~sample.unknown, "tab:red"),
            ("species not in the index", sample.unknown, "tab:purple"),
        )
        if mask.any()
    ]
    low, high = float(scores.min()), float(scores.max())
    bins = np.linspace(low, high if high > low else low + 1e-3, 30)

    figure, axes_list = pyplot.subplots(len(groups), 1, sharex=True, figsize=(8, 1.2 + 1.6 * len(groups)), squeeze=False)
    for (name, mask, colour), axes in zip(groups, axes_list[:, 0]):
        axes.hist(scores[mask], bins=bins, color=colour, alpha=0.8)
        axes.set_ylabel("queries")
        axes.set_title(f"{name}: {int(mask.sum())} queries", fontsize=9)
        if min_score is not None and low < min_score < high:
            axes.axvline(min_score, color="black", linestyle="--", linewidth=1)
    bottom = axes_list[-1, 0]
    bottom.set_xlabel("top-1 cosine score" + (f" (dashed line: min_score {min_score:.3f})" if min_score is not None and low < min_score < high else ""))
    figure.suptitle("Top-1 score of correct and wrong answers")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def write_plots(report: EvaluationReport, folder: Path) -> list[str]:
    """Write the plots that the report has data for into `folder`; return their file names."""
    written = []
    if report.main is not None:
        rows = [report.main] + [row for row in report.configurations if row is not report.main]
        plot_accuracy(
            [row.label for row in rows], [row.accuracy for row in rows], folder / ACCURACY_PLOT,
            "Accuracy per configuration",
        )
        written.append(ACCURACY_PLOT)
    if report.scores is not None and report.scores.top1_scores.size:
        min_score = report.calibration.rule.min_score if report.calibration is not None else None
        plot_scores(report.scores, folder / SCORES_PLOT, min_score)
        written.append(SCORES_PLOT)
    if report.sweep is not None:
        plot_accuracy(
            [f"{row.recipe} x {row.count}" for row in report.sweep.rows],
            [row.multi_view for row in report.sweep.rows],
            folder / SWEEP_PLOT,
            f"Augmentation sweep ({report.sweep.views} query views)",
        )
        written.append(SWEEP_PLOT)
    return written
