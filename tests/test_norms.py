"""Norm tweaking (mpq2.norms) on a tiny Llama block: the gains move, the block output comes back
toward the float block's, and nothing else of the block changes."""
from __future__ import annotations

import torch

from mpq2 import capture, norms
from mpq2.gptq import MPQ2GPTQ, QuantConfig


def tiny_block_and_inputs(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    seqs = torch.randint(0, 64, (6, 32))
    return model, capture.decoder_layers(model)[0], capture.first_block_inputs(model, seqs)


def quantize_block(block, inputs):
    lin = capture.linear_modules(block)
    g = {n: MPQ2GPTQ(m.weight) for n, m in lin.items()}
    capture.collect(block, inputs, {n: x.add_batch for n, x in g.items()})
    for n, m in lin.items():
        m.weight.data = g[n].fasterquant(m.weight.detach().float(), QuantConfig(rotate=True)).weight


def block_error(block, inputs, targets):
    outs = capture.run_block(block, inputs)
    return sum(float(torch.mean((o[0] - t[0]) ** 2)) for o, t in zip(outs, targets))


def test_tuning_brings_the_block_output_back():
    model, block, inputs = tiny_block_and_inputs()
    targets = capture.run_block(block, inputs)
    quantize_block(block, inputs)
    linear_before = {n: m.weight.clone() for n, m in capture.linear_modules(block).items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    gains_before = {n: p.clone() for n, p in norms.block_norms(block).items()}
    assert set(gains_before) == {"input_layernorm", "post_attention_layernorm"}
    err_before = block_error(block, inputs, targets)
    ratio = norms.tune(block, inputs, targets, steps=60, lr=3e-3)
    err_after = block_error(block, inputs, targets)
    assert err_after < 0.95 * err_before, (err_before, err_after)
    assert abs(ratio - err_after / err_before) < 0.02 * ratio
    assert all(not torch.equal(p, gains_before[n]) for n, p in norms.block_norms(block).items())
    # only the gains move, and every parameter's requires_grad is as it was
    assert all(torch.equal(m.weight, linear_before[n]) for n, m in capture.linear_modules(block).items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_zero_steps_changes_nothing():
    _, block, inputs = tiny_block_and_inputs(1)
    targets = capture.run_block(block, inputs)
    gains = {n: p.clone() for n, p in norms.block_norms(block).items()}
    assert norms.tune(block, inputs, targets, steps=0) == 1.0
    assert all(torch.equal(p, gains[n]) for n, p in norms.block_norms(block).items())


def test_output_norm_tuning_brings_the_logits_back():
    # a final norm, a float output projection and a 2-bit copy of it whose input channels are off
    # by a scale (what a per-channel gain can undo, as grids do in common): tuning the gain lowers
    # the KL divergence to the float logits, and only the gain moves
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    torch.manual_seed(0)
    norm, w_float = LlamaRMSNorm(128), torch.randn(96, 128) / 128 ** 0.5
    # more sequences than norms.REPORTED, of more tokens than a chunk
    hidden = [torch.randn(1, 40, 128) * torch.linspace(0.2, 3, 128) for _ in range(norms.REPORTED + 2)]
    g = MPQ2GPTQ(w_float)
    for h in hidden:
        g.add_batch(norm(h).detach())
    w_q = g.fasterquant(w_float, QuantConfig(method="rtn", rotate=True)).weight * (1 + 0.2 * torch.randn(128))
    w_before, gain_before = w_q.clone(), norm.weight.detach().clone()
    target = norm(hidden[0]).detach()  # the float norm, before tuning

    def float_logits(k, rows=slice(None)):
        h = hidden[k].reshape(-1, 128)[rows]
        return torch.nn.functional.rms_norm(h, (128,), gain_before, norm.variance_epsilon) @ w_float.T

    @torch.no_grad()
    def kl():
        return sum(float(torch.nn.functional.kl_div(torch.log_softmax(norm(h.reshape(-1, 128)) @ w_q.T, -1),
                                                    torch.log_softmax(float_logits(k), -1),
                                                    log_target=True, reduction="batchmean"))
                   for k, h in enumerate(hidden[:norms.REPORTED]))

    before = kl()
    norm.weight.requires_grad_(False)
    ratio = norms.tune_output(norm, w_q, hidden, float_logits, steps=60, lr=3e-3, chunk=16)
    after = kl()
    assert after < 0.8 * before, (before, after)
    assert abs(ratio - after / before) < 0.02 * ratio
    assert not torch.equal(norm.weight, gain_before) and torch.equal(w_q, w_before)
    assert not norm.weight.requires_grad and norm.weight.grad is None     # as it was
    assert not torch.equal(norm(hidden[0]), target)
    assert norms.tune_output(norm, w_q, hidden, float_logits, steps=0) == 1.0
