"""Model: a GGUF loaded by the patched libllama (MPQ2 included), with one context.

Thread safety: a Model (its llama_context, KV cache and batch) must be used by one thread at a
time; use one Model per thread. Concurrent calls on the same Model raise LlamaError instead of
corrupting the context. Different Models in different threads are fine.
"""
from __future__ import annotations

import codecs
import collections
import os
import threading
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ._gguf_guard import shape_that_aborts
from ._llama import load

ffi, lib = load()

_verbose = False
_log = collections.deque(maxlen=64)          # recent (level, text) of llama.cpp's warnings/errors
_last_level = 0
_WARN, _ERROR, _CONT = 3, 4, 5


@ffi.def_extern()
def _mpq2_log_cb(level, text, user_data):
    """llama.cpp's log: kept (warnings and errors) for exception messages, printed on request."""
    global _last_level
    try:
        s = ffi.string(text).decode("utf-8", errors="replace")
        if level != _CONT:
            _last_level = level
        if _last_level >= _WARN:
            _log.append(s)
        if _verbose:
            os.write(2, s.encode())
    except Exception:  # never let an exception propagate into C
        pass


lib.llama_log_set(lib._mpq2_log_cb, ffi.NULL)
lib.llama_backend_init()

DEFAULT_SEED = 0xFFFFFFFF     # LLAMA_DEFAULT_SEED: llama.cpp picks a random seed


class LlamaError(RuntimeError):
    """A llama.cpp call failed; the message carries llama.cpp's own error lines."""


class ModelLoadError(LlamaError):
    """llama.cpp refused the file (not a GGUF, truncated, unknown tensor type, ...)."""


class ContextOverflowError(LlamaError):
    """The tokens do not fit in the context window."""


def set_verbose(verbose: bool) -> None:
    """Print llama.cpp's log to stderr (off by default)."""
    global _verbose
    _verbose = bool(verbose)


def _log_mark() -> int:
    _log.clear()
    return 0


def _log_tail(n: int = 6) -> str:
    lines = "".join(_log).strip().splitlines()
    return "\n".join(lines[-n:])


def builtin_templates() -> list[str]:
    """Names of the chat templates llama_chat_apply_template knows (chatml, llama3, ...)."""
    n = lib.llama_chat_builtin_templates(ffi.NULL, 0)
    arr = ffi.new("const char *[]", n)
    lib.llama_chat_builtin_templates(arr, n)
    return [ffi.string(arr[i]).decode() for i in range(n)]


class Model:
    """A GGUF model with one context. Use as a context manager, or call close().

    n_ctx: context window in tokens; n_threads: CPU threads (default: all cores);
    n_batch: tokens per llama_decode call; check_tensors: have llama.cpp validate every tensor's
    data (MPQ2 blocks included) while loading; repack: let llama.cpp lay weights out for its
    faster CPU kernels where it has them (MPQ2: 16 interleaved rows with AVX-512; False is the
    tools' --no-repack).
    """

    def __init__(self, path: str | os.PathLike, n_ctx: int = 512, n_threads: int | None = None,
                 n_batch: int = 512, check_tensors: bool = False, repack: bool = True):
        self._ctx = ffi.NULL
        self._model = ffi.NULL
        self._batch = None
        self._lock = threading.Lock()
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no such model file: {path}")
        if not path.is_file():
            raise ModelLoadError(f"not a file: {path}")
        if n_ctx < 1 or n_batch < 1:
            raise ValueError("n_ctx and n_batch must be positive")
        bad_shape = shape_that_aborts(path)     # the one malformed table that aborts llama.cpp
        if bad_shape:
            raise ModelLoadError(f"llama.cpp could not load {path}: {bad_shape}")
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = 0
        mparams.check_tensors = bool(check_tensors)
        mparams.use_extra_bufts = bool(repack)   # llama.cpp's default; False: as --no-repack
        _log_mark()
        self._model = lib.llama_model_load_from_file(str(path).encode(), mparams)
        if self._model == ffi.NULL:
            raise ModelLoadError(f"llama.cpp could not load {path}: {_log_tail() or 'no reason given'}")
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = min(n_batch, n_ctx)
        cparams.n_ubatch = min(n_batch, n_ctx)
        cparams.n_seq_max = 1
        threads = n_threads or max(1, os.cpu_count() or 1)
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.no_perf = True
        _log_mark()
        self._ctx = lib.llama_init_from_model(self._model, cparams)
        if self._ctx == ffi.NULL:
            lib.llama_model_free(self._model)
            self._model = ffi.NULL
            raise LlamaError(f"llama.cpp could not create a context of {n_ctx} tokens for {path}: {_log_tail()}")
        self.path = path
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab = lib.llama_vocab_n_tokens(self._vocab)
        # llama.cpp may round the window up (to a multiple of 256); we hold to the one asked for
        self.n_ctx = min(n_ctx, int(lib.llama_n_ctx(self._ctx)))
        self.n_batch = int(lib.llama_n_batch(self._ctx))
        self.n_threads = threads
        self._batch = lib.llama_batch_init(self.n_batch, 0, 1)
        self._past: list[int] = []          # the tokens in the KV cache (sequence 0), in order
        self._last_logits: np.ndarray | None = None
        self._generation = 0
        self.finish_reason: str | None = None   # of the last generate/chat: "stop", "eog", "length"

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Frees the batch, the context and the model (idempotent)."""
        if lib is None:       # interpreter shutdown
            return
        if getattr(self, "_batch", None) is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", ffi.NULL) != ffi.NULL:
            lib.llama_free(self._ctx)
            self._ctx = ffi.NULL
        if getattr(self, "_model", ffi.NULL) != ffi.NULL:
            lib.llama_model_free(self._model)
            self._model = ffi.NULL

    @property
    def closed(self) -> bool:
        return self._ctx == ffi.NULL

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def _check_open(self) -> None:
        if self._ctx == ffi.NULL:
            raise LlamaError("the model is closed")

    # ------------------------------------------------------------------ metadata
    def _str_out(self, fn, *args, size: int = 256) -> str:
        buf = ffi.new("char[]", size)
        n = fn(*args, buf, size)
        if n < 0:
            return ""
        if n >= size:
            buf = ffi.new("char[]", n + 1)
            n = fn(*args, buf, n + 1)
        return ffi.string(buf).decode("utf-8", errors="replace")

    def metadata(self) -> dict[str, str]:
        """The GGUF key/value metadata as llama.cpp reads it (values as strings)."""
        self._check_open()
        out = {}
        for i in range(lib.llama_model_meta_count(self._model)):
            key = self._str_out(lib.llama_model_meta_key_by_index, self._model, i)
            out[key] = self._str_out(lib.llama_model_meta_val_str_by_index, self._model, i, size=4096)
        return out

    @property
    def description(self) -> str:
        self._check_open()
        return self._str_out(lib.llama_model_desc, self._model)

    @property
    def n_params(self) -> int:
        self._check_open()
        return int(lib.llama_model_n_params(self._model))

    @property
    def size(self) -> int:
        """Bytes of all tensors."""
        self._check_open()
        return int(lib.llama_model_size(self._model))

    @property
    def n_ctx_train(self) -> int:
        self._check_open()
        return int(lib.llama_model_n_ctx_train(self._model))

    @property
    def bos(self) -> int:
        return int(lib.llama_vocab_bos(self._vocab))

    @property
    def eos(self) -> int:
        return int(lib.llama_vocab_eos(self._vocab))

    def is_eog(self, token: int) -> bool:
        return bool(lib.llama_vocab_is_eog(self._vocab, token))

    # ------------------------------------------------------------------ tokens
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Text to token ids; add_special adds BOS (if the model wants it); parse_special turns
        special-token text such as "<s>" into those tokens."""
        self._check_open()
        data = text.encode("utf-8")
        n_max = len(data) + 8
        buf = ffi.new("llama_token[]", n_max)
        n = lib.llama_tokenize(self._vocab, data, len(data), buf, n_max, add_special, parse_special)
        if n < 0:
            if n == -(2 ** 31):
                raise LlamaError("tokenization overflowed int32")
            buf = ffi.new("llama_token[]", -n)
            n = lib.llama_tokenize(self._vocab, data, len(data), buf, -n, add_special, parse_special)
        if n < 0:
            raise LlamaError(f"llama_tokenize failed ({n})")
        return list(buf[0:n])

    def _check_tokens(self, tokens: Sequence[int]) -> None:
        bad = [t for t in tokens if not 0 <= int(t) < self.n_vocab]
        if bad:
            raise ValueError(f"token ids outside the vocabulary of {self.n_vocab}: {bad[:5]}")

    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token (a piece may be part of a UTF-8 character)."""
        self._check_open()
        self._check_tokens([token])
        buf = ffi.new("char[]", 64)
        n = lib.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ffi.new("char[]", -n)
            n = lib.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
        return ffi.unpack(buf, n)

    def detokenize(self, tokens: Sequence[int], remove_special: bool = True, unparse_special: bool = False) -> str:
        """Token ids to text (llama_detokenize: BOS/EOS dropped unless remove_special=False)."""
        self._check_open()
        self._check_tokens(tokens)
        toks = ffi.new("llama_token[]", list(tokens) or [0])
        size = max(64, 16 * len(tokens))
        buf = ffi.new("char[]", size)
        n = lib.llama_detokenize(self._vocab, toks, len(tokens), buf, size, remove_special, unparse_special)
        if n < 0:
            size = -n
            buf = ffi.new("char[]", size)
            n = lib.llama_detokenize(self._vocab, toks, len(tokens), buf, size, remove_special, unparse_special)
        if n < 0:
            raise LlamaError(f"llama_detokenize failed ({n})")
        return ffi.unpack(buf, n).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ evaluation
    def reset(self) -> None:
        """Empties the KV cache."""
        self._check_open()
        lib.llama_memory_clear(lib.llama_get_memory(self._ctx), True)
        self._past = []

    @property
    def last_logits(self) -> np.ndarray | None:
        """float32 (n_vocab,) logits of the last token decoded (None before any decode)."""
        return None if self._last_logits is None else self._last_logits.copy()

    @property
    def n_past(self) -> int:
        """Tokens currently in the KV cache."""
        return len(self._past)

    def _truncate(self, n_keep: int) -> None:
        """Keeps the first n_keep tokens of the KV cache."""
        if n_keep >= len(self._past):
            return
        mem = lib.llama_get_memory(self._ctx)
        if n_keep == 0 or not lib.llama_memory_seq_rm(mem, 0, n_keep, -1):
            lib.llama_memory_clear(mem, True)
            n_keep = 0
        del self._past[n_keep:]

    def _decode(self, tokens: Sequence[int], want: np.ndarray) -> np.ndarray:
        """Appends tokens to the KV cache (positions n_past...); returns the logits of the
        tokens where want is true, float32 (sum(want), n_vocab)."""
        if not self._lock.acquire(blocking=False):
            raise LlamaError("this Model is in use by another thread (use one Model per thread)")
        try:
            self._check_open()
            start = len(self._past)
            if start + len(tokens) > self.n_ctx:
                raise ContextOverflowError(
                    f"{start + len(tokens)} tokens do not fit in the context of {self.n_ctx} tokens")
            toks = np.asarray(tokens, dtype=np.int32)
            want = np.asarray(want, dtype=bool)
            b = self._batch
            nb = self.n_batch
            token_arr = np.frombuffer(ffi.buffer(b.token, 4 * nb), np.int32)
            pos_arr = np.frombuffer(ffi.buffer(b.pos, 4 * nb), np.int32)
            nseq_arr = np.frombuffer(ffi.buffer(b.n_seq_id, 4 * nb), np.int32)
            logit_arr = np.frombuffer(ffi.buffer(b.logits, nb), np.int8)
            rows = []
            for b0 in range(0, len(toks), nb):
                n = min(nb, len(toks) - b0)
                token_arr[:n] = toks[b0:b0 + n]
                pos_arr[:n] = np.arange(start + b0, start + b0 + n, dtype=np.int32)
                nseq_arr[:n] = 1
                for i in range(n):
                    b.seq_id[i][0] = 0
                logit_arr[:n] = want[b0:b0 + n]
                if b0 + n == len(toks):
                    logit_arr[n - 1] = 1        # the last token's logits are always kept
                b.n_tokens = n
                _log_mark()
                rc = lib.llama_decode(self._ctx, b)
                if rc != 0:
                    lib.llama_memory_clear(lib.llama_get_memory(self._ctx), True)
                    self._past = []
                    raise LlamaError(f"llama_decode failed with code {rc}: {_log_tail()}")
                self._past.extend(int(t) for t in toks[b0:b0 + n])
                for i in np.flatnonzero(want[b0:b0 + n]):
                    ptr = lib.llama_get_logits_ith(self._ctx, int(i))
                    rows.append(np.frombuffer(ffi.buffer(ptr, 4 * self.n_vocab), np.float32).copy())
            ptr = lib.llama_get_logits_ith(self._ctx, -1)
            self._last_logits = np.frombuffer(ffi.buffer(ptr, 4 * self.n_vocab), np.float32).copy()
            return np.stack(rows) if rows else np.empty((0, self.n_vocab), np.float32)
        finally:
            self._lock.release()

    def eval(self, tokens: Sequence[int], start_pos: int = 0, all_logits: bool = False) -> np.ndarray:
        """Decodes tokens at positions start_pos... (the KV cache keeps what came before
        start_pos); returns the logits of every token (all_logits) or of the last one, as
        float32 (n, n_vocab) or (n_vocab,)."""
        self._check_open()
        tokens = list(tokens)
        if not tokens:
            raise ValueError("no tokens to evaluate")
        self._check_tokens(tokens)
        if start_pos + len(tokens) > self.n_ctx:
            raise ContextOverflowError(f"{start_pos + len(tokens)} tokens do not fit in the context of {self.n_ctx} tokens")
        if start_pos > len(self._past):
            raise ValueError(f"start_pos {start_pos} is past the {len(self._past)} tokens in the cache")
        self._truncate(start_pos)
        if len(self._past) != start_pos:       # this model's memory cannot be cut at start_pos
            raise LlamaError(f"could not keep {start_pos} cached tokens; call eval from start_pos=0")
        want = np.full(len(tokens), bool(all_logits))
        want[-1] = True
        logits = self._decode(tokens, want)
        return logits if all_logits else logits[-1]

    def _prefill(self, tokens: list[int]) -> None:
        """Brings the KV cache to exactly `tokens`, reusing the common prefix; leaves the last
        token's logits in last_logits."""
        n_common = 0
        for a, b in zip(self._past, tokens):
            if a != b:
                break
            n_common += 1
        n_common = min(n_common, len(tokens) - 1)   # re-decode at least one token for its logits
        self._truncate(n_common)
        rest = tokens[len(self._past):]
        want = np.zeros(len(rest), bool)
        self._decode(rest, want)

    # ------------------------------------------------------------------ sampling
    def _sampler(self, temperature: float, top_k: int, top_p: float, min_p: float, seed: int | None):
        params = lib.llama_sampler_chain_default_params()
        params.no_perf = True
        chain = lib.llama_sampler_chain_init(params)
        if chain == ffi.NULL:
            raise LlamaError("llama_sampler_chain_init failed")
        if temperature is None or temperature <= 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
            return chain
        if top_k and top_k > 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(int(top_k)))
        if top_p is not None and top_p < 1.0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(float(top_p), 1))
        if min_p and min_p > 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(float(min_p), 1))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(float(temperature)))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(
            DEFAULT_SEED if seed is None else int(seed) & 0xFFFFFFFF))
        return chain

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 128, temperature: float = 0.8,
                 top_k: int = 40, top_p: float = 0.95, seed: int | None = None,
                 stop: str | Iterable[str] | None = None, min_p: float = 0.0,
                 add_special: bool = True, parse_special: bool = False) -> Iterator[str]:
        """Streams the continuation of prompt (text, or token ids) as text pieces.

        The prompt is checked and decoded now (errors, such as ContextOverflowError for a prompt
        longer than n_ctx, raise here); tokens are sampled as the iterator is consumed, with
        llama.cpp's sampler chain top_k -> top_p -> min_p -> temp -> dist(seed), or greedy when
        temperature <= 0. Generation ends at an end-of-generation token, after max_tokens, when
        a stop string appears (it and what follows are not yielded), or when the context is full;
        self.finish_reason tells which ("eog", "length", "stop", "context")."""
        self._check_open()
        tokens = self.tokenize(prompt, add_special, parse_special) if isinstance(prompt, str) else list(prompt)
        if not tokens:
            raise ValueError("empty prompt")
        self._check_tokens(tokens)
        if len(tokens) > self.n_ctx:
            raise ContextOverflowError(f"the prompt has {len(tokens)} tokens, more than the context of {self.n_ctx}")
        stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
        self._generation += 1
        self.finish_reason = None
        self._prefill(tokens)
        return self._stream(self._generation, max_tokens, (temperature, top_k, top_p, min_p, seed), stops)

    def _stream(self, generation, max_tokens, sampling, stops) -> Iterator[str]:
        chain = self._sampler(*sampling)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        reason = "length"
        try:
            for _ in range(max_tokens):
                if generation != self._generation:
                    raise LlamaError("this generation was superseded by a later generate/chat call on the same Model")
                self._check_open()
                tok = int(lib.llama_sampler_sample(chain, self._ctx, -1))
                if self.is_eog(tok):
                    reason = "eog"
                    break
                text = pending + decoder.decode(self.token_to_piece(tok))
                hit = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
                if hit >= 0:
                    if text[:hit]:
                        yield text[:hit]
                    pending, reason = "", "stop"
                    break
                hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
                out, pending = (text[:-hold], text[-hold:]) if hold else (text, "")
                if out:
                    yield out
                if len(self._past) >= self.n_ctx:
                    reason = "context"
                    break
                self._decode([tok], np.ones(1, bool))
            tail = pending + decoder.decode(b"", final=True)
            if tail and reason != "stop":
                yield tail
            self.finish_reason = reason
        finally:
            lib.llama_sampler_free(chain)

    # ------------------------------------------------------------------ chat
    def chat_template(self, name: str | None = None) -> str | None:
        """The chat template stored in the GGUF (tokenizer.chat_template), or None."""
        self._check_open()
        t = lib.llama_model_chat_template(self._model, name.encode() if name else ffi.NULL)
        return None if t == ffi.NULL else ffi.string(t).decode("utf-8", errors="replace")

    def format_chat(self, messages: Sequence[dict], template: str | None = None,
                    add_generation_prompt: bool = True) -> str:
        """messages ([{"role": ..., "content": ...}]) formatted with llama_chat_apply_template,
        using `template` (a built-in name such as "chatml", or a template text) or else the
        model's own. llama.cpp recognises the common templates, it does not run Jinja."""
        tmpl = template if template is not None else self.chat_template()
        if tmpl is None:
            raise LlamaError(f"{self.path} has no chat template; pass template= one of {builtin_templates()}")
        keep = []
        msgs = ffi.new("llama_chat_message[]", max(1, len(messages)))
        for i, m in enumerate(messages):
            role, content = ffi.new("char[]", m["role"].encode()), ffi.new("char[]", m["content"].encode())
            keep += [role, content]
            msgs[i].role, msgs[i].content = role, content
        ctmpl = ffi.new("char[]", tmpl.encode())
        size = 256 + 2 * sum(len(m["content"].encode()) + len(m["role"]) for m in messages)
        buf = ffi.new("char[]", size)
        n = lib.llama_chat_apply_template(ctmpl, msgs, len(messages), add_generation_prompt, buf, size)
        if n > size:
            size = n + 1
            buf = ffi.new("char[]", size)
            n = lib.llama_chat_apply_template(ctmpl, msgs, len(messages), add_generation_prompt, buf, size)
        if n < 0:
            raise LlamaError(f"llama_chat_apply_template does not support the chat template "
                             f"{tmpl[:80]!r}...; pass template= one of {builtin_templates()}")
        return ffi.unpack(buf, n).decode("utf-8", errors="replace")

    def chat(self, messages: Sequence[dict], max_tokens: int = 256, temperature: float = 0.8,
             top_k: int = 40, top_p: float = 0.95, seed: int | None = None,
             stop: str | Iterable[str] | None = None, template: str | None = None, min_p: float = 0.0) -> Iterator[str]:
        """Streams the assistant's reply to messages, formatted with the model's chat template
        (see format_chat). The KV cache keeps the previous turns: a follow-up only decodes
        what is new."""
        prompt = self.format_chat(messages, template)
        bos = self.token_to_piece(self.bos, special=True).decode("utf-8", errors="replace") if self.bos >= 0 else ""
        add_special = not (bos and prompt.startswith(bos))
        return self.generate(prompt, max_tokens, temperature, top_k, top_p, seed, stop, min_p,
                             add_special=add_special, parse_special=True)

    # ------------------------------------------------------------------ perplexity
    def perplexity(self, text: str, n_ctx: int | None = None) -> float:
        """Perplexity as llama-perplexity computes it: the text (with BOS) cut into
        non-overlapping chunks of n_ctx tokens, BOS in place of each chunk's first token, and
        only the predictions of the second half of each chunk scored."""
        self._check_open()
        n_ctx = n_ctx or self.n_ctx
        if n_ctx > self.n_ctx:
            raise ContextOverflowError(f"n_ctx {n_ctx} is larger than the model's context of {self.n_ctx}")
        if n_ctx < 4:
            raise ValueError("n_ctx must be at least 4")
        tokens = self.tokenize(text, add_special=True)
        if len(tokens) < 2 * n_ctx:
            raise ValueError(f"need at least {2 * n_ctx} tokens for perplexity with a context of {n_ctx}, "
                             f"the text has {len(tokens)}")
        add_bos = bool(lib.llama_vocab_get_add_bos(self._vocab))
        first = n_ctx // 2
        nll, count = 0.0, 0
        want = np.zeros(n_ctx, bool)
        want[first:n_ctx - 1] = True
        self._generation += 1
        for c in range(len(tokens) // n_ctx):
            chunk = tokens[c * n_ctx:(c + 1) * n_ctx]
            if add_bos:
                chunk[0] = self.bos
            self.reset()
            logits = self._decode(chunk, want).astype(np.float64)
            targets = np.asarray(tokens[c * n_ctx + first + 1:(c + 1) * n_ctx])
            mx = logits.max(axis=1, keepdims=True)
            logz = mx[:, 0] + np.log(np.exp(logits - mx).sum(axis=1))
            nll += float((logz - logits[np.arange(len(targets)), targets]).sum())
            count += len(targets)
        self.reset()
        return float(np.exp(nll / count))
