"""`--bpw`: the tensor types that fit a bit budget with the least predicted loss.

Each weight has candidate types (those whose block divides its rows) with a size in bytes and a
predicted cost (sensitivity.py). The budget counts every tensor of the file, F32 norms included,
over all its elements. The allocation starts every weight at its smallest candidate and spends
the remaining bytes greedily on the step with the largest cost decrease per byte, along each
weight's lower convex hull of (bytes, cost); once no hull step fits, any single upgrade that
still fits is taken, best first. Convex-hull greedy is the classic answer to this knapsack
(the optimum of its linear relaxation, short of it by at most one step per weight).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import gguf

from .errors import ConvertError

# Candidate types, smallest first: ours at the bottom, then llama.cpp types with a numpy
# quantizer in gguf-py and a block of 32 (so every row width MPQ2 takes, a multiple of 64).
LADDER = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"]


@dataclass
class Allocation:
    types: dict[str, str]          # GGUF name -> chosen type
    bits_per_weight: float         # of the whole file
    predicted: dict[str, float]    # GGUF name -> predicted cost at the chosen type (nats/token)


def bytes_of(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rows = 1
    for d in shape[:-1]:
        rows *= int(d)
    return rows * (int(shape[-1]) // block) * size


def hull(options: list[tuple[int, float, str]]) -> list[tuple[int, float, str]]:
    """The lower convex hull of (bytes, cost, type), from the smallest: each point cheaper in
    cost than the last, and the slopes increasing (ever less gain per byte)."""
    pts: list[tuple[int, float, str]] = []
    for b, c, t in sorted(options, key=lambda o: (o[0], o[1])):
        if pts and c >= pts[-1][1]:
            continue                      # larger and no better
        while len(pts) >= 2:
            (b1, c1, _), (b2, c2, _) = pts[-2], pts[-1]
            if (c2 - c1) * (b - b1) >= (c - c1) * (b2 - b1):   # pts[-1] lies on or above the chord
                pts.pop()
            else:
                break
        pts.append((b, c, t))
    return pts


def allocate(sizes: dict[str, dict[str, int]], costs: dict[str, dict[str, float]], fixed_bytes: int,
             n_elements: int, bpw: float) -> Allocation:
    """`sizes`/`costs`: per weight, per candidate type; `fixed_bytes`: every other tensor's bytes;
    `n_elements`: of the whole file. Raises ConvertError below the smallest possible file."""
    budget = bpw * n_elements / 8.0
    check_budget(sizes, fixed_bytes, n_elements, bpw)
    pick = {n: min(s, key=lambda t: (s[t], costs[n][t])) for n, s in sizes.items()}
    used = fixed_bytes + sum(sizes[n][t] for n, t in pick.items())
    hulls = {n: hull([(sizes[n][t], costs[n][t], t) for t in sizes[n]]) for n in sizes}
    for n in sizes:                       # start at the hull's first point (the smallest, best)
        used += hulls[n][0][0] - sizes[n][pick[n]]
        pick[n] = hulls[n][0][2]
    step = {n: 0 for n in sizes}
    heap = [(_slope(hulls[n], 0), n) for n in sizes if len(hulls[n]) > 1]
    heapq.heapify(heap)
    while heap:
        _, n = heapq.heappop(heap)
        k = step[n]
        extra = hulls[n][k + 1][0] - hulls[n][k][0]
        if used + extra > budget:
            continue                      # the rest of this hull is larger still
        used += extra
        step[n] = k + 1
        pick[n] = hulls[n][k + 1][2]
        if k + 2 < len(hulls[n]):
            heapq.heappush(heap, (_slope(hulls[n], k + 1), n))
    used = _fill(sizes, costs, pick, used, budget)
    return Allocation(pick, used * 8 / n_elements, {n: costs[n][t] for n, t in pick.items()})


def check_budget(sizes: dict[str, dict[str, int]], fixed_bytes: int, n_elements: int, bpw: float) -> None:
    """Raises ConvertError when even every weight at its smallest type exceeds the budget."""
    smallest = fixed_bytes + sum(min(s.values()) for s in sizes.values())
    if smallest * 8 > bpw * n_elements:
        raise ConvertError(f"--bpw {bpw}: this model's smallest file has {smallest * 8 / n_elements:.3f} bits per "
                           f"weight (every weight at its smallest type; norms and the tensors of fixed type count "
                           f"too); ask for at least that")


def _slope(h, k: int) -> float:
    """Cost change per byte of hull step k -> k+1 (negative: the smallest is the best)."""
    return (h[k + 1][1] - h[k][1]) / (h[k + 1][0] - h[k][0])


def _fill(sizes, costs, pick, used: int, budget: float) -> int:
    """Any single upgrade that still fits, the largest gain per byte first, until none does."""
    while True:
        best = None
        for n, s in sizes.items():
            for t, b in s.items():
                gain = costs[n][pick[n]] - costs[n][t]
                extra = b - s[pick[n]]
                if extra > 0 and gain > 0 and used + extra <= budget:
                    key = gain / extra
                    if best is None or key > best[0]:
                        best = (key, n, t, extra)
        if best is None:
            return used
        _, n, t, extra = best
        pick[n] = t
        used += extra
