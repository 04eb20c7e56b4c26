"""Warm cache of one process: the encoder, the index and the search backend.

A Lambda execution environment (or a uvicorn worker) loads the model and the index once,
at cold start, and every later invocation reuses them. The index is reloaded only when
its version (the latest.json pointer) changes, and the pointer is read at most every
`index_check_seconds`. A failed reload keeps the old index serving. A cold start that
cannot load the model or the index leaves the service responding 503 with the reason, and
later requests retry the load at most every `index_check_seconds`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from handler.config import Settings
from shared.errors import IndexValidationError, ModelLoadError, PlantIdError

if TYPE_CHECKING:
    from handler.query import Identifier
    from shared.encoder import ImageEncoder
    from shared.index_store import Index

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    """Why the model or the index is not serving: the error class and its message."""

    error_type: type[PlantIdError]
    message: str

    def to_error(self) -> PlantIdError:
        return self.error_type(self.message)

    @property
    def code(self) -> str:
        return self.error_type.code


def apply_thread_settings(threads: int | None) -> None:
    """Pass the thread count to the encoder, which reads PLANT_ID_THREADS when it loads.

    shared.encoder applies the count to torch or onnxruntime with a guard, because
    torch.set_num_threads can fail on Lambda when cpuinfo cannot read /sys. A value already
    in the environment wins.
    """
    if threads is not None:
        os.environ.setdefault("PLANT_ID_THREADS", str(threads))


class ServiceState:
    """The loaded encoder and Identifier of this process, with throttled loading and reloading.

    All methods are thread-safe. Requests that find a loaded index never wait for a reload
    running in another thread: they keep using the index they found.
    """

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()

        self._encoder: ImageEncoder | None = None
        self._identifier: Identifier | None = None
        self._search_name: str | None = None

        self._model_failure: Failure | None = None
        self._index_failure: Failure | None = None
        self._reload_failure: Failure | None = None
        self._invalid_version: str | None = None

        # Monotonic times before which the next attempt or version check is skipped.
        self._next_model_attempt = 0.0
        self._next_index_attempt = 0.0
        self._next_version_check = 0.0

        # Counters for the health check and for tests of the warm cache.
        self.model_loads = 0
        self.index_loads = 0
        self.version_checks = 0

    # Public interface.

    def warm_up(self) -> None:
        """Load the model and the index now, as at cold start. Failures are recorded, not raised."""
        with self._lock:
            self._refresh_locked(force=True)

    def refresh(self) -> None:
        """Load what is missing or check the index version, at most every index_check_seconds."""
        if self._identifier is None:
            with self._lock:
                self._refresh_locked(force=False)
            return

        # An index is serving: a version check in progress elsewhere must not block.
        if self._lock.acquire(blocking=False):
            try:
                self._refresh_locked(force=False)
            finally:
                self._lock.release()

    def identifier(self) -> Identifier:
        """Return the current handler.query.Identifier, or raise the 503 error that explains why none is loaded."""
        self.refresh()

        identifier = self._identifier
        if identifier is None:
            raise self._unavailable_failure().to_error()
        return identifier

    @property
    def encoder(self) -> ImageEncoder | None:
        return self._encoder

    @property
    def ready(self) -> bool:
        return self._identifier is not None

    def health(self) -> tuple[int, dict[str, Any]]:
        """Return the HTTP status and body of GET /health.

        503 with status "unavailable" and the reason while no index serves, 200
        with status "degraded" when the last reload failed and the previous index still
        serves; 200 with status "ok" otherwise.
        """
        self.refresh()

        encoder = self._encoder
        identifier = self._identifier
        body: dict[str, Any] = {
            "status": "ok",
            "model_loaded": encoder is not None,
            "index_loaded": identifier is not None,
            "model_id": getattr(encoder, "model_id", None),
            "device": getattr(encoder, "device", None),
            "backend": getattr(encoder, "backend", None),
            "precision": getattr(encoder, "precision", None),
            "test_model": bool(getattr(encoder, "is_test_model", False)),
            "index_version": None,
            "index_count": None,
            "dimension": getattr(encoder, "dimension", None),
            "search_backend": self._search_name,
            "views": self.settings.views,
            "model_loads": self.model_loads,
            "index_loads": self.index_loads,
        }

        if identifier is not None:
            body["index_version"] = identifier.index.version
            body["index_count"] = identifier.index.count

        if identifier is None:
            failure = self._unavailable_failure()
            body["status"] = "unavailable"
            body["error"] = failure.code
            body["reason"] = failure.message
            return 503, body

        if self._reload_failure is not None:
            body["status"] = "degraded"
            body["error"] = self._reload_failure.code
            body["reason"] = f"index reload failed, still serving {identifier.index.version}: {self._reload_failure.message}"
        return 200, body

    # Loading.

    def _refresh_locked(self, force: bool) -> None:
        now = self._clock()

        if self._encoder is None:
            if not force and now < self._next_model_attempt:
                return
            self._load_model(now)
            if self._encoder is None:
                return

        if self._identifier is None:
            if force or now >= self._next_index_attempt:
                self._load_first_index(now)
            return

        if force or now >= self._next_version_check:
            self._check_index_version(now)

    def _load_model(self, now: float) -> None:
        from shared.encoder import load_encoder

        self._next_model_attempt = now + self.settings.index_check_seconds
        apply_thread_settings(self.settings.threads)

        started = time.perf_counter()
        logger.info("loading the encoder %s", self.settings.model)
        try:
            encoder = load_encoder(self.settings.model, precision=self.settings.precision)
        except PlantIdError as error:
            self._model_failure = _failure_of(error, ModelLoadError)
            logger.error("loading the encoder %s failed: %s", self.settings.model, error.message)
            return
        except Exception as error:  # noqa: BLE001 - any loader bug must become a 503, not a crash loop
            self._model_failure = Failure(ModelLoadError, f"loading the model {self.settings.model} failed: {error}")
            logger.exception("loading the encoder %s failed", self.settings.model)
            return

        self._encoder = encoder
        self._model_failure = None
        self.model_loads += 1
        logger.info(
            "loaded the encoder %s (%s on %s, %d-dim) in %.0f ms",
            encoder.model_id,
            encoder.backend,
            encoder.device,
            encoder.dimension,
            (time.perf_counter() - started) * 1000.0,
        )

    def _load_first_index(self, now: float) -> None:
        self._next_index_attempt = now + self.settings.index_check_seconds
        self._next_version_check = now + self.settings.index_check_seconds

        try:
            self._identifier = self._build_identifier()
        except PlantIdError as error:
            self._index_failure = _failure_of(error, IndexValidationError)
            logger.error("loading the index %s failed: %s", self.settings.index_location, error.message)
            return

        self._index_failure = None
        self._reload_failure = None

    def _check_index_version(self, now: float) -> None:
        from shared.index_store import read_index_version

        self._next_version_check = now + self.settings.index_check_seconds
        current = self._identifier.index.version

        self.version_checks += 1
        try:
            latest = read_index_version(self.settings.index_location)
        except PlantIdError as error:
            self._reload_failure = _failure_of(error, IndexValidationError)
            logger.warning("reading the index version at %s failed, keeping %s: %s", self.settings.index_location, current, error.message)
            return
        except Exception as error:  # noqa: BLE001 - the old index keeps serving
            self._reload_failure = Failure(IndexValidationError, f"reading the index version failed: {error}")
            logger.exception("reading the index version at %s failed, keeping %s", self.settings.index_location, current)
            return

        if latest == current:
            self._reload_failure = None
            return

        # Versions are immutable, so a version that failed validation is not downloaded
        # again. A storage error is retried at the next check.
        if latest == self._invalid_version:
            return

        logger.info("index version changed from %s to %s, reloading", current, latest)
        try:
            identifier = self._build_identifier()
        except PlantIdError as error:
            self._reload_failure = _failure_of(error, IndexValidationError)
            if isinstance(error, IndexValidationError):
                self._invalid_version = latest
            logger.error("reloading the index version %s failed, keeping %s: %s", latest, current, error.message)
            return

        self._identifier = identifier
        self._reload_failure = None
        self._invalid_version = None

    def _build_identifier(self) -> Identifier:
        """Load and validate the index, then build the search backend and the Identifier.

        Raises a PlantIdError subclass for every failure, so the caller only records it.
        """
        from handler.query import Identifier
        from shared.index_store import load_index
        from shared.search import build_search

        encoder = self._encoder
        location = self.settings.index_location

        started = time.perf_counter()
        logger.info("loading the index %s", location)
        try:
            index = load_index(location, expected_dim=encoder.dimension)
            _check_model_matches(index, encoder)
            search = build_search(index.embeddings, index.plant_ids)
            identifier = Identifier(encoder, index, search, views=self.settings.views)
        except PlantIdError:
            raise
        except ValueError as error:
            raise IndexValidationError(f"index {location} cannot be used: {error}") from error
        except Exception as error:  # noqa: BLE001 - reported as a 503 with the reason
            logger.exception("loading the index %s failed", location)
            raise IndexValidationError(f"loading the index {location} failed: {error}") from error

        self.index_loads += 1
        self._search_name = getattr(search, "name", type(search).__name__)
        logger.info(
            "loaded the index %s version %s: %d prototypes, %s search, in %.0f ms",
            location,
            index.version,
            index.count,
            self._search_name,
            (time.perf_counter() - started) * 1000.0,
        )
        return identifier

    def _unavailable_failure(self) -> Failure:
        if self._model_failure is not None:
            return self._model_failure
        if self._index_failure is not None:
            return self._index_failure
        return Failure(IndexValidationError, "the model and the index are not loaded yet")


def _failure_of(error: PlantIdError, fallback: type[PlantIdError]) -> Failure:
    """Keep the error class when it is a 5xx error, else report it as `fallback` (503)."""
    error_type = type(error) if error.status >= 500 else fallback
    return Failure(error_type, error.message)


def _check_model_matches(index: Index, encoder: ImageEncoder) -> None:
    """Reject an index built with another hub model than the encoder's.

    Two CLIP variants can share a dimension (ViT-B/32 and ViT-B/16 both give 512), and
    their embeddings are not comparable. A local folder has no reliable identity (the id
    is the path it was loaded from), so a mismatch that involves a folder is only logged.
    """
    from shared.encoder import is_hub_id

    index_model = index.model_id
    if not index_model or not encoder.model_id or index_model == encoder.model_id:
        return

    if is_hub_id(index_model) and is_hub_id(encoder.model_id):
        raise IndexValidationError(
            f"the index was built with the model {index_model!r}, but this function loads "
            f"{encoder.model_id!r}; set PLANT_ID_MODEL to the index's model or rebuild the index"
        )
    logger.warning(
        "the index records the model %r and the function loads %r; make sure they are the same model",
        index_model,
        encoder.model_id,
    )
