"""Settings of the inference function, read once from environment variables.

Every setting has a default except the index location. An invalid value raises
ConfigError naming the variable, so a misconfigured function fails at cold start
with a readable message instead of on the first request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from shared.errors import ConfigError

# The encoder's number formats (shared.encoder.PRECISIONS), repeated here so that reading
# the settings does not import the encoder module.
PRECISIONS = ("auto", "float32", "float16", "bfloat16", "int8")

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
DEFAULT_TOP_K = 5
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000

# Largest top-K that handler.query.Identifier accepts (its MAX_TOP_K).
TOP_K_LIMIT = 50

# Maximum length in bytes of an upload key for /identify. S3 allows 1024 bytes of UTF-8.
MAX_KEY_LENGTH = 1024


@dataclass(frozen=True)
class Settings:
    """Configuration of one process: where the index and model are and the request limits."""

    index_location: str
    model: str = DEFAULT_MODEL
    upload_bucket: str | None = None
    results_prefix: str = "results/"
    upload_prefix: str = "uploads/"
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    top_k_max: int = TOP_K_LIMIT
    views: int = 8
    index_check_seconds: float = 60.0
    threads: int | None = None
    precision: str = "auto"
    cors_origins: tuple[str, ...] = ()
    presign_expires: int = 300

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the PLANT_ID_* variables from `environ` (default: os.environ)."""
        env = os.environ if environ is None else environ

        index_location = _text(env, "PLANT_ID_INDEX", None)
        if index_location is None:
            raise ConfigError(
                "PLANT_ID_INDEX is not set; set it to the index folder or to s3://bucket/prefix"
            )

        return cls(
            index_location=index_location,
            model=_text(env, "PLANT_ID_MODEL", DEFAULT_MODEL) or DEFAULT_MODEL,
            upload_bucket=_text(env, "PLANT_ID_UPLOAD_BUCKET", None),
            results_prefix=_prefix(env, "PLANT_ID_RESULTS_PREFIX", "results/"),
            upload_prefix=_prefix(env, "PLANT_ID_UPLOAD_PREFIX", "uploads/"),
            max_upload_bytes=_integer(env, "PLANT_ID_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES, 1),
            max_pixels=_integer(env, "PLANT_ID_MAX_PIXELS", DEFAULT_MAX_PIXELS, 1),
            top_k_max=_integer(env, "PLANT_ID_TOP_K_MAX", TOP_K_LIMIT, 1, TOP_K_LIMIT),
            views=_integer(env, "PLANT_ID_VIEWS", 8, 1),
            index_check_seconds=_seconds(env, "PLANT_ID_INDEX_CHECK_SECONDS", 60.0),
            threads=_optional_integer(env, "PLANT_ID_THREADS", 1),
            precision=_choice(env, "PLANT_ID_PRECISION", "auto", PRECISIONS),
            cors_origins=_origins(env, "PLANT_ID_CORS_ORIGINS"),
            presign_expires=_integer(env, "PLANT_ID_PRESIGN_EXPIRES", 300, 1, 7 * 24 * 3600),
        )

    @property
    def default_top_k(self) -> int:
        return min(DEFAULT_TOP_K, self.top_k_max)


def _text(env: Mapping[str, str], name: str, default: str | None) -> str | None:
    value = env.get(name)
    if value is None or not value.strip():
        return default
    return value.strip()


def _prefix(env: Mapping[str, str], name: str, default: str) -> str:
    value = _text(env, name, default) or default
    if value.startswith("/") or ".." in value or "\\" in value:
        raise ConfigError(f"{name}={value!r} is invalid; use a relative S3 prefix such as {default!r}")
    if not value.endswith("/"):
        value += "/"
    return value


def _integer(
    env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int | None = None
) -> int:
    raw = _text(env, name, None)
    if raw is None:
        return default

    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None

    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and at most {maximum}"
        raise ConfigError(f"{name}={value} is out of range; it must be at least {minimum}{upper}")
    return value


def _optional_integer(env: Mapping[str, str], name: str, minimum: int) -> int | None:
    if _text(env, name, None) is None:
        return None
    return _integer(env, name, minimum, minimum)


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _text(env, name, None)
    if raw is None:
        return default

    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None

    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"{name}={raw!r} is invalid; use a finite number of seconds >= 0")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _text(env, name, default) or default
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is invalid; use one of {', '.join(choices)}")
    return value


def _origins(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = _text(env, name, None)
    if raw is None:
        return ()

    origins = tuple(item.strip().rstrip("/") for item in raw.split(",") if item.strip())
    for origin in origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ConfigError(
                f"{name} contains {origin!r}; list origins such as https://example.org, separated by commas"
            )
    return origins
