"""Policy evaluation in the task's MuJoCo env, for every seed of a (vectorised) run at once.

Why its own module: the Trainer evaluates periodically, and later stages (export parity, the
sim gate) want the same numbers computed the same way. The policy is deterministic
(`Algorithm.act`); observations go through the Trainer's normaliser on the host and actions
are mapped back from [-1, 1] to physical units, exactly what the exported ONNX graph does.

All S seeds share the same episode start states (episode e of every seed resets with
`eval_seed + e`), so seeds are compared on identical conditions, and one `act` call per env step
serves all seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from offrl_robot.errors import ConfigError
from offrl_robot.sim import TaskInfo, make_env, task_info
from offrl_robot.stats import sample_std


@dataclass
class SeedEval:
    """Evaluation of one seed over N episodes (std_return: sample std over the episodes)."""

    seed: int
    returns: list[float]
    mean_return: float
    std_return: float
    normalized_score: float | None = None
    success_rate: float | None = None
    final_distance: float | None = None
    episode_lengths: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_task_dims(task: str, observation_dim: int, action_dim: int, dataset_name: str) -> None:
    """Fail before training if the eval task's spaces disagree with the dataset's dims."""
    info = task_info(task)
    env_obs, env_act = len(info.observation_names), len(info.action_names)
    if env_obs != observation_dim or env_act != action_dim:
        raise ConfigError(
            f"task {task!r} has observation dim {env_obs} and action dim {env_act}, but dataset "
            f"{dataset_name!r} has {observation_dim} and {action_dim}; set `task:` to the env the data came from"
        )


def evaluate(
    act: Callable[[torch.Tensor], torch.Tensor],
    task: str,
    seeds: list[int],
    episodes: int,
    eval_seed: int,
    obs_mean: np.ndarray,
    obs_std: np.ndarray,
    action_low: np.ndarray,
    action_high: np.ndarray,
    device: torch.device,
    facts: TaskInfo | None = None,
    on_reset: Callable[[], None] | None = None,
) -> list[SeedEval]:
    """Run `episodes` deterministic episodes per seed; one env per seed, stepped in lock-step.

    `act` maps normalised observations [S, 1, O] (on `device`) to actions in [-1, 1] [S, 1, A].
    An arm task counts an episode as a success when `info["is_success"]` holds at its last step,
    and reports the mean end-effector-to-goal `info["distance"]` (m) at the last step: success
    is a strict threshold (2 cm for ArmReach), the distance shows how close a policy gets.
    `on_reset` is called before each episode: a stateful controller (MPC's warm-start plan and
    last command) starts every episode fresh, as it would after a reset on the robot.
    """
    facts = task_info(task) if facts is None else facts
    num_seeds = len(seeds)
    envs = [make_env(task) for _ in range(num_seeds)]
    mean = np.asarray(obs_mean, np.float32)
    std = np.asarray(obs_std, np.float32)
    low = np.asarray(action_low, np.float64)
    high = np.asarray(action_high, np.float64)
    returns = np.zeros((num_seeds, episodes))
    lengths = np.zeros((num_seeds, episodes), dtype=np.int64)
    successes = np.zeros((num_seeds, episodes), dtype=bool)
    final_distance = np.full((num_seeds, episodes), np.nan)
    try:
        for episode in range(episodes):
            if on_reset is not None:
                on_reset()
            obs = np.stack(
                [np.asarray(env.reset(seed=eval_seed + episode)[0], np.float32).reshape(-1) for env in envs]
            )
            done = np.zeros(num_seeds, dtype=bool)
            while not done.all():
                normed = torch.from_numpy((obs - mean) / std).to(device)[:, None, :]
                unit = act(normed)[:, 0, :].detach().to("cpu", torch.float64).numpy()
                physical = low + (np.clip(unit, -1.0, 1.0) + 1.0) * 0.5 * (high - low)
                for row, env in enumerate(envs):
                    if done[row]:
                        continue
                    next_obs, reward, terminated, truncated, info = env.step(physical[row].astype(np.float32))
                    returns[row, episode] += float(reward)
                    lengths[row, episode] += 1
                    obs[row] = np.asarray(next_obs, np.float32).reshape(-1)
                    if terminated or truncated:
                        done[row] = True
                        successes[row, episode] = bool(info.get("is_success", False))
                        final_distance[row, episode] = float(info.get("distance", np.nan))
    finally:
        for env in envs:
            env.close()
    results = []
    for row, seed in enumerate(seeds):
        scores = [facts.normalized_score(float(r)) for r in returns[row]]
        results.append(
            SeedEval(
                seed=seed,
                returns=returns[row].tolist(),
                mean_return=float(returns[row].mean()),
                std_return=sample_std(returns[row]),
                normalized_score=None if scores[0] is None else float(np.mean(scores)),
                success_rate=float(successes[row].mean()) if facts.is_arm_task else None,
                final_distance=float(final_distance[row].mean()) if facts.is_arm_task else None,
                episode_lengths=lengths[row].tolist(),
            )
        )
    return results


def aggregate(results: list[SeedEval]) -> dict[str, Any]:
    """Across seeds: mean ± sample std (ddof = 1, `offrl_robot.stats`) of each seed's mean return /
    score / success rate / final distance (std 0.0 for a single seed)."""
    out: dict[str, Any] = {"per_seed": [r.to_dict() for r in results]}
    for key in ("mean_return", "normalized_score", "success_rate", "final_distance"):
        values = [getattr(r, key) for r in results if getattr(r, key) is not None]
        if values:
            out[key] = {"mean": float(np.mean(values)), "std": sample_std(values)}
    return out
