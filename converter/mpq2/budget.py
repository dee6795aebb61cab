"""The `--bpw` stage: candidate types per weight, their measured sensitivities, the allocation,
and the plan retyped to it (before the output's header is written, so every type is fixed)."""
from __future__ import annotations

import json
from collections import Counter
import math
import os
import time

from . import calibration, sensitivity
from .allocate import LADDER, Allocation, allocate, bytes_of, check_budget
from .errors import ConvertError
from .gguf_out import fits
from .plan import Plan, Weight, qtype_of


def is_fixed(w: Weight, plan: Plan, opts) -> bool:
    """A type the user asked for (--tensor-type, or an explicit --output-type, --embd-type or
    --attn-v-type) is kept, not allocated."""
    if any(pat.search(w.name) for pat, _ in opts.overrides):
        return True
    if w is plan.output:
        return "output_type" in opts.explicit_types
    if w is plan.embedding:
        return "embd_type" in opts.explicit_types
    return w.name.endswith("attn_v.weight") and "attn_v_type" in opts.explicit_types


def bottom_types(type_name: str) -> list[str]:
    """Our candidates under --bpw: the rotated family has MPQ2S (2.25 bpw, rows of 128) below
    MPQ2R (2.5); plain MPQ2 stays alone (the paper's layout)."""
    return ["mpq2"] if type_name == "mpq2" else ["mpq2s", "mpq2r"]


def candidates(plan: Plan, opts) -> dict[str, list[str]]:
    """GGUF name -> candidate types (smallest first) of every weight whose type is allocated."""
    out = {}
    for w in plan.weights():
        if not is_fixed(w, plan, opts):
            types = [t for t in [*bottom_types(opts.type), *LADDER] if fits(t, w.shape[1])]
            if types:
                out[w.name] = types
    return out


def choose_types(inp, skel, plan: Plan, opts, say) -> Allocation:
    """Measures the sensitivities on the first calibration sequences and allocates the budget."""
    cand = candidates(plan, opts)
    by_name = {w.name: w for w in plan.weights()}
    sizes = {n: {t: bytes_of(by_name[n].shape, qtype_of(t)) for t in ts} for n, ts in cand.items()}
    fixed = sum(s.nbytes for s in plan.specs if s.name not in cand)
    n_elements = sum(math.prod(s.shape) for s in plan.specs)
    check_budget(sizes, fixed, n_elements, opts.bpw)          # below the smallest file: say so before any work
    costs = _load(opts, cand)
    if costs is None:
        seqs = calibration.calibration_batch(inp.tokenizer, opts.calib_file, opts.nsamples, opts.seqlen, opts.seed)
        seqs = sensitivity_batch(seqs, opts.sensitivity_tokens)
        n_types = len({t for ts in cand.values() for t in ts})
        say(f"--bpw {opts.bpw}: measuring the sensitivity of {len(cand)} weights at {n_types} types "
            f"on {seqs.numel()} tokens")
        t0 = time.time()
        costs = sensitivity.measure(inp, skel, plan, seqs, cand, opts)
        plan.notes.append(f"--bpw: sensitivities of {len(cand)} weights measured on {seqs.numel()} tokens "
                          f"in {time.time() - t0:.0f} s")
        _save(opts, cand, costs)
    else:
        say(f"--bpw {opts.bpw}: sensitivities read from {opts.sensitivities}")
    alloc = allocate(sizes, costs, fixed, n_elements, opts.bpw)
    say(f"--bpw {opts.bpw}: {alloc.bits_per_weight:.3f} bits per weight, predicted KL "
        f"{sum(alloc.predicted.values()):.4f} nats/token; " + _census(alloc))
    return alloc


def _key(opts, cand) -> dict:
    """What the sensitivities depend on: the input, the calibration, the candidates."""
    fp = opts.fingerprint
    return {k: fp.get(k) for k in ("model", "calib_file", "nsamples", "seqlen", "seed", "sensitivity_tokens",
                                   "salient_fraction", "salience", "no_gate", "all_2bit", "percdamp")} | \
        {"input": opts.input_identity, "candidates": cand}


def _load(opts, cand):
    """--sensitivities FILE: the costs of an earlier run with the same key, else None."""
    path = opts.sensitivities
    if path is None or not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except ValueError as e:
        raise ConvertError(f"--sensitivities {path}: not a sensitivity file ({e}); delete it or name another") from e
    if saved.get("key") != json.loads(json.dumps(_key(opts, cand))):
        raise ConvertError(f"--sensitivities {path} was measured for another input, calibration or set of "
                           f"candidates; delete it or name another file")
    return saved["costs"]


def _save(opts, cand, costs) -> None:
    if opts.sensitivities is not None:
        tmp = opts.sensitivities.with_name(opts.sensitivities.name + ".tmp")
        tmp.write_text(json.dumps({"key": _key(opts, cand), "costs": costs}, indent=1))
        os.replace(tmp, opts.sensitivities)


def sensitivity_batch(seqs, tokens: int, n_seqs: int = 16):
    """About `tokens` calibration tokens as up to `n_seqs` sequences (their first positions, at
    least 64 of them): the keys' per-sequence estimate (sensitivity._cost) needs many sequences."""
    n = min(n_seqs, seqs.shape[0])
    length = min(seqs.shape[1], max(64, math.ceil(tokens / n)))
    n = min(seqs.shape[0], max(n, math.ceil(tokens / length)))
    return seqs[:n, :length]


def _census(alloc: Allocation) -> str:
    return ", ".join(f"{n} x {t}" for t, n in Counter(alloc.types.values()).most_common())

