"""Entry point of the isolated loader's worker process: ``python -m rewardkit.io._worker MEMORY_BYTES``."""

import sys

from rewardkit.io.isolate import _worker

if __name__ == "__main__":
    _worker(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
