"""converter/mpq2/source.py reads a tall matrix (a 128k-row embedding or output) in row chunks:
the result must equal a whole read bit for bit, and a NaN in a later chunk must still stop the
run with the tensor's name. Small files: seconds."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from mpq2 import source
from mpq2.errors import ConvertError

ROWS, COLS = 3 * 64 + 17, 32      # with READ_ROWS = 64: three full chunks and a short one


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(source, "READ_ROWS", 64)


def _model(tmp_path, w: torch.Tensor):
    save_file({"lm_head.weight": w, "model.norm.weight": torch.ones(COLS, dtype=w.dtype)},
              str(tmp_path / "model.safetensors"))
    return source.SafetensorsSource(tmp_path)


def test_row_chunks_equal_a_whole_read(tmp_path, small_chunks):
    w = torch.randn(ROWS, COLS, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    src = _model(tmp_path, w)
    got = src.get("lm_head.weight")
    assert got.dtype == torch.float32 and got.shape == (ROWS, COLS)
    assert torch.equal(got, w.float())
    assert torch.equal(src.get("lm_head.weight", slice(70, 90)), w[70:90].float())
    assert torch.equal(src.get("model.norm.weight"), torch.ones(COLS))


def test_nan_in_a_later_chunk_names_the_tensor(tmp_path, small_chunks):
    w = torch.zeros(ROWS, COLS, dtype=torch.bfloat16)
    w[ROWS - 3, 5] = float("nan")
    src = _model(tmp_path, w)
    with pytest.raises(ConvertError, match="lm_head.weight .*NaN or Inf"):
        src.get("lm_head.weight")
