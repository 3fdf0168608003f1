"""Named data-only functions that configs, cards and model files may refer to: the allow-lists of
reward functions and of termination functions.

A model card (and a task file, a train config) names such a function by a string. Resolving that
string by importing an arbitrary `module:attr` would let whoever edits the file run code in the
robot's (or the trainer's) process, so names resolve only through this registry:

- the project's own functions (`BUILTIN_REWARDS`, `BUILTIN_TERMINATIONS`), by short name or by
  their `module:function` spelling (what older cards and ingest specs wrote);
- functions that installed packages declare under the entry-point group `offrl_robot.rewards`
  or `offrl_robot.terminations` (`[project.entry-points."offrl_robot.rewards"] my_arm =
  "my_pkg.rewards:my_arm_reward"`): installing a package is the act that puts a function on
  the allow-list.

A reward is `fn(obs [N, O], act [N, A], next_obs [N, O]) -> [N]`, computed from logged data alone
(so rosbag ingest, MPC planning and the sim all score transitions the same way). A termination
function has the same signature and returns a boolean [N]: True where `next_obs` ends the task
(a true terminal, no bootstrapping: a fallen hopper), so model rollouts (MOPO) stop where the
real task would. Both work on numpy arrays and on torch tensors alike (operators only).

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
TerminationFunction = Callable[[Any, Any, Any], Any]
REWARD_ENTRY_POINT_GROUP = "offrl_robot.rewards"
TERMINATION_ENTRY_POINT_GROUP = "offrl_robot.terminations"

# short name -> module:function of the rewards shipped with offrl_robot
BUILTIN_REWARDS: dict[str, str] = {
    "arm_reach": "offrl_robot.sim.rewards:arm_reach_reward",
    "diff_drive_forward_progress": "offrl_robot.data.robot_rewards:diff_drive_forward_progress",
    "joint_tracking": "offrl_robot.data.robot_rewards:joint_tracking_reward",
}

# short name -> module:function of the termination rules shipped with offrl_robot (gymnasium's
# `is_healthy` of the v5 locomotion tasks, on observations); `offrl_robot.sim.tasks` names each
# task's rule
BUILTIN_TERMINATIONS: dict[str, str] = {
    "hopper": "offrl_robot.sim.terminations:hopper_terminated",
    "walker2d": "offrl_robot.sim.terminations:walker2d_terminated",
}


# name -> function registered in this process by `register_reward` / `register_termination`
# (tests, a user's own launcher)
_REGISTERED: dict[str, RewardFunction] = {}
_REGISTERED_TERMINATIONS: dict[str, TerminationFunction] = {}


def _register(kind: str, table: dict[str, Any], name: str, function: Callable[..., Any]) -> None:
    if not isinstance(name, str) or not name or not callable(function):
        raise ConfigError(f"register_{kind} needs a non-empty name and a function, got {name!r}")
    table[name] = function


def _allowed(builtins: dict[str, str], group: str) -> dict[str, str]:
    """Every allowed name -> its `module:function` (built-ins first, then entry points); each
    built-in is listed under its short name and under its `module:function` spelling."""
    names = dict(builtins)
    names.update({target: target for target in builtins.values()})
    for entry in entry_points(group=group):
        names.setdefault(entry.name, entry.value)
        names.setdefault(entry.value, entry.value)
    return names


def _import(kind: str, target: str, name: str) -> Callable[..., Any]:
    module_name, _, attribute = target.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except Exception as err:  # ImportError, AttributeError, or the module itself failing to import
        detail = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        raise ConfigError(f"{kind} {name!r} cannot be imported ({detail}); fix the name") from None
    if not callable(function):
        raise ConfigError(f"{kind} {name!r} ({target}) is not a function; name a callable")
    return function


def _resolve(
    kind: str,
    name: str,
    registered: dict[str, Any],
    builtins: dict[str, str],
    group: str,
    allow_import: bool,
) -> Callable[..., Any]:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{kind} name must be a non-empty string, got {name!r}")
    if name in registered:
        return registered[name]
    known = _allowed(builtins, group)
    if name in known:
        return _import(kind, known[name], name)
    if allow_import and ":" in name:
        return _import(kind, name, name)
    short = sorted({*(n for n in known if ":" not in n), *registered})
    raise ConfigError(
        f"{kind} {name!r} is not a registered {kind} function (registered: {', '.join(short)}); "
        f"register it under the entry-point group {group!r} of an installed package"
    )


# ---------------------------------------------------------------------------------- rewards
def register_reward(name: str, function: RewardFunction) -> None:
    """Put `function` on this process's allow-list under `name` (code that calls this already runs
    in the process; a card can only name it, never bring it)."""
    _register("reward", _REGISTERED, name, function)


def registered_rewards() -> dict[str, str]:
    """Every allowed reward name -> its `module:function` (built-ins first, then entry points).

    Each built-in is listed under its short name and under its `module:function` spelling.
    """
    return _allowed(BUILTIN_REWARDS, REWARD_ENTRY_POINT_GROUP)


def resolve_reward(name: str, allow_import: bool = False) -> RewardFunction:
    """The reward function registered as `name` (one-line ConfigError otherwise).

    `allow_import=True` (offline tools only) also imports an unregistered `module:function`.
    """
    return _resolve("reward", name, _REGISTERED, BUILTIN_REWARDS, REWARD_ENTRY_POINT_GROUP, allow_import)


def is_registered_reward(name: str) -> bool:
    return isinstance(name, str) and (name in _REGISTERED or name in registered_rewards())


# ---------------------------------------------------------------------------------- terminations
def register_termination(name: str, function: TerminationFunction) -> None:
    """Put a termination function on this process's allow-list under `name`."""
    _register("termination", _REGISTERED_TERMINATIONS, name, function)


def registered_terminations() -> dict[str, str]:
    """Every allowed termination name -> its `module:function` (built-ins first, then entry points)."""
    return _allowed(BUILTIN_TERMINATIONS, TERMINATION_ENTRY_POINT_GROUP)


def resolve_termination(name: str) -> TerminationFunction:
    """The termination function registered as `name` (one-line ConfigError otherwise). Never
    imports an unregistered `module:function`: a train config names it, and configs travel."""
    return _resolve(
        "termination",
        name,
        _REGISTERED_TERMINATIONS,
        BUILTIN_TERMINATIONS,
        TERMINATION_ENTRY_POINT_GROUP,
        False,
    )
