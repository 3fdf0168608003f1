"""Every "mean ± std" the project reports uses the sample std (ddof = 1): over seeds in
`aggregate`, over episodes in each seed's evaluation, in `dataset-info` (the validation gate's
card is checked in test_validate.py). One definition: `offrl_robot.stats.sample_std`."""

from __future__ import annotations

import math

import numpy as np
import pytest

from offrl_robot.data.dataset import Dataset, DatasetMetadata
from offrl_robot.data.dataset_info import summarize
from offrl_robot.evaluation import SeedEval, aggregate
from offrl_robot.stats import sample_std


def test_sample_std_is_ddof_one_and_zero_for_a_single_value() -> None:
    assert sample_std([1.0, 2.0, 3.0]) == pytest.approx(1.0)  # ddof = 0 would give 0.816
    assert sample_std(np.array([[2.0], [4.0]])) == pytest.approx(math.sqrt(2.0))
    assert sample_std([5.0]) == 0.0 and sample_std([]) == 0.0


def _seed(seed: int, mean_return: float, success: float) -> SeedEval:
    return SeedEval(seed, [mean_return], mean_return, 0.0, None, success, 0.01)


def test_aggregate_reports_the_sample_std_over_seeds() -> None:
    result = aggregate([_seed(0, 10.0, 0.0), _seed(1, 20.0, 0.5), _seed(2, 30.0, 1.0)])
    assert result["mean_return"] == {"mean": pytest.approx(20.0), "std": pytest.approx(10.0)}
    assert result["success_rate"]["std"] == pytest.approx(0.5)
    assert result["final_distance"]["std"] == 0.0
    assert "normalized_score" not in result  # no references: not reported
    single = aggregate([_seed(4, 10.0, 1.0)])
    assert single["mean_return"] == {"mean": 10.0, "std": 0.0}


def test_dataset_info_reports_the_sample_std_of_episode_returns() -> None:
    length, per_step = 5, [1.0, 2.0, 6.0]  # episode returns 5, 10, 30
    n = length * len(per_step)
    starts = np.zeros(n, bool)
    starts[::length] = True
    obs = np.zeros((n, 2), np.float32)
    meta = DatasetMetadata(["o0", "o1"], ["a0"], [-1.0], [1.0], 10.0)
    rewards = np.repeat(np.asarray(per_step, np.float32), length)
    data = Dataset(obs, np.zeros((n, 1)), rewards, obs, np.zeros(n), np.zeros(n), starts, meta)
    summary = summarize(data)
    assert summary["std_return"] == pytest.approx(np.std([5.0, 10.0, 30.0], ddof=1))
