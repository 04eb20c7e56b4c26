"""Loading the encoder named by an indexer or evaluation --model option.

Besides what shared.encoder.load_encoder accepts, these commands take the development-only
proxy encoders of bench/proxy_encoder.py, named "proxy:NAME". The service never imports
that module, so it never accepts a proxy name.
"""

from __future__ import annotations

from shared.encoder import ImageEncoder, load_encoder

PROXY_PREFIX = "proxy:"


def load_model(model: str, device: str = "auto", precision: str = "auto") -> ImageEncoder:
    """Load the encoder `model` (hub id, local folder, or "proxy:efficientnet-lite0").

    `precision` applies to CLIP encoders (shared.encoder.PRECISIONS); proxy encoders ignore it.
    """
    if model.startswith(PROXY_PREFIX):
        # Importing the module registers the "proxy:" prefix with load_encoder.
        import bench.proxy_encoder  # noqa: F401

    return load_encoder(model, device=device, precision=precision)


def is_proxy_model(model: str | None) -> bool:
    """Return True when `model` names a development-only proxy encoder."""
    return bool(model) and str(model).startswith(PROXY_PREFIX)
