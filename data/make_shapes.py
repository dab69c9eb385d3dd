"""Generate the built-in shapes dataset: ``python data/make_shapes.py [--out data/shapes] [--seed 0]``.

Training on ``data/shapes.data`` generates it automatically on first use; this script regenerates it (replacing
an existing folder) or makes other sizes and seeds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here.parent))  # run as a script from anywhere: make the project importable
    from utils.shapes import make_shapes_dataset

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=here / "shapes", help="dataset root to (re)create")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--n-train", type=int, default=400, help="number of training images")
    parser.add_argument("--n-valid", type=int, default=100, help="number of validation images")
    args = parser.parse_args(argv)
    t = time.time()
    root = make_shapes_dataset(args.out, seed=args.seed, n_train=args.n_train, n_valid=args.n_valid)
    print(f"Wrote {args.n_train} train + {args.n_valid} valid images to {root} in {time.time() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
