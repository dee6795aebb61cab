"""llama-cpp-python 0.3.36 (the PyPI sdist whose vendor/llama.cpp is our pin), installed without
its own llama.cpp build (CMAKE_ARGS=-DLLAMA_BUILD=OFF) and pointed at the patched libraries in
build/bin with LLAMA_CPP_LIB_PATH: `Llama("model-mpq2.gguf")` on a tiny MPQ2 model, against our
cffi bindings (docs/INTEGRATIONS.md)."""
from __future__ import annotations

import os

import numpy as np
import pytest

import integration_helpers as ih
from llama_mpq2._libs import lib_dir

pytestmark = pytest.mark.slow

N_CTX = 128


@pytest.fixture(scope="module")
def llama_cpp():
    # must be set before llama_cpp is first imported: it opens libllama at import
    os.environ.setdefault("LLAMA_CPP_LIB_PATH", str(lib_dir()))
    mod = ih.require("llama_cpp")
    assert mod.__version__ == "0.3.36", mod.__version__
    loaded = os.path.realpath(mod.llama_cpp._lib._name)
    assert loaded == os.path.realpath(lib_dir() / "libllama.so"), \
        f"llama_cpp opened {loaded}, not the patched build/bin/libllama.so (set LLAMA_CPP_LIB_PATH before importing it)"
    return mod


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    m = ih.tiny_models(tmp_path_factory)
    ih.assert_weights_are(m["MPQ2"], "MPQ2")
    return m


@pytest.fixture(scope="module")
def llm(llama_cpp, model):
    # flash_attn=True: llama.cpp's own default on CPU ("auto"), which our bindings keep;
    # llama-cpp-python turns it off unless asked, and then the logits differ by up to 4% of
    # their spread (another attention kernel), which would hide a real difference
    llm = llama_cpp.Llama(str(model["MPQ2"]), n_ctx=N_CTX, n_threads=2, n_batch=N_CTX, logits_all=True,
                          flash_attn=True, seed=0, verbose=False)
    yield llm
    llm.close()


def test_loads_the_mpq2_file_through_the_patched_library(llama_cpp, llm):
    # the file type and description come from our patch (a stock libllama refuses the file)
    assert llama_cpp.llama_model_ftype(llm._model.model) == 96      # LLAMA_FTYPE_MOSTLY_MPQ2
    buf = bytes(256)
    n = llama_cpp.llama_model_desc(llm._model.model, buf, len(buf))
    assert b"MPQ2" in buf[:n], buf[:n]


def test_logits_equal_our_bindings(llm, model):
    from llama_mpq2.model import Model

    with Model(model["MPQ2"], n_ctx=N_CTX, n_threads=2, n_batch=N_CTX) as m:
        tokens = m.tokenize(ih.SENTENCE)
        want = m.eval(tokens, all_logits=True)
    assert llm.tokenize(ih.SENTENCE.encode()) == tokens
    llm.reset()
    llm.eval(tokens)
    got = np.asarray(llm.scores[:len(tokens)], dtype=np.float32)
    assert got.shape == want.shape, (got.shape, want.shape)
    # the same library, weights, tokens, batch and attention kernel: the same floats, bit for bit
    assert np.array_equal(got, want), ih.rel_to_spread(got, want).max()


def test_greedy_generation_matches_our_bindings(llm, model):
    from llama_mpq2.model import Model

    out = llm.create_completion("the cat", max_tokens=16, temperature=0.0, seed=0)
    text = out["choices"][0]["text"]
    with Model(model["MPQ2"], n_ctx=N_CTX, n_threads=2) as m:
        want = "".join(m.generate("the cat", max_tokens=16, temperature=0.0))
    assert text == want, (text, want)
    # the trained toy grammar comes back: the 2-bit weights still work
    assert len(text.split()) >= 4 and ih.toy_words(text), text


def test_create_chat_completion(llm):
    resp = llm.create_chat_completion(messages=[{"role": "user", "content": "the old man"}],
                                      max_tokens=12, temperature=0.0)
    choice = resp["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert ih.toy_words(choice["message"]["content"]), choice
    assert choice["finish_reason"] in ("length", "stop"), choice
    assert resp["usage"]["completion_tokens"] > 0 and resp["usage"]["prompt_tokens"] > 0, resp["usage"]
    # streamed, OpenAI-style chunks: the same greedy reply
    chunks = list(llm.create_chat_completion(messages=[{"role": "user", "content": "the old man"}],
                                             max_tokens=12, temperature=0.0, stream=True))
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert streamed == choice["message"]["content"], (streamed, choice["message"]["content"])
