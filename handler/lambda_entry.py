"""AWS Lambda entry point: `handler.lambda_entry.handler(event, context)`.

The application, the model and the index belong to the execution environment, not to
one invocation. On Lambda (AWS_LAMBDA_FUNCTION_NAME is set) they load while this module
is imported, during the init phase. Elsewhere they load on the first invocation. Every
later invocation reuses them (see handler.state).
"""

from __future__ import annotations

import os

# Lambda's file system is read-only except /tmp, and the Hugging Face libraries write to
# $HOME/.cache when imported. These defaults must be set before anything imports them.
os.environ.setdefault("HF_HOME", "/tmp/hf")
os.environ.setdefault("HF_HUB_CACHE", "/tmp/hf/hub")

import logging  # noqa: E402
from typing import Any  # noqa: E402

from fastapi import FastAPI  # noqa: E402

from handler.app import get_app  # noqa: E402
from handler.sources import ApiGatewaySource, EventRouter, S3UploadSource  # noqa: E402

logger = logging.getLogger(__name__)

_router: EventRouter | None = None
_app: FastAPI | None = None


def configure(app: FastAPI | None = None) -> EventRouter:
    """Build the event router around `app` (default: the application built from the environment).

    Tests call this to point the entry point at an application with their own settings.
    """
    global _router, _app

    app = app if app is not None else get_app()
    settings = app.state.settings
    state = app.state.service
    _app = app
    _router = EventRouter([ApiGatewaySource(app), S3UploadSource(settings, state)])
    return _router


def current_app() -> FastAPI | None:
    """Return the application that the entry point serves, or None before the first configure."""
    return _app


def handler(event: Any, context: Any) -> dict[str, Any]:
    """Handle one Lambda invocation: API Gateway request, S3 notification or anything else (400)."""
    router = _router if _router is not None else configure()
    request_id = getattr(context, "aws_request_id", None)
    logger.debug("invocation %s", request_id)
    return router.route(event, context)


def _init_on_lambda() -> None:
    """Build the application and load the model and the index during Lambda's init phase.

    A load failure is recorded by the state, and requests get 503 until a retry succeeds.
    A configuration error is raised, so the init phase fails with the variable's name.
    """
    if not os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        return

    # The Python runtime's root logger starts at WARNING. AWS_LAMBDA_LOG_LEVEL is set by
    # the function's advanced logging controls when they are used.
    logging.getLogger().setLevel(os.environ.get("AWS_LAMBDA_LOG_LEVEL", "INFO").upper())
    configure()
    assert _app is not None
    _app.state.service.warm_up()


_init_on_lambda()
