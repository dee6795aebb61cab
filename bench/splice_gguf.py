#!/usr/bin/env python3
"""Tensor-class sensitivity: a GGUF whose tensors come from BASE except those whose name matches
--take, which come from DONOR (same model, another type).

    python3 bench/splice_gguf.py smollm2-mpq2.gguf smollm2-q8_0.gguf --take 'attn_v' -o out.gguf
    python3 bench/splice_gguf.py smollm2-mpq2.gguf smollm2-q8_0.gguf --take '^$' --add-output smollm2-q8_0.gguf -o untied.gguf

Swapping one class of tensors back to a high-precision copy and measuring the perplexity says
how much of the quantized file's loss that class carries (issue #6: which tensors lose most).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "converter"))
import gguf  # noqa: E402

from mpq2 import gguf_out  # noqa: E402


def splice(base: Path, donor: Path, take: str, out: Path, force: bool, add_output: Path | None = None) -> list[str]:
    rb, rd = gguf.GGUFReader(base), gguf.GGUFReader(donor)
    extra = {}
    if add_output is not None:   # untie: the output projection becomes its own tensor
        if any(t.name == "output.weight" for t in rb.tensors):
            raise SystemExit(f"{base} already has an output.weight (its embedding is not tied)")
        src = {t.name: t for t in gguf.GGUFReader(add_output).tensors}.get("token_embd.weight")
        if src is None:
            raise SystemExit(f"{add_output}: no token_embd.weight")
        extra["output.weight"] = gguf_out.Replacement(src.data, src.tensor_type)
    donors = {t.name: t for t in rd.tensors}
    pattern = re.compile(take)
    taken = {}
    for t in rb.tensors:
        if not pattern.search(t.name):
            continue
        d = donors.get(t.name)
        if d is None:
            raise SystemExit(f"{donor}: no tensor {t.name} (matched by --take {take!r})")
        if [int(x) for x in d.shape] != [int(x) for x in t.shape]:
            raise SystemExit(f"{t.name}: shape {list(d.shape)} in {donor} but {list(t.shape)} in {base}")
        taken[t.name] = gguf_out.Replacement(d.data, d.tensor_type)
    if not taken and not extra:
        raise SystemExit(f"--take {take!r} matches no tensor of {base}")
    ftype = int(rb.fields[gguf.Keys.General.FILE_TYPE].contents()) if gguf.Keys.General.FILE_TYPE in rb.fields else 0
    gguf_out.write_atomic(out, rb, taken, ftype, force, extra)
    return sorted(taken) + sorted(extra)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", type=Path)
    ap.add_argument("donor", type=Path)
    ap.add_argument("--take", required=True, help="regex over tensor names taken from DONOR ('^$': none)")
    ap.add_argument("--add-output", type=Path, default=None,
                    help="untie a tied embedding: add output.weight, a copy of this file's token_embd.weight")
    ap.add_argument("-o", "--outfile", type=Path, required=True)
    ap.add_argument("--force", action="store_true", help="overwrite --outfile")
    a = ap.parse_args()
    names = splice(a.base, a.donor, a.take, a.outfile, a.force, a.add_output)
    print(f"{a.outfile}: {len(names)} tensors from {a.donor.name}, the rest from {a.base.name}")


if __name__ == "__main__":
    main()
