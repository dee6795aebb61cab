"""Norm tweaking: after a block's linear weights are quantized, its RMSNorm gains (float in the
GGUF, so free in bits) are tuned to bring the block's output back to the float block's.

GPTQ minimises each layer's own output error; the gains then rescale every input channel of
q/k/v and gate/up at once, which absorbs part of what the 2-bit grids got wrong in common
(measured in docs/BENCHMARKS.md, "Norm tweaking"). Adam on the mean squared error of the block
output, one calibration sequence per step.

Tuning never makes the model worse on data it did not see: the last `held_out` calibration
sequences (default max(1, n // 8)) take no step; their loss is measured before and after the
steps, and the tuned gains are kept only where it went down. Otherwise the gains come back bit
for bit as they were (the float model's) and the result says so (`kept` False).
With a single calibration sequence there is nothing to hold out, so nothing is tuned.

Device-agnostic: the module, inputs and targets may live on any torch device (all on the same
one); nothing here leaves it, and losses are read back to the host only for the two checks.
"""
from __future__ import annotations

import math

import torch

from . import capture
from .timing import clock


def default_held_out(n: int) -> int:
    """How many of n calibration sequences are held out by default: the last max(1, n // 8)
    (0 when n <= 1: nothing can be held out, and then nothing is tuned)."""
    return max(1, n // 8) if n > 1 else 0


class TuneResult(float):
    """What tune / tune_output did. A float (its value is `ratio`), so code that used the bare
    ratio of earlier versions (formatting, averaging, JSON) keeps working; read the fields:

    ratio     held-out loss with the tuned gains over the loss with the original gains (after
              over before, summed over the held-out sequences); measured whether or not the tuned
              gains were kept, so above 1 (or nan/inf when Adam diverged) says why they were not.
              1.0 when nothing was tuned.
    kept      True when the tuned gains stay in the module (ratio < 1); False when the original
              gains were restored bit for bit, or nothing was tuned.
    before    held-out loss with the original gains (0.0 when nothing was tuned)
    after     held-out loss with the tuned gains (0.0 when nothing was tuned)
    held_out  number of held-out sequences (the last ones)
    tuned_on  number of sequences the steps cycled over (the first ones)
    reason    one line: why the gains were or were not kept
    """

    def __new__(cls, ratio: float = 1.0, *, kept: bool = False, before: float = 0.0,
                after: float = 0.0, held_out: int = 0, tuned_on: int = 0, reason: str = ""):
        self = super().__new__(cls, ratio)
        self.kept, self.before, self.after = kept, before, after
        self.held_out, self.tuned_on, self.reason = held_out, tuned_on, reason
        return self

    @property
    def ratio(self) -> float:
        return float(self)

    @property
    def effective_ratio(self) -> float:
        """The held-out loss of the module as returned over the one it came in with: `ratio`
        when kept, else 1.0."""
        return self.ratio if self.kept else 1.0

    def __repr__(self) -> str:
        return (f"TuneResult(ratio={self.ratio!r}, kept={self.kept}, before={self.before!r}, "
                f"after={self.after!r}, held_out={self.held_out}, tuned_on={self.tuned_on}, "
                f"reason={self.reason!r})")

    def __str__(self) -> str:            # prints as the bare ratio did
        return float.__repr__(self)

    def describe(self) -> str:
        """One line for a log: the ratio and why the gains were or were not kept."""
        return f"x{self.ratio:.3f} ({self.reason})"

    def __reduce__(self):
        return (_result, (self.ratio, self.kept, self.before, self.after, self.held_out,
                          self.tuned_on, self.reason))


def _result(ratio, kept, before, after, held_out, tuned_on, reason) -> TuneResult:
    return TuneResult(ratio, kept=kept, before=before, after=after, held_out=held_out,
                      tuned_on=tuned_on, reason=reason)


def block_norms(block: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The block's RMSNorm gains by module name (input_layernorm, post_attention_layernorm, ...)."""
    return {name: m.weight for name, m in block.named_modules()
            if name.endswith("norm") and isinstance(getattr(m, "weight", None), torch.nn.Parameter)
            and m.weight.dim() == 1}


@clock("norm tuning")
def tune(block: torch.nn.Module, inputs: list[tuple], targets: list[tuple], steps: int,
         lr: float = 1e-3, held_out: int | None = None, tokens: int | None = None) -> TuneResult:
    """Tunes the block's norm gains in place, by Adam on the mean squared error between the
    block's output and `targets[k][0]`, one calibration sequence per step.

    `inputs` are capture's (hidden, args, kwargs) tuples, `targets` the same for the wanted
    outputs (only [0] is read). The last `held_out` sequences (default max(1, n // 8); at most
    n - 1) take no step: the error summed over them is measured before and after the steps,
    and the tuned gains stay only when it went down; otherwise the gains are restored bit for
    bit. Steps cycle over the first n - held_out sequences, each on its first `tokens` positions
    (default: all; the held-out check always takes whole sequences). Nothing is tuned with steps <= 0,
    no norm, or fewer than two sequences (no held-out set: the safe choice is to keep the gains).

    Returns a TuneResult (a float equal to its `ratio`: held-out error after over before);
    `kept` says whether the tuned gains stayed. Every parameter's requires_grad is as it was."""
    norms = list(block_norms(block).values())
    if not norms:
        return TuneResult(reason="no norm gain: nothing tuned")

    def loss(k: int, backward: bool) -> torch.Tensor:
        hs, args, kwargs = capture.prefix(inputs[k], tokens)
        out = capture.hidden(block(hs, *args, **kwargs))
        target = targets[k][0][..., :hs.shape[-2], :]
        err = torch.nn.functional.mse_loss(out.float(), target.to(out.device, torch.float32))
        if backward:
            err.backward()
        return err.detach()

    @torch.no_grad()
    def held(ks: range) -> float:
        """The loss summed over sequences ks, in batched forwards (capture.batches) like the
        converter's other forwards without gradients (no time difference measured on SmolLM2)."""
        total, done = 0.0, 0
        for hs, args, kwargs, n in capture.batches([inputs[k] for k in ks]):
            out = capture.hidden(block(hs, *args, **kwargs)).float()
            target = torch.cat([targets[k][0] for k in ks[done:done + n]]).to(out.device, torch.float32)
            total += float((out - target).square_().flatten(1).mean(1).sum())
            done += n
        return total

    return _descend(norms, list(block.parameters()), loss, len(inputs), steps, lr, held_out, held)


@clock("final norm tuning")
def tune_output(norm: torch.nn.Module, weight: torch.Tensor, hidden: list[torch.Tensor],
                target_logits, steps: int, lr: float = 1e-3, chunk: int = 128,
                held_out: int | None = None, tokens: int | None = None) -> TuneResult:
    """Tunes the final RMSNorm's gain in place so that the logits of the quantized output
    projection `weight` on the quantized model's last hidden states (`hidden`, one (..., tokens,
    dim) tensor per sequence) come close to the target logits: KL(target || quantized) over the
    vocabulary. The gain rescales every input channel of the output projection, so it absorbs
    part of the error the blocks' norms cannot reach: the output projection's own.
    `target_logits(k, rows)` gives the target logits of tokens `rows` (a slice) of sequence k
    (any device; float_logits_of makes one). Each step takes one sequence (its first `tokens`
    positions; default all), `chunk` tokens at a time (gradients add up), so memory holds a few
    chunk x vocabulary tensors, not a whole sequence's.

    Held out as in tune: the last `held_out` sequences (default max(1, n // 8)) take no step;
    the tuned gain stays only when their KL (summed) went down, else it is restored bit for
    bit; nothing is tuned with steps <= 0, no gain, or fewer than two sequences. Returns a
    TuneResult (a float equal to its `ratio`: held-out KL after over before) with `kept`."""
    gain = getattr(norm, "weight", None)
    if not isinstance(gain, torch.nn.Parameter):
        return TuneResult(reason="no gain: nothing tuned")
    weight = weight.detach()

    def kl_of(k: int, backward: bool) -> torch.Tensor:
        h = hidden[k].reshape(-1, hidden[k].shape[-1])
        if backward and tokens is not None:      # a step: the sequence's first `tokens` positions
            h = h[:tokens]
        total = None
        for r in range(0, h.shape[0], chunk):
            rows = slice(r, min(r + chunk, h.shape[0]))
            logq = torch.log_softmax((norm(h[rows]) @ weight.T).float(), dim=-1)
            with torch.no_grad():
                logp = torch.log_softmax(target_logits(k, rows).reshape(logq.shape)
                                         .to(logq.device, torch.float32), dim=-1)
            # summed over the vocabulary, averaged over the sequence's tokens
            kl = torch.nn.functional.kl_div(logq, logp, log_target=True, reduction="sum") / h.shape[0]
            if backward:
                kl.backward()
            total = kl.detach() if total is None else total + kl.detach()
        return total

    return _descend([gain], list(norm.parameters()), kl_of, len(hidden), steps, lr, held_out)


def _descend(params: list[torch.nn.Parameter], others: list[torch.nn.Parameter], loss, n: int,
             steps: int, lr: float, held_out: int | None, held=None) -> TuneResult:
    """Adam on `params` alone (`others` frozen meanwhile; every flag restored after), one of the
    first n - h calibration sequences per step; the last h are held out (see tune).
    `loss(k, backward)` returns sequence k's loss as a detached 0-d tensor, after
    backpropagating it when asked; `held(ks)`, if given, the loss summed over sequences ks
    (default: loss(k, False) added up)."""
    if held_out is not None and held_out < 1:
        raise ValueError(f"held_out must be at least 1, not {held_out}")
    h = default_held_out(n) if held_out is None else min(int(held_out), n - 1)
    if steps <= 0:
        return TuneResult(reason="no step: nothing tuned")
    if h < 1:
        return TuneResult(reason=f"{n} calibration sequence(s): none to hold out, gains not tuned")
    tuned_on, checked = n - h, range(n - h, n)

    def held_loss() -> float:
        if held is not None:
            return held(checked)
        with torch.no_grad():
            return float(torch.stack([loss(k, False) for k in checked]).sum())

    original = [p.detach().clone() for p in params]
    flags = {p: p.requires_grad for p in (*others, *params)}
    for p in others:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    try:
        before = held_loss()
        for step in range(steps):
            opt.zero_grad()
            loss(step % tuned_on, True)
            opt.step()
        after = held_loss()
    finally:
        for p in params:
            p.grad = None
        for p, flag in flags.items():
            p.requires_grad_(flag)
    ratio = after / before if before > 0 else (1.0 if after == 0 else math.inf)
    kept = math.isfinite(after) and after < before
    where = f"{h} held-out sequence(s)"
    if kept:
        reason = f"tuned gains kept: loss x{ratio:.3f} on {where}"
    else:
        with torch.no_grad():
            for p, o in zip(params, original):
                p.copy_(o)
        reason = f"original gains kept: tuning did not lower the loss on {where} (x{ratio:.3f})"
    return TuneResult(ratio, kept=kept, before=before, after=after, held_out=h, tuned_on=tuned_on,
                      reason=reason)


def float_logits_of(norm: torch.nn.Module, weight: torch.Tensor, hidden: list[tuple]):
    """The `target_logits` of tune_output for a float final norm and output projection on the
    last hidden states `hidden` (capture's (hidden, args, kwargs) tuples; only [0] is read).
    The logits are computed on `weight`'s device (the norm must live there too)."""
    weight = weight.detach()

    @torch.no_grad()
    def logits(k: int, rows: slice) -> torch.Tensor:
        h = hidden[k][0]
        return norm(h.reshape(-1, h.shape[-1])[rows].to(weight.device)) @ weight.T
    return logits
