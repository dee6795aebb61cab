"""llama.cpp's RPC backend on loopback: two ggml-rpc-server processes on 127.0.0.1 and
`llama-perplexity --rpc` splitting a tiny MPQ2 model's layers across them. The perplexity equals
a local run's to the printed digits, the MPQ2 weights travel as their MPQ2 bytes, and the remote
side does not repack them (docs/INTEGRATIONS.md, "RPC").

Needs llama.cpp built with GGML_RPC=ON (the main build/ is not): LLAMA_MPQ2_RPC_BIN names its
bin/ directory, else build/bin is used if it has ggml-rpc-server, else <repo>/build-rpc/bin."""
from __future__ import annotations

import collections
import os
import re
from pathlib import Path

import pytest

import e2e_helpers as h
import integration_helpers as ih

pytestmark = pytest.mark.slow

BUILD_RPC = ("cmake -S . -B build-rpc -DCMAKE_BUILD_TYPE=Release -DGGML_RPC=ON && "
             "cmake --build build-rpc -j --target ggml-rpc-server llama-perplexity llama-bench")


def rpc_bin() -> Path:
    candidates = [Path(os.environ["LLAMA_MPQ2_RPC_BIN"])] if os.environ.get("LLAMA_MPQ2_RPC_BIN") else []
    candidates += [h.REPO / "build" / "bin", h.REPO / "build-rpc" / "bin"]
    for c in candidates:
        if (c / "ggml-rpc-server").exists() and (c / "llama-perplexity").exists():
            return c
    pytest.fail(f"no llama.cpp build with GGML_RPC=ON (looked for ggml-rpc-server in {', '.join(map(str, candidates))}); "
                f"build one with: {BUILD_RPC}  (or set LLAMA_MPQ2_RPC_BIN to its bin/)", pytrace=False)


def perplexity_log(binary: Path, model: Path, text: Path, *extra) -> tuple[str, str]:
    """The printed 'PPL = x +/- y' and the whole verbose log of one llama-perplexity run."""
    for _ in range(3):    # llama.cpp can lose its last log lines at exit on a loaded machine
        proc = h.run([binary, "-m", model, "-f", text, "-c", 64, "-b", 64, "--chunks", 16, "-t", 2, "-lv", 4, *extra],
                     timeout=120)
        log = proc.stdout + proc.stderr
        m = re.search(r"Final estimate: (PPL = [0-9.]+ \+/- [0-9.]+)", log)
        if m:
            return m.group(1), log
    raise AssertionError(log[-3000:])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    bindir = rpc_bin()
    m = ih.tiny_models(tmp_path_factory)
    model, text, root = m["MPQ2"], m["text"], m["root"]
    ih.assert_weights_are(model, "MPQ2")
    ppl = bindir / "llama-perplexity"
    env = ih.env_with(GGML_RPC_DEBUG=1)        # the servers log every set_tensor with its size
    servers = []
    out = {"model": model}
    try:
        for i in range(2):
            port = ih.free_port()
            servers.append(ih.Server(bindir / "ggml-rpc-server", ["-H", "127.0.0.1", "-p", port, "-t", 1],
                                     root / f"rpc-server-{i}.log", port, env))
            servers[-1].wait_tcp_ready()
        endpoints = ",".join(f"127.0.0.1:{s.port}" for s in servers)
        # -ts 1,3: of the 3 offloadable layers (2 blocks + output) the first server takes block 0,
        # the second block 1 and the output
        out["rpc"] = perplexity_log(ppl, model, text, "--rpc", endpoints, "-ngl", 99, "-ts", "1,3")
        out["server_logs"] = [s.log() for s in servers]
        out["alive"] = [s.alive() for s in servers]
        out["endpoints"] = [f"127.0.0.1:{s.port}" for s in servers]
    finally:
        for s in servers:
            s.stop()
    out["local_norepack"] = perplexity_log(ppl, model, text, "--no-repack")
    out["local"] = perplexity_log(ppl, model, text)
    out["main_build_norepack"] = perplexity_log(h.tool("llama-perplexity"), model, text, "--no-repack")
    return out


def test_layers_are_split_across_the_two_servers(runs):
    _, log = runs["rpc"]
    assert all(runs["alive"]), runs["server_logs"]
    for ep in runs["endpoints"]:
        assert re.search(rf"RPC\d\[{re.escape(ep)}\] model buffer size = +[0-9.]+ MiB", log), log[-3000:]
        assert re.search(rf"RPC\d\[{re.escape(ep)}\] KV buffer size", log), log[-3000:]   # a block on each
    assert "offloaded 3/3 layers" in log, log[-3000:]


def test_perplexity_equals_a_local_run_to_the_printed_digits(runs):
    rpc, _ = runs["rpc"]
    # the remote CPU backends run the row-wise MPQ2 kernel, as a local run without repacking
    # does; and the RPC build computes what the main build does
    assert rpc == runs["local_norepack"][0] == runs["main_build_norepack"][0], \
        (rpc, runs["local_norepack"][0], runs["main_build_norepack"][0])
    # the local default (16-row repacked kernel) sums in another order: the same to 0.1%
    value = lambda s: float(s.split()[2])   # noqa: E731
    assert abs(value(runs["local"][0]) - value(rpc)) / value(rpc) < 1e-3, (runs["local"][0], rpc)


def test_mpq2_bytes_travel_as_is(runs):
    import gguf
    reader = gguf.GGUFReader(runs["model"])
    # the offloaded weights: every block's and the output's (the token embedding stays on the CPU)
    want = collections.Counter(int(t.n_bytes) for t in reader.tensors
                               if t.name.startswith("blk.") or t.name.startswith("output"))
    sent = collections.Counter(int(s) for log in runs["server_logs"]
                               for s in re.findall(r"\[set_tensor\] .* size: (\d+)", log))
    assert sent, runs["server_logs"][0][-2000:]
    missing = want - sent
    assert not missing, (missing, sent)
    mpq2 = [t for t in reader.tensors if t.tensor_type.name == "MPQ2" and t.name.startswith("blk.")]
    assert mpq2 and all(int(t.n_bytes) * 64 == int(t.n_elements) * 20 for t in mpq2)   # 2.5 bits a weight


def test_the_remote_side_does_not_repack(runs):
    _, rpc_log = runs["rpc"]
    _, local_log = runs["local"]
    if "AVX512 = 1" in local_log:   # the repacked MPQ2 kernel exists on AVX-512 builds
        assert "CPU_REPACK model buffer size" in local_log, local_log[-3000:]
    # over RPC the weights go to each server's plain CPU buffer: no repacked copy anywhere
    assert "REPACK model buffer" not in rpc_log, rpc_log[-3000:]
