"""Norm tweaking (mpq2.norms) on tiny random Llama blocks: the gains move where that lowers the
error on held-out calibration sequences, come back bit for bit where it does not, and nothing
else of the block changes."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from mpq2 import capture, norms
from mpq2.gptq import MPQ2GPTQ, QuantConfig

SEEDS = [0, 1, 2, 3, 4]


def tiny_block_and_inputs(seed=0, nseq=8):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    block = capture.decoder_layers(model)[0]
    with torch.no_grad():                       # gains that are not all ones, as in trained models
        for g in norms.block_norms(block).values():
            g.mul_(1 + 0.3 * torch.randn_like(g))
        seqs = torch.randint(0, 64, (nseq, 32))
        inputs = capture.first_block_inputs(model, model.model.embed_tokens(seqs))
    return model, block, inputs


def quantize_block(block, inputs):
    lin = capture.linear_modules(block)
    g = {n: MPQ2GPTQ(m.weight) for n, m in lin.items()}
    capture.collect(block, inputs, {n: x.add_batch for n, x in g.items()})
    for n, m in lin.items():
        m.weight.data = g[n].fasterquant(m.weight.detach().float(), QuantConfig(rotate=True)).weight


def scale_input_channels(block, seed):
    """An error the gains can undo: q/k/v's input channels off by one scale, gate/up's by another."""
    gen = torch.Generator().manual_seed(seed)
    lin = capture.linear_modules(block)
    with torch.no_grad():
        for group in (["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["mlp.gate_proj", "mlp.up_proj"]):
            s = 1 + 0.2 * torch.randn(lin[group[0]].in_features, generator=gen)
            for n in group:
                lin[n].weight.mul_(s)


def held_out_error(block, inputs, targets, h=None):
    """The block's error summed over the held-out sequences (the last ones), as tune measures it."""
    h = norms.default_held_out(len(inputs)) if h is None else h
    outs = capture.run_block(block, inputs[-h:])
    return sum(float(torch.nn.functional.mse_loss(o[0], t[0])) for o, t in zip(outs, targets[-h:]))


def gains_of(block):
    return {n: p.detach().clone() for n, p in norms.block_norms(block).items()}


def bit_identical(a: dict, b: dict):
    return a.keys() == b.keys() and all(torch.equal(a[n].view(torch.int32), b[n].view(torch.int32)) for n in a)


def test_default_split():
    assert [norms.default_held_out(n) for n in (0, 1, 2, 7, 8, 15, 16, 64)] == [0, 0, 1, 1, 1, 1, 2, 8]


def test_tuning_brings_the_block_output_back_on_held_out_sequences():
    model, block, inputs = tiny_block_and_inputs(0, nseq=10)
    targets = capture.run_block(block, inputs)
    scale_input_channels(block, 0)
    linear_before = {n: m.weight.clone() for n, m in capture.linear_modules(block).items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    gains_before = gains_of(block)
    assert set(gains_before) == {"input_layernorm", "post_attention_layernorm"}
    err_before = held_out_error(block, inputs, targets)
    res = norms.tune(block, inputs, targets, steps=60, lr=3e-3)
    err_after = held_out_error(block, inputs, targets)
    assert isinstance(res, norms.TuneResult) and res.kept, res
    assert (res.held_out, res.tuned_on) == (1, 9)
    assert err_after < 0.8 * err_before, (err_before, err_after)
    assert math.isclose(res.ratio, err_after / err_before, rel_tol=1e-4), (res, err_after / err_before)
    assert math.isclose(res.before, err_before, rel_tol=1e-4) and math.isclose(res.after, err_after, rel_tol=1e-4)
    assert float(res) == res.ratio == res.effective_ratio
    assert all(not torch.equal(p, gains_before[n]) for n, p in norms.block_norms(block).items())
    # only the gains move, and every parameter's requires_grad is as it was
    assert all(torch.equal(m.weight, linear_before[n]) for n, m in capture.linear_modules(block).items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_held_out_sequences_take_no_step():
    _, block, inputs = tiny_block_and_inputs(1, nseq=16)
    targets = capture.run_block(block, inputs)
    scale_input_channels(block, 1)
    seen = []                                   # (sequences in the forward, with gradients?) of every forward

    def sequences(x):                           # which calibration sequences a (batched) input holds
        return tuple(k for row in x for k, (hs, _, _) in enumerate(inputs) if torch.equal(row[None], hs))
    hook = block.register_forward_pre_hook(lambda m, a: seen.append((sequences(a[0]), torch.is_grad_enabled())))
    try:
        res = norms.tune(block, inputs, targets, steps=20, lr=3e-3)
    finally:
        hook.remove()
    assert (res.held_out, res.tuned_on) == (2, 14)
    assert [ks for ks, grad in seen if grad] == [(s % 14,) for s in range(20)]
    # the only passes without gradients: the held-out ones, batched, once before and once after
    assert [ks for ks, grad in seen if not grad] == [(14, 15), (14, 15)]


def test_tuning_that_cannot_help_gives_the_gains_back_bit_for_bit():
    # targets: the block's own outputs plus noise, so the gains are already the best there are;
    # tuning fits the noise of the tuning sequences, which the held-out ones do not share
    model, block, inputs = tiny_block_and_inputs(2)
    quantize_block(block, inputs)
    gen = torch.Generator().manual_seed(2)
    targets = [(o[0] + 0.5 * o[0].std() * torch.randn(o[0].shape, generator=gen),) for o in capture.run_block(block, inputs)]
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    gains = gains_of(block)
    res = norms.tune(block, inputs, targets, steps=40, lr=1e-2)
    assert not res.kept and res.ratio > 1 and res.effective_ratio == 1.0, res
    assert bit_identical(gains_of(block), gains)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_diverging_tuning_gives_the_gains_back_bit_for_bit():
    _, block, inputs = tiny_block_and_inputs(3)
    targets = capture.run_block(block, inputs)
    quantize_block(block, inputs)
    gains = gains_of(block)
    res = norms.tune(block, inputs, targets, steps=20, lr=3.0)
    assert not res.kept and not res.ratio < 1, res
    assert bit_identical(gains_of(block), gains)


@pytest.mark.parametrize("seed", SEEDS)
def test_tuning_never_raises_the_held_out_error(seed):
    # GPTQ at 2 bits, the converter's case: whether tuning helps varies with the seed, but the
    # block that comes back is never worse on the held-out sequences than the untuned one
    _, block, inputs = tiny_block_and_inputs(seed)
    targets = capture.run_block(block, inputs)
    quantize_block(block, inputs)
    gains = gains_of(block)
    err_before = held_out_error(block, inputs, targets)
    res = norms.tune(block, inputs, targets, steps=40, lr=3e-3)
    err_after = held_out_error(block, inputs, targets)
    assert err_after <= err_before, (res, err_before, err_after)
    if res.kept:
        assert err_after < err_before and res.ratio < 1
    else:
        assert res.ratio >= 1 or math.isnan(res.ratio)
        assert bit_identical(gains_of(block), gains) and err_after == err_before


def test_zero_steps_or_one_sequence_changes_nothing():
    _, block, inputs = tiny_block_and_inputs(1, nseq=3)
    targets = capture.run_block(block, inputs)
    scale_input_channels(block, 1)
    gains = gains_of(block)
    res = norms.tune(block, inputs, targets, steps=0)
    assert res == 1.0 and not res.kept and res.held_out == 0
    # one sequence: nothing to hold out, so nothing is tuned (the safe choice)
    res = norms.tune(block, inputs[:1], targets[:1], steps=20, lr=3e-3)
    assert res == 1.0 and not res.kept and res.held_out == 0 and "hold out" in res.reason
    assert bit_identical(gains_of(block), gains)
    with pytest.raises(ValueError):
        norms.tune(block, inputs, targets, steps=20, held_out=0)
    # held_out is capped at n - 1: at least one sequence to tune on
    res = norms.tune(block, inputs, targets, steps=4, lr=3e-3, held_out=5)
    assert (res.held_out, res.tuned_on) == (2, 1)


def test_the_result_still_reads_as_the_ratio():
    import json
    import pickle
    res = norms.TuneResult(0.75, kept=True, before=2.0, after=1.5, held_out=1, tuned_on=7, reason="r")
    assert json.loads(json.dumps([res])) == [0.75] and f"{res:.2f}" == "0.75" and str(res) == "0.75"
    back = pickle.loads(pickle.dumps(res))
    assert back == 0.75 and back.kept and back.held_out == 1 and back.reason == "r"


# --- the final norm -------------------------------------------------------------------------

def output_case(seed, scaled=True, nseq=10):
    """A final norm, a float output projection and a 2-bit copy of it (RTN), whose input channels
    are off by a scale when `scaled` (what a per-channel gain can undo, as grids do in common)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    torch.manual_seed(seed)
    norm, w_float = LlamaRMSNorm(128), torch.randn(96, 128) / 128 ** 0.5
    with torch.no_grad():
        norm.weight.mul_(1 + 0.3 * torch.randn(128))
    # sequences of more tokens than a chunk
    hidden = [torch.randn(1, 40, 128) * torch.linspace(0.2, 3, 128) for _ in range(nseq)]
    g = MPQ2GPTQ(w_float)
    for h in hidden:
        g.add_batch(norm(h).detach())
    w_q = g.fasterquant(w_float, QuantConfig(method="rtn", rotate=True)).weight
    if scaled:
        w_q = w_q * (1 + 0.2 * torch.randn(128))
    float_logits = norms.float_logits_of(copy.deepcopy(norm), w_float, [(h,) for h in hidden])
    return norm, w_q, hidden, float_logits


def held_out_kl(norm, w_q, hidden, target_logits, h=None):
    h = norms.default_held_out(len(hidden)) if h is None else h
    with torch.no_grad():
        return sum(float(torch.nn.functional.kl_div(torch.log_softmax(norm(x.reshape(-1, 128)) @ w_q.T, -1),
                                                    torch.log_softmax(target_logits(k, slice(None)), -1),
                                                    log_target=True, reduction="batchmean"))
                   for k, x in list(enumerate(hidden))[-h:])


def test_output_norm_tuning_brings_the_logits_back():
    norm, w_q, hidden, float_logits = output_case(0)
    w_before, gain_before = w_q.clone(), norm.weight.detach().clone()
    target = norm(hidden[0]).detach()  # the float norm, before tuning
    before = held_out_kl(norm, w_q, hidden, float_logits)
    norm.weight.requires_grad_(False)
    res = norms.tune_output(norm, w_q, hidden, float_logits, steps=60, lr=3e-3, chunk=16)
    after = held_out_kl(norm, w_q, hidden, float_logits)
    assert res.kept and (res.held_out, res.tuned_on) == (1, 9), res
    assert after < 0.8 * before, (before, after)
    assert math.isclose(res.ratio, after / before, rel_tol=1e-4), (res, after / before)
    assert not torch.equal(norm.weight, gain_before) and torch.equal(w_q, w_before)
    assert not norm.weight.requires_grad and norm.weight.grad is None     # as it was
    assert not torch.equal(norm(hidden[0]), target)
    assert norms.tune_output(norm, w_q, hidden, float_logits, steps=0) == 1.0
    one = norms.tune_output(norm, w_q, hidden[:1], float_logits, steps=20)
    assert one == 1.0 and not one.kept


def test_output_tuning_that_cannot_help_gives_the_gain_back_bit_for_bit():
    # the tuning sequences' targets come from one per-channel distortion of the gain, the
    # held-out one's from another, independent one: what the steps learn does not carry over
    # (noise on the logits would not do: a gain that sharpens the softmax fits noisy targets
    # better everywhere); and, apart, a diverging lr
    norm, w_q, hidden, _ = output_case(1, scaled=False)
    gen = torch.Generator().manual_seed(1)
    gain = norm.weight.detach().clone()
    s_tune, s_held = (1 + 0.3 * torch.randn(2, 128, generator=gen)).unbind(0)
    with torch.no_grad():
        targets = [torch.nn.functional.rms_norm(h.reshape(-1, 128), (128,), gain * (s_held if k == len(hidden) - 1 else s_tune),
                                                norm.variance_epsilon) @ w_q.T for k, h in enumerate(hidden)]
    res = norms.tune_output(norm, w_q, hidden, lambda k, rows: targets[k][rows], steps=40, lr=1e-2, chunk=16)
    assert not res.kept and res.ratio > 1, res
    assert torch.equal(norm.weight.detach().view(torch.int32), gain.view(torch.int32))
    norm, w_q, hidden, float_logits = output_case(2)
    gain = norm.weight.detach().clone()
    res = norms.tune_output(norm, w_q, hidden, float_logits, steps=20, lr=10.0, chunk=16)
    assert not res.kept and not res.ratio < 1, res
    assert torch.equal(norm.weight.detach().view(torch.int32), gain.view(torch.int32))
    assert norm.weight.grad is None


@pytest.mark.parametrize("seed", SEEDS)
def test_output_tuning_never_raises_the_held_out_kl(seed):
    norm, w_q, hidden, float_logits = output_case(seed, scaled=False)
    gain = norm.weight.detach().clone()
    before = held_out_kl(norm, w_q, hidden, float_logits)
    res = norms.tune_output(norm, w_q, hidden, float_logits, steps=30, lr=3e-3, chunk=16)
    after = held_out_kl(norm, w_q, hidden, float_logits)
    assert after <= before, (res, before, after)
    if not res.kept:
        assert torch.equal(norm.weight.detach(), gain) and after == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_tuning_on_cuda():
    _, block, inputs = tiny_block_and_inputs(0)
    targets = capture.run_block(block, inputs)
    scale_input_channels(block, 0)
    dev = torch.device("cuda")
    block.to(dev)

    def move(x):
        return x.to(dev) if isinstance(x, torch.Tensor) else tuple(move(y) for y in x) if isinstance(x, tuple) else x
    inputs = [(hs.to(dev), move(args), {k: move(v) for k, v in kw.items()}) for hs, args, kw in inputs]
    targets = [(t[0].to(dev),) for t in targets]
    res = norms.tune(block, inputs, targets, steps=30, lr=3e-3)
    assert res.kept and all(p.device.type == "cuda" for p in block.parameters())
    norm, w_q, hidden, _ = output_case(0)
    norm.to(dev)
    hidden = [h.to(dev) for h in hidden]
    target = norms.float_logits_of(copy.deepcopy(norm), w_q.to(dev), [(h,) for h in hidden])
    res = norms.tune_output(norm, w_q.to(dev), hidden, target, steps=5)
    assert isinstance(res, norms.TuneResult)


def test_collect_stopping_at_the_last_linear_gives_the_same_inputs():
    """capture.collect(last=...) stops the forward once the block's last linear layer (ffn_down)
    has its input: every layer must still see exactly what the full forward gives it, and the
    stop must not leak out of collect."""
    _, block, inputs = tiny_block_and_inputs(3, nseq=4)
    order = capture.shared_inputs(block, inputs[0])
    assert order[-1] == ["mlp.down_proj"]
    full, stopped = {}, {}
    for seen, last in ((full, None), (stopped, order[-1][0])):
        sinks = {g[0]: (lambda x, n=g[0], s=seen: s.setdefault(n, []).append(x.clone())) for g in order}
        capture.collect(block, inputs, sinks, last=last)
    assert full.keys() == stopped.keys() == {g[0] for g in order}
    for n in full:
        assert all(torch.equal(a, b) for a, b in zip(full[n], stopped[n], strict=True)), n


def test_a_prefix_of_a_sequence_gives_the_first_outputs_of_the_whole():
    """--tune-tokens: a step on the first T tokens must see exactly the block's first T outputs
    on the whole sequence (attention is causal), so its target is the whole target's first T."""
    _, block, inputs = tiny_block_and_inputs(4, nseq=2)
    with torch.no_grad():
        whole = capture.hidden(block(inputs[0][0], *inputs[0][1], **inputs[0][2]))
        hs, args, kwargs = capture.prefix(inputs[0], 12)
        assert hs.shape[-2] == 12
        part = capture.hidden(block(hs, *args, **kwargs))
    torch.testing.assert_close(part, whole[..., :12, :], rtol=1e-5, atol=1e-6)
    assert capture.prefix(inputs[0], 10_000) is inputs[0]
    with pytest.raises(ValueError, match="cannot cut"):
        capture.prefix((inputs[0][0], (), {**inputs[0][2], "extra_bias": torch.zeros(32)}), 12)


def test_tuning_on_prefixes_still_lowers_the_held_out_error():
    _, block, inputs = tiny_block_and_inputs(1, nseq=16)
    targets = capture.run_block(block, inputs)
    scale_input_channels(block, 1)
    res = norms.tune(block, inputs, targets, steps=30, lr=3e-3, tokens=8)
    assert res.kept and res.ratio < 0.9, res
