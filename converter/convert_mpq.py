#!/usr/bin/env python3
"""convert_mpq.py: Hugging Face model (or GGUF) -> MPQ2 GGUF. See `convert_mpq.py --help`."""
import sys
from pathlib import Path

try:
    from mpq2.convert import main
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from mpq2.convert import main

if __name__ == "__main__":
    sys.exit(main())
