"""Stage 1: the plan. Every output tensor's name, type and shape, in the order the conversion
writes them, fixed before any quantizing starts (so the GGUF header is written first)."""
from __future__ import annotations

from dataclasses import dataclass, field

import gguf
import numpy as np

from . import capture
from .errors import ConvertError
from .gguf_out import OTHER_TYPES, OUR_TYPES, fits
from .gguf_stream import TensorSpec

F32 = gguf.GGMLQuantizationType.F32


@dataclass
class Weight:
    """A weight the converter encodes: where it comes from, where it goes, as what."""
    hf: str
    name: str                       # GGUF name
    type: str                       # one of gguf_out.TYPE_NAMES
    shape: tuple[int, int]
    order: np.ndarray | None        # GGUF row r = HF row order[r]


@dataclass
class Plan:
    n_blocks: int
    tied: bool
    embd_first: bool                # a tied embedding/output is encoded before the blocks
    output: Weight                  # the output projection (with tied embeddings: the embedding too)
    embedding: Weight | None        # an untied token embedding
    blocks: list[dict[str, Weight]]          # per block: linear module name -> weight
    block_plain: list[dict[str, str]]        # per block: parameter name -> GGUF name (norms, biases: F32)
    final_norm: str                          # GGUF name of the final norm
    extra: list[tuple[str, np.ndarray]]      # rope_freqs and the like, written first
    specs: list[TensorSpec] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # fallbacks, said to the user

    def weights(self) -> list[Weight]:
        """Every weight the converter encodes: the output, the untied embedding, the blocks'."""
        ws = [self.output] + ([self.embedding] if self.embedding is not None else [])
        return ws + [w for block in self.blocks for w in block.values()]


def qtype_of(type_name: str) -> gguf.GGMLQuantizationType:
    return OUR_TYPES[type_name][0] if type_name in OUR_TYPES else OTHER_TYPES[type_name]


# A type whose block does not fit a row width tries these first, then --fallback-type.
NEAREST = {"mpq2s": "mpq2r"}


def _typed(name: str, cols: int, default: str, opts, notes: list[str]) -> str:
    typ = default
    for pat, t in opts.overrides:
        if pat.search(name):
            typ = t
    if not fits(typ, cols):
        near = NEAREST.get(typ)
        fallback = near if near and fits(near, cols) else opts.fallback_type if fits(opts.fallback_type, cols) else "f16"
        notes.append(f"{name}: rows of {cols} are not a multiple of the {typ} block; using {fallback}")
        typ = fallback
    return typ


def _weight(inp, hf: str, default, opts, notes) -> Weight:
    """`default`: a type name, or a function of the GGUF name giving one."""
    shape = tuple(inp.source.shape(hf))
    name, order = inp.layout.place(hf, shape[0])
    typ = default(name) if callable(default) else default
    return Weight(hf, name, _typed(name, shape[1], typ, opts, notes), shape, order)


def make_plan(inp, skeleton, opts) -> Plan:
    names = set(inp.source.names())
    config = inp.config
    n_blocks = config.num_hidden_layers
    tied = bool(getattr(config, "tie_word_embeddings", False)) or "lm_head.weight" not in names
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    attn_v_type = opts.attn_v_type if opts.attn_v_type != "auto" else ("q5_0" if n_kv < n_head else opts.type)
    notes: list[str] = []

    out_hf = "model.embed_tokens.weight" if tied else "lm_head.weight"
    output = _weight(inp, out_hf, opts.output_type, opts, notes)
    embedding = None if tied else _weight(inp, "model.embed_tokens.weight", opts.embd_type, opts, notes)
    blocks, block_plain = [], []
    for i, block in enumerate(capture.decoder_layers(skeleton)):
        linears = capture.linear_modules(block)
        ws, plain = {}, {}
        for pname, p in block.named_parameters():
            hf = f"model.layers.{i}.{pname}"
            if hf not in names:
                raise ConvertError(f"{inp.path}: tensor {hf} is missing from the checkpoint")
            mod, _, leaf = pname.rpartition(".")
            if leaf == "weight" and mod in linears:
                ws[mod] = _weight(inp, hf, lambda n: attn_v_type if n.endswith("attn_v.weight") else opts.type,
                                  opts, notes)
            else:
                plain[pname] = inp.layout.place(hf, p.shape[0])[0]
        blocks.append(ws)
        block_plain.append(plain)
    final_norm = inp.layout.place("model.norm.weight", config.hidden_size)[0]
    plan = Plan(n_blocks, tied, opts.embd_first and tied, output, embedding, blocks, block_plain, final_norm,
                inp.layout.extra_tensors(), notes=notes)
    plan.specs = _specs(plan, skeleton)
    return plan


def retype(plan: Plan, types: dict[str, str], skeleton) -> None:
    """The plan with the weights named in `types` given those types (--bpw's allocation)."""
    for w in plan.weights():
        if w.name in types:
            w.type = types[w.name]
    plan.specs = _specs(plan, skeleton)


def _specs(plan: Plan, skeleton) -> list[TensorSpec]:
    """The write order: extra tensors, [the tied embedding], each block's tensors as the block
    names its parameters, the final norm, the output, [the untied embedding]."""
    def spec(w: Weight) -> TensorSpec:
        return TensorSpec(w.name, w.shape, qtype_of(w.type))

    specs = [TensorSpec(name, v.shape, F32) for name, v in plan.extra]
    if plan.embd_first:
        specs.append(spec(plan.output))
    for i, block in enumerate(capture.decoder_layers(skeleton)):
        for pname, p in block.named_parameters():
            mod = pname.rpartition(".")[0]
            if mod in plan.blocks[i] and pname.endswith(".weight"):
                specs.append(spec(plan.blocks[i][mod]))
            else:
                specs.append(TensorSpec(plan.block_plain[i][pname], tuple(p.shape), F32))
    specs.append(TensorSpec(plan.final_norm, (plan.output.shape[1],), F32))
    if not plan.embd_first:
        specs.append(spec(plan.output))
    if plan.embedding is not None:
        specs.append(spec(plan.embedding))
    return specs
