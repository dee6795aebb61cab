"""llama-server serving a tiny MPQ2 model on 127.0.0.1, driven by the `openai` client from PyPI:
streamed chat completions, two concurrent requests (--parallel 2), a request that overflows the
context (a clear error; the server keeps serving), and a bad model path (the server refuses to
start and says why). docs/INTEGRATIONS.md has the commands."""
from __future__ import annotations

import re
import subprocess
import threading
import time

import pytest

import e2e_helpers as h
import integration_helpers as ih

pytestmark = pytest.mark.slow

N_CTX = 256          # the whole KV cache; --parallel 2 splits it into two slots of 128 tokens
MESSAGES = [{"role": "user", "content": "the old man"}]


@pytest.fixture(scope="module")
def openai():
    return ih.require("openai")


@pytest.fixture(scope="module")
def server(tmp_path_factory, openai):
    m = ih.tiny_models(tmp_path_factory)
    ih.assert_weights_are(m["MPQ2"], "MPQ2")
    port = ih.free_port()
    args = ["-m", m["MPQ2"], "--host", "127.0.0.1", "--port", port, "-c", N_CTX, "--parallel", 2,
            "-t", 2, "--no-webui"]
    with ih.server("llama-server", args, m["root"] / "llama-server.log", port) as s:
        s.wait_http_ready(timeout=120)
        s.client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=60)
        yield s


def stream_reply(client, max_tokens=24, messages=MESSAGES, times=None):
    stream = client.chat.completions.create(model="mpq2", messages=messages, max_tokens=max_tokens,
                                            temperature=0.0, stream=True)
    parts, finish = [], None
    for chunk in stream:
        if times is not None:
            times.append(time.monotonic())
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        if delta and delta.content:
            parts.append(delta.content)
        finish = chunk.choices[0].finish_reason or finish
    return "".join(parts), finish


def test_streamed_chat_completion(server):
    text, finish = stream_reply(server.client)
    assert ih.toy_words(text), text
    assert finish == "length", finish
    # the same greedy reply, not streamed
    resp = server.client.chat.completions.create(model="mpq2", messages=MESSAGES, max_tokens=24, temperature=0.0)
    assert resp.choices[0].message.content == text, (resp.choices[0].message.content, text)
    assert resp.usage.completion_tokens == 24, resp.usage


def test_two_concurrent_streams(server):
    start = threading.Barrier(2)
    results, times = [None, None], [[], []]

    def worker(i):
        start.wait()
        results[i] = stream_reply(server.client, max_tokens=96, times=times[i])   # most of a 128-token slot: a longer overlap

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(r is not None for r in results), results
    for text, finish in results:
        assert ih.toy_words(text) and finish == "length", results
    # served at the same time, not one after the other: each stream's first token came
    # before the other's last, and both slots of --parallel 2 took a task
    assert times[0][0] < times[1][-1] and times[1][0] < times[0][-1], (times[0][:1], times[1][:1])
    slots = set(re.findall(r"slot\s+\w+:\s+id\s+(\d+)\s+\|\s+task", server.log()))
    assert {"0", "1"} <= slots, slots


def test_context_overflow_is_a_clear_error_and_the_server_survives(server, openai):
    long_prompt = " ".join(["the farmer follows the river every day ."] * 40)   # ~300 tokens > 128 per slot
    with pytest.raises(openai.BadRequestError) as err:
        server.client.chat.completions.create(model="mpq2", messages=[{"role": "user", "content": long_prompt}],
                                              max_tokens=8, temperature=0.0)
    assert err.value.status_code == 400
    message = str(err.value)
    assert "context" in message and "exceed" in message, message
    assert server.alive()
    text, _ = stream_reply(server.client, max_tokens=8)     # still serving
    assert ih.toy_words(text), text


def test_bad_model_path_refuses_to_start(tmp_path):
    missing = tmp_path / "no-such-model-mpq2.gguf"
    port = ih.free_port()
    proc = subprocess.run([str(h.tool("llama-server")), "-m", str(missing), "--host", "127.0.0.1", "--port", str(port)],
                          capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    assert f"failed to open GGUF file '{missing}' (No such file or directory)" in out, out[-2000:]
    assert "exiting due to model loading error" in out, out[-2000:]
    # nothing listens on the port
    import socket
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
