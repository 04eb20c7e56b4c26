"""Command line of the query path.

    python -m handler identify --index DEST [--model ID_OR_DIR] [--top-k 5] [--json] [--combine] PHOTO...
    python -m handler serve [--host 127.0.0.1] [--port 8000]

Without --combine every photo gets its own result. With --combine the photos (at most
MAX_PHOTOS) show the same plant and give one result from their combined query embedding.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from PIL import Image

from handler.query import DEFAULT_TOP_K, DEFAULT_VIEWS, MAX_PHOTOS, MAX_TOP_K, Identification, Identifier
from shared.encoder import DEFAULT_MODEL_ID, PRECISIONS, load_encoder
from shared.errors import IndexValidationError, PlantIdError
from shared.imaging import decode_image
from shared.index_store import Index, load_index
from shared.preprocess import view_source_side
from shared.search import build_search

logger = logging.getLogger("handler")



def top_k_argument(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid top-K {text!r}: expected an integer") from None
    if not 1 <= value <= MAX_TOP_K:
        raise argparse.ArgumentTypeError(f"top-K must be between 1 and {MAX_TOP_K}, got {value}")
    return value


def build_identify_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m handler identify",
        description="Identify plant photos against a prototype index, as the inference function does.",
    )
    parser.add_argument("photos", nargs="+", type=Path, help="photos to identify")
    parser.add_argument("--index", required=True, help="index location: a local folder or s3://bucket/prefix")
    parser.add_argument("--model", help="Hugging Face model id or local folder (default: the model recorded in the index)")
    parser.add_argument("--top-k", type=top_k_argument, default=DEFAULT_TOP_K, help=f"species to list per photo, 1 to {MAX_TOP_K} (default: %(default)s)")
    parser.add_argument("--views", type=int, default=DEFAULT_VIEWS, help="views per photo: the original plus test-time augmentations (default: %(default)s)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the encoder runs (default: %(default)s)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help="number format of the encoder (default: %(default)s, the fastest accurate one for the device)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per photo instead of a table")
    parser.add_argument(
        "--combine", action="store_true",
        help=f"treat the photos (1 to {MAX_PHOTOS}) as one plant and print one combined result",
    )
    parser.add_argument("--verbose", action="store_true", help="log progress at INFO level, not only warnings")
    return parser


def default_model(index: Index) -> str:
    recorded = index.meta.get("model", {}) if isinstance(index.meta, dict) else {}
    return recorded.get("id") or DEFAULT_MODEL_ID


def format_table(photo: Path | str, result: Identification) -> str:
    lines = [f"{photo}  (index {result.index_version}, {result.views} views, {result.elapsed_ms:.0f} ms)"]
    if not result.confident:
        lines.append("  no confident match: the closest species are listed, but the photo may show a species that is not in the index")
    lines.append(f"  {'rank':>4}  {'plant id':<12}  {'score':>7}  name")
    for match in result.matches:
        name = match.scientific_name or ""
        if match.common_name:
            name = f"{name} ({match.common_name})" if name else match.common_name
        lines.append(f"  {match.rank:>4}  {match.plant_id:<12}  {match.score:>7.4f}  {name}")
    return "\n".join(lines)


def read_photo(photo: Path, target_size: int) -> Image.Image | None:
    """Decode one photo, or print the error naming the file and return None."""
    try:
        return decode_image(photo.read_bytes(), target_size=target_size)
    except OSError as error:
        print(f"{photo}: error: cannot read the file ({error.strerror or error})", file=sys.stderr)
    except PlantIdError as error:
        print(f"{photo}: error: {error.message}", file=sys.stderr)
    return None


def run_combined(args: argparse.Namespace, identifier: Identifier, target_size: int) -> int:
    """Identify all photos as one plant and print one result; exit 1 when any photo cannot be used."""
    images = [read_photo(photo, target_size) for photo in args.photos]
    failures = sum(image is None for image in images)
    if failures:
        print(
            f"{failures} of {len(args.photos)} photos could not be read, so no combined result was computed",
            file=sys.stderr,
        )
        return 1

    result = identifier.identify_many([image for image in images if image is not None], top_k=args.top_k)
    if args.json:
        print(json.dumps({"files": [str(photo) for photo in args.photos], **result.to_dict()}, ensure_ascii=False))
    else:
        print(format_table(" + ".join(str(photo) for photo in args.photos), result))
    return 0


def load_identifier(args: argparse.Namespace) -> Identifier:
    """Load the index and the encoder; raises IndexValidationError when they do not fit together.

    With --model, the encoder loads first, so the index is checked against its dimension.
    Without it, the index names the model.
    """
    # The encoder logs a warning when it detects the tiny test model.
    if args.model:
        encoder = load_encoder(args.model, device=args.device, precision=args.precision)
        index = load_index(args.index, expected_dim=encoder.dimension)
    else:
        index = load_index(args.index)
        encoder = load_encoder(default_model(index), device=args.device, precision=args.precision)

    try:
        return Identifier(encoder, index, build_search(index.embeddings, index.plant_ids), views=args.views)
    except ValueError as error:
        raise IndexValidationError(f"index {args.index} cannot be used: {error}") from error


def run_identify(argv: Sequence[str]) -> int:
    args = build_identify_parser().parse_args(argv)
    if args.verbose:
        logging.getLogger().setLevel(logging.INFO)
    if args.combine and len(args.photos) > MAX_PHOTOS:
        print(f"error: --combine takes at most {MAX_PHOTOS} photos of one plant, got {len(args.photos)}", file=sys.stderr)
        return 2

    identifier = load_identifier(args)
    encoder = identifier.encoder

    # Photos decode at reduced size when they are much larger than the views need.
    target_size = view_source_side(encoder.preprocess)
    if args.combine:
        return run_combined(args, identifier, target_size)

    failures = 0
    for photo in args.photos:
        image = read_photo(photo, target_size)
        if image is None:
            failures += 1
            continue

        result = identifier.identify(image, top_k=args.top_k)
        if args.json:
            print(json.dumps({"photo": str(photo), **result.to_dict()}, ensure_ascii=False))
        else:
            print(format_table(photo, result))

    if failures:
        print(f"{failures} of {len(args.photos)} photos could not be identified", file=sys.stderr)
    return 1 if failures else 0


def run_serve(argv: Sequence[str]) -> int:
    from handler.serve import serve

    return serve(argv)


COMMANDS = {"identify": run_identify, "serve": run_serve}

USAGE = """usage: python -m handler {identify,serve} ...

commands:
  identify   identify photos against an index and print the ranked species
  serve      run the HTTP API under uvicorn (the app that Lambda runs through Mangum)

Run `python -m handler COMMAND --help` for the options of a command."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if not argv or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except PlantIdError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2
