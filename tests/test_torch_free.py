"""With an ONNX model folder, the query path never imports torch, torchvision or transformers.

Each check runs in a fresh interpreter, because this test process has imported torch already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shared.onnx_export import export_encoder
from tests.handler_support import tiny_index

REPO_ROOT = Path(__file__).resolve().parent.parent

HEAVY_MODULES = ("torch", "torchvision", "transformers")

# Printed as the last line by every child: the heavy modules it imported.
REPORT = f"""
import json, sys
print(json.dumps(sorted(name for name in {HEAVY_MODULES!r} if name in sys.modules)))
"""


@pytest.fixture(scope="module")
def onnx_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_encoder(str(tiny_model_dir), tmp_path_factory.mktemp("torch-free-onnx"))


@pytest.fixture(scope="module")
def onnx_index(onnx_dir: Path, sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_index(onnx_dir, sample_dir, tmp_path_factory.mktemp("torch-free-index"))


def run_child(code: str) -> tuple[list[str], str]:
    """Run code in a fresh interpreter at the repository root; return (heavy modules, stdout)."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("PLANT_ID_")}
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code) + REPORT],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.strip().splitlines()
    return json.loads(lines[-1]), "\n".join(lines[:-1])


def test_http_path_torch_free(onnx_dir, onnx_index, sample_dir):
    photos = sorted((sample_dir / "queries").glob("*.jpg"))[:2]
    modules, output = run_child(
        f"""
        from starlette.testclient import TestClient
        from handler.app import create_app
        from handler.config import Settings
        import handler.lambda_entry

        settings = Settings(index_location={str(onnx_index)!r}, model={str(onnx_dir)!r})
        with TestClient(create_app(settings)) as client:
            files = [("file", (path.name, path.read_bytes(), "image/jpeg")) for path in map(__import__("pathlib").Path, {list(map(str, photos))!r})]
            response = client.post("/identify", files=files)
        print(response.status_code, response.json()["photos"])
        """
    )
    assert output == "200 2"
    assert modules == []


def test_cli_path_torch_free(onnx_dir, onnx_index, sample_dir):
    photos = sorted((sample_dir / "queries").glob("*.jpg"))[:2]
    modules, output = run_child(
        f"""
        from handler.cli import main
        code = main(["identify", "--index", {str(onnx_index)!r}, "--model", {str(onnx_dir)!r}, "--json",
                     "--combine", *{list(map(str, photos))!r}])
        print("exit", code)
        """
    )
    assert output.splitlines()[-1] == "exit 0"
    assert modules == []
