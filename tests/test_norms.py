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
