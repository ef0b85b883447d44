"""Coverage of the one-split interval of the mean per-class accuracy (`fne.metrics.mean_class_interval`).

Each case draws, R times, the right answers of every class from a binomial of its number of test
images and its true recall, asks fne for the 95% interval from that confusion matrix, and counts
how often it holds the true mean recall; a stratified bootstrap over the test images (2,000
resamples), the obvious alternative, is measured beside it. Prints one line per case:

    python benchmarks/sim_mean_class_ci.py [--runs 1000] [--seed 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fne.metrics import mean_class_interval

CASES = [  # (test images per class, true recall per class)
    ((10, 5, 2), (0.9, 0.6, 0.5)),
    ((10, 5, 2), (0.95,) * 3),
    ((10, 5, 2), (0.99,) * 3),
    ((20, 10, 4, 2), (0.9, 0.2, 0.2, 0.2)),
    ((40, 20, 8), (0.8, 0.7, 0.5)),
    ((100, 3), (0.97, 0.5)),
    ((20,) * 12, (0.98,) * 12),
    ((60,) * 12, (0.98,) * 12),
    ((5,) * 37, (0.85,) * 37),
    ((30,) * 37, (0.9,) * 37),
    ((3,) * 50, (0.95,) * 50),
    ((2,) * 100, (0.7,) * 100),
]


def fne_interval(right: np.ndarray, n: np.ndarray) -> tuple[float, float]:
    """fne's interval from the confusion matrix of one split (wrong answers all in one column)."""
    m = len(n)
    confusion = np.diag(right).astype(float)
    confusion[np.arange(m), (np.arange(m) + 1) % m] += n - right
    ci = mean_class_interval([{"mean_class_accuracy": float((right / n).mean())}], confusion)
    return ci["low"], ci["high"]


def bootstrap(right: np.ndarray, n: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """Percentile interval of a bootstrap that resamples each class's test images (stratified)."""
    draws = (rng.binomial(n, right / n, (2000, len(n))) / n).mean(1)
    return tuple(np.quantile(draws, [0.025, 0.975]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    t0 = time.perf_counter()
    print(f"{'classes':>7} {'test images per class':<22} {'recall':<14} {'fne cover':>9} {'width':>6} "
          f"{'bootstrap':>9} {'width':>6}")
    for counts, recalls in CASES:
        n, r = np.array(counts), np.array(recalls)
        truth = r.mean()
        hits, widths = np.zeros(2), np.zeros(2)
        for _ in range(a.runs):
            right = rng.binomial(n, r)
            for j, (lo, hi) in enumerate((fne_interval(right, n), bootstrap(right, n, rng))):
                hits[j] += lo <= truth <= hi
                widths[j] += hi - lo
        shown = ",".join(map(str, counts[:3])) + (",…" if len(counts) > 3 else "")
        print(f"{len(n):>7} {shown:<22} {f'{r.min():g}-{r.max():g}':<14} {hits[0] / a.runs:>9.3f} "
              f"{widths[0] / a.runs:>6.3f} {hits[1] / a.runs:>9.3f} {widths[1] / a.runs:>6.3f}")
    print(f"{a.runs} runs per case, seed {a.seed}, {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
