"""Named reward functions: the allow-list that deployed models may refer to.

A model card (and a task file) names its reward by a string. Resolving that string by importing
an arbitrary `module:attr` would let whoever edits a card run code in the robot's process at
configure time, so names resolve only through this registry:

- the project's own data-only rewards (`BUILTIN_REWARDS`), by short name or by their
  `module:function` spelling (what older cards and ingest specs wrote);
- rewards that installed packages declare under the entry-point group `offrl_robot.rewards`
  (`[project.entry-points."offrl_robot.rewards"] my_arm = "my_pkg.rewards:my_arm_reward"`): installing
  a package is the act that puts a function on the allow-list.

A reward is `fn(obs [N, O], act [N, A], next_obs [N, O]) -> [N]`, computed from logged data alone
(so rosbag ingest, MPC planning and the sim all score transitions the same way).

Only offline, user-run tools (`offrl-robot ingest` reading the user's own spec) may also import
an unregistered `module:function` (`allow_import=True`): that is the user running their own code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from offrl_robot.errors import ConfigError

RewardFunction = Callable[[Any, Any, Any], Any]
REWARD_ENTRY_POINT_GROUP = "offrl_robot.rewards"

# short name -> module:function of the rewards shipped with offrl_robot
BUILTIN_REWARDS: dict[str, str] = {
    "arm_reach": "offrl_robot.sim.rewards:arm_reach_reward",
    "diff_drive_forward_progress": "offrl_robot.data.robot_rewards:diff_drive_forward_progress",
    "joint_tracking": "offrl_robot.data.robot_rewards:joint_tracking_reward",
}


# name -> function registered in this process by `register_reward` (tests, a user's own launcher)
_REGISTERED: dict[str, RewardFunction] = {}


def register_reward(name: str, function: RewardFunction) -> None:
    """Put `function` on this process's allow-list under `name` (code that calls this already runs
    in the process; a card can only name it, never bring it)."""
    if not isinstance(name, str) or not name or not callable(function):
        raise ConfigError(f"register_reward needs a non-empty name and a function, got {name!r}")
    _REGISTERED[name] = function


def registered_rewards() -> dict[str, str]:
    """Every allowed reward name -> its `module:function` (built-ins first, then entry points).

    Each built-in is listed under its short name and under its `module:function` spelling.
    """
    names = dict(BUILTIN_REWARDS)
    names.update({target: target for target in BUILTIN_REWARDS.values()})
    for entry in entry_points(group=REWARD_ENTRY_POINT_GROUP):
        names.setdefault(entry.name, entry.value)
        names.setdefault(entry.value, entry.value)
    return names


def _import(target: str, name: str) -> RewardFunction:
    module_name, _, attribute = target.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except Exception as err:  # ImportError, AttributeError, or the module itself failing to import
        detail = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        raise ConfigError(f"reward {name!r} cannot be imported ({detail}); fix the name") from None
    if not callable(function):
        raise ConfigError(f"reward {name!r} ({target}) is not a function; name a callable")
    return function


def resolve_reward(name: str, allow_import: bool = False) -> RewardFunction:
    """The reward function registered as `name` (one-line ConfigError otherwise).

    `allow_import=True` (offline tools only) also imports an unregistered `module:function`.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"reward name must be a non-empty string, got {name!r}")
    if name in _REGISTERED:
        return _REGISTERED[name]
    known = registered_rewards()
    if name in known:
        return _import(known[name], name)
    if allow_import and ":" in name:
        return _import(name, name)
    short = sorted({*(n for n in known if ":" not in n), *_REGISTERED})
    raise ConfigError(
        f"reward {name!r} is not a registered reward function (registered: {', '.join(short)}); "
        f"register it under the entry-point group {REWARD_ENTRY_POINT_GROUP!r} of an installed package"
    )


def is_registered_reward(name: str) -> bool:
    return isinstance(name, str) and (name in _REGISTERED or name in registered_rewards())
