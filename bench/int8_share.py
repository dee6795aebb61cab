#!/usr/bin/env python3
"""How often the converter's gate keeps the int8 word kind, per tensor class, from the --report
JSON of a conversion (its `k` column: int8 words / all words of each MPQ2/MPQ2R tensor).

    python3 bench/int8_share.py REPORT.json [REPORT.json ...]     # a markdown table per report
"""
from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict


def shares(report: dict) -> dict[str, tuple[int, int]]:
    """{tensor class: (int8 words, words)} over the tensors whose `k` is "K/N"."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for t in report["tensors"]:
        m = re.fullmatch(r"(\d+)/(\d+)", str(t.get("k", "")))
        if m:
            cls = re.sub(r"^blk\.\d+\.", "", t["name"]).removesuffix(".weight")
            out[cls][0] += int(m.group(1))
            out[cls][1] += int(m.group(2))
    return {k: (a, b) for k, (a, b) in sorted(out.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+")
    for path in ap.parse_args().reports:
        s = shares(json.load(open(path)))
        print(f"{path}\n\n| tensor class | int8 words | words | per million |\n|---|---|---|---|")
        for cls, (a, b) in {**s, "all": tuple(map(sum, zip(*s.values())))}.items():
            print(f"| {cls} | {a} | {b} | {a / b * 1e6:.2f} |")
        print()


if __name__ == "__main__":
    main()
