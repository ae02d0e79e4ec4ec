"""Prints the load time of each dataset; the last line is one JSON object with the figures.

Each dataset is loaded in a fresh Python process (jmeta, numpy and JAX already imported and JAX
initialised before the clock starts), so "cold" means a cold process, not a cold disk cache. A
second, warm load in the same process is timed as well.

Usage:
  python benchmarks/load_time.py [--dataset NAME ...] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
import jax.numpy as jnp
import jmeta.data as data
jnp.zeros(1).block_until_ready()  # JAX backend start-up is not part of the load time
name, data_dir = sys.argv[1], sys.argv[2] or None
t0 = time.perf_counter()
g = data.load(name, data_dir=data_dir)
g.x.block_until_ready()
t1 = time.perf_counter()
data.load(name, data_dir=data_dir).x.block_until_ready()
t2 = time.perf_counter()
print(json.dumps({"cold_s": t1 - t0, "warm_s": t2 - t1, "nodes": g.num_nodes,
                  "features": g.num_features, "edges": g.num_edges}))
"""


def main(argv=None) -> None:
  from jmeta.data import DATASETS

  repo = Path(__file__).resolve().parents[1]
  default_dir = os.environ.get("JMETA_DATA") or str(repo.parent / "shared" / "datasets")
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", action="append", choices=DATASETS,
                      help="dataset to time (repeatable; default: all)")
  parser.add_argument("--data-dir", default=default_dir, help=f"default: {default_dir}")
  args = parser.parse_args(argv)
  results = {}
  for name in args.dataset or DATASETS:
    out = subprocess.run([sys.executable, "-c", CHILD, name, args.data_dir], check=True,
                         capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    results[name] = res
    print(f"{name:10s} cold {res['cold_s']:.3f} s  warm {res['warm_s']:.3f} s  "
          f"({res['nodes']} nodes, {res['features']} features, {res['edges']} edges)")
  print(json.dumps(results))


if __name__ == "__main__":
  main()
