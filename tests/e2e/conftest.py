"""Starts `tq serve` on the default model on a free loopback port for the end-to-end tests.

Environment:
  TQ_BIN            the tq binary (default: <repo>/build/tq)
  TQ_MODEL_DIR      where the default model lives (as for tq itself)
  TQ_REQUIRE_DATA=1 fail instead of skipping when the binary or the model is missing (CI)
"""
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _model_path() -> Path:
    if os.environ.get("TQ_MODEL_DIR"):
        return Path(os.environ["TQ_MODEL_DIR"]) / MODEL_FILE
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(cache) / "tq" / "models" / MODEL_FILE


def _require(path: Path, what: str):
    if path.exists():
        return
    if os.environ.get("TQ_REQUIRE_DATA") == "1":
        pytest.fail(f"required {what} missing: {path}")
    pytest.skip(f"{what} not found: {path}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `tq serve` process; stop() sends SIGTERM and returns the exit code."""

    def __init__(self, *args: str):
        binary = Path(os.environ.get("TQ_BIN", REPO / "build" / "tq"))
        _require(binary, "tq binary")
        _require(_model_path(), "default model")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"tq-serve-{self.port}.log", "w+")
        self.proc = subprocess.Popen(
            [str(binary), "serve", "--port", str(self.port), *args],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tq serve exited with {self.proc.returncode}: {self.output()}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("tq serve did not become healthy: " + self.output())

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def get_json(self, path: str) -> dict:
        with urllib.request.urlopen(self.base + path, timeout=30) as r:
            return json.loads(r.read())

    def get_text(self, path: str) -> str:
        with urllib.request.urlopen(self.base + path, timeout=30) as r:
            return r.read().decode()

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


# Compressed keys and values, several sessions, a context small enough to overflow in a test.
SERVE_ARGS = ["-ctk", "tq4", "-ctv", "tq3", "--ctx", "1024", "--max-sessions", "4",
              "--threads", "2", "--shutdown-timeout", "5"]


@pytest.fixture(scope="session")
def server():
    s = Server(*SERVE_ARGS)
    yield s
    assert s.stop() == 0, s.output()


@pytest.fixture(scope="session")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0,
                         timeout=120)
