"""Puts benchmarks/ on ``sys.path``, so that a probe here imports the benchmarks' shared helpers (``_bench``).

Run as ``python experiments/NAME.py``, a probe has only its own folder on the path; ``import _bench_path`` first,
then ``from _bench import ...``.
"""

import sys
from pathlib import Path

BENCHMARKS = str(Path(__file__).resolve().parents[1] / "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.append(BENCHMARKS)
