r"""Statistics for results over a few seeds: intervals, paired comparisons, power, groups.

A study that trains each model on a handful of seeds has few degrees of freedom, so every
number it reports carries an interval, a difference between two losses is claimed only
where a test rejects, and a difference that is not claimed is called equivalent only where
an equivalence test says so. The functions here are small and return plain dataclasses:

* :func:`mean_interval`: mean over seeds with a Student-t confidence interval.
* :func:`paired_comparison`: the paired t-test (or the exact :func:`sign_flip_test`) of
  two losses trained on the same data (same seed), with the mean difference, its interval
  and the standardized effect size.
* :func:`holm`: Holm's step-down correction of several p-values.
* :func:`compare_all`: every pair of a set of conditions, Holm-corrected.
* :func:`paired_power`, :func:`minimal_detectable_difference` and :func:`sample_size`:
  what a paired design of ``n`` seeds can detect, and how many seeds a difference needs.
* :func:`equivalence_test`: two one-sided tests against a declared margin.
* :func:`paired_effect_size`: :math:`d_z` with its noncentral-t interval.
* :func:`verdict`: "different", "equivalent within the margin" or "inconclusive: detectable
  only above X" for one contrast.
* :func:`group_accuracy`: accuracy per group and the worst group (Sagawa et al., 2020).
* :func:`worst_group_accuracy`: per-group accuracies over seeds and the worst group's
  accuracy from the seed means, with an interval.
* :func:`group_size_for_standard_error`: test-group size for a target standard error.

scipy is imported inside the functions that need it, so ``import nodulebench`` stays light.
"""

from __future__ import annotations

from nodulebench.stats._groups import (
    GroupAccuracy,
    WorstGroupAccuracy,
    group_accuracy,
    group_size_for_standard_error,
    worst_group_accuracy,
)
from nodulebench.stats._inference import (
    MeanInterval,
    PairedComparison,
    PairedTest,
    PairResult,
    compare_all,
    holm,
    mean_interval,
    paired_comparison,
    sign_flip_test,
)
from nodulebench.stats._power import (
    EffectSize,
    Equivalence,
    Verdict,
    equivalence_test,
    minimal_detectable_difference,
    paired_effect_size,
    paired_power,
    sample_size,
    verdict,
)

__all__ = [
    "EffectSize",
    "Equivalence",
    "GroupAccuracy",
    "MeanInterval",
    "PairResult",
    "PairedComparison",
    "PairedTest",
    "Verdict",
    "WorstGroupAccuracy",
    "compare_all",
    "equivalence_test",
    "group_accuracy",
    "group_size_for_standard_error",
    "holm",
    "mean_interval",
    "minimal_detectable_difference",
    "paired_comparison",
    "paired_effect_size",
    "paired_power",
    "sample_size",
    "sign_flip_test",
    "verdict",
    "worst_group_accuracy",
]
