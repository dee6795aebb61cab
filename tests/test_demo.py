"""bench/demo.py (`bash setup.sh --demo`): its measurements and chat, run for real on the tiny
model's F32 and MPQ2 files (the SmolLM2 run itself takes minutes and is timed in the README).
The llama.cpp tools are the patched build's; nothing is mocked."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import integration_helpers as ih

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import demo  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return ih.tiny_models(tmp_path_factory)


def test_measures_both_files_side_by_side(tiny, capsys):
    rows = [demo.Row("F32 (reference)", tiny["f32"]), demo.Row("MPQ2", tiny["MPQ2"])]
    demo.measure(rows, tiny["text"])
    for r in rows:
        ppl, err = (float(x) for x in r.ppl.split(" +/- "))
        assert 1.0 < ppl < 320 and err > 0, r          # below the vocabulary's size: the model predicts
        assert r.pp_ts > 0 and r.tg_ts > 0, r
    assert rows[1].mb < rows[0].mb / 4                 # 2.5 bits against 32
    demo.table(rows)
    out = capsys.readouterr().out
    assert "| F32 (reference) |" in out and "| MPQ2 |" in out
    assert "llama-bench -p 128 -n 64 -r 3" in out      # the command beside the figures


def test_answers_come_from_the_model(tiny, monkeypatch, capsys):
    monkeypatch.setattr(demo, "QUESTIONS", ["the teacher helps"])
    demo.chat([demo.Row("F32", tiny["f32"])])
    out = capsys.readouterr().out
    reply = out.split("F32: ", 1)[1].strip()
    assert ih.toy_words(reply), out                    # the toy grammar's words, not the prompt or logs
    assert "Prompt:" not in reply and "llama_" not in reply


def test_a_failing_tool_names_itself(tmp_path):
    missing = tmp_path / "no-such-model.gguf"
    with pytest.raises(SystemExit) as e:
        demo.perplexity(missing, tmp_path / "text.txt")
    assert "llama-perplexity failed" in str(e.value)
