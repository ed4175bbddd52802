"""``make bench``: every benchmark, printed with its machine. Results: bench/RESULTS.md.

python -m bench [--smoke]
"""

import subprocess
import sys

for module in ("bench.selectors", "bench.e2e"):
    subprocess.run([sys.executable, "-m", module, *sys.argv[1:2]], check=True)
