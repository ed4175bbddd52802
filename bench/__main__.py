"""``make bench``: every benchmark, printed with its machine. Results: bench/RESULTS.md.

python -m bench [--smoke]   (bench.fusion: the demo sweep fused vs one job at a time, ~5 min)
"""

import subprocess
import sys

for module in ("bench.selectors", "bench.e2e", "bench.fusion"):
    subprocess.run([sys.executable, "-m", module, *sys.argv[1:2]], check=True)
