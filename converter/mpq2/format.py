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
QTYPE_R = GGMLQuantizationType.MPQ2R       # MPQ2 blocks of rotated weights (rotation.py)
FTYPE_R = LlamaFileType.MOSTLY_MPQ2R
QTYPE_S = GGMLQuantizationType.MPQ2S       # the 2.25-bit tier (codec_s.py)
FTYPE_S = LlamaFileType.MOSTLY_MPQ2S
QK, BLOCK_BYTES = GGML_QUANT_SIZES[QTYPE]   # 64 weights, 20 bytes
GROUP = 16                                   # weights per 32-bit word
WORDS = QK // GROUP                          # words per block
GRID_STEP = 16                               # 2-bit code c, zero code z -> GRID_STEP * c - ZERO2[z]
SCALE_MULT = np.array([8, 10, 13, 16, 20, 25, 32, 40], dtype=np.int32)
ZERO2 = np.array([16, 24, 32, 8], dtype=np.int32)   # zero offsets: 1, 1.5, 2, 0.5 code steps
MAX_MULT = int(SCALE_MULT[-1])
N_D_CODES = 256


def d_from_code(code) -> np.ndarray:
    """Block scale of an 8-bit code (E6M2), as mpq2_d_from_code: float32 bits (code << 21) + (87 << 23)."""
    bits = (np.asarray(code).astype(np.uint32) << np.uint32(21)) + np.uint32(87 << 23)
    return bits.view(np.float32)
DEFAULT_SALIENT_FRACTION = 0.125
BITS_PER_WEIGHT = BLOCK_BYTES * 8 / QK       # 2.5

# Header field layout (bytes 0..1 meta, 2 zero codes, 3 block scale code): meta bits 0..3
# bitmap, bits 4+3w..6+3w scale code of word w; zero byte bits 2w..2w+1 zero code of word w.
def scale_shift(word: int) -> int:
    return 4 + 3 * word


def zero_shift(word: int) -> int:
    return 2 * word


PIN_FILE = Path(__file__).resolve().parents[2] / "ggml_ext" / "llama_cpp.pin"


def read_pin(path: Path = PIN_FILE) -> dict[str, str]:
    """The pinned llama.cpp source (package, version, sha256), shared with CMake."""
    pin = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            pin[key.strip()] = value.strip()
    return pin
