"""`python -m infra.local_stack` as a user runs it: it serves the page and the API, and Ctrl-C or SIGTERM stops every process."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 30


class StackProcess:
    """The local stack in a subprocess, with its output read by a thread so the pipe never fills."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "infra.local_stack", *args],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)

    def wait_for_line(self, pattern: str, timeout_s: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    break
                continue
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no line matching {pattern!r}; output:\n{''.join(self.output)[-4000:]}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def exit_code(self, timeout_s: float) -> tuple[int, str]:
        """Wait for the process to exit; return its exit code and its whole output."""
        code = self.process.wait(timeout=timeout_s)
        self._reader.join(timeout=10)
        return code, "".join(self.output)


def descendants(pid: int) -> set[int]:
    """Return the ids of every running descendant process of `pid`, read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in parentheses may contain spaces; the fields after it do not.
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])

    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, child_parent in parents.items() if child_parent == parent]
        found.update(children)
        frontier.extend(children)
    return found


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def stack_process(tiny_model_dir):
    stack = StackProcess("--model", str(tiny_model_dir), "--augmentations", "0", "--web-port", "0", "--api-port", "0")
    yield stack
    stack.kill()


def test_sigint_stops_everything(stack_process):
    web_url = stack_process.wait_for_line(r"Open (http://\S+) in a browser", START_TIMEOUT_S).group(1)
    children = descendants(stack_process.process.pid)
    page = httpx.get(web_url, timeout=10)
    config = httpx.get(f"{web_url}config.js", timeout=10)
    api_url = re.search(r'"apiBaseUrl": "([^"]+)"', config.text).group(1)
    health = httpx.get(f"{api_url}/health", timeout=10)

    stack_process.process.send_signal(signal.SIGINT)
    code, output = stack_process.exit_code(STOP_TIMEOUT_S)

    assert page.status_code == 200
    assert "Plant identification" in page.text
    assert health.status_code == 200
    assert children, "the moto server should run as a child process"
    assert code == 0, output[-4000:]
    assert [pid for pid in children if running(pid)] == []


def test_sigterm_during_start(stack_process):
    # SIGTERM as soon as moto runs, while the index is being built: moto must still stop.
    stack_process.wait_for_line(r"moto S3 server started", START_TIMEOUT_S)
    children = descendants(stack_process.process.pid)

    stack_process.process.send_signal(signal.SIGTERM)
    code, output = stack_process.exit_code(STOP_TIMEOUT_S)

    assert children, "the moto server should run as a child process"
    assert code == 130, output[-4000:]
    assert [pid for pid in children if running(pid)] == []


def test_model_error_names_fix(tmp_path):
    stack = StackProcess("--model", str(tmp_path / "missing-model"), "--web-port", "0", "--api-port", "0")
    try:
        code, output = stack.exit_code(STOP_TIMEOUT_S)
    finally:
        stack.kill()

    assert code == 2
    assert "MODEL=DIR" in output
    assert "tests/tiny_model.py DIR" in output


def test_ports_in_use_reported(tiny_model_dir):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        stack = StackProcess("--model", str(tiny_model_dir), "--augmentations", "0", "--web-port", "0", "--api-port", str(port))
        try:
            code, output = stack.exit_code(START_TIMEOUT_S)
        finally:
            stack.kill()

    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in output
