"""--bpw: the allocator (hull, budget, optimality on small problems), the sensitivities against
the KL divergence they predict (measured in PyTorch on a tiny model), and the converter with a
budget end to end (size, types, a clear error below the smallest file, resume)."""
from __future__ import annotations

import itertools
import math
import random

import gguf
import pytest
import torch

import e2e_helpers as h
import tiny_llama
from mpq2 import allocate as al
from mpq2.errors import ConvertError


# ---------------------------------------------------------------- the allocator

def _problem(seed: int, n: int, types=("a", "b", "c", "d")):
    rnd = random.Random(seed)
    sizes, costs = {}, {}
    for i in range(n):
        rows = rnd.choice([64, 128, 256, 512])
        b = sorted(rnd.sample(range(2, 20), len(types)))
        sizes[f"w{i}"] = {t: rows * bb for t, bb in zip(types, b)}
        scale = rnd.uniform(0.01, 10)
        c = sorted((rnd.uniform(0, 1) for _ in types), reverse=True)
        costs[f"w{i}"] = {t: scale * cc for t, cc in zip(types, c)}
    return sizes, costs


def _total(sizes, pick):
    return sum(sizes[n][t] for n, t in pick.items())


def test_hull_is_lower_convex_and_drops_dominated_points():
    pts = [(10, 5.0, "a"), (20, 2.0, "b"), (30, 1.9, "c"), (40, 0.5, "d"), (25, 3.0, "e"), (50, 0.6, "f")]
    hull = al.hull(pts)
    assert [p[2] for p in hull] == ["a", "b", "d"]      # c lies above the chord b-d, e and f are dominated
    slopes = [(q[1] - p[1]) / (q[0] - p[0]) for p, q in zip(hull, hull[1:])]
    assert slopes == sorted(slopes)


@pytest.mark.parametrize("seed", range(6))
def test_allocation_fits_the_budget_and_no_single_upgrade_is_left(seed):
    sizes, costs = _problem(seed, 40)
    n_el = 100_000
    fixed = 1000
    lo = fixed + sum(min(s.values()) for s in sizes.values())
    hi = fixed + sum(max(s.values()) for s in sizes.values())
    for frac in (0.1, 0.4, 0.8):
        bpw = (lo + frac * (hi - lo)) * 8 / n_el
        a = al.allocate(sizes, costs, fixed, n_el, bpw)
        used = fixed + _total(sizes, a.types)
        assert used * 8 <= bpw * n_el + 1e-9
        assert a.bits_per_weight == pytest.approx(used * 8 / n_el)
        assert used * 8 >= 0.97 * bpw * n_el            # 40 weights of a few % each: within 3 %
        for n, s in sizes.items():                      # what is left cannot buy any improvement
            for t, b in s.items():
                if costs[n][t] < costs[n][a.types[n]]:
                    assert used - s[a.types[n]] + b > bpw * n_el / 8


@pytest.mark.parametrize("seed", range(8))
def test_allocation_is_close_to_the_exhaustive_optimum(seed):
    sizes, costs = _problem(100 + seed, 6)
    n_el, fixed = 10_000, 0
    lo = sum(min(s.values()) for s in sizes.values())
    hi = sum(max(s.values()) for s in sizes.values())
    budget_bytes = lo + 0.5 * (hi - lo)
    bpw = budget_bytes * 8 / n_el
    a = al.allocate(sizes, costs, fixed, n_el, bpw)
    names = list(sizes)
    best = min(sum(costs[n][t] for n, t in zip(names, combo))
               for combo in itertools.product(*(list(sizes[n]) for n in names))
               if sum(sizes[n][t] for n, t in zip(names, combo)) <= budget_bytes)
    got = sum(costs[n][t] for n, t in a.types.items())
    # greedy on the hulls is optimal up to one step of one weight: bound by the largest step
    step = max(costs[n][t1] - costs[n][t2] for n in names for t1 in sizes[n] for t2 in sizes[n])
    assert best <= got <= best + step


def test_below_the_smallest_file_is_a_clear_error():
    sizes, costs = _problem(1, 5)
    n_el = 10_000
    lo = sum(min(s.values()) for s in sizes.values())
    with pytest.raises(ConvertError, match=r"smallest file has [0-9.]+ bits per weight"):
        al.allocate(sizes, costs, 0, n_el, 0.99 * lo * 8 / n_el)


# ---------------------------------------------------------------- sensitivities against real KL

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_llama.build(tmp_path_factory.mktemp("budget") / "m", steps=60, layers=2)


def _setup(model_dir, *extra):
    from mpq2 import convert as cv, pipeline, plan as pl, skeleton
    opts = cv.options(cv.parse_args([str(model_dir), "-o", str(model_dir.parent / "unused.gguf"), "--quiet",
                                     "--nsamples", "16", "--seqlen", "64", *extra]))
    inp = pipeline.open_model(opts.model)
    skel = skeleton.build(inp.config)
    return opts, inp, skel, pl.make_plan(inp, skel, opts)


def _kl(model, seqs, p_ref):
    with torch.no_grad():
        logp = torch.log_softmax(model(seqs).logits.float(), -1)
    return float((p_ref.exp() * (p_ref - logp)).sum(-1).mean())


def test_predicted_cost_matches_the_measured_kl(tiny):
    """Each weight alone at q4_0 and at MPQ2R: the predicted KL (second order, sampled labels)
    against the KL of the float model with that weight replaced, on the same tokens."""
    from transformers import AutoModelForCausalLM
    from mpq2 import budget, calibration, sensitivity
    opts, inp, skel, plan = _setup(tiny)
    seqs = calibration.calibration_batch(inp.tokenizer, None, 16, 64, 0)
    cand = {n: ["mpq2r", "q4_0"] for n in budget.candidates(plan, opts)}
    costs = sensitivity.measure(inp, skel, plan, seqs, cand, opts)
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    with torch.no_grad():
        p_ref = torch.log_softmax(model(seqs).logits.float(), -1)
    params = dict(model.named_parameters())
    by_name = {w.name: w for w in plan.weights()}
    ratios = []
    for name, types in cand.items():
        w = by_name[name]
        W = params[w.hf]
        orig = W.data.clone()
        for t in types:
            # our type: the same encoder as the measurement, with this layer's Hessian
            g = _layer_gptq(model, w.hf, seqs) if t == "mpq2r" else None
            W.data = orig + sensitivity.delta(orig, t, g, opts)
            measured = _kl(model, seqs, p_ref)
            W.data = orig
            ratios.append(costs[name][t] / measured)
    ratios.sort()
    med = ratios[len(ratios) // 2]
    # second order in a small perturbation: the median within 25 %, every weight within 2.5x
    assert 0.75 < med < 1.33, ratios
    assert 0.4 < ratios[0] and ratios[-1] < 2.5, ratios


def _layer_gptq(model, hf_name, seqs):
    from mpq2.gptq import MPQ2GPTQ
    mod_name = hf_name.rsplit(".", 1)[0]
    if mod_name == "model.embed_tokens":     # tied: the output projection's input
        mod = model.lm_head
    else:
        mod = dict(model.named_modules())[mod_name]
    g = MPQ2GPTQ(mod.weight.shape)
    hook = mod.register_forward_hook(lambda m, i, o: g.add_batch(i[0]))
    with torch.no_grad():
        model(seqs)
    hook.remove()
    return g


# ---------------------------------------------------------------- the converter with a budget

def _file_bpw(path):
    r = gguf.GGUFReader(path)
    bits = sum(int(t.n_bytes) * 8 for t in r.tensors)
    return bits / sum(int(t.n_elements) for t in r.tensors), {t.name: t.tensor_type.name for t in r.tensors}


@pytest.mark.slow
def test_convert_with_a_budget(tiny, tmp_path):
    _, _, _, plan = _setup(tiny, "--attn-v-type", "mpq2r")          # every weight at MPQ2R: the file it plans
    base_bpw = 8 * sum(s.nbytes for s in plan.specs) / sum(math.prod(s.shape) for s in plan.specs)
    out = tmp_path / "b.gguf"
    target = base_bpw + 1.5
    sens = tmp_path / "sens.json"
    args = ["--nsamples", "8", "--seqlen", "64", "--sensitivities", sens]
    proc = h.convert(tiny, "-o", out, *args, "--bpw", f"{target:.3f}")
    assert "measuring the sensitivity" in proc.stderr and sens.is_file()
    got, types = _file_bpw(out)
    assert got <= target * 1.0001 and got > base_bpw + 0.5, (got, target)
    assert {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"} & set(types.values()), types      # some weights moved up
    assert "predicted KL" in proc.stdout
    # the same budget from the saved sensitivities: not measured again, the same file
    again = tmp_path / "again.gguf"
    proc = h.convert(tiny, "-o", again, *args, "--bpw", f"{target:.3f}")
    assert "measuring" not in proc.stderr and "sensitivities read from" in proc.stderr
    assert again.read_bytes() == out.read_bytes()
    # another calibration does not reuse them
    other = tmp_path / "other.gguf"
    proc = h.convert(tiny, "-o", other, *args, "--seed", "1", "--bpw", f"{target:.3f}", check=False)
    h.assert_clean_failure(proc, other, "--sensitivities", "another input, calibration")
    # llama.cpp runs it
    text = tmp_path / "t.txt"
    text.write_text(tiny_llama.corpus(200, seed=5))
    assert math.isfinite(h.perplexity(out, text, 64))
    # below the all-MPQ2R file: the 2.25-bit tier (MPQ2S) takes the least sensitive weights
    low = tmp_path / "low.gguf"
    proc = h.convert(tiny, "-o", low, *args, "--bpw", f"{base_bpw - 0.1:.3f}")
    got, types = _file_bpw(low)
    assert got <= (base_bpw - 0.1) * 1.0001 and "MPQ2S" in types.values(), (got, types)
    assert math.isfinite(h.perplexity(low, text, 64))


def test_budget_below_the_smallest_file_fails_cleanly(tiny, tmp_path):
    out = tmp_path / "x.gguf"
    proc = h.convert(tiny, "-o", out, *h.FAST, "--bpw", "1.5", check=False)
    h.assert_clean_failure(proc, out, "--bpw 1.5", "smallest file")
