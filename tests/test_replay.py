"""Uniform and prioritised samplers: exact probabilities, importance weights, tree invariants,
per-seed streams, checkpoint round trips."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from offrl_robot.errors import ConfigError
from offrl_robot.replay import PrioritizedSampler, UniformSampler, make_sampler


def _check_tree(sampler: PrioritizedSampler) -> None:
    """Every internal node equals the sum (min) of its children; padding leaves stay empty."""
    cap = sampler.capacity
    nodes = np.arange(1, cap)
    np.testing.assert_allclose(
        sampler.sum_tree[:, nodes],
        sampler.sum_tree[:, 2 * nodes] + sampler.sum_tree[:, 2 * nodes + 1],
        rtol=1e-12,
    )
    np.testing.assert_array_equal(
        sampler.min_tree[:, nodes],
        np.minimum(sampler.min_tree[:, 2 * nodes], sampler.min_tree[:, 2 * nodes + 1]),
    )
    assert np.all(sampler.sum_tree[:, cap + sampler.num_transitions :] == 0)


def _set_random_priorities(sampler: PrioritizedSampler, rng: np.random.Generator) -> np.ndarray:
    """Push random TD errors for every transition through the public update path; return |δ|."""
    seeds, n = len(sampler.seeds), sampler.num_transitions
    td = rng.normal(size=(seeds, n)) * rng.uniform(0.01, 3.0, size=(seeds, n))
    for start in range(0, n, sampler.batch_size):
        stop = min(start + sampler.batch_size, n)
        idx = np.tile(np.arange(start, stop), (seeds, 1))
        pad = sampler.batch_size - (stop - start)
        if pad:  # repeat the last index; same value, so duplicates are harmless here
            idx = np.concatenate([idx, np.repeat(idx[:, -1:], pad, axis=1)], axis=1)
        values = np.take_along_axis(td, idx, axis=1)
        sampler.update_priorities(torch.from_numpy(idx), torch.from_numpy(values))
    return np.abs(td)


def test_initial_priorities_are_uniform_and_weights_one() -> None:
    sampler = PrioritizedSampler(13, 8, [0, 1], alpha=0.6, beta=0.4, total_steps=10)
    np.testing.assert_allclose(sampler.probabilities(), np.full((2, 13), 1 / 13))
    idx, weights = sampler.sample(0)
    assert idx.shape == (2, 8) and idx.dtype == torch.int64
    assert torch.all((idx >= 0) & (idx < 13))
    assert torch.all(weights == 1.0)


def test_probabilities_follow_td_errors_exactly() -> None:
    """P(i) = (|δ_i| + ε)^α / Σ_k (|δ_k| + ε)^α, per seed, after batched updates."""
    alpha, eps = 0.7, 1e-3
    sampler = PrioritizedSampler(37, 8, [3, 4, 5], alpha=alpha, eps=eps, total_steps=10)
    td = _set_random_priorities(sampler, np.random.default_rng(0))
    expected = (td + eps) ** alpha
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(sampler.probabilities(), expected, rtol=1e-12)
    _check_tree(sampler)
    assert sampler.min_tree[0, 1] == pytest.approx(((td[0] + eps) ** alpha).min(), rel=1e-12)


def test_sampling_frequencies_match_exact_probabilities() -> None:
    """Chi-square goodness of fit of 200k stratified draws against the tree's exact P(i)."""
    n, batch = 11, 50
    sampler = PrioritizedSampler(n, batch, [0, 1], alpha=1.0, total_steps=1)
    # Very uneven priorities, including a near-zero one.
    priorities = np.array([[5.0, 1.0, 0.1, 2.0, 3.0, 1e-4, 0.5, 4.0, 1.0, 2.5, 0.2]] * 2)
    priorities[1] = priorities[1][::-1]
    sampler.update_leaf_priorities(np.tile(np.arange(n), (2, 1)), priorities)
    probs = sampler.probabilities()
    counts = np.zeros((2, n))
    draws = 4000
    for _ in range(draws):
        idx, _ = sampler.sample_numpy(0)
        for row in range(2):
            counts[row] += np.bincount(idx[row], minlength=n)
    total = draws * batch
    for row in range(2):
        expected = probs[row] * total
        chi2 = float(((counts[row] - expected) ** 2 / expected).sum())
        assert chi2 < 29.6, f"seed row {row}: chi2={chi2:.1f} (df=10, p=0.001 critical value 29.6)"
    # the near-zero priority is (almost) never drawn, the largest most often
    assert counts[0].argmax() == 0 and counts[1].argmax() == n - 1


def test_importance_weights_exact_and_beta_annealed() -> None:
    n, steps = 20, 100
    sampler = PrioritizedSampler(n, 16, [0], alpha=0.5, beta=0.4, total_steps=steps)
    _set_random_priorities(sampler, np.random.default_rng(1))
    probs = sampler.probabilities()[0]
    assert sampler.beta(0) == pytest.approx(0.4)
    assert sampler.beta(50) == pytest.approx(0.7)
    assert sampler.beta(steps) == pytest.approx(1.0)
    assert sampler.beta(10 * steps) == pytest.approx(1.0)
    for step in (0, 50, steps):
        beta = sampler.beta(step)
        idx, weights = sampler.sample_numpy(step)
        w_all = (n * probs) ** (-beta)
        expected = w_all[idx[0]] / w_all.max()
        np.testing.assert_allclose(weights[0], expected, rtol=1e-10)
        assert weights.max() <= 1.0 + 1e-12
    # tensors handed to the trainer carry the same numbers, as float32 on the device
    _, w_tensor = sampler.sample(steps)
    assert w_tensor.dtype == torch.float32 and w_tensor.shape == (1, 16)


def test_batched_updates_keep_tree_consistent_with_duplicates() -> None:
    rng = np.random.default_rng(2)
    sampler = PrioritizedSampler(1000, 64, [0, 7], alpha=0.6, total_steps=100)
    for step in range(50):
        idx, _ = sampler.sample(step)
        td = torch.from_numpy(rng.exponential(size=(2, 64)))
        sampler.update_priorities(idx, td)
    _check_tree(sampler)
    # duplicates inside one batch: the last write wins
    idx = torch.tensor([[5, 5, 9, 9], [1, 2, 3, 3]])
    small = PrioritizedSampler(12, 4, [0, 1], alpha=1.0, eps=1e-9, total_steps=1)
    small.update_priorities(idx, torch.tensor([[1.0, 3.0, 2.0, 0.5], [1.0, 1.0, 4.0, 6.0]]))
    leaves = small.sum_tree[:, small.capacity : small.capacity + 12]
    assert leaves[0, 5] == pytest.approx(3.0) and leaves[0, 9] == pytest.approx(0.5)
    assert leaves[1, 3] == pytest.approx(6.0)
    _check_tree(small)


def test_non_finite_td_error_gets_max_priority() -> None:
    sampler = PrioritizedSampler(8, 2, [0], alpha=1.0, eps=1e-9, total_steps=1)
    sampler.update_priorities(torch.tensor([[0, 1]]), torch.tensor([[4.0, 2.0]]))
    sampler.update_priorities(torch.tensor([[2, 3]]), torch.tensor([[float("nan"), float("inf")]]))
    leaves = sampler.sum_tree[0, sampler.capacity : sampler.capacity + 8]
    assert leaves[2] == pytest.approx(4.0) and leaves[3] == pytest.approx(4.0)
    assert np.isfinite(sampler.sum_tree).all()


def test_new_transitions_enter_at_the_current_max_priority() -> None:
    """Schaul et al.: a transition without a TD error yet gets the maximum priority seen so far
    (per seed), so it is replayed soon. No training path grows a sampler today (the dataset of a
    run is fixed, MOPO's model buffer is not prioritised): the rule is checked on the API."""
    sampler = PrioritizedSampler(5, 4, [0, 1], alpha=1.0, eps=1e-9, total_steps=10)
    sampler.update_priorities(
        torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]]),
        torch.tensor([[7.0, 0.5, 2.0, 3.0], [0.2, 0.3, 0.4, 0.5]]),
    )
    np.testing.assert_allclose(sampler.max_priority, [7.0, 1.0])  # seed 1: the initial 1 is its max
    new = sampler.add_transitions(6)  # 11 transitions > capacity 8: the trees grow
    np.testing.assert_array_equal(new, np.arange(5, 11))
    assert sampler.num_transitions == 11 and sampler.capacity == 16
    leaves = sampler.sum_tree[:, sampler.capacity : sampler.capacity + 11]
    np.testing.assert_allclose(leaves[:, 5:], [[7.0] * 6, [1.0] * 6])
    np.testing.assert_allclose(leaves[0, :5], [7.0, 0.5, 2.0, 3.0, 1.0])  # old priorities kept
    _check_tree(sampler)
    probabilities = sampler.probabilities()
    np.testing.assert_allclose(probabilities.sum(1), 1.0)
    assert probabilities[0, 5:].min() == probabilities[0].max()  # the new ones are the most likely
    idx, weights = sampler.sample(1)
    assert int(idx.max()) <= 10 and torch.isfinite(weights).all()
    grown = PrioritizedSampler(11, 4, [0, 1], alpha=1.0, eps=1e-9, total_steps=10)
    grown.load_state_dict(sampler.state_dict())  # checkpoints hold the grown size
    np.testing.assert_array_equal(grown.sum_tree, sampler.sum_tree)


@pytest.mark.parametrize("prioritized", [False, True])
def test_seed_streams_are_independent_of_the_other_seeds(prioritized: bool) -> None:
    """Seed 2 inside a vectorised sampler draws exactly what a single-seed sampler for 2 draws."""
    multi = make_sampler(500, 32, [0, 1, 2], "cpu", prioritized=prioritized, total_steps=10)
    single = make_sampler(500, 32, [2], "cpu", prioritized=prioritized, total_steps=10)
    for step in range(5):
        multi_idx, _ = multi.sample(step)
        single_idx, _ = single.sample(step)
        assert torch.equal(multi_idx[2], single_idx[0])
        assert not torch.equal(multi_idx[0], multi_idx[2])


@pytest.mark.parametrize("prioritized", [False, True])
def test_state_round_trip_continues_the_same_stream(prioritized: bool) -> None:
    kwargs = {"prioritized": prioritized, "total_steps": 10}
    first = make_sampler(300, 16, [0, 1], "cpu", **kwargs)
    for step in range(3):
        idx, _ = first.sample(step)
        first.update_priorities(idx.clone(), torch.rand(2, 16, dtype=torch.float64) * step)
    state = first.state_dict()
    # the state survives a weights_only torch round trip, as in a checkpoint
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    second = make_sampler(300, 16, [0, 1], "cpu", **kwargs)
    second.load_state_dict(state)
    for step in range(3, 6):
        a_idx, a_w = first.sample(step)
        b_idx, b_w = second.sample(step)
        assert torch.equal(a_idx, b_idx)
        assert (a_w is None and b_w is None) or torch.equal(a_w, b_w)
    if prioritized:
        np.testing.assert_array_equal(first.sum_tree, second.sum_tree)


def test_state_from_another_run_is_refused() -> None:
    state = UniformSampler(100, 8, [0, 1]).state_dict()
    with pytest.raises(ConfigError, match="seeds"):
        UniformSampler(100, 8, [0, 2]).load_state_dict(state)
    with pytest.raises(ConfigError, match="prioritized"):
        PrioritizedSampler(100, 8, [0, 1]).load_state_dict(state)


def test_uniform_sampler_covers_the_dataset_evenly() -> None:
    sampler = UniformSampler(10, 1000, [4])
    counts = torch.zeros(10)
    for step in range(20):
        idx, weights = sampler.sample(step)
        assert weights is None
        counts += torch.bincount(idx[0], minlength=10)
    expected = 20 * 1000 / 10
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 27.9  # df=9, p=0.001


def test_bad_sampler_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="per_alpha"):
        PrioritizedSampler(10, 2, [0], alpha=-1)
    with pytest.raises(ConfigError, match="per_beta"):
        PrioritizedSampler(10, 2, [0], beta=1.5)
    with pytest.raises(ConfigError, match="batch_size"):
        UniformSampler(10, 0, [0])
