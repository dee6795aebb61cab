"""The transformers model as an empty skeleton on the `meta` device: the architecture's own
forward code, with one block's weights loaded onto the compute device when its turn comes and
dropped after. Memory holds one block, never the model."""
from __future__ import annotations

import ctypes
import ctypes.util
import gc

import torch
from torch import nn

from .errors import ConvertError
from .source import Source


try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _libc.malloc_trim
except (OSError, AttributeError):       # not glibc (macOS): nothing to trim
    _libc = None


def build(config) -> nn.Module:
    """The model without weights; rotary embeddings are rebuilt on the device by `place_rotary`."""
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    return model


def place_rotary(model: nn.Module, device: torch.device) -> None:
    """The rotary embedding's buffers are computed from the config, not loaded: rebuild them."""
    rot = model.model.rotary_emb
    with torch.device(device):
        model.model.rotary_emb = type(rot)(config=model.config)


def blocks(model: nn.Module) -> nn.ModuleList:
    return model.model.layers


def _load_into(module: nn.Module, tensors: dict[str, torch.Tensor], device: torch.device, what: str) -> None:
    want = dict(module.named_parameters())
    missing = sorted(set(want) - set(tensors))
    if missing:
        raise ConvertError(f"{what}: the checkpoint lacks {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    module.to_empty(device=device)
    for name, p in module.named_parameters():
        t = tensors[name]
        if tuple(t.shape) != tuple(p.shape):
            raise ConvertError(f"{what}.{name}: shape {tuple(t.shape)} in the checkpoint, {tuple(p.shape)} in its config")
        p.data.copy_(t)


def load_block(model: nn.Module, i: int, source: Source, device: torch.device) -> nn.Module:
    block = blocks(model)[i]
    _load_into(block, source.block(f"model.layers.{i}."), device, f"model.layers.{i}")
    return block


def load_module(module: nn.Module, source: Source, prefix: str, device: torch.device) -> nn.Module:
    _load_into(module, source.block(prefix), device, prefix.rstrip("."))
    return module


def release(module: nn.Module) -> None:
    """Back to the meta device, and its memory handed back to the system: glibc keeps freed
    blocks in its arenas, and a block's worth of fragments per block made the peak drift up
    with the number of layers (tests/test_converter_streaming.py)."""
    module.to_empty(device="meta")
    gc.collect()
    if _libc is not None:
        _libc.malloc_trim(0)


def embed(weight_rows, token_ids: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Token embeddings of `token_ids` (n, L) from `weight_rows(slice)` (rows of the embedding
    matrix): read in row chunks, so a 128k-row embedding is never whole in memory."""
    flat = token_ids.reshape(-1)
    top = int(flat.max()) + 1
    out = None
    for lo in range(0, top, chunk):
        hi = min(lo + chunk, top)
        mask = (flat >= lo) & (flat < hi)
        if not mask.any():
            continue
        rows = weight_rows(slice(lo, hi))
        if out is None:
            out = torch.empty(flat.numel(), rows.shape[1], dtype=torch.float32)
        out[mask] = rows[flat[mask] - lo]
    return out.reshape(*token_ids.shape, -1)
