"""`python -m tests.fuzz [FAMILY ...]`: run the fuzz families and print counts (and failures with -v).

TUNELAB_FUZZ_SEED=7 TUNELAB_FUZZ_SCALE=5 python -m tests.fuzz -v config data
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> int:
    from .cases import FAMILIES, SCALE, SEED, generate
    from .runner import problem_kinds, report, run_family

    ap = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.splitlines()[0])
    ap.add_argument("families", nargs="*", help=f"Families to run (default all): {', '.join(FAMILIES)}.")
    ap.add_argument("-v", "--verbose", action="store_true", help="List every failing case.")
    ap.add_argument("--count", action="store_true", help="Only count the cases (nothing runs).")
    ap.add_argument("--slowest", type=int, default=0, metavar="N", help="Also list the N slowest cases.")
    args = ap.parse_args()
    args.families = args.families or list(FAMILIES)
    import torch

    torch.set_num_threads(1)
    total = failing = 0
    print(f"seed {SEED}, scale {SCALE}")
    print(f"{'family':<10} {'cases':>6} {'must fail':>9} {'failing':>8} {'seconds':>8}")
    for fam in args.families:
        cases = generate(fam)
        must = sum(c.must_fail for c in cases)
        if args.count:
            print(f"{fam:<10} {len(cases):>6} {must:>9}")
            total += len(cases)
            continue
        t = time.monotonic()
        outcomes = run_family(fam, cases)
        bad = sum(not o.ok for o in outcomes)
        print(f"{fam:<10} {len(cases):>6} {must:>9} {bad:>8} {time.monotonic() - t:>8.1f}", flush=True)
        if bad:
            print("    " + ", ".join(f"{k}: {n}" for k, n in problem_kinds(outcomes).items()), flush=True)
        if args.verbose and bad:
            print(report(fam, outcomes), flush=True)
        for o in sorted(outcomes, key=lambda o: -o.seconds)[:args.slowest]:
            print(f"  {o.seconds:6.2f}s {o.case.id}", flush=True)
        total += len(cases)
        failing += bad
    print(f"{'total':<10} {total:>6} {'':>9} {failing:>8}")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
