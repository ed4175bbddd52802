"""``make bench``: every benchmark, printed with its machine. Results: bench/RESULTS.md."""

import subprocess
import sys

for module in ("bench.selectors", "bench.e2e"):
    subprocess.run([sys.executable, "-m", module, *sys.argv[1:]], check=True)
