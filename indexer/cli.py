"""Command line of the offline indexer.

    python -m indexer --images DIR --out DEST [--csv FILE] [--model ID_OR_DIR] ...
    python -m indexer merge PART... --out DEST
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from indexer.build import build_prototypes
from indexer.encoders import load_model
from indexer.scan import REFERENCE_PREFIX, ReferencePhoto, ScanResult, Skipped, find_reference_photos, split_photo_number
from indexer.shards import Shard, merge_indexes, parse_shard
from indexer.thumbnails import thumbnail_meta, write_thumbnails
from shared.augment import DEFAULT_RECIPE, RECIPES, get_recipe
from shared.catalog import SpeciesInfo, read_species_csv
from shared.encoder import DEFAULT_MODEL_ID, PRECISIONS
from shared.errors import PlantIdError
from shared.index_store import write_index

logger = logging.getLogger("indexer")

# Replaced in --out by the shard number, so every job of an array job writes its own part.
SHARD_PLACEHOLDER = "{shard}"



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m indexer",
        description="Build the species prototype index from reference photos named "
        "plant_species_thumbnail_image_{plant_id}.{jpg,jpeg,png,webp}; further photos of a species "
        "are named plant_species_thumbnail_image_{plant_id}__{n}.jpg (two underscores, photo number n) "
        "or listed in --photos-csv. Run `python -m indexer merge --help` to join shards.",
    )
    parser.add_argument("--images", required=True, type=Path, help="folder of reference photos")
    parser.add_argument("--out", required=True, help="index destination: a local folder or s3://bucket/prefix; with --shard, {shard} in it becomes the shard number")
    parser.add_argument("--csv", type=Path, help="species table with a plant_id column and name columns")
    parser.add_argument(
        "--photos-csv", type=Path,
        help="photo table with the columns file (relative to --images) and plant_id; listed files take "
        "the id of their row, so a species can have several photos whatever its id looks like",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL_ID, help="Hugging Face model id, local save_pretrained folder, or proxy:efficientnet-lite0 for the development-only proxy encoder (default: %(default)s)")
    parser.add_argument("--augmentations", type=int, default=20, help="augmented views per reference photo, besides the original (default: %(default)s)")
    parser.add_argument("--recipe", default=DEFAULT_RECIPE.name, choices=sorted(RECIPES), help="augmentation recipe (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the augmentations (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per encoder batch; the views of one photo always share a batch, so batches are at least --augmentations + 1 images (default: %(default)s)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the encoder runs (default: %(default)s)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help="number format of the encoder, recorded in meta.json (default: %(default)s, the fastest accurate one for the device)")
    parser.add_argument("--shard", help="index only shard I of N (I/N, or auto/N to read AWS_BATCH_JOB_ARRAY_INDEX)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def build_merge_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m indexer merge",
        description="Join index parts built with --shard into one index.",
    )
    parser.add_argument("parts", nargs="+", help="index parts: local folders or s3://bucket/prefix")
    parser.add_argument("--out", required=True, help="destination of the merged index")
    return parser


def match_catalog(
    photos: list[ReferencePhoto], catalog: dict[str, SpeciesInfo]
) -> tuple[list[ReferencePhoto], list[Skipped], list[str]]:
    """Keep the photos that have a species row; report rows that have no photo."""
    kept, skipped = [], []
    for photo in photos:
        if photo.plant_id in catalog:
            kept.append(photo)
            continue
        for path in photo.paths:
            reason = f"plant id {photo.plant_id!r} has no row in the species CSV"
            skipped.append(Skipped(Path(path), reason + _photo_number_hint(Path(path), photo.plant_id, catalog)))

    photo_ids = {photo.plant_id for photo in photos}
    warnings = [
        f"species CSV row for plant id {plant_id!r} has no reference photo"
        for plant_id in catalog
        if plant_id not in photo_ids
    ]
    return kept, skipped, warnings


def _photo_number_hint(path: Path, plant_id: str, catalog: dict[str, SpeciesInfo]) -> str:
    """Explain a "__{n}" file name read as a photo number when the whole name is a species id."""
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    if not stem.startswith(REFERENCE_PREFIX):
        return ""

    name_id = stem[len(REFERENCE_PREFIX) :]
    _, number = split_photo_number(name_id)
    if number is None or name_id not in catalog:
        return ""
    return (
        f"; the file name was read as photo {number} of {plant_id!r}. "
        f"To index it as {name_id!r}, list it in a photo table (--photos-csv)"
    )


def print_summary(indexed: int, skipped: list[Skipped], warnings: list[str], out: str, version: str | None) -> None:
    print(f"\nindexed {indexed} species, skipped {len(skipped)} files", file=sys.stderr)
    for entry in skipped:
        print(f"  skipped {entry.path}: {entry.reason}", file=sys.stderr)
    for warning in warnings:
        print(f"  warning: {warning}", file=sys.stderr)
    if version is not None:
        print(f"wrote index version {version} to {out}", file=sys.stderr)


def run_build(args: argparse.Namespace) -> int:
    if args.augmentations < 0:
        raise PlantIdError(f"--augmentations must be 0 or more, got {args.augmentations}")
    if args.batch_size < 1:
        raise PlantIdError(f"--batch-size must be 1 or more, got {args.batch_size}")
    recipe = get_recipe(args.recipe)
    shard: Shard | None = parse_shard(args.shard) if args.shard else None
    if SHARD_PLACEHOLDER in args.out:
        if shard is None:
            raise PlantIdError(f"--out {args.out!r} contains {SHARD_PLACEHOLDER} but no --shard was given")
        args.out = args.out.replace(SHARD_PLACEHOLDER, str(shard.index))

    # Step 1: find the photos and the species rows.
    scan: ScanResult = find_reference_photos(args.images, args.photos_csv)
    photos, skipped = list(scan.photos), list(scan.skipped)
    for entry in scan.skipped:
        logger.warning("skipping %s: %s", entry.path, entry.reason)

    warnings: list[str] = []
    catalog: dict[str, SpeciesInfo] = {}
    if args.csv is not None:
        catalog, csv_warnings = read_species_csv(args.csv)
        warnings.extend(csv_warnings)
        photos, unmatched, row_warnings = match_catalog(photos, catalog)
        skipped.extend(unmatched)
        warnings.extend(row_warnings)
        for entry in unmatched:
            logger.warning("skipping %s: %s", entry.path, entry.reason)
    for warning in warnings:
        logger.warning("%s", warning)

    if shard is not None:
        photos = shard.select(photos)
        logger.info("shard %d/%d: %d photos", shard.index, shard.count, len(photos))

    # Step 2: encode the photos and their augmentations.
    # The encoder logs a warning when it detects the tiny test model.
    encoder = load_model(args.model, device=args.device, precision=args.precision)
    result = build_prototypes(
        photos, encoder, recipe, args.augmentations, args.seed,
        batch_size=args.batch_size, progress=not args.no_progress,
    )
    skipped.extend(result.skipped)

    if not result.plant_ids:
        print_summary(0, skipped, warnings, args.out, None)
        print("error: no valid reference photo remains, so no index was written", file=sys.stderr)
        return 1

    # Step 3: write the index, versioned objects first and the pointer last.
    species = [
        catalog[plant_id].to_row() if plant_id in catalog else {"plant_id": plant_id}
        for plant_id in result.plant_ids
    ]
    meta = {
        "model": {
            "id": encoder.model_id,
            "revision": encoder.revision,
            "backend": encoder.backend,
            "precision": getattr(encoder, "precision", "float32"),
        },
        "augmentation": {"recipe": recipe.to_dict(), "count": args.augmentations, "seed": args.seed},
        "image_processor": encoder.preprocess.to_dict(),
        "species": species,
        "skipped": [{"file": Path(entry.path).name, "reason": entry.reason} for entry in skipped],
        "test_model": encoder.is_test_model,
    }
    if shard is not None:
        meta["shard"] = shard.to_dict()

    # Each indexed species gets a thumbnail in the version folder, before the pointer.
    photo_paths = {photo.plant_id: Path(photo.path) for photo in photos}
    indexed_photos = {plant_id: photo_paths[plant_id] for plant_id in result.plant_ids}
    meta["thumbnails"] = thumbnail_meta()
    version = write_index(
        args.out, result.embeddings, result.plant_ids, meta,
        before_pointer=lambda folder: write_thumbnails(indexed_photos, folder),
    )

    print_summary(len(result.plant_ids), skipped, warnings, args.out, version)
    return 0


def run_merge(argv: Sequence[str]) -> int:
    args = build_merge_parser().parse_args(argv)
    version = merge_indexes(args.parts, args.out)
    print(f"merged {len(args.parts)} parts into index version {version} at {args.out}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        if argv and argv[0] == "merge":
            return run_merge(argv[1:])
        return run_build(build_parser().parse_args(argv))
    except PlantIdError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2
