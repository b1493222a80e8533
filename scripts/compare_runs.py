"""Compares two run folders bit for bit: every tensor of their newest checkpoints'
model.safetensors, and their eval.json files. Exits 1 when anything differs.

    .venv/bin/python scripts/compare_runs.py runs/before runs/after

Used to check that a refactor leaves training unchanged (docs/benchmarks.md, the demo).
"""
import json
import pathlib
import sys

from safetensors.numpy import load_file


def newest(run: pathlib.Path) -> pathlib.Path:
    latest = (run / "checkpoints" / "latest").read_text().strip()
    return run / "checkpoints" / latest / "model.safetensors"


def main() -> int:
    a, b = (pathlib.Path(p) for p in sys.argv[1:3])
    wa, wb = load_file(newest(a)), load_file(newest(b))
    differ = sorted(k for k in wa.keys() | wb.keys() if k not in wa or k not in wb or wa[k].tobytes() != wb[k].tobytes())
    ea, eb = (json.loads((r / "eval.json").read_text()) for r in (a, b))
    print(f"{len(differ)} of {len(wa.keys() | wb.keys())} tensors differ{': ' + ', '.join(differ[:5]) if differ else ''}; "
          f"eval.json {'identical' if ea == eb else 'differs'}")
    return 0 if not differ and ea == eb else 1


if __name__ == "__main__":
    sys.exit(main())
