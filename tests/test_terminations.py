"""Termination functions (`offrl_robot.sim.terminations`, resolved by name through
`offrl_robot.registry`): each agrees with its gymnasium env on real episodes, works on torch
tensors as on numpy arrays, and is what MOPO's `termination: auto` picks for the task's data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from offrl_robot.errors import ConfigError
from offrl_robot.registry import registered_terminations, resolve_termination
from offrl_robot.sim import make_env, task_info
from offrl_robot.sim.terminations import hopper_terminated, walker2d_terminated


def _random_transitions(task: str, episodes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(obs, act, next_obs, terminated) of uniform-random episodes of the real env."""
    env = make_env(task)
    rng = np.random.default_rng(0)
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]] = []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=episode)
            done = False
            while not done:
                act = rng.uniform(-1.0, 1.0, env.action_space.shape)
                next_obs, _, terminated, truncated, _ = env.step(act)
                rows.append((obs, act, next_obs, bool(terminated)))
                obs, done = next_obs, terminated or truncated
    finally:
        env.close()
    obs, act, nxt, term = (np.array(col) for col in zip(*rows, strict=True))
    return obs, act, nxt, term


@pytest.mark.parametrize(
    ("task", "rule"), [("Hopper-v5", hopper_terminated), ("Walker2d-v5", walker2d_terminated)]
)
def test_rule_agrees_with_the_env_on_every_transition(task: str, rule: object) -> None:
    obs, act, nxt, terminated = _random_transitions(task, 30)
    assert terminated.sum() == 30  # random actions: every episode falls
    assert task_info(task).termination and resolve_termination(task_info(task).termination) is rule
    np.testing.assert_array_equal(rule(obs, act, nxt), terminated)
    as_torch = rule(*(torch.from_numpy(a) for a in (obs, act, nxt)))
    assert as_torch.dtype == torch.bool
    np.testing.assert_array_equal(as_torch.numpy(), terminated)


def test_non_finite_states_are_terminal_and_batches_keep_their_shape() -> None:
    nxt = torch.tensor(
        [[1.25, 0.0, *[0.0] * 9], [float("nan"), 0.0, *[0.0] * 9], [1.25, 0.0, 200.0, *[0.0] * 8]]
    )
    assert hopper_terminated(None, None, nxt).tolist() == [False, True, True]
    batched = hopper_terminated(None, None, nxt.expand(4, 3, 11))
    assert batched.shape == (4, 3)


def test_tasks_without_a_rule_and_unknown_names() -> None:
    assert task_info("HalfCheetah-v5").termination == "" and task_info("ArmReach-v0").termination == ""
    assert {"hopper", "walker2d"} <= set(registered_terminations())
    with pytest.raises(ConfigError) as err:
        resolve_termination("offrl_robot.sim.terminations:hopper_terminatd")
    # other tests of this process may have registered more names: the built-ins must be listed
    message = str(err.value)
    assert "\n" not in message and "registered: " in message
    assert {"hopper", "walker2d"} <= set(message.split("registered: ")[1].split(")")[0].split(", "))


def test_mopo_auto_termination_follows_the_datas_task() -> None:
    from offrl_robot.algos.mopo import resolve_termination_setting
    from offrl_robot.data.collect import collect

    hopper = collect("Hopper-v5", "random", episodes=3, seed=0).dataset
    assert hopper.terminals.sum() == 3
    assert resolve_termination_setting("auto", hopper) == "hopper"
    assert resolve_termination_setting("none", hopper) == "none"
    hopper.metadata.task = "my-robot"  # a task the project has no rule for, data with terminals
    with pytest.raises(
        ConfigError, match=r"has 3 true terminals but its task 'my-robot' names no termination"
    ):
        resolve_termination_setting("auto", hopper)
    arm = collect("ArmReach-v0", "random", episodes=1, seed=0).dataset  # ends by time only
    assert resolve_termination_setting("auto", arm) == "none"
