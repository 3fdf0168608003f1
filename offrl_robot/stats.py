"""The one spread statistic every report uses: the sample standard deviation.

Why one definition: evaluation (std of returns over episodes, and over seeds in `aggregate`),
the validation gate's card, `dataset-info` and the benchmark tables all print "mean ± std".
They estimate the spread of a population (episodes of a policy, seeds of a recipe) from a few
draws, so the unbiased-variance form (ddof = 1) is the right one, and one definition keeps a
number in a card comparable with the same number in a benchmark table. With 3 seeds it is
sqrt(3/2) ≈ 1.22 times the population std (ddof = 0) that the BENCHMARKS.md tables
recorded before 2026-12-04 show.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sample_std(values: Sequence[float] | np.ndarray) -> float:
    """Sample standard deviation (ddof = 1) of `values`; 0.0 for fewer than two values (a single
    draw shows no spread, and 0.0 keeps cards and JSON free of NaN)."""
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size < 2:
        return 0.0
    return float(array.std(ddof=1))
