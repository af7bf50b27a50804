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

import sys

import shootout

from fliprm.backends import embedded


def main(argv: list[str]) -> None:
    if not argv or not argv[0].isdigit() or int(argv[0]) < 1:
        raise SystemExit("usage: scorer_seqs.py SEQS [shootout.py arguments] (SEQS >= 1)")
    embedded._SCORER_SEQS = int(argv[0])
    sys.argv = [sys.argv[0], *argv[1:]]
    shootout.main()


if __name__ == "__main__":
    main(sys.argv[1:])
