"""Helpers for the integration tests (tests/test_integrations_*.py): tiny MPQ2 / MPQ2R models
built once per test process, llama.cpp servers on 127.0.0.1, and a clear failure when a package
the test needs is missing (setup.sh installs them all)."""
from __future__ import annotations

import importlib
import os
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import e2e_helpers as h
import tiny_llama

SENTENCE = "the teacher helps a green tree at night . my friend calls the old man by the sea ."
VOCABULARY = set(" ".join(tiny_llama.SUBJECTS + tiny_llama.VERBS + tiny_llama.OBJECTS + tiny_llama.ENDINGS).split()) | {"."}

# What setup.sh runs for each package the integration tests import.
INSTALL = {
    "llama_cpp": 'CMAKE_ARGS="-DLLAMA_BUILD=OFF" pip install --no-binary llama-cpp-python llama-cpp-python==0.3.36',
    "openai": "pip install openai",
    "transformers": "pip install transformers",
    "gguf": "pip install ./build/llama.cpp-src/gguf-py",
}


def require(module: str):
    """Imports a module or fails the test (never skips) saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f"{module} is not installed ({e}); install it with: {INSTALL.get(module, 'pip install ' + module)}"
                    f" (bash setup.sh does)", pytrace=False)


_models: dict[tuple, dict] = {}


def tiny_models(tmp_path_factory, tied: bool = False) -> dict:
    """A tiny trained Llama (tests/tiny_llama.py) as a Hugging Face directory, an F32 GGUF
    (llama.cpp's converter) and `llama-quantize --pure` MPQ2 and MPQ2R GGUFs of it, every
    weight matrix in that type (the token embedding too; with tied=False the output too).
    Built once per test process (about 30 s on 2 cores) and shared by the test files."""
    key = (tied,)
    if key not in _models:
        root = tmp_path_factory.mktemp("tiny-tied" if tied else "tiny")
        hf = tiny_llama.build(root / "hf", tied=tied)
        f32 = h.hf_to_gguf_f32(hf, root / "f32.gguf")
        out = {"root": root, "hf": hf, "f32": f32}
        for qtype in ("MPQ2", "MPQ2R"):
            path = root / f"model-{qtype.lower()}.gguf"
            h.run([h.tool("llama-quantize"), "--pure", f32, path, qtype, "2"])
            out[qtype] = path
        text = root / "eval.txt"
        text.write_text(tiny_llama.corpus(300, seed=99))
        out["text"] = text
        _models[key] = out
    return _models[key]


def assert_weights_are(gguf_path: Path, qtype: str) -> None:
    """Every 2-D weight of the file is of qtype (so a test of it tests qtype, not a fallback)."""
    types = h.tensor_types(gguf_path)
    weights = {n: t for n, t in types.items() if not n.endswith("norm.weight")}
    assert weights and all(t == qtype for t in weights.values()), types


def rel_to_spread(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """|got - want| relative to each position's logit spread (std over the vocabulary)."""
    return np.abs(got - want) / want.std(axis=-1, keepdims=True)


def toy_words(text: str) -> bool:
    """Most words of a reply come from the tiny model's toy grammar (the last word may be cut
    off by max_tokens: the toy vocabulary has few multi-letter tokens)."""
    words = text.split()[:-1] if len(text.split()) > 1 else text.split()
    return bool(words) and sum(w in VOCABULARY for w in words) >= 0.7 * len(words)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A llama.cpp server process (llama-server, rpc-server) on 127.0.0.1, its log in a file."""

    def __init__(self, tool: str | Path, args: list, log: Path, port: int | None = None, env: dict | None = None):
        """tool: a build/bin tool's name, or a path to an executable."""
        self.port = port or free_port()
        self.log_path = log
        self._log = open(log, "w")
        exe = tool if isinstance(tool, Path) else h.tool(tool)
        self.proc = subprocess.Popen([str(exe), *map(str, args)], stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_http_ready(self, timeout: float = 60) -> None:
        """Waits until GET /health answers 200 (llama-server: the model is loaded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"server exited ({self.proc.returncode}) before it was ready:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready in {timeout} s:\n{self.log()[-3000:]}")

    def wait_tcp_ready(self, timeout: float = 30) -> None:
        """Waits until the port accepts connections (rpc-server)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"server exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"server not listening in {timeout} s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@contextmanager
def server(tool: str | Path, args: list, log: Path, port: int | None = None, env: dict | None = None):
    s = Server(tool, args, log, port, env)
    try:
        yield s
    finally:
        s.stop()


def env_with(**extra) -> dict:
    env = dict(os.environ)
    env.update({k: str(v) for k, v in extra.items()})
    return env
