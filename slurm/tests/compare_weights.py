"""Compares the weights of two checkpoints within a tolerance, for runs that differ only in the
order of floating-point sums (W workers against one process on the same global batch).

    .venv/bin/python slurm/tests/compare_weights.py A/model.safetensors B/model.safetensors 1e-4

The check is the one of the equivalence tests in launcher/tests/distributed.rs: max |a - b| over
every weight must be at most the tolerance. The weights are O(1), so this is also a relative bound;
it is not taken per tensor: AdamW moves every weight by about the learning rate, so a near-zero
tensor (a bias that starts at 0) shows a large difference relative to itself from a rounding-level
change in one gradient entry (docs/distributed.md, "How close W workers come to one process").
Prints the largest difference, the tensor where it is and the largest |weight|; exits 1 when it is
above the tolerance or the tensors differ in names or shapes.
"""
import sys

import numpy as np
from safetensors.numpy import load_file


def main() -> int:
    a, b, tolerance = load_file(sys.argv[1]), load_file(sys.argv[2]), float(sys.argv[3])
    if a.keys() != b.keys():
        print(f"tensor names differ: only in A {sorted(a.keys() - b.keys())[:5]}, only in B {sorted(b.keys() - a.keys())[:5]}")
        return 1
    worst, where, scale = 0.0, "", 0.0
    for name in sorted(a):
        x, y = a[name].astype(np.float64), b[name].astype(np.float64)
        if x.shape != y.shape:
            print(f"{name}: shape {x.shape} vs {y.shape}")
            return 1
        if not x.size:
            continue
        diff = float(np.abs(x - y).max())
        scale = max(scale, float(np.abs(y).max()))
        if diff >= worst:
            worst, where = diff, name
    relative = worst / scale if scale > 0 else worst
    print(f"{len(a)} tensors: max |a-b| = {worst:.3e} ({where}; tolerance {tolerance:g}), "
          f"largest |weight| {scale:.3f}, max |a-b| / max |w| = {relative:.3e}")
    return 0 if worst <= tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
