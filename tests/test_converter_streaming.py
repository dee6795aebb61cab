"""convert_mpq.py at scale, on tiny models: streaming input gives the bytes of the in-memory
path, sharded input those of one file, a resumed run those of an uninterrupted one, --device
cpu runs the device path; peak memory does not grow with the number of layers; damaged shards,
bad indexes and bad --resume requests get a clear error and leave nothing."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import e2e_helpers as h
import tiny_llama

pytestmark = pytest.mark.slow
CONVERT, FAST, convert, assert_clean_failure = h.CONVERT, h.FAST, h.convert, h.assert_clean_failure


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    one = tiny_llama.build(root / "one", steps=30)
    # the same weights in shards of ~100 KB with an index, as the hub writes big models
    sharded = tiny_llama.build(root / "sharded", steps=30, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    out = root / "one.gguf"
    convert(one, "-o", out, *FAST)
    return {"root": root, "one": one, "sharded": sharded, "out": out}


def test_sharded_input_gives_the_same_file(models):
    out = models["root"] / "sharded.gguf"
    convert(models["sharded"], "-o", out, *FAST)
    assert _contents(out) == _contents(models["out"])


def _contents(path: Path) -> tuple[dict, dict]:
    """Tensors and metadata, but the model's name (llama.cpp takes it from the directory's)."""
    import gguf
    r = gguf.GGUFReader(path)
    kv = {f.name: f.contents() for f in r.fields.values() if f.name not in ("general.name", "general.basename")}
    return {t.name: (t.tensor_type, bytes(t.data)) for t in r.tensors}, kv


def test_streaming_gives_the_bytes_of_the_in_memory_path(models, tmp_path, monkeypatch):
    """The whole model loaded by transformers, handed to the pipeline as an in-memory state
    dict, against the default lazy, block-at-a-time reading of the shards."""
    import torch
    from transformers import AutoModelForCausalLM

    from mpq2 import pipeline
    from mpq2.convert import options, parse_args
    from mpq2.source import StateDictSource

    full = AutoModelForCausalLM.from_pretrained(models["one"], dtype=torch.float32).state_dict()
    full = {k: v for k, v in full.items() if k != "lm_head.weight" or "lm_head.weight" in _st_names(models["one"])}
    real_open = pipeline.open_model

    def in_memory(path):
        inp = real_open(path)
        inp.source = StateDictSource(full, "in-memory")
        return inp

    monkeypatch.setattr(pipeline, "open_model", in_memory)
    out = tmp_path / "mem.gguf"
    pipeline.convert(options(parse_args([str(models["one"]), "-o", str(out), *FAST])))
    assert out.read_bytes() == models["out"].read_bytes()


def _st_names(d: Path) -> set[str]:
    from safetensors import safe_open
    names = set()
    for f in d.glob("*.safetensors"):
        with safe_open(str(f), "pt") as s:
            names |= set(s.keys())
    return names


def test_device_cpu_runs_the_device_path(models, tmp_path):
    out = tmp_path / "cpu.gguf"
    convert(models["one"], "-o", out, *FAST, "--device", "cpu")
    assert out.read_bytes() == models["out"].read_bytes()
    proc = convert(models["one"], "-o", tmp_path / "x.gguf", *FAST, "--device", "cuda", check=False)
    if proc.returncode != 0:      # no CUDA here: a clear error, no file
        assert "--device cuda" in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "x.gguf").exists()


def _wait_for_checkpoint(state: Path, proc, timeout=300) -> None:
    deadline = time.time() + timeout
    while not state.is_file():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_resume_after_an_interrupt_is_byte_identical(models, tmp_path, sig):
    args = ["--nsamples", "32", "--seqlen", "128", "--quiet"]
    ref = tmp_path / "ref.gguf"
    convert(models["one"], "-o", ref, *args)
    out = tmp_path / "o.gguf"
    state = tmp_path / "o.gguf.mpq2-resume" / "state.json"
    # SIGINT back to its default in the child (a shell without job control starts it ignored)
    proc = subprocess.Popen([sys.executable, CONVERT, models["one"], "-o", out, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_checkpoint(state, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err and not out.exists()
    done = json.loads(state.read_text())["next_block"]
    assert done >= 1
    again = convert(models["one"], "-o", out, *args, check=False)    # without --resume: refused, state kept
    assert again.returncode == 1 and "--resume" in again.stderr and state.is_file()
    convert(models["one"], "-o", out, *args, "--resume")
    assert out.read_bytes() == ref.read_bytes()
    assert not state.parent.exists()                                  # a finished run leaves nothing


def test_resume_with_other_options_is_refused(models, tmp_path):
    out = tmp_path / "o.gguf"
    args = ["--nsamples", "32", "--seqlen", "128", "--quiet"]
    state = tmp_path / "o.gguf.mpq2-resume" / "state.json"
    proc = subprocess.Popen([sys.executable, CONVERT, models["one"], "-o", out, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(state, proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    before = state.read_bytes()
    bad = convert(models["one"], "-o", out, *args, "--seed", "5", "--resume", check=False)
    assert bad.returncode == 1 and "--seed" in bad.stderr and "Traceback" not in bad.stderr
    assert state.read_bytes() == before and not out.exists()          # the saved work is untouched
    convert(models["one"], "-o", out, *args, "--force")               # --force starts over
    assert out.exists() and not state.parent.exists()


def test_resume_without_state_is_refused(models, tmp_path):
    out = tmp_path / "o.gguf"
    proc = convert(models["one"], "-o", out, *FAST, "--resume", check=False)
    assert proc.returncode == 1 and "no interrupted run" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def _damaged_copy(models, tmp_path, name) -> tuple[Path, Path]:
    import shutil
    bad = tmp_path / name
    shutil.copytree(models["sharded"], bad)
    index = json.loads((bad / "model.safetensors.index.json").read_text())
    return bad, index


def test_missing_shard(models, tmp_path):
    bad, index = _damaged_copy(models, tmp_path, "missing")
    shard = sorted(set(index["weight_map"].values()))[1]
    (bad / shard).unlink()
    out = tmp_path / "o.gguf"
    assert_clean_failure(convert(bad, "-o", out, *FAST, check=False), out, shard, "missing")


def test_truncated_shard(models, tmp_path):
    bad, index = _damaged_copy(models, tmp_path, "trunc")
    shard = bad / sorted(set(index["weight_map"].values()))[-1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size - 100])
    out = tmp_path / "o.gguf"
    assert_clean_failure(convert(bad, "-o", out, *FAST, check=False), out, shard.name, "truncated")


def test_index_naming_a_missing_tensor(models, tmp_path):
    bad, index = _damaged_copy(models, tmp_path, "index")
    first = sorted(index["weight_map"].values())[0]
    index["weight_map"]["model.layers.0.mlp.extra_proj.weight"] = first
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    out = tmp_path / "o.gguf"
    assert_clean_failure(convert(bad, "-o", out, *FAST, check=False), out, "model.layers.0.mlp.extra_proj.weight")


def test_a_tokenizer_llama_cpp_cannot_export_stops_before_any_work(models, monkeypatch):
    """llama.cpp's vocabulary export fails deep inside with a bare assert (a BPE tokenizer with a
    token past config.json's vocab_size, as transformers' GGUF reader once made of Llama 3's) or an
    IndexError: opening the model must turn that into an error naming the model and the likely
    cause, before any work (a --bpw sensitivity pass can take as long as the conversion)."""
    from mpq2 import layout, pipeline
    from mpq2.errors import ConvertError
    conv = layout._import_llama_cpp_converter()
    cls = conv.get_model_class("LlamaForCausalLM")

    def fails(self, vocab_only=False):
        assert False
    monkeypatch.setattr(cls, "prepare_metadata", fails)
    with pytest.raises(ConvertError, match="convert_hf_to_gguf.py cannot export") as e:
        pipeline.open_model(models["one"])
    assert str(models["one"]) in str(e.value) and "vocab_size" in str(e.value)


def _peak_rss_mb(model: Path, out: Path) -> float:
    convert(model, "-o", out, "--nsamples", "4", "--seqlen", "64", "--tune-norms", "0", "--report", out.with_suffix(".json"))
    return json.loads(out.with_suffix(".json").read_text())["peak_rss_mb"]


def test_peak_memory_does_not_grow_with_the_number_of_layers(tmp_path):
    """Random 512-wide models of 2 and 12 layers, 17 MB of float32 weights per layer: a
    converter that held the model in float32 would peak 160 MB higher with 12 layers. Ours
    holds one block; its peak varies by about +-30 MB from block to block (GPTQ's transient
    buffers, the allocator), so the margin is 60 MB."""
    two = tiny_llama.build(tmp_path / "two", hidden=512, intermediate=2048, layers=2, heads=8, kv_heads=8, steps=0)
    many = tiny_llama.build(tmp_path / "many", hidden=512, intermediate=2048, layers=12, heads=8, kv_heads=8, steps=0)
    per_layer_mb = (4 * 512 * 512 + 3 * 512 * 2048) * 4 / 2**20
    p2 = _peak_rss_mb(two, tmp_path / "two.gguf")
    p12 = _peak_rss_mb(many, tmp_path / "many.gguf")
    print(f"peak RSS: 2 layers {p2:.0f} MB, 12 layers {p12:.0f} MB; 10 layers of float32 weights = {10 * per_layer_mb:.0f} MB")
    assert p12 - p2 < 60, (p2, p12)
    assert 10 * per_layer_mb > 150        # the test can tell: holding the model would fail it


def test_report_gives_the_time_of_every_stage(models, tmp_path):
    """--report's stage_seconds: every stage the run went through, nested ones inside their
    stage (the Hessians inside the blocks), the blocks' sum at most the blocks' stage."""
    out = tmp_path / "o.gguf"
    proc = convert(models["one"], "-o", out, *FAST, "--report", tmp_path / "r.json")
    rep = json.loads((tmp_path / "r.json").read_text())
    st = rep["stage_seconds"]
    for name in ("open the model", "calibrate", "blocks", "hessians", "encode (GPTQ or round to nearest)",
                 "block forwards", "output"):
        assert st.get(name, 0) > 0, (name, st)
    assert st["hessians"] < st["blocks"] < rep["wall_seconds"]
    assert sum(b["seconds"] for b in rep["blocks"]) <= st["blocks"] * 1.01
    assert "time by stage" in proc.stdout


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    """A tied embedding (the float pass runs first) with three blocks."""
    return tiny_llama.build(tmp_path_factory.mktemp("tied") / "m", layers=3, tied=True, steps=30)


def _convert_in_process(model: Path, out: Path, *extra: str):
    from mpq2 import pipeline
    from mpq2.convert import options, parse_args
    return pipeline.convert(options(parse_args([str(model), "-o", str(out), *FAST, *extra])))


def test_float_pass_outputs_read_back_give_the_same_bytes(tied, tmp_path, monkeypatch):
    """The float pass keeps each block's float output for the blocks (no second float forward
    of any block); the file equals one whose blocks compute them again."""
    from mpq2 import capture, pipeline
    calls = []
    real = capture.run_block
    monkeypatch.setattr(capture, "run_block", lambda *a: calls.append(1) or real(*a))
    _convert_in_process(tied, tmp_path / "spooled.gguf")
    spooled_calls = len(calls)
    calls.clear()
    monkeypatch.setattr(pipeline, "spool_fits", lambda *a: False)
    _convert_in_process(tied, tmp_path / "again.gguf")
    assert (tmp_path / "spooled.gguf").read_bytes() == (tmp_path / "again.gguf").read_bytes()
    assert len(calls) - spooled_calls == 3, (len(calls), spooled_calls)     # one float forward per block saved
    assert not list(tmp_path.glob("*.mpq2-resume"))


def test_resume_with_a_tied_embedding_is_byte_identical(tied, tmp_path, monkeypatch):
    """Stopped in the second block, after the float pass: its spooled outputs are in the run's
    state, and the resumed file equals an uninterrupted one."""
    from mpq2 import pipeline
    ref = tmp_path / "ref.gguf"
    _convert_in_process(tied, ref)
    real = pipeline.quantize_block

    def stop_at_block_1(i, *a):
        if i == 1:
            raise KeyboardInterrupt
        return real(i, *a)

    out = tmp_path / "o.gguf"
    monkeypatch.setattr(pipeline, "quantize_block", stop_at_block_1)
    with pytest.raises(KeyboardInterrupt):
        _convert_in_process(tied, out)
    state = tmp_path / "o.gguf.mpq2-resume"
    assert sorted(p.name for p in state.glob("float-*.pt")) == ["float-1.pt", "float-2.pt"]
    monkeypatch.setattr(pipeline, "quantize_block", real)
    _convert_in_process(tied, out, "--resume")
    assert out.read_bytes() == ref.read_bytes()
    assert not state.exists()
