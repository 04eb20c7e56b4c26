"""The web page in headless Chromium (Debian's /usr/bin/chromium driven by Playwright) against the local stack.

The stack runs in this process on free ports: moto S3, an index of the sample photos built
by the indexer with the tiny test model, the API under uvicorn, the static site and the
upload poller. Screenshots go to artifacts/screenshots/.
"""

from __future__ import annotations

import io
import re
import socket
import time
from pathlib import Path

import pytest
from PIL import Image

from handler.app import create_app
from handler.config import Settings
from infra.local_stack import UPLOAD_BUCKET, WEB_DIR, LocalStack, StackOptions, set_upload_cors
from infra.static_site import StaticSite
from tests.handler_support import running_server

REPO_ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = REPO_ROOT / "artifacts" / "screenshots"

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps trying to reach Google's hosts.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]

DESKTOP = {"width": 1000, "height": 900}
PHONE = {"width": 390, "height": 844}

# A small upload limit keeps the oversized test file small.
MAX_UPLOAD_BYTES = 1_000_000
FINISHED = "['results', 'error'].includes(document.body.dataset.state)"
THUMBNAILS_LOADED = """() => {
  const images = [...document.querySelectorAll('#results img')];
  return images.length > 0 && images.every((image) => image.complete && image.naturalWidth > 0);
}"""
HEIC_FIX = (
    "HEIC photos are not supported; on iPhone choose Settings > Camera > Formats > Most Compatible, "
    "or export as JPEG"
)


@pytest.fixture(scope="module")
def stack(tiny_model_dir, sample_dir):
    options = StackOptions(
        model=str(tiny_model_dir),
        images=sample_dir / "reference",
        csv=sample_dir / "species.csv",
        augmentations=20,
        api_port=0,
        web_port=0,
        max_upload_bytes=MAX_UPLOAD_BYTES,
    )
    running = LocalStack.start(options)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}; install it with `make browser` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, stack):
    context = browser.new_context(viewport=DESKTOP)
    opened = context.new_page()
    opened.goto(stack.web_url)
    yield opened
    context.close()


@pytest.fixture
def s3(stack):
    return stack.s3.client()


def screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def choose(page, photo) -> str:
    """Choose a photo (a path or a Playwright file payload) and return the final page state."""
    page.set_input_files("#photo", photo)
    page.wait_for_function(FINISHED, timeout=60_000)
    return page.evaluate("document.body.dataset.state")


def payload(name: str, data: bytes, mime_type: str = "image/jpeg") -> dict:
    return {"name": name, "mimeType": mime_type, "buffer": data}


def active_id(page) -> str:
    return page.evaluate("document.activeElement ? document.activeElement.id : ''")


def upload_keys(s3) -> set[str]:
    listed = s3.list_objects_v2(Bucket=UPLOAD_BUCKET, Prefix="uploads/").get("Contents", [])
    return {item["Key"] for item in listed}


def reference_photo(sample_dir: Path, plant_id: str) -> Path:
    return sample_dir / "reference" / f"plant_species_thumbnail_image_{plant_id}.jpg"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Identification.


def test_reference_photo_ranks_first(page, sample_dir):
    state = choose(page, reference_photo(sample_dir, "3"))
    first = page.locator("#results li").first
    page.wait_for_function(THUMBNAILS_LOADED, timeout=30_000)
    screenshot(page, "results-desktop.png")

    assert state == "results"
    assert first.get_attribute("data-plant-id") == "3"
    assert "Celtis occidentalis" in first.inner_text()
    assert "Common hackberry" in first.inner_text()
    assert "Plant id 3" in first.inner_text()
    assert re.fullmatch(r"Similarity \d{1,3}\.\d%", first.locator(".score-value").text_content())
    assert page.locator("#results li").count() == 5


def test_focus_moves_to_results(page, sample_dir):
    choose(page, reference_photo(sample_dir, "20"))

    assert active_id(page) == "results"


def test_progress_reaches_full(page, sample_dir):
    choose(page, reference_photo(sample_dir, "10"))

    assert page.eval_on_selector("#progress", "element => element.value") == 100


def test_thumbnail_is_reference(page, sample_dir):
    choose(page, reference_photo(sample_dir, "3"))
    page.wait_for_function(THUMBNAILS_LOADED, timeout=30_000)
    image = page.locator("#results li").first.locator("img")

    assert image.get_attribute("alt") == "Reference photo of Celtis occidentalis"
    assert max(page.evaluate("image => [image.naturalWidth, image.naturalHeight]", image.element_handle())) == 256


def test_upload_reaches_bucket(page, s3, sample_dir):
    before = upload_keys(s3)

    choose(page, reference_photo(sample_dir, "37"))
    new_keys = upload_keys(s3) - before
    key = next(iter(new_keys))
    head = s3.head_object(Bucket=UPLOAD_BUCKET, Key=key)

    assert len(new_keys) == 1
    assert head["ContentType"] == "image/jpeg"


def test_upload_event_writes_result(page, s3, sample_dir):
    before = upload_keys(s3)
    choose(page, reference_photo(sample_dir, "48"))
    key = next(iter(upload_keys(s3) - before))

    # The upload poller delivers the ObjectCreated event within about a second.
    deadline = time.monotonic() + 20
    result = None
    while result is None and time.monotonic() < deadline:
        try:
            result = s3.get_object(Bucket=UPLOAD_BUCKET, Key=f"results/{key}.json")["Body"].read()
        except s3.exceptions.NoSuchKey:
            time.sleep(0.2)

    assert result is not None
    assert b'"plant_id": "48"' in result


def test_preview_upright(page):
    # Stored as 400x200 pixels with EXIF orientation 6: upright it is a 200x400 portrait.
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.new("RGB", (400, 200), (60, 140, 70)).save(buffer, format="JPEG", exif=exif)

    choose(page, payload("rotated.jpg", buffer.getvalue()))
    box = page.locator("#preview-image").bounding_box()

    assert box["height"] > box["width"]


# Keyboard and phone width.


def test_results_reachable_by_tab(page, sample_dir):
    choose(page, reference_photo(sample_dir, "3"))
    page.focus("#photo")

    for _ in range(5):
        page.keyboard.press("Tab")
        if active_id(page) == "results":
            break
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")

    assert active_id(page) == "results"
    assert page.evaluate("document.activeElement.matches(':focus-visible')")
    assert outline == "solid"


def test_phone_width(browser, stack, sample_dir):
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    try:
        phone = context.new_page()
        phone.goto(stack.web_url)
        state = choose(phone, reference_photo(sample_dir, "3"))
        phone.wait_for_function(THUMBNAILS_LOADED, timeout=30_000)
        screenshot(phone, "results-phone.png")
        width = phone.evaluate("document.documentElement.scrollWidth")
        first = phone.locator("#results li").first.get_attribute("data-plant-id")
        camera_visible = phone.is_visible("label[for=camera]")
    finally:
        context.close()

    assert state == "results"
    assert first == "3"
    assert width <= PHONE["width"]
    assert camera_visible


# Error messages.


def test_oversized_photo_message(page, s3):
    before = upload_keys(s3)

    state = choose(page, payload("big.jpg", b"\xff\xd8\xff\xe0" + bytes(MAX_UPLOAD_BYTES + 500_000)))
    screenshot(page, "error-too-large.png")

    assert state == "error"
    assert page.inner_text("#message-title") == "Photo too large"
    assert "This photo is 1.4\u00a0MB, over the limit of 977\u00a0kB." in page.inner_text("#message-text")
    assert active_id(page) == "message"
    assert upload_keys(s3) == before


def test_just_over_limit_in_bytes(page):
    state = choose(page, payload("big.jpg", b"\xff\xd8\xff\xe0" + bytes(MAX_UPLOAD_BYTES)))

    assert state == "error"
    assert "This photo is 1,000,004 bytes, over the limit of 1,000,000 bytes." in page.inner_text("#message-text")


def test_not_an_image_message(page):
    state = choose(page, payload("notes.jpg", b"These are my field notes, not a photo.\n"))

    assert state == "error"
    assert page.inner_text("#message-title") == "Not an image"
    assert "notes.jpg is not a photo" in page.inner_text("#message-text")
    assert active_id(page) == "message"


def test_heic_message(page):
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200)

    state = choose(page, payload("IMG_0001.HEIC", heic, "image/heic"))

    assert state == "error"
    assert HEIC_FIX in page.inner_text("#message-text")


def test_gif_message(page):
    state = choose(page, payload("leaf.gif", b"GIF89a" + bytes(100), "image/gif"))

    assert state == "error"
    assert page.inner_text("#message-text").startswith("GIF files are not supported.")


def test_network_error_message(browser, sample_dir):
    site = StaticSite(WEB_DIR, f"http://127.0.0.1:{closed_port()}")
    site.start()
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        page.goto(f"{site.url}/")
        state = choose(page, reference_photo(sample_dir, "3"))
        title = page.inner_text("#message-title")
    finally:
        context.close()
        site.stop()

    assert state == "error"
    assert title == "No connection"


def test_server_error_message(browser, stack, s3, sample_dir, tiny_model_dir):
    # An API whose index is missing: the upload works, then POST /identify responds 503.
    settings = Settings(
        index_location="s3://plant-id-index/missing",
        model=str(tiny_model_dir),
        upload_bucket=UPLOAD_BUCKET,
        cors_origins=("*",),
    )
    context = browser.new_context(viewport=DESKTOP)
    with running_server(create_app(settings)) as api_url:
        site = StaticSite(WEB_DIR, api_url)
        site.start()
        set_upload_cors(s3, [stack.site.url, site.url])
        try:
            page = context.new_page()
            page.goto(f"{site.url}/")
            state = choose(page, reference_photo(sample_dir, "3"))
            screenshot(page, "error-server.png")
            title = page.inner_text("#message-title")
            text = page.inner_text("#message-text")
        finally:
            context.close()
            site.stop()
            set_upload_cors(s3, [stack.site.url])

    assert state == "error"
    assert title == "Service error"
    assert "HTTP 503" in text


# Rendering of response flags and client-side checks, run in the page's own modules.


@pytest.mark.parametrize("flag", [{"confident": False}, {"no_confident_match": True}], ids=["confident", "no_confident_match"])
def test_no_confident_match_note(page, flag):
    body = {
        "matches": [
            {"rank": 1, "plant_id": "3", "scientific_name": "Celtis occidentalis", "common_name": None, "score": 0.21, "thumbnail_url": "/species/3/thumbnail"}
        ],
        "model_id": "test",
        "index_version": "v1",
        "elapsed_ms": 12.0,
        "views": 8,
        **flag,
    }

    page.evaluate("async (body) => (await import('./view.js')).showResults(body)", body)

    assert page.is_visible("#results-note")
    assert page.inner_text("#results-note-title") == "No confident match"
    assert page.get_attribute("#results", "aria-describedby") == "results-note"
    assert active_id(page) == "results"


def test_confident_match_no_note(page):
    body = {"matches": [], "model_id": "test", "index_version": "v1", "elapsed_ms": 1.0, "views": 8, "confident": True}

    page.evaluate("async (body) => (await import('./view.js')).showResults(body)", body)

    assert not page.is_visible("#results-note")


FORMAT_CASES = {
    "jpeg": ([0xFF, 0xD8, 0xFF, 0xE0], "image/jpeg"),
    "png": ([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A], "image/png"),
    "webp": (list(b"RIFF\x00\x00\x00\x00WEBPVP8 "), "image/webp"),
    "heic": (list(b"\x00\x00\x00\x18ftypheic"), "heic"),
    "heif": (list(b"\x00\x00\x00\x18ftypmif1"), "heic"),
    "avif": (list(b"\x00\x00\x00\x1cftypavif"), "avif"),
    "gif": (list(b"GIF89a"), "gif"),
    "svg": (list(b"  <svg xmlns='http://www.w3.org/2000/svg'>"), "svg"),
    "text": (list(b"hello world"), None),
}


def test_format_detection(page):
    script = "async (cases) => { const m = await import('./photo.js'); return Object.fromEntries(Object.entries(cases).map(([name, bytes]) => [name, m.detectFormat(new Uint8Array(bytes))])); }"

    detected = page.evaluate(script, {name: data for name, (data, _) in FORMAT_CASES.items()})

    assert detected == {name: expected for name, (_, expected) in FORMAT_CASES.items()}


API_ERROR_CASES = [
    (413, {"error": "image_too_large", "message": "too many pixels"}, "too_large"),
    (415, {"error": "unsupported_format", "message": "HEIC images are not supported"}, "heic"),
    (415, {"error": "unsupported_format", "message": "SVG is not a photo"}, "unsupported_format"),
    (400, {"error": "not_an_image", "message": "not an image"}, "not_an_image"),
    (400, {"error": "corrupt_image", "message": "truncated"}, "not_an_image"),
    (400, {"error": "image_too_small", "message": "too small"}, "rejected"),
    (503, {"error": "index_not_found", "message": "no index"}, "server"),
    (500, None, "server"),
]


def test_api_error_kinds(page):
    script = "async (cases) => { const m = await import('./errors.js'); return cases.map(([status, body]) => m.apiError(status, body).kind); }"

    kinds = page.evaluate(script, [[status, body] for status, body, _ in API_ERROR_CASES])

    assert kinds == [kind for _, _, kind in API_ERROR_CASES]


def test_missing_config_detected(page):
    script = "async () => { const m = await import('./api.js'); try { m.apiBaseUrl(null); return 'configured'; } catch (error) { return error.kind; } }"

    assert page.evaluate(script) == "not_configured"
