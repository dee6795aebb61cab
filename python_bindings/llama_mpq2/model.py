"""Model: a GGUF loaded by the patched libllama (MPQ2 included)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._llama import load

ffi, lib = load()
_quiet = True


@ffi.def_extern()
def _mpq2_log_cb(level, text, user_data):  # llama.cpp's log goes to stderr only on request
    if not _quiet:
        os.write(2, ffi.string(text))


lib.llama_log_set(lib._mpq2_log_cb, ffi.NULL)
lib.llama_backend_init()


class LlamaError(RuntimeError):
    """A llama.cpp call failed."""


def set_verbose(verbose: bool) -> None:
    global _quiet
    _quiet = not verbose


class Model:
    """A GGUF model with one context. Use as a context manager, or call close()."""

    def __init__(self, path: str | os.PathLike, n_ctx: int = 512, n_threads: int | None = None, n_batch: int = 512):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such model file: {path}")
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self._model = lib.llama_model_load_from_file(str(path).encode(), mparams)
        if self._model == ffi.NULL:
            raise LlamaError(f"llama.cpp could not load {path} (run with set_verbose(True) for its log)")
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = min(n_batch, n_ctx)
        cparams.n_ubatch = min(n_batch, n_ctx)
        threads = n_threads or max(1, os.cpu_count() or 1)
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        self._ctx = lib.llama_init_from_model(self._model, cparams)
        if self._ctx == ffi.NULL:
            lib.llama_model_free(self._model)
            self._model = ffi.NULL
            raise LlamaError(f"llama.cpp could not create a context of {n_ctx} tokens for {path}")
        self.path = path
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab = lib.llama_vocab_n_tokens(self._vocab)
        self.n_ctx = lib.llama_n_ctx(self._ctx)
        self.n_batch = cparams.n_batch

    # lifetime
    def close(self) -> None:
        if getattr(self, "_ctx", ffi.NULL) != ffi.NULL:
            lib.llama_free(self._ctx)
            self._ctx = ffi.NULL
        if getattr(self, "_model", ffi.NULL) != ffi.NULL:
            lib.llama_model_free(self._model)
            self._model = ffi.NULL

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._ctx == ffi.NULL:
            raise LlamaError("the model is closed")

    # tokens
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        self._check_open()
        data = text.encode()
        n_max = len(data) + 8
        buf = ffi.new("llama_token[]", n_max)
        n = lib.llama_tokenize(self._vocab, data, len(data), buf, n_max, add_special, parse_special)
        if n < 0:
            buf = ffi.new("llama_token[]", -n)
            n = lib.llama_tokenize(self._vocab, data, len(data), buf, -n, add_special, parse_special)
        return list(buf[0:n])

    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        buf = ffi.new("char[]", 64)
        n = lib.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ffi.new("char[]", -n)
            n = lib.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
        return ffi.unpack(buf, n)

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.token_to_piece(t) for t in tokens).decode("utf-8", errors="replace")

    # evaluation
    def reset(self) -> None:
        self._check_open()
        lib.llama_memory_clear(lib.llama_get_memory(self._ctx), True)

    def eval(self, tokens: list[int], start_pos: int = 0, all_logits: bool = False) -> np.ndarray:
        """Decodes tokens at positions start_pos...; returns the logits of every token
        (all_logits) or of the last one, as float32 (n, n_vocab) or (n_vocab,)."""
        self._check_open()
        if start_pos + len(tokens) > self.n_ctx:
            raise LlamaError(f"{start_pos + len(tokens)} tokens exceed the context of {self.n_ctx}")
        if not tokens:
            raise ValueError("no tokens to evaluate")
        rows = []
        for b0 in range(0, len(tokens), self.n_batch):
            chunk = tokens[b0:b0 + self.n_batch]
            batch = lib.llama_batch_init(len(chunk), 0, 1)
            try:
                batch.n_tokens = len(chunk)
                for i, tok in enumerate(chunk):
                    batch.token[i] = tok
                    batch.pos[i] = start_pos + b0 + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = 1 if all_logits or b0 + i == len(tokens) - 1 else 0
                rc = lib.llama_decode(self._ctx, batch)
                if rc != 0:
                    raise LlamaError(f"llama_decode failed with code {rc}")
                for i in range(len(chunk)):
                    if batch.logits[i]:
                        ptr = lib.llama_get_logits_ith(self._ctx, i)
                        rows.append(np.frombuffer(ffi.buffer(ptr, 4 * self.n_vocab), np.float32).copy())
            finally:
                lib.llama_batch_free(batch)
        self.last_logits = rows[-1]
        return np.stack(rows) if all_logits else rows[-1]
