"""Named reward, success and termination functions, and installed tasks: the allow-lists a card, task
file or train config may name.

A model card (and a task file) names its reward by a string. Resolving that string by importing
an arbitrary `module:attr` would let whoever edits a card run code in the robot's process at
configure time, so names resolve only through this registry:

- the project's own data-only functions (`BUILTIN_REWARDS`, `BUILTIN_SUCCESS`), by short name or
  by their `module:function` spelling (what older cards and ingest specs wrote);
- functions that installed packages declare under the entry-point groups `offrl_robot.rewards` /
  `offrl_robot.success` (`[project.entry-points."offrl_robot.rewards"] my_arm =
  "my_pkg.rewards:my_arm_reward"`): installing a package is the act that puts a function on the
  allow-list;
- functions registered in this process (`register_reward`, `register_success`,
  `register_termination`).

A reward is `fn(obs [N, O], act [N, A], next_obs [N, O]) -> [N]` and a success function the same
with a boolean result, computed from logged data alone (so rosbag ingest, MPC planning and the
sim all score transitions the same way). A function that needs to know the task (its MJCF for
forward kinematics, which columns hold the goal) takes it as the keyword argument `task` (a
`offrl_robot.sim.task_file.TaskDefinition`); `resolve_reward(name, task=...)` binds it.

A termination function (`BUILTIN_TERMINATIONS`, group `offrl_robot.terminations`) has the reward's
signature and returns a boolean [N]: True where `next_obs` ends the task (a true terminal, no
bootstrapping: a fallen hopper), so model rollouts (MOPO) stop where the real task would. It works
on numpy arrays and torch tensors alike (operators only), and is never imported from an
unregistered `module:function`: a train config names it, and configs travel.

Tasks defined in code live under the entry-point group `offrl_robot.tasks`: the entry point names
a `TaskDefinition`, a path to a task YAML file, or a callable returning either
(`offrl_robot.sim.tasks` resolves them, like a task file path).

Only offline, user-run tools (`offrl-robot ingest` reading the user's own spec) may also import
an unregistered `module:function` (`allow_import=True`): that is the user running their own code.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from offrl_robot.errors import ConfigError

RewardFunction = Callable[..., Any]
SuccessFunction = Callable[..., Any]
REWARD_ENTRY_POINT_GROUP = "offrl_robot.rewards"
SUCCESS_ENTRY_POINT_GROUP = "offrl_robot.success"
TASK_ENTRY_POINT_GROUP = "offrl_robot.tasks"
TERMINATION_ENTRY_POINT_GROUP = "offrl_robot.terminations"
TerminationFunction = Callable[..., Any]

# short name -> module:function of the rewards shipped with offrl_robot
BUILTIN_REWARDS: dict[str, str] = {
    "arm_reach": "offrl_robot.sim.rewards:arm_reach_reward",
    "diff_drive_forward_progress": "offrl_robot.data.robot_rewards:diff_drive_forward_progress",
    "joint_tracking": "offrl_robot.data.robot_rewards:joint_tracking_reward",
    "reach": "offrl_robot.sim.mjcf_reach:reach_reward",
}
# short name -> module:function of the success functions shipped with offrl_robot
BUILTIN_SUCCESS: dict[str, str] = {
    "reach": "offrl_robot.sim.mjcf_reach:reach_success",
}
# short name -> module:function of the termination rules shipped with offrl_robot (gymnasium's
# `is_healthy` of the v5 locomotion tasks, on observations); `offrl_robot.sim.tasks` names each
# task's rule
BUILTIN_TERMINATIONS: dict[str, str] = {
    "hopper": "offrl_robot.sim.terminations:hopper_terminated",
    "walker2d": "offrl_robot.sim.terminations:walker2d_terminated",
}


class _Registry:
    """One allow-list (rewards, success or termination functions): built-ins, entry points,
    in-process names."""

    def __init__(self, kind: str, builtins: dict[str, str], group: str) -> None:
        self.kind, self.builtins, self.group = kind, builtins, group
        self.registered: dict[str, Callable[..., Any]] = {}

    def register(self, name: str, function: Callable[..., Any]) -> None:
        if not isinstance(name, str) or not name or not callable(function):
            raise ConfigError(f"register_{self.kind} needs a non-empty name and a function, got {name!r}")
        self.registered[name] = function

    def names(self) -> dict[str, str]:
        """Every allowed name -> its `module:function` (built-ins first, then entry points)."""
        names = dict(self.builtins)
        names.update({target: target for target in self.builtins.values()})
        for entry in entry_points(group=self.group):
            names.setdefault(entry.name, entry.value)
            names.setdefault(entry.value, entry.value)
        return names

    def _import(self, target: str, name: str) -> Callable[..., Any]:
        module_name, _, attribute = target.partition(":")
        try:
            function = getattr(importlib.import_module(module_name), attribute)
        except Exception as err:  # ImportError, AttributeError, or the module itself failing to import
            detail = " ".join(f"{type(err).__name__}: {err}".split())[:300]
            raise ConfigError(f"{self.kind} {name!r} cannot be imported ({detail}); fix the name") from None
        if not callable(function):
            raise ConfigError(f"{self.kind} {name!r} ({target}) is not a function; name a callable")
        return function

    def resolve(self, name: str, allow_import: bool, task: Any) -> Callable[..., Any]:
        function = self.lookup(name, allow_import)
        if not needs_task(function):
            return function
        if task is None:
            raise ConfigError(
                f"{self.kind} {name!r} computes from a task's definition (its MJCF and observation layout) "
                "and no task was given; name the task (task: in the ingest spec, --task) it belongs to"
            )
        return functools.partial(function, task=task)

    def lookup(self, name: str, allow_import: bool) -> Callable[..., Any]:
        """The function itself, not bound to a task."""
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self.registered:
            function = self.registered[name]
        else:
            known = self.names()
            if name in known:
                function = self._import(known[name], name)
            elif allow_import and ":" in name:
                function = self._import(name, name)
            else:
                short = sorted({*(n for n in known if ":" not in n), *self.registered})
                raise ConfigError(
                    f"{self.kind} {name!r} is not a registered {self.kind} function (registered: "
                    f"{', '.join(short)}); register it under the entry-point group {self.group!r} of an "
                    "installed package"
                )
        return function

    def is_registered(self, name: str) -> bool:
        return isinstance(name, str) and (name in self.registered or name in self.names())


_REWARDS = _Registry("reward", BUILTIN_REWARDS, REWARD_ENTRY_POINT_GROUP)
_SUCCESS = _Registry("success", BUILTIN_SUCCESS, SUCCESS_ENTRY_POINT_GROUP)
_TERMINATIONS = _Registry("termination", BUILTIN_TERMINATIONS, TERMINATION_ENTRY_POINT_GROUP)


def needs_task(function: Callable[..., Any]) -> bool:
    """Whether `function` takes the task as its keyword argument `task` (see the module docstring)."""
    try:
        parameter = inspect.signature(function).parameters.get("task")
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return parameter is not None and parameter.kind in (
        inspect.Parameter.KEYWORD_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )


def register_reward(name: str, function: RewardFunction) -> None:
    """Put `function` on this process's allow-list under `name` (code that calls this already runs
    in the process; a card can only name it, never bring it)."""
    _REWARDS.register(name, function)


def registered_rewards() -> dict[str, str]:
    """Every allowed reward name -> its `module:function` (built-ins first, then entry points).

    Each built-in is listed under its short name and under its `module:function` spelling.
    """
    return _REWARDS.names()


def resolve_reward(name: str, allow_import: bool = False, task: Any = None) -> RewardFunction:
    """The reward function registered as `name` (one-line ConfigError otherwise).

    `allow_import=True` (offline tools only) also imports an unregistered `module:function`. A
    reward that takes `task` comes back bound to `task` (a ConfigError when none is given).
    """
    return _REWARDS.resolve(name, allow_import, task)


def lookup_reward(name: str, allow_import: bool = False) -> RewardFunction:
    """The reward `name`, unbound (check `needs_task` before calling it); `allow_import` as in
    `resolve_reward`."""
    return _REWARDS.lookup(name, allow_import)


def is_registered_reward(name: str) -> bool:
    return _REWARDS.is_registered(name)


def register_success(name: str, function: SuccessFunction) -> None:
    """Put a success function `fn(obs, act, next_obs[, task=]) -> bool [N]` on this process's allow-list."""
    _SUCCESS.register(name, function)


def registered_success() -> dict[str, str]:
    """Every allowed success-function name -> its `module:function`."""
    return _SUCCESS.names()


def resolve_success(name: str, task: Any = None) -> SuccessFunction:
    """The success function registered as `name`, bound to `task` when it takes one."""
    return _SUCCESS.resolve(name, False, task)


def is_registered_success(name: str) -> bool:
    return _SUCCESS.is_registered(name)


def register_termination(name: str, function: TerminationFunction) -> None:
    """Put a termination function on this process's allow-list under `name`."""
    _TERMINATIONS.register(name, function)


def registered_terminations() -> dict[str, str]:
    """Every allowed termination name -> its `module:function` (built-ins first, then entry points)."""
    return _TERMINATIONS.names()


def resolve_termination(name: str) -> TerminationFunction:
    """The termination function registered as `name` (one-line ConfigError otherwise); never an
    unregistered `module:function`."""
    return _TERMINATIONS.lookup(name, False)


def task_entry_points() -> dict[str, str]:
    """Installed tasks: entry-point name -> `module:attr` (group `offrl_robot.tasks`)."""
    return {entry.name: entry.value for entry in entry_points(group=TASK_ENTRY_POINT_GROUP)}


def load_task_entry_point(name: str) -> Any:
    """The object an installed package registered as task `name` (call it if it is callable)."""
    for entry in entry_points(group=TASK_ENTRY_POINT_GROUP):
        if entry.name == name:
            try:
                value = entry.load()
            except Exception as err:  # a broken third-party package: one line, naming it
                raise ConfigError(
                    f"task {name!r} ({entry.value}, entry-point group {TASK_ENTRY_POINT_GROUP}) cannot be "
                    f"loaded: {type(err).__name__}: {err}"
                ) from None
            return value() if callable(value) else value
    raise ConfigError(f"task {name!r} is not an installed task (entry-point group {TASK_ENTRY_POINT_GROUP})")
