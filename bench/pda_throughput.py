"""PDA throughput benchmark: naive and exact incremental engines against the plain classifier.

A thin wrapper of ``preddiff bench`` (:mod:`preddiff.commands.bench`) that writes its JSON
and text table to ``bench/results/`` by default::

    python bench/pda_throughput.py                 # all eight networks, ~17 minutes on 2 cores
    python bench/pda_throughput.py --quick --models alexnet
"""
import sys
from pathlib import Path

from preddiff.commands.bench import main

RESULTS = Path(__file__).resolve().parent / "results" / "pda_throughput.json"

if __name__ == "__main__":
    sys.exit(main(default_json=RESULTS))
