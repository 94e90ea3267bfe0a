#!/usr/bin/env python
"""Speed benchmark of normrnn against nn.LSTM / nn.GRU / nn.LSTMCell: ``python benchmarks/speed.py --help``.

The logic lives in :mod:`normrnn.bench.speed` (also reachable as ``normrnn bench``); this script only makes the
package importable from a source checkout and calls it.
"""
import sys
from pathlib import Path

try:
    import normrnn.bench.speed  # noqa: F401  (installed, or on PYTHONPATH)
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from normrnn.bench.speed import main

if __name__ == "__main__":
    sys.exit(main())
