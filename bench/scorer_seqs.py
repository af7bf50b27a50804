"""The shoot-out's ``default`` row with the embedded one-pass scorer caching SEQS sequences
(``fliprm.backends.embedded._SCORER_SEQS``, an internal constant), to weigh its memory against
its reuse. Run two values side by side, one core each, and compare their tables:

    cd bench
    taskset -c 0 python scorer_seqs.py 8 --rows default --sets focus4=12,ifbench=8 \\
        --parallel 4 --slots 8 --threads 1 --out results/scorer-seqs-2026-12-06/seqs8
    taskset -c 1 python scorer_seqs.py 2 --rows default ... --out results/scorer-seqs-2026-12-06/seqs2
    python shootout.py --report --markdown --rows default --out results/scorer-seqs-2026-12-06/seqs2

Every argument after SEQS goes to ``shootout.py``; the peak RSS is in its last line.
"""

from __future__ import annotations

import argparse

import shootout

from fliprm.backends import embedded


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("seqs", type=int, help="sequences the one-pass scorer caches (>= 1)")
    ap.add_argument("shootout_args", nargs=argparse.REMAINDER,
                    help="the rest goes to shootout.py")
    a = ap.parse_args(argv)
    if a.seqs < 1:
        ap.error(f"SEQS must be >= 1, not {a.seqs}")
    embedded._SCORER_SEQS = a.seqs
    shootout.main(a.shootout_args)


if __name__ == "__main__":
    main()
