"""Calibration data: text files -> N token sequences of length L (seeded, reproducible)."""
from __future__ import annotations

from pathlib import Path

import torch

DEFAULT_TEXT = Path(__file__).with_name("data") / "calibration.txt"


def read_texts(files: list[Path] | None) -> str:
    files = files or [DEFAULT_TEXT]
    parts = []
    for f in files:
        f = Path(f)
        if not f.is_file():
            raise FileNotFoundError(f"calibration file not found: {f}")
        parts.append(f.read_text(encoding="utf-8", errors="replace"))
    text = "\n\n".join(parts)
    if not text.strip():
        raise ValueError(f"calibration text is empty: {', '.join(map(str, files))}")
    return text


def sample_sequences(token_ids: list[int], n: int, length: int, seed: int, bos: int | None) -> torch.Tensor:
    """n windows of `length` tokens at random offsets (windows overlap when the text is short);
    each starts with BOS when the tokenizer has one, as llama.cpp's perplexity does."""
    ids = torch.tensor(token_ids, dtype=torch.long)
    body = length - (1 if bos is not None else 0)
    while ids.numel() < body + 1:
        ids = torch.cat([ids, ids])
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - body, (n,), generator=gen)
    seqs = torch.stack([ids[s:s + body] for s in starts.tolist()])
    if bos is not None:
        seqs = torch.cat([torch.full((n, 1), bos, dtype=torch.long), seqs], dim=1)
    return seqs


def token_ids(tokenizer, files: list[Path] | None) -> list[int]:
    ids = tokenizer(read_texts(files), add_special_tokens=False)["input_ids"]
    if len(ids) < 16:
        raise ValueError(f"calibration text gives only {len(ids)} tokens; give more text with --calib-file")
    return ids


def calibration_batch(tokenizer, files: list[Path] | None, n: int, length: int, seed: int) -> torch.Tensor:
    return sample_sequences(token_ids(tokenizer, files), n, length, seed, tokenizer.bos_token_id)


def short_text_note(have: int, n: int, length: int, files: list[Path] | None) -> str | None:
    """Windows of a text shorter than n x length overlap: the Hessians then see the same few
    tokens many times over, and GPTQ fits that text rather than the model's use."""
    if have >= n * length:
        return None
    what = "the converter's short sample text" if not files else ", ".join(str(f) for f in files)
    return (f"warning: the calibration text ({what}) holds {have:,} tokens, fewer than the {n} x {length} = "
            f"{n * length:,} asked for, so the sequences overlap; for a better file give --calib-file a larger text "
            f"of the kind the model will see (at least {n * length:,} tokens: about {n * length * 4 // 1000:,} KB of English)")
