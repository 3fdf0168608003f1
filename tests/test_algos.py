"""The five offline RL algorithms and their ensemble networks, on real (small) PyTorch problems.

Nets are shrunk to 32x32 and batches to 64 so the whole file stays within its ~60 s budget on
the shared 2-core CI machine; the maths is the same at any width.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

from offrl_robot.algos import REGISTRY, Algorithm, Batch
from offrl_robot.algos.iql import expectile_loss
from offrl_robot.errors import ConfigError
from offrl_robot.nets import EnsembleAffine, TanhGaussianActor

OBS, ACT, B = 5, 2, 64
SMALL = (32, 32)

# name -> (registry key, config overrides). Covers every algorithm and the notable variants.
VARIANTS: dict[str, tuple[str, dict]] = {
    "bc": ("bc", {}),
    "bc-nll": ("bc", {"loss": "nll"}),
    "cql": ("cql", {}),
    "cql-lagrange": ("cql", {"lagrange": True}),
    "cql-sample": ("cql", {"target_action": "sample"}),  # the paper's sampled TD-target action
    # IQL's default decays the actor lr over the run (cosine), whose length only the Trainer
    # knows: built directly, it is given here. "iql-cosine" ends its decay inside these tests.
    "iql": ("iql", {"actor_lr_schedule_steps": 1000}),
    "iql-constant": ("iql", {"actor_lr_schedule": "none"}),
    "iql-deterministic": ("iql", {"deterministic_policy": True, "actor_lr_schedule_steps": 1000}),
    "iql-cosine": ("iql", {"actor_lr_schedule_steps": 4}),
    "td3bc": ("td3bc", {}),
    "bcq": ("bcq", {"vae_hidden_sizes": SMALL}),
    # Built without the Trainer, so prepare() never fits its ensemble: the contract tests below
    # (shapes, seeds, state round trip, export) hold for any model weights. Fitting: test_mopo.py.
    "mopo": (
        "mopo",
        {
            "dynamics": {"members": 3, "hidden_sizes": [16, 16]},
            "elites": 2,
            "rollout_length": 2,
            "model_buffer_size": 256,
        },
    ),
}
# Modules held as one list entry per seed (MOPO's per-seed dynamics ensembles, `dynamics.i`),
# not as seed-major ensemble tensors: seed index i's copy is the list's entry i.
PER_SEED_LISTS = ("dynamics.",)


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """One intra-op thread: on the shared 2-core machine two OpenMP threads competing with other
    processes made these tiny updates ~10x slower. Restored afterwards for other test modules."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_algo(variant: str, num_seeds: int = 1, seeds: list[int] | None = None, **overrides) -> Algorithm:
    key, base = VARIANTS[variant]
    cls = REGISTRY[key]
    config = cls.config_class(hidden_sizes=SMALL, **{**base, **overrides})
    return cls(OBS, ACT, num_seeds, config, seeds=seeds)


def make_batch(num_seeds: int, seed: int = 0, terminal: bool = False, weights: bool = False) -> Batch:
    """A fixed learnable problem: actions are a smooth function of observations, reward depends on both."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(num_seeds, B, OBS, generator=g)
    mixing = torch.randn(OBS, ACT, generator=g) / math.sqrt(OBS)
    actions = torch.tanh(obs @ mixing)
    rewards = -(actions - 0.5).square().sum(-1) + 0.1 * obs[..., 0]
    terminals = (
        torch.ones(num_seeds, B) if terminal else (torch.rand(num_seeds, B, generator=g) < 0.1).float()
    )
    return Batch(
        observations=obs,
        actions=actions,
        rewards=rewards,
        next_observations=torch.randn(num_seeds, B, OBS, generator=g),
        terminals=terminals,
        weights=torch.rand(num_seeds, B, generator=g) * 2.0 if weights else None,
    )


def seed_key(name: str, index: int) -> str:
    """The state-dict key of seed `index`'s copy of a single-seed run's key `name`."""
    for prefix in PER_SEED_LISTS:
        if name.startswith(prefix):
            rest = name[len(prefix) :].split(".", 1)[1]
            return f"{prefix}{index}.{rest}"
    return name


def seed_slice(tensor: Tensor, num_seeds: int, index: int) -> Tensor:
    """Members of seed `index` in a seed-major ensemble tensor (leading dim = S * k)."""
    k = tensor.shape[0] // num_seeds
    return tensor[index * k : (index + 1) * k]


def test_registry_has_all_five() -> None:
    assert {"bc", "cql", "iql", "td3bc", "bcq"} <= set(REGISTRY)
    assert not REGISTRY["bc"].value_based
    assert all(REGISTRY[name].value_based for name in ("cql", "iql", "td3bc", "bcq"))


@pytest.mark.parametrize("num_seeds", [1, 3])
@pytest.mark.parametrize("variant", VARIANTS)
def test_update_returns_finite_per_seed_metrics(variant: str, num_seeds: int) -> None:
    torch.manual_seed(0)
    algo = make_algo(variant, num_seeds)
    batch = make_batch(num_seeds)
    for _ in range(2):  # two steps: TD3+BC's delayed actor step happens on the second
        out = algo.update(batch)
    assert out.metrics, "update reported no metrics"
    for name, value in out.metrics.items():
        assert value.shape == (num_seeds,), name
        assert torch.isfinite(value).all(), name
        assert not value.requires_grad, name
    if algo.value_based:
        assert out.td_error is not None and out.td_error.shape == (num_seeds, B)
        assert (out.td_error >= 0).all() and torch.isfinite(out.td_error).all()
    else:
        assert out.td_error is None
    actions = algo.act(batch.observations)
    assert actions.shape == (num_seeds, B, ACT)
    assert actions.abs().max() <= 1.0


# Loss that must fall on a fixed batch; terminal=True makes the TD target plain regression.
FALLING = {
    "bc": "actor_loss",
    "cql": "td_loss",
    "iql": "critic_loss",
    "td3bc": "critic_loss",
    "bcq": "vae_loss",
}


@pytest.mark.parametrize("variant", ["bc", "bc-nll", "cql", "iql", "td3bc", "bcq"])
def test_loss_goes_down_on_tiny_fixed_problem(variant: str) -> None:
    torch.manual_seed(0)
    overrides = {"learning_rate": 3e-3} if variant == "bc-nll" else {}  # the log-std learns slowly at 3e-4
    algo = make_algo(variant, 2, **overrides)
    batch = make_batch(2, terminal=True)
    key = FALLING[VARIANTS[variant][0]]
    history = torch.stack([algo.update(batch).metrics[key] for _ in range(150)])  # [T, S]
    first, last = history[:5].mean(0), history[-5:].mean(0)
    assert (last < first - 0.3 * first.abs()).all(), f"{key}: {first.tolist()} -> {last.tolist()}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_vectorised_init_slice_equals_single_seed_init(variant: str) -> None:
    vectorised = make_algo(variant, 3, seeds=[3, 7, 11])
    single = make_algo(variant, 1, seeds=[7])
    other = make_algo(variant, 1, seeds=[8])
    vec_state, single_state = vectorised.state_dict(), single.state_dict()
    assert vec_state.keys() == {seed_key(name, i) for name in single_state for i in range(3)}
    for name, value in single_state.items():
        if seed_key(name, 1) != name:  # a per-seed list entry: the whole entry is seed 1's
            assert torch.equal(vec_state[seed_key(name, 1)], value), name
        else:
            assert torch.equal(seed_slice(vec_state[name], 3, 1), value), name
    # ...and the seed matters: a different seed starts elsewhere.
    assert not torch.equal(single.actor.net.layers[0].weight, other.actor.net.layers[0].weight)


@pytest.mark.parametrize("variant", ["bc", "iql"])
def test_vectorised_update_matches_single_seed_update(variant: str) -> None:
    """Noise-free algorithms: seed 1 of a 3-seed run follows its single-seed run step by step."""
    vectorised = make_algo(variant, 3, seeds=[0, 1, 2])
    single = make_algo(variant, 1, seeds=[1])
    for step in range(3):
        batch = make_batch(3, seed=step)
        one = Batch(
            *(
                getattr(batch, f.name)[1:2] if getattr(batch, f.name) is not None else None
                for f in dataclasses.fields(batch)
            )
        )
        vectorised.update(batch)
        single.update(one)
    for name, value in single.state_dict().items():
        torch.testing.assert_close(
            seed_slice(vectorised.state_dict()[name], 3, 1), value, rtol=1e-5, atol=1e-6
        )


def _round_trip(state: object) -> object:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_round_trip_gives_identical_next_updates(variant: str) -> None:
    torch.manual_seed(0)
    original = make_algo(variant, 2, seeds=[0, 1])
    batch = make_batch(2)
    for _ in range(3):
        original.update(batch)
    restored = make_algo(variant, 2, seeds=[5, 6])  # different init: everything must come from the state
    restored.load_state_dict(_round_trip(original.state_dict()))
    restored.load_optimizer_state_dict(_round_trip(original.optimizer_state_dict()))
    for step in range(2):  # covers TD3+BC's critic-only and critic+actor steps
        torch.manual_seed(100 + step)
        expected = original.update(batch)
        torch.manual_seed(100 + step)
        got = restored.update(batch)
        for name in expected.metrics:
            assert torch.equal(expected.metrics[name], got.metrics[name]), name
    for name, value in original.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value), name


@pytest.mark.parametrize("variant", ["cql", "iql", "td3bc", "bcq"])
def test_per_weights_weight_the_critic_loss(variant: str) -> None:
    batch = make_batch(2, weights=True)
    ones = dataclasses.replace(batch, weights=torch.ones(2, B))
    unweighted = dataclasses.replace(batch, weights=None)
    losses = {}
    algo = make_algo(variant, 2)
    for label, b in (("none", unweighted), ("ones", ones), ("weighted", batch)):
        torch.manual_seed(3)
        losses[label] = copy.deepcopy(algo).update(b).metrics["critic_loss"]
    torch.testing.assert_close(losses["ones"], losses["none"])
    assert not torch.allclose(losses["weighted"], losses["none"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_export_matches_act_for_each_seed(variant: str) -> None:
    torch.manual_seed(0)
    algo = make_algo(variant, 3)
    batch = make_batch(3)
    for _ in range(2):
        algo.update(batch)
    acted = algo.act(batch.observations)
    for index in range(3):
        policy = algo.policy_for_export(index)
        assert not any(p.requires_grad for p in policy.parameters())
        with torch.no_grad():
            exported = policy(batch.observations[index])
        torch.testing.assert_close(exported, acted[index], rtol=1e-5, atol=1e-6)
    # Deterministic: acting twice gives the same actions.
    assert torch.equal(algo.act(batch.observations), acted)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_bcq_export_runs_in_onnxruntime_like_act() -> None:
    """BCQ's export module is the unusual one (fixed latents, ArgMax + Gather over candidates):
    onnxruntime reproduces `act` for any batch size. The TorchScript exporter keeps this under a
    second; the dynamo exporter (what offrl_robot.export uses) gave the same actions in a manual check
    but costs ~10-25 s here. The other algorithms export plain Linear/ReLU/Tanh stacks."""
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    algo = make_algo("bcq", 2)
    batch = make_batch(2)
    algo.update(batch)
    obs = batch.observations[1]
    buffer = io.BytesIO()
    torch.onnx.export(
        algo.policy_for_export(1),
        (obs,),
        buffer,
        input_names=["observation"],
        output_names=["action"],
        dynamic_axes={"observation": {0: "batch"}, "action": {0: "batch"}},
        dynamo=False,
    )
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    expected = algo.act(batch.observations)[1]
    for rows in (B, 3):
        (actions,) = session.run(None, {"observation": obs[:rows].numpy()})
        torch.testing.assert_close(torch.from_numpy(actions), expected[:rows], rtol=1e-5, atol=1e-5)


# ---------- algorithm-specific ----------


def _critic_values(algo: Algorithm, obs: Tensor, actions: Tensor) -> Tensor:
    with torch.no_grad():
        return algo.critic(obs, actions)  # [S, 2, B]


def test_cql_pushes_both_critics_up_on_data_and_down_elsewhere() -> None:
    """Zero reward, terminal transitions: plain TD would fit Q = 0 everywhere. The conservative
    term must raise Q on dataset actions above Q on random actions, for BOTH critics; without
    it (weight 0) there is no such gap. A wrong sign would make the gap negative."""
    batch = dataclasses.replace(make_batch(1, terminal=True), rewards=torch.zeros(1, B))
    gaps = {}
    for weight in (0.0, 5.0):
        torch.manual_seed(0)
        algo = make_algo("cql", 1, conservative_weight=weight, critic_lr=1e-3)
        first_gap = algo.update(batch).metrics["conservative_gap"]
        for _ in range(100):
            metrics = algo.update(batch).metrics
        random_actions = torch.rand(1, B, ACT) * 2 - 1
        q_data = _critic_values(algo, batch.observations, batch.actions).mean(-1)[0]  # [2]
        q_random = _critic_values(algo, batch.observations, random_actions).mean(-1)[0]
        gaps[weight] = q_data - q_random
        if weight:  # the regulariser's own value (logsumexp - Q(data)) is what training lowers
            assert metrics["conservative_gap"].item() < first_gap.item() - 0.5
    assert (gaps[5.0] > 0.5).all(), f"both critics must rank data above random: {gaps[5.0].tolist()}"
    assert (gaps[0.0].abs() < 0.2).all(), gaps[0.0].tolist()


@pytest.mark.parametrize("target_action", ["mean", "sample"])
def test_cql_td_target_backs_up_the_chosen_next_action(target_action: str) -> None:
    """y = r + gamma (1 - done) min_i Q'_i(s', a'): a' = tanh(mu(s')) by default ("mean", as
    d3rlpy), a sample of pi(.|s') with "sample" (the paper). The update's td_loss (computed from
    the pre-step networks) matches the deterministic target exactly for "mean" and not for "sample"."""
    torch.manual_seed(0)
    algo = make_algo("cql", 2, target_action=target_action)
    batch = make_batch(2)
    with torch.no_grad():
        next_actions = algo.actor.mode(batch.next_observations)
        target_q = algo.target_critic(batch.next_observations, next_actions).amin(dim=1)
        y = batch.rewards + algo.config.discount * (1.0 - batch.terminals) * target_q
        q_data = algo.critic(batch.observations, batch.actions)
        expected = (q_data - y.unsqueeze(1)).square().sum(1).mean(-1)  # [S]
    got = algo.update(batch).metrics["td_loss"]
    if target_action == "mean":
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    else:
        assert not torch.allclose(got, expected, rtol=1e-3, atol=1e-4)


def test_cql_entropy_backup_needs_a_sampled_target_action() -> None:
    with pytest.raises(ConfigError, match="target_action: sample"):
        make_algo("cql", 1, backup_entropy=True)
    assert make_algo("cql", 1, backup_entropy=True, target_action="sample").config.backup_entropy


@pytest.mark.parametrize(("threshold", "direction"), [(100.0, -1), (-100.0, 1)])
def test_cql_lagrange_multiplier_moves_towards_threshold(threshold: float, direction: int) -> None:
    """Gap below the threshold -> alpha' falls (less conservatism needed); above -> it rises."""
    torch.manual_seed(0)
    algo = make_algo("cql", 1, lagrange=True, lagrange_threshold=threshold)
    batch = make_batch(1)
    start = algo.update(batch).metrics["lagrange"]
    for _ in range(10):
        end = algo.update(batch).metrics["lagrange"]
    assert (direction * (end - start) > 0).all()


def test_iql_expectile_loss_against_hand_computed_values() -> None:
    diff = torch.tensor([2.0, -1.0, 0.0, -3.0])
    expected = torch.tensor([0.7 * 4.0, 0.3 * 1.0, 0.0, 0.3 * 9.0])
    torch.testing.assert_close(expectile_loss(diff, 0.7), expected)
    # tau = 0.5 is half the squared error: V would be the mean.
    torch.testing.assert_close(expectile_loss(diff, 0.5), 0.5 * diff.square())


def test_iql_value_loss_is_the_expectile_of_target_q_minus_v() -> None:
    torch.manual_seed(0)
    algo = make_algo("iql", 2)
    batch = make_batch(2)
    with torch.no_grad():
        q = algo.target_critic(batch.observations, batch.actions).min(dim=1).values
        diff = q - algo.value(batch.observations)
        expected = torch.where(diff < 0, 0.3, 0.7) * diff.square()
    got = algo.update(batch).metrics["value_loss"]
    torch.testing.assert_close(got, expected.mean(-1))


def _episodes_dataset(returns_per_step: list[float], length: int = 4):
    """A Dataset of len(returns_per_step) episodes whose rewards are constant within an episode."""
    import numpy as np

    from offrl_robot.data.dataset import Dataset, DatasetMetadata

    n = length * len(returns_per_step)
    starts = np.zeros(n, bool)
    starts[::length] = True
    meta = DatasetMetadata(
        [f"o{i}" for i in range(OBS)], [f"a{i}" for i in range(ACT)], [-1.0] * ACT, [1.0] * ACT, 10.0
    )
    obs = np.zeros((n, OBS), np.float32)
    rewards = np.repeat(np.asarray(returns_per_step, np.float32), length)
    return Dataset(obs, np.zeros((n, ACT)), rewards, obs, np.zeros(n), np.zeros(n), starts, meta)


def test_iql_normalize_reward_scales_rewards_by_the_return_range() -> None:
    """normalize_reward: rewards x 1000 / (max - min episode return) in the TD target, kept in
    the module state (checkpoints, resume); off by default."""
    data = _episodes_dataset([1.0, -0.5, 2.0])  # episode returns 4, -2, 8: range 10
    plain = make_algo("iql")
    plain.prepare(data)
    assert plain.reward_scale.tolist() == [1.0]
    algo = make_algo("iql", 2, normalize_reward=True)
    algo.prepare(data)
    assert algo.state_dict()["reward_scale"].tolist() == pytest.approx([100.0, 100.0])

    # The Q regression target is r * scale + gamma * V(s'): zero the discount to see it.
    batch = make_batch(1, terminal=True)
    torch.manual_seed(0)
    scaled, unscaled = (make_algo("iql", normalize_reward=True), make_algo("iql"))
    scaled.reward_scale.fill_(100.0)
    loss_scaled = scaled.update(batch).metrics["critic_loss"]
    loss_plain = unscaled.update(dataclasses.replace(batch, rewards=batch.rewards * 100.0)).metrics[
        "critic_loss"
    ]
    torch.testing.assert_close(loss_scaled, loss_plain)

    with pytest.raises(ConfigError, match=r"normalize_reward.*same return"):
        make_algo("iql", normalize_reward=True).prepare(_episodes_dataset([1.0, 1.0]))


def test_td3bc_actor_loss_is_normalised_by_mean_abs_q() -> None:
    """With lambda = alpha / mean|Q|, the Q term is exactly -alpha when Q > 0 everywhere,
    whatever the scale of Q: alpha's meaning does not depend on the reward scale."""
    batch = make_batch(1)
    losses = []
    for q_offset in (50.0, 50_000.0):
        torch.manual_seed(0)
        algo = make_algo("td3bc", 1, policy_freq=1, critic_lr=0.0)
        with torch.no_grad():
            algo.critic.net.layers[-1].bias.fill_(q_offset)  # all Q values positive, at two scales
            pi = algo.actor(batch.observations)
            bc = (pi - batch.actions).square().mean()
        loss = algo.update(batch).metrics["actor_loss"]
        torch.testing.assert_close(loss, torch.tensor([-2.5]) + bc, rtol=1e-4, atol=1e-4)
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=1e-4)


def test_td3bc_actor_and_targets_update_only_every_policy_freq_steps() -> None:
    torch.manual_seed(0)
    algo = make_algo("td3bc", 1, policy_freq=2)
    batch = make_batch(1)
    actor_before = algo.actor.net.layers[0].weight.clone()
    target_before = algo.target_critic.net.layers[0].weight.clone()
    algo.update(batch)
    assert torch.equal(algo.actor.net.layers[0].weight, actor_before)
    assert torch.equal(algo.target_critic.net.layers[0].weight, target_before)
    algo.update(batch)
    assert not torch.equal(algo.actor.net.layers[0].weight, actor_before)
    assert not torch.equal(algo.target_critic.net.layers[0].weight, target_before)


def test_bcq_vae_reconstructs_dataset_actions() -> None:
    torch.manual_seed(0)
    algo = make_algo("bcq", 1)
    batch = make_batch(1)
    variance = batch.actions.var()
    for _ in range(300):
        metrics = algo.update(batch).metrics
    assert metrics["reconstruction_loss"].item() < 0.25 * variance.item()
    with torch.no_grad():  # the decoder's mode (zero latent) reproduces the data, not just on average
        mode = algo.vae.decode(batch.observations, torch.zeros(1, B, algo.latent_dim))
    assert (mode - batch.actions).square().mean() < 0.25 * variance


def test_bcq_actions_stay_within_phi_of_the_generator() -> None:
    algo = make_algo("bcq", 1)
    obs = make_batch(1).observations
    generated = algo.vae.decode(obs)
    perturbed = algo.actor(obs, generated)
    assert ((perturbed - generated).abs() <= algo.config.phi + 1e-6).all()


def test_bc_nll_is_the_gaussian_negative_log_likelihood() -> None:
    torch.manual_seed(0)
    algo = make_algo("bc-nll", 1, learning_rate=3e-3)
    batch = make_batch(1)
    with torch.no_grad():
        mean = algo.actor.mode(batch.observations)
        std = algo.actor.log_std.exp()
        expected = -torch.distributions.Normal(mean, std).log_prob(batch.actions).sum(-1).mean(-1)
    torch.testing.assert_close(algo.update(batch).metrics["actor_loss"], expected)
    for _ in range(200):
        algo.update(batch)
    assert (algo.actor.log_std < -0.3).all(), "the policy should grow confident on deterministic data"


def test_tanh_gaussian_log_prob_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    actor = TanhGaussianActor([0, 1], OBS, ACT, SMALL, "test")
    obs = torch.randn(2, 7, OBS)
    actions, log_prob = actor.sample(obs)
    mean, log_std = actor._mean_log_std(obs)
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()), [torch.distributions.TanhTransform()]
    )
    assert actions.abs().max() < 0.999  # away from saturation, where atanh (the reference) is exact
    torch.testing.assert_close(log_prob, dist.log_prob(actions).sum(-1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(actor.mode(obs), torch.tanh(mean))


def test_tanh_gaussian_n_samples_are_laid_out_state_major() -> None:
    """sample(obs, n) runs the net once per state; row b*n + i must be a sample at state b."""
    actor = TanhGaussianActor([0], OBS, ACT, SMALL, "test")
    with torch.no_grad():  # log-std -> -20: every sample sits on its state's mode
        actor.net.layers[-1].weight[..., ACT:] = 0.0
        actor.net.layers[-1].bias[..., ACT:] = -20.0
    obs = torch.randn(1, 7, OBS)
    actions, log_prob = actor.sample(obs, 4)
    assert actions.shape == (1, 28, ACT) and log_prob.shape == (1, 28)
    expected = actor.mode(obs).unsqueeze(2).expand(1, 7, 4, ACT)
    torch.testing.assert_close(actions.view(1, 7, 4, ACT), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rows", [64, 2048])  # 2048 rows takes the split-K path, 64 the plain one
def test_split_k_ensemble_affine_gradients_match_baddbmm(rows: int) -> None:
    """The CUDA-path layer (split-K weight gradient) is device-agnostic maths: check it on CPU."""
    torch.manual_seed(0)
    x = torch.randn(3, rows, 7, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 7, 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, 1, 5, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(3, rows, 5, dtype=torch.float64)
    expected = torch.autograd.grad((torch.baddbmm(bias, x, weight) * upstream).sum(), (x, weight, bias))
    got = torch.autograd.grad((EnsembleAffine.apply(x, weight, bias) * upstream).sum(), (x, weight, bias))
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e)


def test_wrong_config_type_and_bad_options_are_rejected() -> None:
    with pytest.raises(TypeError, match="CQLConfig"):
        REGISTRY["cql"](OBS, ACT, 1, REGISTRY["iql"].config_class())
    with pytest.raises(ConfigError, match=r"algo_config\.loss"):
        make_algo("bc", 1, loss="huber")
    with pytest.raises(ConfigError, match=r"algo_config\.policy_freq"):
        make_algo("td3bc", 1, policy_freq=0)
    with pytest.raises(ConfigError, match=r"algo_config\.expectile"):
        make_algo("iql", 1, expectile=1.0)
    with pytest.raises(ConfigError, match=r"actor_lr_schedule: cosine decays over the run's steps"):
        REGISTRY["iql"](OBS, ACT, 1, REGISTRY["iql"].config_class())  # the default, with no run length
    with pytest.raises(ValueError, match="seed values"):
        make_algo("bc", 2, seeds=[1])
