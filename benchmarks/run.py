"""Runs the optimizer-step benchmark; the same as ``optim-chain bench``.

python benchmarks/run.py --help
python benchmarks/run.py --quick
"""

import sys

from optim_chain.lab.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
