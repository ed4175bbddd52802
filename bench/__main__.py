"""``make bench``: every benchmark, printed with its machine. Results: bench/RESULTS.md.

python -m bench [--smoke]   (bench.fusion: the demo sweep fused vs one job at a time at the same
batch size, 5 interleaved repeats: about 30 min on 2 cores; bench.decode_path: the decode loop
against generate + KeyedSampler, interleaved in one process)
"""

import subprocess
import sys

for module in ("bench.selectors", "bench.e2e", "bench.fusion", "bench.decode_path"):
    subprocess.run([sys.executable, "-m", module, *sys.argv[1:2]], check=True)
