"""Typed errors shared by the indexer, the command line and the inference function.

Each error carries the HTTP status that the inference function responds with and a
short machine-readable code, so every entry point reports the same problem the same way.
"""

from __future__ import annotations


class PlantIdError(Exception):
    """Base class of every error this project raises on purpose."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}


# Image decoding (HTTP 400, 413, 415).


class ImageError(PlantIdError):
    """The bytes could not be turned into an upright RGB image."""


class EmptyImageError(ImageError):
    code = "empty_file"


class NotAnImageError(ImageError):
    code = "not_an_image"


class CorruptImageError(ImageError):
    """The format was recognised, but the data is truncated or damaged."""

    code = "corrupt_image"


class UnsupportedFormatError(ImageError):
    status = 415
    code = "unsupported_format"


class ImageTooSmallError(ImageError):
    code = "image_too_small"


class ExtremeAspectRatioError(ImageError):
    code = "extreme_aspect_ratio"


class ImageTooLargeError(ImageError):
    """Too many bytes or too many pixels."""

    status = 413
    code = "image_too_large"


# Index, model and configuration problems (HTTP 503 when they stop the service).


class IndexValidationError(PlantIdError):
    status = 503
    code = "index_invalid"


class IndexNotFoundError(IndexValidationError):
    code = "index_not_found"


class ModelLoadError(PlantIdError):
    """The CLIP model or its processor could not be loaded."""

    status = 503
    code = "model_unavailable"


class StorageError(PlantIdError):
    """A local or S3 read or write failed."""

    status = 503
    code = "storage_error"


class ConfigError(PlantIdError):
    """A setting from the command line or the environment is invalid."""

    code = "invalid_config"
