"""MPQ2 format constants: the Python side of ggml_ext/include/ggml-mpq2.h (docs/FORMAT.md).

The type id and sizes come from the patched gguf-py, the one place Python learns them; the
tables below mirror the C header and tests/test_format_consts.py holds them equal.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

QTYPE = GGMLQuantizationType.MPQ2
FTYPE = LlamaFileType.MOSTLY_MPQ2
TYPE_ID = int(QTYPE)
QK, BLOCK_BYTES = GGML_QUANT_SIZES[QTYPE]   # 64 weights, 20 bytes
GROUP = 16                                   # weights per 32-bit word
WORDS = QK // GROUP                          # words per block
GRID_STEP = 8                                # 2-bit code c -> (2c - 3) * GRID_STEP
SCALE_MULT = np.array([8, 10, 13, 16, 20, 25, 32, 40], dtype=np.int32)
GRID2 = np.array([-3, -1, 1, 3], dtype=np.int32) * GRID_STEP
MAX_MULT = int(SCALE_MULT[-1])
DEFAULT_SALIENT_FRACTION = 0.125
BITS_PER_WEIGHT = BLOCK_BYTES * 8 / QK       # 2.5

# Header field layout: bits 0..3 bitmap, bits 4+3w..6+3w scale code of word w.
def scale_shift(word: int) -> int:
    return 4 + 3 * word


PIN_FILE = Path(__file__).resolve().parents[2] / "ggml_ext" / "llama_cpp.pin"


def read_pin(path: Path = PIN_FILE) -> dict[str, str]:
    """The pinned llama.cpp source (package, version, sha256), shared with CMake."""
    pin = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            pin[key.strip()] = value.strip()
    return pin
