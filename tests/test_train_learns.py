"""Each algorithm learns ArmReach from scripted-expert data on the CPU within a small budget.

Baseline: holding still (the zero velocity command, ArmReach's safe action) on the very same
evaluation episodes. Its final distance is the initial EE-to-goal distance, and it already scores
~30 normalised (0 = uniform random policy, 100 = scripted expert), because random flailing is
far worse than standing still. A policy has learned to reach when it ends clearly closer to the
goal than where it started (final distance at most 75 % of the baseline's) and its normalised
score is clearly above the baseline's (+15).

Budgets are tiny (64x64 nets, hundreds to a few thousand updates, 1 CPU thread) so the whole
module stays within ~150 s on the shared 2-core machine. Honest limit: at these budgets no
algorithm meets ArmReach's strict 2 cm success criterion (success rate ~0, printed with
`pytest -s`); BC needs ~8000 updates to reach 0.1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import offrl_robot.algos  # noqa: F401  (fills the registry)
from offrl_robot.algos import REGISTRY
from offrl_robot.data.collect import collect
from offrl_robot.data.dataset import Dataset
from offrl_robot.evaluation import SeedEval, evaluate
from offrl_robot.sim import task_info
from offrl_robot.train import TrainConfig, Trainer

EVAL_EPISODES = 10
EVAL_SEED = TrainConfig().eval_seed

# algo -> (updates, extra hyper-parameters). TD3+BC gets alpha 0.1 (paper: 2.5): after 3000
# updates its critic's action-gradient is still poor, and at alpha 2.5 (0.25) the policy ends as
# far from the goal as holding still (measured: final distance 0.45 m vs 0.47 m at alpha 0.25).
BUDGETS: dict[str, tuple[int, dict[str, object]]] = {
    "bc": (2000, {}),
    "iql": (2000, {}),
    "td3bc": (3000, {"alpha": 0.1}),
    "cql": (1200, {}),
    "bcq": (800, {"vae_hidden_sizes": [64, 64]}),
}


@pytest.fixture(scope="module")
def expert_data() -> Dataset:
    """40 scripted-expert episodes (6000 transitions) with 10 % action noise for coverage."""
    return collect("ArmReach-v0", "scripted-expert", episodes=40, seed=0, noise=0.1).dataset


@pytest.fixture(scope="module")
def hold_still() -> SeedEval:
    """The zero-velocity policy on the Trainer's evaluation episodes."""
    info = task_info("ArmReach-v0")
    low, high = np.asarray(info.action_low), np.asarray(info.action_high)
    zero_in_unit = torch.tensor((0.0 - low) / (high - low) * 2.0 - 1.0, dtype=torch.float32)

    def act(normed: torch.Tensor) -> torch.Tensor:
        return zero_in_unit.expand(normed.shape[0], normed.shape[1], -1)

    dims = len(info.observation_names)
    zeros, ones = np.zeros(dims, np.float32), np.ones(dims, np.float32)
    return evaluate(
        act, "ArmReach-v0", [0], EVAL_EPISODES, EVAL_SEED, zeros, ones, low, high, torch.device("cpu")
    )[0]


@pytest.mark.slow
@pytest.mark.parametrize("algo", sorted(BUDGETS))
def test_algorithm_learns_arm_reach(
    algo: str, expert_data: Dataset, hold_still: SeedEval, tmp_path: Path
) -> None:
    assert algo in REGISTRY, f"{algo} is not registered in offrl_robot.algos"
    steps, extra = BUDGETS[algo]
    config = TrainConfig(
        algo=algo,
        algo_config={"hidden_sizes": [64, 64], **extra},
        task="ArmReach-v0",
        steps=steps,
        seeds=[0],
        batch_size=128,
        eval_every=0,
        eval_episodes=EVAL_EPISODES,
        eval_seed=EVAL_SEED,
        log_every=steps,
        checkpoint_every=0,
        progress=False,
        threads=1,
    )
    summary = Trainer(config, dataset=expert_data, run_dir=tmp_path / algo).fit()
    result = summary["final_eval"]["per_seed"][0]
    print(
        f"{algo}: {steps} updates at {summary['updates_per_s']:.0f}/s: final distance "
        f"{result['final_distance']:.3f} m (holding still {hold_still.final_distance:.3f}), normalised score "
        f"{result['normalized_score']:.1f} (holding still {hold_still.normalized_score:.1f}), "
        f"success rate {result['success_rate']:.2f}"
    )
    assert result["final_distance"] <= 0.75 * hold_still.final_distance
    assert result["normalized_score"] >= hold_still.normalized_score + 15
