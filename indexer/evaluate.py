"""Evaluation of an index on labelled query photos, with ablations and the rejection rule.

    python -m indexer.evaluate --index DEST --queries DIR [--labels CSV] [--unknown DIR]
        [--images DIR] [--model ID_OR_DIR] [--out REPORT_DIR] [--write-rule] [--sweep]

It prints a Markdown report and writes it to REPORT_DIR/report.md with PNG plots and
results.json. The report gives top-1, top-5 and mean reciprocal rank, overall and per
species, for the product's query path and for ablations computed in the same run:
prototypes from the original photo only against original plus augmentations (needs
--images, because the index does not record where its photos came from), queries with
1 view against 8, and prototypes centred on their mean. It calibrates the "no confident
match" rule on known and unknown species, and --write-rule stores it in a new index
version. --sweep compares augmentation recipes and counts.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.calibration import CRITERIA, DEFAULT_KEEP, Calibration, calibrate, rejection_stats
from indexer.embedding_cache import EmbeddingCache, reference_items, species_prototypes
from indexer.encoders import is_proxy_model, load_model
from indexer.eval_queries import QueryPhoto, mark_unindexed, queries_from_names, read_labels_csv, unknown_photos
from indexer.metrics import Scored, accuracy, accuracy_per_species, centre, score_queries
from indexer.report import ConfigurationResult, EvaluationReport, ScoreSample, format_report, write_plots
from indexer.scan import ReferencePhoto, find_reference_photos
from indexer.sweep import run_sweep
from indexer.thumbnails import copy_thumbnails
from shared.augment import DEFAULT_RECIPE, RECIPES, AugmentationRecipe, get_recipe
from shared.confidence import META_KEY, RejectionRule, rule_from_meta
from shared.encoder import DEFAULT_MODEL_ID, PRECISIONS, ImageEncoder
from shared.errors import ConfigError, PlantIdError
from shared.index_store import Index, load_index, write_index
from shared.storage import Location

logger = logging.getLogger("indexer.evaluate")

DEFAULT_OUT = "build/evaluation"
DEFAULT_QUERY_VIEWS = 8
DEFAULT_AUGMENTATIONS = 20
DEFAULT_SWEEP_COUNTS = "0,5,20"
REPORT_FILE = "report.md"
RESULTS_FILE = "results.json"

# Keys that write_index sets itself; a copied meta.json drops them.
WRITE_INDEX_KEYS = ("format_version", "version", "count", "dimension", "created_at")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m indexer.evaluate",
        description="Measure top-1, top-5 and mean reciprocal rank of an index on labelled query photos, "
        "with ablations, and calibrate the 'no confident match' rule.",
    )
    parser.add_argument("--index", help="index location: a local folder or s3://bucket/prefix (optional with --sweep)")
    parser.add_argument("--queries", required=True, type=Path, help="folder of query photos, named {plant_id}_{n}.jpg unless --labels is given")
    parser.add_argument("--labels", type=Path, help="CSV with columns file,plant_id; file is relative to --queries, an empty plant_id marks a species that is not in the index")
    parser.add_argument("--unknown", type=Path, help="folder of photos of species that are not in the index")
    parser.add_argument("--images", type=Path, help="reference photos the index was built from; needed for the prototype ablations and --sweep, because the index does not record where its photos came from")
    parser.add_argument("--photos-csv", type=Path, help="photo table (file,plant_id) of the reference photos, as given to the indexer")
    parser.add_argument("--model", help=f"Hugging Face model id, local folder, or proxy:efficientnet-lite0 (default: the model recorded in the index, else {DEFAULT_MODEL_ID})")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the encoder runs (default: %(default)s)")
    parser.add_argument("--precision", choices=PRECISIONS, help="number format of the encoder (default: the one recorded in the index, else auto)")
    parser.add_argument("--views", type=int, default=DEFAULT_QUERY_VIEWS, help="query views of the product's query path, compared with 1 view (default: %(default)s)")
    parser.add_argument("--augmentations", type=int, help=f"augmented views per reference photo in the ablations (default: the index's count, else {DEFAULT_AUGMENTATIONS})")
    parser.add_argument("--seed", type=int, help="seed of the augmentations (default: the index's seed, else 0)")
    parser.add_argument("--criterion", choices=CRITERIA, default="keep-correct", help="how the rejection thresholds are chosen: keep-correct keeps --keep of the correct answers confident and rejects the most wrong ones, f1 maximises the F1 score of the rejection (default: %(default)s)")
    parser.add_argument("--keep", type=float, default=DEFAULT_KEEP, help="fraction of correct answers that stay confident under --criterion keep-correct (default: %(default)s)")
    parser.add_argument("--write-rule", action="store_true", help="write a new index version with the same embeddings and meta.json plus the calibrated rule")
    parser.add_argument("--sweep", action="store_true", help="also compare augmentation recipes and counts (needs --images)")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated recipes of the sweep (default: %(default)s)")
    parser.add_argument("--counts", default=DEFAULT_SWEEP_COUNTS, help="comma-separated augmentation counts of the sweep (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help="folder of report.md, results.json and the PNG plots (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per encoder batch (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


@dataclass(frozen=True)
class Settings:
    """Augmentation settings of the rebuilt prototypes, read from the index when it has them."""

    recipe: AugmentationRecipe
    count: int
    seed: int

    def describe(self) -> str:
        return f"recipe {self.recipe.name}, {self.count} augmentations, seed {self.seed}"


def _augmentation_settings(index: Index | None, args: argparse.Namespace) -> Settings:
    recorded = index.meta.get("augmentation") if index is not None else None
    recorded = recorded if isinstance(recorded, dict) else {}

    recipe = DEFAULT_RECIPE
    if isinstance(recorded.get("recipe"), dict):
        recipe = AugmentationRecipe.from_dict(recorded["recipe"])
    count = args.augmentations if args.augmentations is not None else recorded.get("count", DEFAULT_AUGMENTATIONS)
    seed = args.seed if args.seed is not None else recorded.get("seed", 0)
    if not isinstance(count, int) or count < 0:
        raise ConfigError(f"--augmentations must be 0 or more, got {count!r}")
    return Settings(recipe=recipe, count=count, seed=int(seed))


def _parse_counts(text: str) -> list[int]:
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(f"invalid --counts {text!r}: expected comma-separated integers such as 0,5,20") from None
    if not counts or counts[0] < 0 or counts[-1] == 0:
        raise ConfigError(f"invalid --counts {text!r}: expected integers of 0 or more, at least one above 0")
    return counts


def _read_queries(args: argparse.Namespace) -> list[QueryPhoto]:
    photos = read_labels_csv(args.labels, args.queries) if args.labels else queries_from_names(args.queries)
    if args.unknown is not None:
        photos += unknown_photos(args.unknown)
    if not photos:
        raise ConfigError(f"no query photos found in {args.queries}")
    return photos


def _reference_photos(
    images: Path, photos_csv: Path | None, plant_ids: Sequence[str], require_all: bool
) -> list[ReferencePhoto]:
    """Return the reference photos of `plant_ids`; with require_all, every species needs one."""
    scan = find_reference_photos(images, photos_csv)
    wanted = set(plant_ids)
    photos = [photo for photo in scan.photos if photo.plant_id in wanted]
    missing = sorted(wanted - {photo.plant_id for photo in photos})
    if missing and require_all:
        raise ConfigError(
            f"{images} has no reference photo for {len(missing)} species of the index, such as {missing[0]!r}; "
            "pass the --images folder the index was built from"
        )
    return photos


# The ablations.


def _score_configurations(
    sources: list[tuple[str, np.ndarray]],
    queries_by_views: dict[int, np.ndarray],
    plant_ids: Sequence[str],
    labels: Sequence[str | None],
) -> tuple[list[ConfigurationResult], dict[tuple[str, int, bool], Scored]]:
    results, scored = [], {}
    for name, prototypes in sources:
        for count in queries_by_views:
            for centred in (False, True):
                queries = queries_by_views[count]
                used_prototypes = prototypes
                if centred:
                    used_prototypes, queries = centre(prototypes, queries)
                outcome = score_queries(queries, used_prototypes, plant_ids, labels)
                scored[(name, count, centred)] = outcome
                results.append(ConfigurationResult(name, count, centred, accuracy(outcome.ranks)))
    return results, scored


def _calibrate(report: EvaluationReport, scored: Scored, index: Index, args: argparse.Namespace) -> None:
    correct, unknown = scored.correct, ~scored.known
    points = [("none", rejection_stats(RejectionRule(-1.0, 0.0), scored.top1_scores, scored.margins, correct, unknown))]

    stored = rule_from_meta(index.meta)
    if stored is not None:
        report.stored_rule = f"min_score {stored.min_score:.4f}, min_margin {stored.min_margin:.4f}"
        points.append(("stored", rejection_stats(stored, scored.top1_scores, scored.margins, correct, unknown)))

    try:
        chosen = calibrate(scored.top1_scores, scored.margins, correct, unknown, args.criterion, args.keep)
    except ConfigError as error:
        report.calibration_note = error.message
        report.operating_points = points
        return

    report.calibration = chosen
    points.append((f"calibrated ({chosen.criterion})", chosen.stats))
    for other in CRITERIA:
        if other == args.criterion:
            continue
        try:
            alternative = calibrate(scored.top1_scores, scored.margins, correct, unknown, other, args.keep)
        except ConfigError:
            continue
        points.append((f"alternative ({other})", alternative.stats))
    report.operating_points = points


def _evaluate_index(
    report: EvaluationReport,
    index: Index,
    cache: EmbeddingCache,
    photos: list[QueryPhoto],
    references: list[ReferencePhoto] | None,
    settings: Settings,
    args: argparse.Namespace,
) -> None:
    plant_ids = list(index.plant_ids)
    labels = [photo.plant_id for photo in photos]
    view_counts = [args.views] if args.views == 1 else [args.views, 1]
    paths = [photo.path for photo in photos]
    queries_by_views = {count: cache.query_embeddings(paths, count) for count in view_counts}

    stored = np.asarray(index.embeddings, dtype=np.float32)
    sources = [("index as stored", stored)]
    if references is not None:
        items = reference_items(references)
        view_embeddings = cache.reference_views(items, settings.recipe, settings.count, settings.seed)
        reference_ids = [item.plant_id for item in items]
        rebuilt = species_prototypes(view_embeddings, reference_ids, plant_ids, settings.count + 1)
        sources.append(("original only", species_prototypes(view_embeddings, reference_ids, plant_ids, 1)))
        sources.append((f"original + {settings.count} augmentations", rebuilt))
        report.prototype_agreement = float(np.mean(np.sum(rebuilt * stored, axis=1)))
    else:
        report.notes.append(
            "Prototype ablations skipped: pass --images with the reference photos the index was built from"
        )

    results, scored = _score_configurations(sources, queries_by_views, plant_ids, labels)
    report.configurations = results
    main_key = ("index as stored", args.views, False)
    report.main = next(row for row in results if (row.prototypes, row.views, row.centred) == main_key)

    main = scored[main_key]
    report.per_species = accuracy_per_species(main.ranks, labels)
    report.scores = ScoreSample(main.top1_scores, main.correct, ~main.known)
    _calibrate(report, main, index, args)


def _species_names(index: Index) -> dict[str, str]:
    names = {}
    for row in index.species:
        scientific, common = row.get("scientific_name") or "", row.get("common_name") or ""
        names[row["plant_id"]] = f"{scientific} ({common})" if scientific and common else scientific or common
    return names


def _write_rule(index: Index, location: str, calibration: Calibration, report: EvaluationReport) -> str:
    """Write a new index version with the same embeddings and meta.json plus the rule."""
    meta = {key: value for key, value in index.meta.items() if key not in WRITE_INDEX_KEYS}
    meta["species"] = [dict(row) for row in index.species]
    stats = calibration.stats.to_dict()
    meta[META_KEY] = {
        **calibration.rule.to_dict(),
        "calibration": {
            "criterion": calibration.criterion,
            "description": calibration.describe(),
            "model": report.model_id,
            "calibrated_on_version": index.version,
            "known_queries": report.known_queries,
            "unknown_queries": report.unknown_queries,
            **{key: stats[key] for key in ("precision", "recall", "f1", "correct_kept", "unknown_rejected")},
        },
    }

    # Thumbnails live in each version folder, so the new version gets copies of them.
    def copy_files(folder: Location) -> None:
        if index.meta.get("thumbnails"):
            copy_thumbnails([index], folder)

    return write_index(location, index.embeddings, list(index.plant_ids), meta, before_pointer=copy_files)


def _results_json(report: EvaluationReport) -> dict:
    data: dict = {
        "model": report.model_id,
        "test_model": report.is_test_model,
        "index_version": report.index_version,
        "known_queries": report.known_queries,
        "unknown_queries": report.unknown_queries,
        "configurations": [
            {"prototypes": row.prototypes, "views": row.views, "centred": row.centred, **row.accuracy.to_dict()}
            for row in report.configurations
        ],
        "per_species": {plant_id: value.to_dict() for plant_id, value in report.per_species.items()},
    }
    if report.calibration is not None:
        data["rejection"] = {
            **report.calibration.rule.to_dict(),
            "criterion": report.calibration.criterion,
            **report.calibration.stats.to_dict(),
        }
    if report.sweep is not None:
        data["sweep"] = [
            {
                "recipe": row.recipe, "count": row.count,
                "top1_one_view": row.one_view.top1, "top1": row.multi_view.top1,
                "top5": row.multi_view.top5, "mrr": row.multi_view.mrr,
                "gain": list(row.gain) if row.gain is not None else None,
            }
            for row in report.sweep.rows
        ]
        data["sweep_best"] = {"recipe": report.sweep.best.recipe, "measurably_better": report.sweep.best_is_better}
    return data


def run(args: argparse.Namespace, command: str) -> int:
    started = time.perf_counter()
    if args.index is None and not args.sweep:
        raise ConfigError("pass --index DEST, or --sweep with --images to compare augmentation recipes")
    if args.sweep and args.images is None:
        raise ConfigError("--sweep needs --images with the reference photos")
    if args.views < 1:
        raise ConfigError(f"--views must be 1 or more, got {args.views}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be 1 or more, got {args.batch_size}")
    counts = _parse_counts(args.counts) if args.sweep else []
    recipes = [get_recipe(name.strip()) for name in args.recipes.split(",") if name.strip()] if args.sweep else []

    # Step 1: the index, the encoder and the species.
    index = load_index(args.index) if args.index else None
    recorded_model = index.model_id if index is not None else None
    model = args.model or recorded_model or DEFAULT_MODEL_ID
    recorded = index.meta.get("model") if index is not None else None
    precision = args.precision or (recorded.get("precision") if isinstance(recorded, dict) else None) or "auto"
    encoder: ImageEncoder = load_model(model, device=args.device, precision=precision)
    if index is not None and index.dimension != encoder.dimension:
        raise ConfigError(
            f"the index contains {index.dimension}-dim prototypes, but {model!r} produces {encoder.dimension}-dim "
            "embeddings: pass the --model the index was built with"
        )

    if index is not None:
        plant_ids = list(index.plant_ids)
    else:
        plant_ids = [photo.plant_id for photo in find_reference_photos(args.images, args.photos_csv).photos]
    references = _reference_photos(args.images, args.photos_csv, plant_ids, require_all=True) if args.images else None

    # Step 2: the labelled queries.
    photos, relabelled = mark_unindexed(_read_queries(args), set(plant_ids))
    known = [photo for photo in photos if photo.is_known]
    if not known:
        raise ConfigError("no query photo is labelled with a species of the index, so there is nothing to rank")

    settings = _augmentation_settings(index, args)
    sources = [str(args.queries)]
    if args.labels:
        sources.append(f"labels {args.labels}")
    if args.unknown:
        sources.append(f"unknown species {args.unknown}")
    report = EvaluationReport(
        command=command,
        model_id=encoder.model_id,
        is_test_model=bool(encoder.is_test_model or (index is not None and index.meta.get("test_model"))),
        is_proxy=is_proxy_model(encoder.model_id),
        index_location=args.index,
        index_version=index.version if index is not None else None,
        species_count=len(plant_ids),
        augmentation=f"{settings.describe()} for the rebuilt prototypes" if references is not None else "",
        queries=", ".join(sources),
        known_queries=len(known),
        unknown_queries=len(photos) - len(known),
        relabelled=len(relabelled),
    )
    if index is not None:
        report.species_names = _species_names(index)

    # Step 3: encode once, score every configuration.
    cache = EmbeddingCache(encoder, batch_size=args.batch_size, progress=not args.no_progress)
    if index is not None:
        _evaluate_index(report, index, cache, photos, references, settings, args)
    if args.sweep:
        assert references is not None
        report.sweep = run_sweep(
            cache, reference_items(references), plant_ids,
            [photo.path for photo in known], [photo.plant_id for photo in known],
            recipes, counts, args.views, settings.seed, DEFAULT_RECIPE.name,
        )

    # Step 4: write the plots and the report, then the rule when asked.
    report.elapsed_s = time.perf_counter() - started
    report.encoded_images = cache.encoded_images
    args.out.mkdir(parents=True, exist_ok=True)
    report.plots = write_plots(report, args.out)
    text = format_report(report)
    (args.out / REPORT_FILE).write_text(text, encoding="utf-8")
    (args.out / RESULTS_FILE).write_text(json.dumps(_results_json(report), indent=1), encoding="utf-8")
    print(text)
    print(f"wrote {args.out / REPORT_FILE}, {RESULTS_FILE} and {len(report.plots)} plots", file=sys.stderr)

    if args.write_rule:
        if index is None or report.calibration is None:
            raise ConfigError(f"--write-rule needs a calibrated rule: {report.calibration_note or 'no index was evaluated'}")
        version = _write_rule(index, args.index, report.calibration, report)
        print(f"wrote index version {version} with the rejection rule to {args.index}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    command = shlex.join(["python", "-m", "indexer.evaluate", *argv])
    try:
        return run(args, command)
    except PlantIdError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
