"""Builds a tiny, briefly trained Llama with a sentencepiece tokenizer trained on the fly,
saved like a Hugging Face model directory (safetensors, config.json, tokenizer.model)."""
from __future__ import annotations

import json
import random
from pathlib import Path

SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "a small bird", "the teacher", "her brother", "the farmer"]
VERBS = ["sees", "likes", "finds", "paints", "follows", "calls", "watches", "helps"]
OBJECTS = ["the red ball", "a green tree", "the river", "a quiet house", "the market", "an apple", "the moon", "a letter"]
ENDINGS = ["today", "at night", "in the morning", "again", "near the hill", "with care", "every day", "by the sea"]


def corpus(n_sentences: int, seed: int) -> str:
    rnd = random.Random(seed)
    lines = []
    for _ in range(n_sentences):
        lines.append(f"{rnd.choice(SUBJECTS)} {rnd.choice(VERBS)} {rnd.choice(OBJECTS)} {rnd.choice(ENDINGS)} .")
    return "\n".join(lines) + "\n"


def train_tokenizer(text_file: Path, prefix: Path, vocab_size: int = 320) -> Path:
    import sentencepiece as spm
    spm.SentencePieceTrainer.train(
        input=str(text_file), model_prefix=str(prefix), vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1,
        minloglevel=2)
    return prefix.with_suffix(".model")


ARCHS = {  # architecture -> (config class, model class) in transformers
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
}


def build(out_dir: Path, *, hidden: int = 128, intermediate: int = 384, layers: int = 2, heads: int = 4,
          kv_heads: int = 2, steps: int = 150, seed: int = 0, arch: str = "llama", tied: bool = False,
          max_shard_size: str | None = None) -> Path:
    """Writes the model to out_dir and returns it. About 20 s on 2 cores."""
    import sentencepiece as spm
    import torch
    import transformers
    config_cls, model_cls = (getattr(transformers, name) for name in ARCHS[arch])

    out_dir.mkdir(parents=True, exist_ok=True)
    text_file = out_dir / "train.txt"
    text_file.write_text(corpus(4000, seed))
    sp_model = train_tokenizer(text_file, out_dir / "tokenizer")
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))

    torch.manual_seed(seed)
    extra = {"head_dim": hidden // heads} if arch == "qwen3" else {}
    config = config_cls(vocab_size=sp.get_piece_size(), hidden_size=hidden, intermediate_size=intermediate,
                        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                        max_position_embeddings=512, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
                        tie_word_embeddings=tied, rope_theta=10000.0, **extra)
    model = model_cls(config)
    ids = torch.tensor([1] + sp.encode(text_file.read_text()), dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    seq, batch = 64, 16
    gen = torch.Generator().manual_seed(seed)
    model.train()
    loss = torch.tensor(float("nan"))      # steps=0: random weights (tests of time and memory)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - seq - 1, (batch,), generator=gen)
        x = torch.stack([ids[s:s + seq] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(out_dir, safe_serialization=True,
                          **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        # plain concatenation: the toy vocabulary has no chat markers, and llama-cli needs a template
        "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"}))
    (out_dir / "final_loss.txt").write_text(f"{loss.item():.4f}\n")
    return out_dir
