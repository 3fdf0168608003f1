"""Recipe for the Hopper-v5 quality datasets: `random`, and `medium` from a small online SAC.

D4RL's hopper-medium is the replay of a SAC policy stopped at roughly a third of expert
return. We regenerate the same kind of data instead of committing it:

  1. online SAC on Hopper-v5 (our CQL class with conservative_weight 0 IS SAC: twin Q, target
     critics, tanh-Gaussian actor, automatic entropy tuning), one update per env step after
     --start-steps uniform-random steps, until the deterministic policy's mean return over 5
     episodes reaches --target-return (default 1,000, D4RL's medium band) or --max-steps;
  2. `medium`: --episodes rollouts of that policy, stochastic (as D4RL's medium), through the
     same rollout code as `offrl-robot collect` (same Dataset layout and metadata);
  3. `random`: `offrl-robot collect --task Hopper-v5 --policy random` (called in-process).
Both are saved as local Minari datasets (`hopper-medium-v0`, `hopper-random-v0`, or --prefix).

    python3 benchmarks/hopper_behaviour.py --device cuda --max-steps 300000   # GPU machine
    .venv/bin/python -m offrl_robot.cli train --algo iql --dataset hopper-medium-v0 ...

Status: written and smoke-tested with tiny sizes on the CPU; the full run (GPU) was not made in
the session that wrote it, see BENCHMARKS.md "Quality".
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from offrl_robot.accel import make_update_step  # noqa: E402
from offrl_robot.algos import CQL, CQLConfig  # noqa: E402
from offrl_robot.data.collect import collect, rollouts  # noqa: E402
from offrl_robot.data.minari_io import save_dataset  # noqa: E402
from offrl_robot.sim import make_env, task_info  # noqa: E402

TASK = "Hopper-v5"  # the default; --task swaps it (HalfCheetah-v5 for issue 17's CQL check)


class GrowingBufferSampler:
    """Uniform indices over the filled part of an online replay buffer, drawn on the device.

    The size is a host int known without a sync; the draw is eager (one kernel) so the captured
    update graph (offrl_robot.accel.GraphStep, host-sampler path) reads them from its static
    index buffer."""

    def __init__(self, batch_size: int, seed: int, device: torch.device) -> None:
        self.seeds = [seed]
        self.batch_size = batch_size
        self.size = 1
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.device = device

    def sample(self, step: int) -> tuple[torch.Tensor, None]:
        shape = (1, self.batch_size)
        return torch.randint(0, self.size, shape, device=self.device, generator=self.generator), None


def sac(device: torch.device, args: argparse.Namespace) -> CQL:
    """Online SAC until the target return; returns the trained agent (single seed).

    On CUDA each update is replayed from a CUDA graph (`--accelerate graph`, default): eager
    SAC updates are launch-bound (~150/s on an H100), the graph runs them ~10x faster."""
    info = task_info(args.task)
    obs_dim, act_dim = len(info.observation_names), len(info.action_names)
    config = CQLConfig(
        conservative_weight=0.0,  # no conservative term: plain SAC
        target_action="sample",  # SAC backs up a sampled next action (the recipe of the datasets)
        num_sampled_actions=1,  # the (now unused) regulariser samples as little as possible
        actor_lr=3e-4,
        critic_lr=3e-4,
        temperature_lr=3e-4,
    )
    agent = CQL(obs_dim, act_dim, 1, config, seeds=[args.seed]).to(device).train()
    capacity = args.max_steps
    buf = {
        "observations": torch.zeros(capacity, obs_dim, device=device),
        "actions": torch.zeros(capacity, act_dim, device=device),
        "rewards": torch.zeros(capacity, device=device),
        "next_observations": torch.zeros(capacity, obs_dim, device=device),
        "terminals": torch.zeros(capacity, device=device),
    }
    rng = np.random.default_rng(args.seed)
    sampler = GrowingBufferSampler(256, args.seed, device)
    step_fn = None
    env = make_env(args.task)
    obs, _ = env.reset(seed=args.seed)
    cut = np.cumsum([obs_dim, act_dim, 1, obs_dim])  # field boundaries in one transition row
    t0 = time.perf_counter()
    for step in range(capacity):
        if step < args.start_steps:
            action = rng.uniform(-1.0, 1.0, act_dim).astype(np.float32)
        else:
            with torch.no_grad():
                obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device).view(1, 1, -1)
                action = agent.actor.sample(obs_t)[0].view(-1).cpu().numpy()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        row = np.concatenate([obs, action, [reward], next_obs, [float(terminated)]]).astype(np.float32)
        row_t = torch.from_numpy(row).to(device, non_blocking=False)
        buf["observations"][step] = row_t[: cut[0]]
        buf["actions"][step] = row_t[cut[0] : cut[1]]
        buf["rewards"][step] = row_t[cut[1]]
        buf["next_observations"][step] = row_t[cut[2] : cut[3]]
        buf["terminals"][step] = row_t[cut[3]]
        sampler.size = step + 1
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
        if step >= args.start_steps:
            if step_fn is None:
                step_fn = make_update_step(agent, sampler, buf, args.accelerate)
            step_fn(step)
        if step >= args.start_steps and (step + 1) % args.eval_every == 0:
            score = evaluate(agent, device, episodes=5, task=args.task)
            print(
                f"step {step + 1}: deterministic return {score:.0f} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
            if score >= args.target_return:
                break
    env.close()
    return agent


def evaluate(agent: CQL, device: torch.device, episodes: int, task: str = TASK) -> float:
    env = make_env(task)
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=100_000 + episode)
        done, total = False, 0.0
        while not done:
            obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device).view(1, 1, -1)
            action = agent.act(obs_t).view(-1).cpu().numpy()
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=300_000)
    parser.add_argument("--start-steps", type=int, default=5_000)
    parser.add_argument("--eval-every", type=int, default=10_000)
    parser.add_argument("--target-return", type=float, default=1_000.0)
    parser.add_argument("--accelerate", default="graph", help="none | graph (CUDA graph of the update)")
    parser.add_argument("--episodes", type=int, default=100, help="episodes of the medium dataset")
    parser.add_argument(
        "--random-episodes",
        type=int,
        default=1000,
        help="episodes of the random dataset (~20 steps each on Hopper; 0 = no random dataset)",
    )
    parser.add_argument("--task", default=TASK, help="a gymnasium locomotion task (HalfCheetah-v5, ...)")
    parser.add_argument("--prefix", default="hopper")
    parser.add_argument("--root", default=None, help="Minari root (default: offrl_robot's)")
    args = parser.parse_args()
    device = torch.device(args.device)
    agent = sac(device, args)

    info = task_info(args.task)
    low, high = np.asarray(info.action_low), np.asarray(info.action_high)

    def behaviour(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            obs_t = torch.as_tensor(np.asarray(obs, np.float32), device=device).view(1, 1, -1)
            return agent.actor.sample(obs_t)[0].view(-1).cpu().numpy().astype(np.float64)

    env = make_env(args.task)
    try:
        medium = rollouts(env, info, behaviour, args.episodes, args.seed, low, high, None, "sac-medium", 0.0)
    finally:
        env.close()
    made = [("medium", medium)]
    if args.random_episodes > 0:
        made.append(("random", collect(args.task, "random", episodes=args.random_episodes, seed=args.seed)))
    for label, result in made:
        path = save_dataset(result.dataset, f"{args.prefix}-{label}", root=args.root, overwrite=True)
        print(f"{label}: {len(result.dataset)} transitions, mean return {result.mean_return:.0f} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
