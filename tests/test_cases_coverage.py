"""Every fault case file through every entry point that can receive it, with the expected outcome.

The table below is built from the files in the cases folder: each file gets the entry
points of its folder. One test function per entry point is parametrized from the table
and runs the file through that entry point:

| folder | entry points |
| --- | --- |
| images | `python -m handler identify` (one in-process call for all files), POST /identify over HTTP with a multipart file and with an upload key, and Lambda with an API Gateway event and an S3 event |
| events | the Lambda handler |
| index | load_index, the service's cold start (GET /health and POST /identify), `python -m handler identify --index` |
| indexer_folder | `python -m indexer` (one in-process run for the folder) |

Each test records its (file, entry point) pair once it passes, and the last test checks
that every pair of the table was recorded. Error responses through HTTP and Lambda are
also checked for stack traces and internal paths.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from handler import lambda_entry
from handler.app import create_app
from handler.cli import main as handler_main
from handler.config import Settings
from indexer.cli import main as indexer_main
from shared.errors import IndexValidationError
from shared.index_store import load_index
from tests.conftest import CASES_DIR
from tests.handler_support import (
    CASE_IMAGE_STATUS,
    S3_STATUS_OVERRIDES,
    UPLOAD_BUCKET,
    http_api_v2_event,
    load_event,
    multipart_body,
    response_json,
    running_server,
    s3_put_event,
    tiny_index,
)

# Entry points of each folder of the cases. README.md describes the cases and is not one.
ENTRY_POINTS: dict[str, tuple[str, ...]] = {
    "images": ("cli", "http", "http-key", "lambda-http", "lambda-s3"),
    "events": ("lambda",),
    "index": ("load_index", "cold-start", "cli"),
    "indexer_folder": ("indexer",),
}
NOT_CASES = {"README.md"}

# Text that only a stack trace or an internal path would put into a response.
LEAK_MARKERS = ("Traceback", "/work", ".py", "site-packages")


def case_files(root: Path) -> list[str]:
    """Return every file under `root` as 'folder/name', hidden files included."""
    if not root.is_dir():
        return []
    return sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and path.relative_to(root).as_posix() not in NOT_CASES
    )


CASE_TABLE: dict[str, tuple[str, ...]] = {
    case: ENTRY_POINTS.get(case.split("/", 1)[0], ()) for case in case_files(CASES_DIR)
}


def cases_of(folder: str) -> list[str]:
    return [case for case in CASE_TABLE if case.split("/", 1)[0] == folder]


def file_name(case: str) -> str:
    return case.split("/", 1)[1]


# (case, entry point) pairs whose test ran and passed in this session.
EXERCISED: set[tuple[str, str]] = set()


def assert_no_leak(text: str, context: str) -> None:
    for marker in LEAK_MARKERS:
        assert marker not in text, f"{context}: {marker!r} in {text[:500]}"


def assert_matches(body: dict, context: str) -> None:
    scores = [match["score"] for match in body["matches"]]
    assert scores, context
    assert all(math.isfinite(score) and -1.0 <= score <= 1.0 for score in scores), context


# Fixtures shared by the entry points.


@pytest.fixture(scope="module")
def settings(s3_env, tmp_path_factory, tiny_model_dir, sample_dir) -> Settings:
    index_dir = tiny_index(tiny_model_dir, sample_dir, tmp_path_factory.mktemp("coverage-index"))
    return Settings(index_location=str(index_dir), model=str(tiny_model_dir), upload_bucket=UPLOAD_BUCKET)


@pytest.fixture(scope="module")
def app(settings):
    application = create_app(settings)
    application.state.service.warm_up()
    return application


@pytest.fixture(scope="module")
def http(app):
    with running_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def entry(app):
    lambda_entry.configure(app)
    yield lambda_entry.handler
    lambda_entry.configure(create_app(Settings(index_location="unused"), warm_up=False))


@pytest.fixture(scope="module")
def s3(s3_env):
    return s3_env.client()


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = handler_main(argv)
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def cli_batch(settings, cases_dir) -> dict[str, Any]:
    """Identify every case image in one `python -m handler identify --json` call."""
    photos = [cases_dir / case for case in cases_of("images")]
    code, out, err = run_cli(["identify", "--index", settings.index_location, "--model", settings.model, "--json", *map(str, photos)])
    results = {json.loads(line)["photo"]: json.loads(line) for line in out.splitlines() if line.strip()}
    return {"code": code, "results": results, "stderr": err}


# Images.


def expected_status(name: str, entry_point: str) -> int:
    """Return the status the README gives; the 4.5 MB body limit binds only direct requests."""
    status = CASE_IMAGE_STATUS[name]
    if entry_point in ("cli", "http-key", "lambda-s3"):
        status = S3_STATUS_OVERRIDES.get(name, status)
    return status


# Images whose result must equal that of control_rgb.jpg (the README's "same as control").
SAME_AS_CONTROL = {
    "exif_rotated.jpg", "exif_orientation_3.jpg", "exif_orientation_invalid_9.jpg",
    "jpeg_named.png", "animated.gif", "animated.webp", "cmyk.jpg",
}
SAME_SCORE_TOLERANCE = 0.005


def check_error_or_matches(status: int, body: dict, context: str) -> None:
    if status == 200:
        assert_matches(body, context)
    else:
        assert set(body) == {"error", "message"}, context
        assert body["message"], context


@pytest.mark.parametrize("case", cases_of("images"))
def test_through_cli(case, cli_batch, cases_dir):
    photo = str(cases_dir / case)
    errors = [line for line in cli_batch["stderr"].splitlines() if line.startswith(f"{photo}: error: ")]

    if expected_status(file_name(case), "cli") == 200:
        assert_matches(cli_batch["results"][photo], case)
        assert errors == []
    else:
        assert photo not in cli_batch["results"]
        assert len(errors) == 1
        assert cli_batch["code"] == 1
    EXERCISED.add((case, "cli"))


def scores_by_id(body: dict) -> dict[str, float]:
    return {match["plant_id"]: match["score"] for match in body["matches"]}


@pytest.mark.parametrize("case", cases_of("images"))
def test_through_http(case, http, cases_dir):
    path = cases_dir / case
    response = http.post("/identify", files={"file": (path.name, path.read_bytes(), "image/jpeg")}, params={"top_k": 12})
    expected = expected_status(path.name, "http")

    assert response.status_code == expected, response.text
    check_error_or_matches(expected, response.json(), case)
    assert_no_leak(response.text, case)
    if path.name in SAME_AS_CONTROL:
        control = http.post("/identify", files={"file": ("c.jpg", (cases_dir / "images" / "control_rgb.jpg").read_bytes())}, params={"top_k": 12})
        expected_scores, scores = scores_by_id(control.json()), scores_by_id(response.json())
        assert max(abs(scores[plant_id] - score) for plant_id, score in expected_scores.items()) < SAME_SCORE_TOLERANCE
    EXERCISED.add((case, "http"))


@pytest.mark.parametrize("case", cases_of("images"))
def test_through_http_key(case, http, s3, cases_dir):
    path = cases_dir / case
    key = f"uploads/coverage/{path.name}"
    s3.put_object(Bucket=UPLOAD_BUCKET, Key=key, Body=path.read_bytes())

    response = http.post("/identify", json={"key": key})
    expected = expected_status(path.name, "http-key")

    assert response.status_code == expected, response.text
    check_error_or_matches(expected, response.json(), case)
    assert_no_leak(response.text, case)
    EXERCISED.add((case, "http-key"))


@pytest.mark.parametrize("case", cases_of("images"))
def test_through_lambda_http(case, entry, cases_dir):
    path = cases_dir / case
    body, content_type = multipart_body({}, path.name, path.read_bytes())
    response = entry(http_api_v2_event("POST", "/identify", body, content_type), None)
    expected = expected_status(path.name, "lambda-http")

    assert response["statusCode"] == expected, response["body"]
    check_error_or_matches(expected, response_json(response), case)
    assert_no_leak(response["body"], case)
    EXERCISED.add((case, "lambda-http"))


@pytest.mark.parametrize("case", cases_of("images"))
def test_through_lambda_s3(case, entry, s3, cases_dir):
    path = cases_dir / case
    data = path.read_bytes()
    key = f"uploads/coverage-s3/{path.name}"
    s3.put_object(Bucket=UPLOAD_BUCKET, Key=key, Body=data)

    summary = entry(s3_put_event(UPLOAD_BUCKET, key, len(data)), None)
    listing = s3.list_objects_v2(Bucket=UPLOAD_BUCKET, Prefix=f"results/{key}")

    if not data:
        # An empty upload is skipped and logged, so the platform does not retry it.
        assert summary["skipped"] == [{"key": key, "reason": "empty object"}]
        assert listing.get("KeyCount", 0) == 0
    else:
        result_text = s3.get_object(Bucket=UPLOAD_BUCKET, Key=f"results/{key}.json")["Body"].read().decode("utf-8")
        result = json.loads(result_text)
        expected = expected_status(path.name, "lambda-s3")
        assert result["status"] == expected, result
        assert result["key"] == key
        if expected == 200:
            assert_matches(result, case)
        else:
            assert result["message"], case
        assert_no_leak(result_text, case)
    EXERCISED.add((case, "lambda-s3"))


# Events.


def run_event(name: str, entry, s3, cases_dir: Path) -> None:
    """Deliver one case event and check the outcome the README gives for it."""
    event = load_event(cases_dir, name)

    if name == "s3_put_key_spaces.json":
        key = "uploads/my plant photo (1).jpg"
        s3.put_object(Bucket=UPLOAD_BUCKET, Key=key, Body=(cases_dir / "images" / "control_rgb.jpg").read_bytes())
        summary = entry(event, None)
        result = json.loads(s3.get_object(Bucket=UPLOAD_BUCKET, Key=f"results/{key}.json")["Body"].read())
        assert summary["results"] == [f"results/{key}.json"]
        assert result["status"] == 200
        return

    if name == "s3_put_key_unicode.json":
        key = "uploads/plant_species_thumbnail_image_ 7 é.jpg"
        photo = cases_dir / "images" / "plant_species_thumbnail_image_ 7 é.jpg"
        s3.put_object(Bucket=UPLOAD_BUCKET, Key=key, Body=photo.read_bytes())
        summary = entry(event, None)
        result = json.loads(s3.get_object(Bucket=UPLOAD_BUCKET, Key=f"results/{key}.json")["Body"].read())
        assert summary["results"] == [f"results/{key}.json"]
        assert result["status"] == 200
        return

    if name == "s3_put_folder_placeholder.json":
        summary = entry(event, None)
        listing = s3.list_objects_v2(Bucket=UPLOAD_BUCKET, Prefix="results/uploads/new folder")
        assert summary == {"results": [], "skipped": [{"key": "uploads/new folder/", "reason": "folder placeholder"}]}
        assert listing.get("KeyCount", 0) == 0
        return

    response = entry(event, None)
    body = response_json(response)
    assert_no_leak(response["body"], name)
    if name == "apigw_v2_identify_multipart.json":
        assert response["statusCode"] == 200, body
        assert len(body["matches"]) == 3
    elif name == "apigw_v2_identify_missing_file.json":
        assert response["statusCode"] == 422
        assert body["detail"][0]["loc"] == ["body", "file"]
    elif name == "apigw_v2_identify_not_an_image.json":
        assert response["statusCode"] == 400
        assert body["error"] == "not_an_image"
    else:
        raise AssertionError(f"no expected outcome for the event {name}; add it to run_event")


@pytest.mark.parametrize("case", cases_of("events"))
def test_through_lambda_event(case, entry, s3, cases_dir):
    run_event(file_name(case), entry, s3, cases_dir)
    EXERCISED.add((case, "lambda"))


# Index files. Each .npz is paired with meta_ok.json; each meta file with index_ok.npz.

# Words that the rejection message must contain; None for an index that loads.
INDEX_OUTCOMES: dict[str, str | None] = {
    "index_ok.npz": None,
    "meta_ok.json": None,
    "index_pickled_object.npz": "pickle",
    "index_wrong_dim.npz": "768",
    "index_missing_key.npz": "'embeddings'",
    "index_not_npz.npz": "npz",
    "meta_length_mismatch.json": "2 species for 3 embeddings",
    # Scaled rows, an all-zero row and a row whose norm overflows float16: the loader
    # rejects the norms instead of serving scores outside [-1, 1].
    "index_fp16_unnormalized.npz": "norm",
}


def index_folder(case: str, cases_dir: Path, tmp_path: Path) -> Path:
    """Lay out the case file and its partner as embeddings_fp16.npz and meta.json."""
    name = file_name(case)
    npz = name if name.endswith(".npz") else "index_ok.npz"
    meta = name if name.endswith(".json") else "meta_ok.json"
    folder = tmp_path / "index"
    folder.mkdir()
    (folder / "embeddings_fp16.npz").write_bytes((cases_dir / "index" / npz).read_bytes())
    (folder / "meta.json").write_bytes((cases_dir / "index" / meta).read_bytes())
    return folder


def expected_words(case: str) -> str | None:
    name = file_name(case)
    assert name in INDEX_OUTCOMES, f"no expected outcome for the index file {name}; add it to INDEX_OUTCOMES"
    return INDEX_OUTCOMES[name]


@pytest.mark.parametrize("case", cases_of("index"))
def test_through_load_index(case, cases_dir, tmp_path):
    folder = index_folder(case, cases_dir, tmp_path)
    words = expected_words(case)

    if words is None:
        index = load_index(str(folder), expected_dim=512)
        assert index.count == 3
        assert index.dimension == 512
    else:
        with pytest.raises(IndexValidationError) as raised:
            load_index(str(folder), expected_dim=512)
        assert words in raised.value.message
    EXERCISED.add((case, "load_index"))


@pytest.mark.parametrize("case", cases_of("index"))
def test_through_cold_start(case, cases_dir, tmp_path, tiny_model_dir, sample_dir):
    folder = index_folder(case, cases_dir, tmp_path)
    words = expected_words(case)
    photo = sample_dir / "queries" / "3_1.jpg"

    with TestClient(create_app(Settings(index_location=str(folder), model=str(tiny_model_dir)))) as client:
        health = client.get("/health")
        identify = client.post("/identify", files={"file": (photo.name, photo.read_bytes())})

    if words is None:
        assert health.status_code == 200
        assert health.json()["index_count"] == 3
        assert identify.status_code == 200
        assert_matches(identify.json(), case)
    else:
        assert health.status_code == 503
        assert words in health.json()["reason"]
        assert identify.status_code == 503
        assert words in identify.json()["message"]
    assert_no_leak(health.text, case)
    assert_no_leak(identify.text, case)
    EXERCISED.add((case, "cold-start"))


@pytest.mark.parametrize("case", cases_of("index"))
def test_through_cli_index(case, cases_dir, tmp_path, tiny_model_dir, sample_dir):
    folder = index_folder(case, cases_dir, tmp_path)
    words = expected_words(case)
    photo = sample_dir / "queries" / "3_1.jpg"

    code, out, err = run_cli(["identify", "--index", str(folder), "--model", str(tiny_model_dir), "--json", str(photo)])

    if words is None:
        assert code == 0, err
        assert_matches(json.loads(out), case)
    else:
        assert code == 2, err
        assert words in err
        assert "Traceback" not in err
    EXERCISED.add((case, "cli"))


# The indexer folder.


@pytest.fixture(scope="module")
def indexer_run(cases_dir, tmp_path_factory, tiny_model_dir) -> dict[str, Any]:
    folder = cases_dir / "indexer_folder"
    out = tmp_path_factory.mktemp("coverage-indexer") / "index"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = indexer_main([
            "--images", str(folder), "--csv", str(folder / "plants.csv"), "--out", str(out),
            "--model", str(tiny_model_dir), "--augmentations", "2", "--no-progress",
        ])
    index = load_index(str(out)) if code == 0 else None
    return {"code": code, "index": index, "report": stderr.getvalue()}


def species_names(index) -> dict[str, tuple[str | None, str | None]]:
    return {row["plant_id"]: (row.get("scientific_name"), row.get("common_name")) for row in index.species}


def check_indexer_case(name: str, run: dict[str, Any]) -> None:
    """Check the indexer's outcome for one file of the folder, as the README gives it."""
    report, index = run["report"], run["index"]
    ids = set(index.plant_ids)

    if name == "plant_species_thumbnail_image_1.jpg":
        assert "1" in ids
    elif name == "plant_species_thumbnail_image_007.jpg":
        assert "007" in ids
        assert "7" not in ids
    elif name in ("plant_species_thumbnail_image_2.jpg", "plant_species_thumbnail_image_2.jpeg"):
        assert index.plant_ids.count("2") == 1
        assert "plant_species_thumbnail_image_2.jpeg" in report
    elif name == "plant_species_thumbnail_image_3.jpg":
        assert "3" not in ids
        assert name in report
    elif name == "plant_species_thumbnail_image_99.jpg":
        assert "99" not in ids
        assert name in report
    elif name == "plant_species_thumbnail_image_ 7 é.jpg":
        assert not {" 7 é", "7"} & ids
        assert name in report
    elif name == "plant_species_thumbnail_image_.jpg":
        assert "" not in ids
        assert name in report
    elif name == ".DS_Store":
        assert ".DS_Store" not in report
    elif name == "plants.csv":
        names = species_names(index)
        assert names["007"] == ("Sansevieria trifasciata", "Snake plant")
        assert names["2"] == ("Ficus lyrata", "Fiddle-leaf fig")
        assert "'404'" in report
        assert "'12'" in report
    else:
        raise AssertionError(f"no expected indexer outcome for {name}; add it to check_indexer_case")


@pytest.mark.parametrize("case", cases_of("indexer_folder"))
def test_through_indexer(case, indexer_run):
    assert indexer_run["code"] == 0, indexer_run["report"]
    assert sorted(indexer_run["index"].plant_ids) == ["007", "1", "2"]
    check_indexer_case(file_name(case), indexer_run)
    EXERCISED.add((case, "indexer"))


# The table itself.

ENTRY_TESTS = {
    ("images", "cli"): test_through_cli,
    ("images", "http"): test_through_http,
    ("images", "http-key"): test_through_http_key,
    ("images", "lambda-http"): test_through_lambda_http,
    ("images", "lambda-s3"): test_through_lambda_s3,
    ("events", "lambda"): test_through_lambda_event,
    ("index", "load_index"): test_through_load_index,
    ("index", "cold-start"): test_through_cold_start,
    ("index", "cli"): test_through_cli_index,
    ("indexer_folder", "indexer"): test_through_indexer,
}


def test_table_lists_every_file(cases_dir):
    on_disk = set(case_files(cases_dir))

    assert set(CASE_TABLE) == on_disk
    assert {case.split("/", 1)[0] for case in on_disk} == set(ENTRY_POINTS)


def test_every_entry_point_has_test():
    for folder, entry_points in ENTRY_POINTS.items():
        for entry_point in entry_points:
            assert (folder, entry_point) in ENTRY_TESTS, (folder, entry_point)


def test_every_pair_exercised(request):
    pairs = {(case, entry_point) for case, entry_points in CASE_TABLE.items() for entry_point in entry_points}
    selected = [
        item for item in request.session.items
        if item.module is request.module and item.originalname.startswith("test_through_")
    ]
    if len(selected) != len(pairs):
        pytest.skip("only part of this module was selected; run it whole to check every pair")

    missing = sorted(pairs - EXERCISED)
    assert missing == []
