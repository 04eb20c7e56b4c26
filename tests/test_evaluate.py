"""`python -m indexer.evaluate` end to end on the sample photos with the tiny test model.

The index contains 10 of the 12 sample species, built with 2 augmentations to stay fast. The
queries are the sample queries plus the 10 reference photos themselves, which the tiny
model often ranks first, so the rejection rule has correct and wrong answers to calibrate on.
The reference photos of the 2 left-out species are the unknown species.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.cli import main as indexer_main
from indexer.evaluate import main as evaluate_main
from indexer.report import TEST_MODEL_NOTICE
from shared.confidence import RejectionRule, rule_from_meta
from shared.index_store import load_index

LEFT_OUT = ("72", "92")
AUGMENTATIONS = "2"


@dataclass
class EvalSet:
    references: Path
    queries: Path
    unknown: Path
    index: Path
    original_version: str


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory, sample_dir, tiny_model_dir) -> EvalSet:
    root = tmp_path_factory.mktemp("evaluation")
    references, queries, unknown = root / "reference", root / "queries", root / "unknown"
    for folder in (references, queries, unknown):
        folder.mkdir()

    for photo in sorted((sample_dir / "reference").glob("*.jpg")):
        plant_id = photo.stem.rsplit("_", 1)[1]
        if plant_id in LEFT_OUT:
            shutil.copy(photo, unknown / f"{plant_id}.jpg")
        else:
            shutil.copy(photo, references / photo.name)
            shutil.copy(photo, queries / f"{plant_id}_9.jpg")
    for photo in (sample_dir / "queries").glob("*.jpg"):
        shutil.copy(photo, queries / photo.name)

    index = root / "index"
    code = indexer_main([
        "--images", str(references), "--out", str(index), "--model", str(tiny_model_dir),
        "--csv", str(sample_dir / "species.csv"), "--augmentations", AUGMENTATIONS, "--no-progress",
    ])
    assert code == 0
    return EvalSet(references, queries, unknown, index, load_index(index).version)


@dataclass
class Run:
    code: int
    out: Path
    stdout: str
    stderr: str

    @property
    def report(self) -> str:
        return (self.out / "report.md").read_text(encoding="utf-8")

    @property
    def results(self) -> dict:
        return json.loads((self.out / "results.json").read_text(encoding="utf-8"))


def run_evaluate(capsys, out: Path, *args: str) -> Run:
    code = evaluate_main([*args, "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    return Run(code, out, captured.out, captured.err)


@pytest.fixture(scope="module")
def full_run(eval_set, tiny_model_dir, tmp_path_factory) -> Run:
    """One run with every ablation, the unknown folder and --write-rule."""
    out = tmp_path_factory.mktemp("report")
    code = evaluate_main([
        "--index", str(eval_set.index), "--queries", str(eval_set.queries), "--unknown", str(eval_set.unknown),
        "--images", str(eval_set.references), "--model", str(tiny_model_dir), "--out", str(out),
        "--no-progress", "--write-rule",
    ])
    return Run(code, out, "", "")


def test_exit_code(full_run) -> None:
    assert full_run.code == 0


def test_notice_at_top(full_run) -> None:
    lines = full_run.report.splitlines()
    assert lines[0] == "# Evaluation report"
    assert lines[2] == f"> {TEST_MODEL_NOTICE}"


def test_query_counts(full_run) -> None:
    results = full_run.results
    assert results["known_queries"] == 20
    assert results["unknown_queries"] == 4


def test_relabelled_queries_reported(full_run) -> None:
    assert "2 queries are labelled with species that are not in the index" in full_run.report


def test_all_ablations_present(full_run) -> None:
    configurations = {(row["prototypes"], row["views"], row["centred"]) for row in full_run.results["configurations"]}
    expected = {
        (source, views, centred)
        for source in ("index as stored", "original only", f"original + {AUGMENTATIONS} augmentations")
        for views in (1, 8)
        for centred in (False, True)
    }
    assert configurations == expected


def test_main_row_first(full_run) -> None:
    rows = [line for line in full_run.report.splitlines() if line.startswith("| index as stored")]
    assert rows[0].startswith("| index as stored | 8 | no |")


def test_rebuilt_prototypes_match(full_run) -> None:
    assert "mean cosine 1.0000" in full_run.report


def test_metrics_in_range(full_run) -> None:
    for row in full_run.results["configurations"]:
        assert 0.0 <= row["top1"] <= row["top5"] <= 1.0
        assert row["top1"] <= row["mrr"] <= 1.0


def test_per_species_counts(full_run) -> None:
    per_species = full_run.results["per_species"]
    assert set(per_species) == {"3", "10", "15", "20", "23", "35", "37", "48", "55", "61"}
    assert all(row["count"] == 2 for row in per_species.values())


def test_some_answers_correct(full_run) -> None:
    main = full_run.results["configurations"][0]
    assert main["top1"] > 0.0


def test_per_species_section(full_run) -> None:
    assert "| 3 | Celtis occidentalis (Common hackberry) | 2 |" in full_run.report


def test_rejection_section(full_run) -> None:
    report = full_run.report
    assert "## No confident match" in report
    assert 'Calibrated by the criterion "keep-correct"' in report
    assert "| calibrated (keep-correct) |" in report


def test_rule_keeps_correct(full_run) -> None:
    rejection = full_run.results["rejection"]
    assert rejection["criterion"] == "keep-correct"
    assert rejection["correct_kept"] >= 0.95


@pytest.mark.parametrize("name", ["accuracy_by_configuration.png", "top1_scores.png"])
def test_plots_are_png(full_run, name) -> None:
    path = full_run.out / name
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= 400


def test_report_links_plots(full_run) -> None:
    assert "![top1_scores](top1_scores.png)" in full_run.report


def test_rule_written_to_new_version(full_run, eval_set) -> None:
    index = load_index(eval_set.index)
    assert index.version != eval_set.original_version
    assert rule_from_meta(index.meta) == RejectionRule(
        full_run.results["rejection"]["min_score"], full_run.results["rejection"]["min_margin"]
    )


def test_rule_version_keeps_data(full_run, eval_set) -> None:
    original = load_index(eval_set.index / "versions" / eval_set.original_version)
    updated = load_index(eval_set.index)

    assert updated.plant_ids == original.plant_ids
    assert np.array_equal(updated.embeddings, original.embeddings)
    assert updated.meta["augmentation"] == original.meta["augmentation"]
    assert updated.species == original.species


def test_rule_records_calibration(full_run, eval_set) -> None:
    calibration = load_index(eval_set.index).meta["rejection"]["calibration"]
    assert calibration["criterion"] == "keep-correct"
    assert calibration["calibrated_on_version"] == eval_set.original_version
    assert calibration["unknown_queries"] == 4


def small_labels(folder: Path) -> Path:
    """A labels CSV with a byte order mark: 3 queries of indexed species and 1 of a left-out one."""
    labels = folder / "labels.csv"
    rows = ["file,plant_id", "3_1.jpg,3", "10_2.jpg,10", "72_2.jpg,", "3_9.jpg,3"]
    labels.write_bytes(b"\xef\xbb\xbf" + "\n".join(rows).encode("utf-8"))
    return labels


def test_labels_csv_run(eval_set, tiny_model_dir, tmp_path, capsys, full_run) -> None:
    run = run_evaluate(
        capsys, tmp_path / "out", "--index", str(eval_set.index), "--queries", str(eval_set.queries),
        "--labels", str(small_labels(tmp_path)), "--model", str(tiny_model_dir), "--criterion", "f1",
    )

    assert run.code == 0
    assert run.results["known_queries"] == 3
    assert run.results["unknown_queries"] == 1
    assert "Prototype ablations skipped: pass --images" in run.report
    assert "Rule stored in the index: min_score" in run.report
    assert "| stored |" in run.report
    assert run.stdout.strip() == run.report.strip()


def test_sweep_run(eval_set, tiny_model_dir, tmp_path, capsys) -> None:
    run = run_evaluate(
        capsys, tmp_path / "out", "--sweep", "--images", str(eval_set.references), "--queries", str(eval_set.queries),
        "--labels", str(small_labels(tmp_path)), "--model", str(tiny_model_dir), "--views", "2",
        "--recipes", "none,light-v1", "--counts", "0,1,2",
    )

    assert run.code == 0
    recipes = [(row["recipe"], row["count"]) for row in run.results["sweep"]]
    assert recipes == [("original only", 0), ("light-v1", 1), ("light-v1", 2)]
    assert "## Augmentation sweep" in run.report
    assert "| light-v1 | 2 |" in run.report
    assert (run.out / "sweep_top1.png").is_file()


def test_unknown_label_file_fails(eval_set, tiny_model_dir, tmp_path, capsys) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("file,plant_id\nabsent.jpg,3\n", encoding="utf-8")
    run = run_evaluate(
        capsys, tmp_path / "out", "--index", str(eval_set.index), "--queries", str(eval_set.queries),
        "--labels", str(labels), "--model", str(tiny_model_dir),
    )

    assert run.code == 2
    assert "file 'absent.jpg' not found" in run.stderr


def test_sweep_needs_images(eval_set, tmp_path, capsys) -> None:
    run = run_evaluate(capsys, tmp_path / "out", "--sweep", "--queries", str(eval_set.queries))
    assert run.code == 2
    assert "--sweep needs --images" in run.stderr
