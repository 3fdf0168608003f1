"""`offrl-robot validate`: the MuJoCo gate between an exported policy and a robot.

The gate runs the ONNX policy exactly as a robot runs it — `PolicyRuntime` (every file check the
ROS node makes) feeding the same `SafetyFilter` the ROS node uses, with limits from the model's
card and slew / blend-in / safe action from `config/validate.yaml` — for N episodes of a MuJoCo
task, optionally under seeded domain randomisation, and measures what would worry someone about
to put it on hardware:

- task performance: return, normalised score, success rate, episode length;
- the filter: ticks on which it changed the command, by kind, and their rate;
- the robot: ticks touching a joint limit, peak joint velocity, actuator force and joint torque;
- numerics: NaN events (a non-finite policy action, or MuJoCo reporting a diverged state).

Thresholds come from the config; the verdict, passing *or failing*, is written atomically into
the card's `validation:` block (the ROS node refuses a model without a passing one). A failing
gate exits with `GATE_FAILED_EXIT` and one line naming the failing metric and its value.

Why the policy is a plain callable inside (`run_gate`): the same loop then measures the scripted
expert, which shows what the thresholds ask is achievable on the task.

Domain randomisation (`--randomize`), drawn per episode from the seed: body masses and
inertias, friction, joint damping, Gaussian sensor noise by observation-name suffix, and a
1-2 tick actuation delay. The model's nominal values are restored after every run.

What counts as an intervention (the `intervention_rate` the gate limits): a tick on which the
filter changed the command for a reason that says something about the policy - clamp, slew
limit, stale/bad observation, NaN action, e-stop. The blend-in ramp is reported by kind but not
counted (unless `count_blend_in: true`): it fires on the first `blend_in_ticks` of every episode
whatever the policy does, so counting it would measure the config, not the policy.
"""

from __future__ import annotations

import argparse
import collections
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
import yaml

from offrl_robot.card import ModelCard, ValidationRecord, card_path_for, set_validation
from offrl_robot.errors import ConfigError, ModelError
from offrl_robot.safety import (
    COUNTER_NAMES,
    Intervention,
    SafetyConfig,
    SafetyFilter,
    hold_indices,
    resolve_safe_action,
)
from offrl_robot.sim.results import EpisodeConditions, EpisodeStats, EpisodeTrace, ValidationResult
from offrl_robot.sim.tasks import TaskInfo, make_env, task_info
from offrl_robot.stats import sample_std

# Exit status of `offrl-robot validate` when the gate ran and the policy failed it
# (2 stays "bad input" as for every command, 1 "internal error").
GATE_FAILED_EXIT = 3
# Episodes whose full trajectories are kept for plots and the video.
TRACE_EPISODES = 2

Policy = Callable[[np.ndarray], np.ndarray]

_BLEND = int(Intervention.BLENDING)
_JOINT_TYPES = (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))
_SIM_WARNINGS = (
    mujoco.mjtWarning.mjWARN_BADQACC,
    mujoco.mjtWarning.mjWARN_BADQVEL,
    mujoco.mjtWarning.mjWARN_BADQPOS,
)

# Every metric the gate reports (thresholds may name any of them; a typo is a ConfigError).
INTERVENTION_METRICS: tuple[str, ...] = tuple(f"interventions_{name}" for name in COUNTER_NAMES)
METRIC_NAMES: tuple[str, ...] = (
    "return_mean",
    "return_std",
    "return_min",
    "normalized_score",
    "success_rate",
    "final_distance_mean",
    "episode_length_mean",
    "ticks",
    "interventions",
    "intervention_rate",
    *INTERVENTION_METRICS,
    "joint_limit_ticks",
    "joint_limit_rate",
    "peak_joint_velocity",
    "peak_actuator_force",
    "peak_joint_torque",
    "nan_events",
    "seed",
    "randomized",
)


# ---------------------------------------------------------------------------------- config
def default_config_path() -> Path:
    """config/validate.yaml in the source tree, or installed under share/offrl_robot/config."""
    from offrl_robot.paths import share_path

    return share_path("config", "validate.yaml", hint="pass --config FILE")


@dataclass
class RandomizationConfig:
    """Per-episode perturbations for `--randomize` (see config/validate.yaml)."""

    mass_scale: float = 0.2
    friction_scale: float = 0.3
    damping_scale: float = 0.2
    observation_noise_std: dict[str, float] = field(default_factory=dict)
    action_delay_ticks: list[int] = field(default_factory=lambda: [1, 2])

    def check(self, source: str) -> RandomizationConfig:
        for name in ("mass_scale", "friction_scale", "damping_scale"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value < 1.0:
                raise ConfigError(f"{source}: randomization.{name} must be a number in [0, 1), got {value!r}")
        noise = self.observation_noise_std
        if not isinstance(noise, dict) or not all(
            isinstance(k, str) and _is_number(v) and v >= 0 for k, v in noise.items()
        ):
            raise ConfigError(
                f"{source}: randomization.observation_noise_std must map name suffixes to stds >= 0, got {noise!r}"
            )
        delay = self.action_delay_ticks
        if (
            not isinstance(delay, list)
            or len(delay) != 2
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in delay)
            or not 0 <= delay[0] <= delay[1]
        ):
            raise ConfigError(
                f"{source}: randomization.action_delay_ticks must be [min, max] ticks with 0 <= min <= max, got {delay!r}"
            )
        return self


@dataclass
class GateConfig:
    """Thresholds, SafetyFilter settings and randomisation of the gate (config/validate.yaml)."""

    thresholds: dict[str, dict[str, float]]
    max_slew_rate: list[float]
    blend_in_ticks: int
    safe_action: str | list[float]
    episodes: int = 20
    seed: int = 0
    count_blend_in: bool = False
    joint_limit_margin_fraction: float = 0.005
    randomization: RandomizationConfig = field(default_factory=RandomizationConfig)
    source: str = "validation config"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("source")
        return data

    def safety_config(
        self,
        action_low: Sequence[float],
        action_high: Sequence[float],
        rate_hz: float,
        action_names: Sequence[str],
    ) -> SafetyConfig:
        """The SafetyFilter settings for a model: its card's bounds, this config's slew / blend-in.

        Slew rates are per second (as in config/policy.yaml), applied per tick as rate x dt at
        the model's control rate, exactly as the ROS node applies them; inf disables a joint's
        limit. `safe_action: auto` picks the safe action for the command kind (hold for
        positions, zero for velocities/efforts), as the ROS node does.
        """
        n = len(action_low)
        slew = np.asarray(self.max_slew_rate, dtype=np.float64)
        if slew.size == 1:
            slew = np.full(n, float(slew[0]))
        if slew.size != n:
            raise ConfigError(
                f"{self.source}: safety.max_slew_rate has {slew.size} values but the model has {n} actions"
            )
        source = f"{self.source}: safety"
        return SafetyConfig(
            low=list(action_low),
            high=list(action_high),
            max_rate=slew.tolist(),
            safe_action=resolve_safe_action(self.safe_action, action_names, source),
            max_observation_age_s=math.inf,  # simulated observations are always fresh
            control_period_s=1.0 / rate_hz,
            blend_ticks=self.blend_in_ticks,
            source=source,
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_gate_config(path: str | Path | None = None) -> GateConfig:
    """Read and check config/validate.yaml (or `path`); every problem is one ConfigError line."""
    path = Path(path) if path is not None else default_config_path()
    src = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{src}: cannot read validation config ({err.strerror}); check --config") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{src}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{src}: must be a YAML mapping")
    known = {
        "episodes",
        "seed",
        "thresholds",
        "safety",
        "count_blend_in",
        "joint_limit_margin_fraction",
        "randomization",
    }
    if "joint_limit_margin" in data:
        raise ConfigError(
            f"{src}: joint_limit_margin (an absolute rad/m margin) was replaced by joint_limit_margin_fraction, "
            "a fraction of each joint's range (a 36 mm finger slide and a 6 rad wrist get proportional "
            "margins); e.g. joint_limit_margin_fraction: 0.005"
        )
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{src}: unknown keys {unknown}; expected some of {sorted(known)}")
    thresholds = _check_thresholds(data.get("thresholds"), src)
    safety = data.get("safety")
    if not isinstance(safety, dict):
        raise ConfigError(f"{src}: safety must be a mapping with max_slew_rate, blend_in_ticks, safe_action")
    safety_keys = {"max_slew_rate", "blend_in_ticks", "safe_action"}
    if set(safety) != safety_keys:
        raise ConfigError(
            f"{src}: safety must have exactly the keys {sorted(safety_keys)}, got {sorted(safety)}"
        )
    slew = safety["max_slew_rate"]
    slew = slew if isinstance(slew, list) else [slew]
    if not slew or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in slew
    ):  # NaN compares false: refused
        raise ConfigError(
            f"{src}: safety.max_slew_rate must be a number > 0 (.inf = no limit) or a list of them, got {slew!r}"
        )
    blend = safety["blend_in_ticks"]
    if isinstance(blend, bool) or not isinstance(blend, int) or blend < 0:
        raise ConfigError(f"{src}: safety.blend_in_ticks must be an integer >= 0, got {blend!r}")
    episodes, seed = data.get("episodes", 20), data.get("seed", 0)
    for name, value, low in (("episodes", episodes, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{src}: {name} must be an integer >= {low}, got {value!r}")
    count_blend = data.get("count_blend_in", False)
    if not isinstance(count_blend, bool):
        raise ConfigError(f"{src}: count_blend_in must be true or false, got {count_blend!r}")
    margin = data.get("joint_limit_margin_fraction", 0.005)
    if not _is_number(margin) or not 0 <= margin < 0.5:
        raise ConfigError(
            f"{src}: joint_limit_margin_fraction must be a number in [0, 0.5) (a fraction of each joint's range), "
            f"got {margin!r}"
        )
    raw_random = data.get("randomization") or {}
    if not isinstance(raw_random, dict):
        raise ConfigError(f"{src}: randomization must be a mapping")
    random_keys = set(RandomizationConfig.__dataclass_fields__)
    if set(raw_random) - random_keys:
        raise ConfigError(
            f"{src}: unknown randomization keys {sorted(set(raw_random) - random_keys)}; expected some of {sorted(random_keys)}"
        )
    randomization = RandomizationConfig(**raw_random).check(src)
    return GateConfig(
        thresholds=thresholds,
        max_slew_rate=[float(v) for v in slew],
        blend_in_ticks=blend,
        safe_action=safety["safe_action"],
        episodes=episodes,
        seed=seed,
        count_blend_in=count_blend,
        joint_limit_margin_fraction=float(margin),
        randomization=randomization,
        source=src,
    )


def _check_thresholds(raw: Any, src: str) -> dict[str, dict[str, float]]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{src}: thresholds must be a non-empty mapping metric -> {{min: x}} / {{max: y}}")
    out: dict[str, dict[str, float]] = {}
    for name, bound in raw.items():
        if name not in METRIC_NAMES:
            raise ConfigError(
                f"{src}: thresholds.{name} is not a gate metric; choose from {', '.join(METRIC_NAMES)}"
            )
        if (
            not isinstance(bound, dict)
            or not bound
            or set(bound) - {"min", "max"}
            or not all(_is_number(v) for v in bound.values())
        ):
            raise ConfigError(
                f"{src}: thresholds.{name} must be {{min: number}} and/or {{max: number}}, got {bound!r}"
            )
        out[name] = {key: float(value) for key, value in bound.items()}
    return out


# ---------------------------------------------------------------------------------- randomisation


class DomainRandomizer:
    """Scales a live MjModel's physical parameters per episode and puts the nominal ones back.

    Nominal values are copied once at construction; every `apply` sets value = nominal * factor
    (never compounding across episodes) and `restore` writes the nominal copies back.
    """

    def __init__(self, model: mujoco.MjModel, observation_names: Sequence[str], config: RandomizationConfig):
        self.model = model
        self.config = config
        self._nominal = {
            "body_mass": model.body_mass.copy(),
            "body_inertia": model.body_inertia.copy(),
            "geom_friction": model.geom_friction.copy(),
            "dof_frictionloss": model.dof_frictionloss.copy(),
            "dof_damping": model.dof_damping.copy(),
        }
        noise = config.observation_noise_std
        self.noise_std = np.array(
            [
                float(noise.get(name.rsplit(".", 1)[-1], 0.0)) if "." in name else 0.0
                for name in observation_names
            ]
        )

    def apply(self, rng: np.random.Generator) -> EpisodeConditions:
        cfg, model, nominal = self.config, self.model, self._nominal
        mass = rng.uniform(1.0 - cfg.mass_scale, 1.0 + cfg.mass_scale, size=model.nbody)
        friction = rng.uniform(1.0 - cfg.friction_scale, 1.0 + cfg.friction_scale, size=model.ngeom)
        joint_friction = rng.uniform(1.0 - cfg.friction_scale, 1.0 + cfg.friction_scale, size=model.nv)
        damping = rng.uniform(1.0 - cfg.damping_scale, 1.0 + cfg.damping_scale, size=model.nv)
        delay = int(rng.integers(cfg.action_delay_ticks[0], cfg.action_delay_ticks[1] + 1))
        model.body_mass[:] = nominal["body_mass"] * mass
        model.body_inertia[:] = nominal["body_inertia"] * mass[:, None]
        model.geom_friction[:, 0] = nominal["geom_friction"][:, 0] * friction
        model.dof_frictionloss[:] = nominal["dof_frictionloss"] * joint_friction
        model.dof_damping[:] = nominal["dof_damping"] * damping
        return EpisodeConditions(
            mass_scale=mass.tolist(),
            friction_scale=friction.tolist(),
            damping_scale=damping.tolist(),
            action_delay_ticks=delay,
            observation_noise_std=self.noise_std.tolist(),
        )

    def restore(self) -> None:
        for name, value in self._nominal.items():
            getattr(self.model, name)[:] = value








# ---------------------------------------------------------------------------------- the loop
def _limited_joints(model: mujoco.MjModel) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """qpos addresses, ranges and names of the limited hinge/slide joints (what can hit a stop)."""
    ids = [j for j in range(model.njnt) if model.jnt_limited[j] and model.jnt_type[j] in _JOINT_TYPES]
    addresses = np.array([model.jnt_qposadr[j] for j in ids], dtype=np.int64)
    low = np.array([model.jnt_range[j, 0] for j in ids])
    high = np.array([model.jnt_range[j, 1] for j in ids])
    names = [model.joint(j).name or f"joint{j}" for j in ids]
    return addresses, low, high, names


def _sim_warning_count(data: mujoco.MjData) -> int:
    return sum(int(data.warning[w].number) for w in _SIM_WARNINGS)


def run_gate(
    policy: Policy,
    task: str,
    action_low: Sequence[float],
    action_high: Sequence[float],
    config: GateConfig,
    episodes: int | None = None,
    seed: int | None = None,
    randomize: bool = False,
    trace_episodes: int = TRACE_EPISODES,
) -> ValidationResult:
    """Run `policy` (obs [O] -> action [A], physical units) through a SafetyFilter in MuJoCo.

    Deterministic: episode k resets the env with `seed + k` and draws its randomisation from
    its own stream of `seed`, so the same seed gives the same metrics on the same CPU build.
    Does not touch any file; `validate_model` adds the model checks and the card.
    """
    info = task_info(task)
    episodes = config.episodes if episodes is None else episodes
    seed = config.seed if seed is None else seed
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ConfigError(f"--episodes {episodes}: must be an integer >= 1")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"--seed {seed}: must be an integer >= 0")
    safety_config = config.safety_config(action_low, action_high, info.control_rate_hz, info.action_names)
    # position commands: "hold" holds the measured joint positions, as on the robot
    hold_at = hold_indices(info.action_names, info.observation_names)
    env = make_env(info.name)
    sim = env.unwrapped
    model, data = sim.model, sim.data
    joint_adr, joint_low, joint_high, joint_names = _limited_joints(model)
    randomizer = DomainRandomizer(model, info.observation_names, config.randomization) if randomize else None
    # hinge and slide joints only: free/ball joint velocities are not joint speeds
    joint_dofs = np.array(
        [model.jnt_dofadr[j] for j in range(model.njnt) if model.jnt_type[j] in _JOINT_TYPES], dtype=np.int64
    )
    counted_mask = sum(int(flag) for flag in Intervention if flag is not Intervention.NONE)
    if not config.count_blend_in:
        counted_mask &= ~_BLEND
    # "near a limit" is relative to each joint's range: a 36 mm finger slide and a 6 rad wrist
    # both get the same share (an absolute 0.02 would put the finger at a limit on every tick)
    margin = config.joint_limit_margin_fraction * (joint_high - joint_low)
    stats: list[EpisodeStats] = []
    traces: list[EpisodeTrace] = []
    try:
        for k in range(episodes):
            rng = np.random.default_rng([seed, k])
            conditions = randomizer.apply(rng) if randomizer is not None else EpisodeConditions()
            noise_std = randomizer.noise_std if randomizer is not None else None
            obs, _ = env.reset(seed=seed + k)
            warnings_before = _sim_warning_count(data)
            measured = None if hold_at is None else np.asarray(obs, dtype=np.float64)[hold_at]
            filt = SafetyFilter(safety_config, initial_command=measured)  # blend in from where the arm is
            pending = collections.deque([filt.last_command] * conditions.action_delay_ticks)
            keep = k < trace_episodes
            trace_rows: dict[str, list[np.ndarray]] = collections.defaultdict(list)
            if keep:
                trace_rows["qpos"].append(data.qpos.copy())
                trace_rows["qvel"].append(data.qvel.copy())
                trace_rows["mocap_pos"].append(data.mocap_pos.copy())
            total, length, counted, limit_ticks, nan_events = 0.0, 0, 0, 0, 0
            peak_velocity = peak_force = peak_torque = 0.0
            success: bool | None = None
            final_distance: float | None = None
            done = False
            while not done:
                seen = np.asarray(obs, dtype=np.float64)
                if noise_std is not None:
                    seen = seen + rng.normal(0.0, 1.0, size=seen.shape) * noise_std
                action = np.asarray(policy(seen), dtype=np.float64).reshape(-1)
                command = filt.step(
                    action, seen, 0.0, hold_reference=None if hold_at is None else seen[hold_at]
                )
                flags = filt.last_flags
                if flags & counted_mask:
                    counted += 1
                if not np.isfinite(action).all():
                    nan_events += 1  # the filter sends the safe action instead (BAD_ACTION)
                pending.append(command)
                applied = pending.popleft()
                obs, reward, terminated, truncated, step_info = env.step(applied)
                warnings_now = _sim_warning_count(data)
                if warnings_now > warnings_before or not np.isfinite(obs).all():
                    nan_events += 1
                warnings_before = warnings_now
                total += float(reward)
                length += 1
                qpos = data.qpos[joint_adr]
                near = (qpos <= joint_low + margin) | (qpos >= joint_high - margin)
                limit_active = bool(
                    np.any(data.efc_type[: data.nefc] == mujoco.mjtConstraint.mjCNSTR_LIMIT_JOINT)
                )
                if near.any() or limit_active:
                    limit_ticks += 1
                if joint_dofs.size:
                    peak_velocity = max(peak_velocity, float(np.max(np.abs(data.qvel[joint_dofs]))))
                    # actuator force through the transmission (gear): the torque at the joint
                    peak_torque = max(peak_torque, float(np.max(np.abs(data.qfrc_actuator[joint_dofs]))))
                if model.nu:
                    peak_force = max(peak_force, float(np.max(np.abs(data.actuator_force))))
                if keep:
                    trace_rows["qpos"].append(data.qpos.copy())
                    trace_rows["qvel"].append(data.qvel.copy())
                    trace_rows["mocap_pos"].append(data.mocap_pos.copy())
                    trace_rows["policy_action"].append(action)
                    trace_rows["command"].append(command)
                    trace_rows["applied"].append(applied)
                    trace_rows["flags"].append(np.array(flags))
                    trace_rows["reward"].append(np.array(float(reward)))
                done = terminated or truncated
                if done and info.is_arm_task:
                    success = bool(step_info.get("is_success", False))
                    final_distance = float(step_info.get("distance", math.nan))
            by_kind = {name: int(count) for name, count in filt.counters.items() if name != "ticks"}
            stats.append(
                EpisodeStats(
                    index=k,
                    env_seed=seed + k,
                    episode_return=total,
                    length=length,
                    success=success,
                    final_distance=final_distance,
                    interventions=counted,
                    interventions_by_kind=by_kind,
                    joint_limit_ticks=limit_ticks,
                    nan_events=nan_events,
                    peak_joint_velocity=peak_velocity,
                    peak_actuator_force=peak_force,
                    peak_joint_torque=peak_torque,
                    conditions=conditions,
                )
            )
            if keep:
                traces.append(EpisodeTrace(**{key: np.asarray(rows) for key, rows in trace_rows.items()}))
    finally:
        if randomizer is not None:
            randomizer.restore()
        env.close()
    metrics = _aggregate(stats, info, seed, randomize)
    thresholds = {name: bound for name, bound in config.thresholds.items() if name in metrics}
    skipped = sorted(set(config.thresholds) - set(thresholds))
    failures = ValidationRecord.failures(metrics, thresholds)
    return ValidationResult(
        task=info.name,
        episodes=episodes,
        seed=seed,
        randomized=randomize,
        metrics=metrics,
        thresholds=thresholds,
        skipped_thresholds=skipped,
        failures=failures,
        passed=not failures,
        per_episode=stats,
        traces=traces,
        joint_names=joint_names,
        joint_qpos_addresses=joint_adr.tolist(),
        joint_low=joint_low.tolist(),
        joint_high=joint_high.tolist(),
        joint_margin=margin.tolist(),
        action_names=list(info.action_names),
        action_low=[float(v) for v in action_low],
        action_high=[float(v) for v in action_high],
        control_rate_hz=info.control_rate_hz,
        config=config.to_dict(),
    )


def _aggregate(stats: list[EpisodeStats], info: TaskInfo, seed: int, randomize: bool) -> dict[str, float]:
    """Per-episode numbers -> the flat metric dict stored in the card (floats only)."""
    returns = np.array([s.episode_return for s in stats])
    ticks = int(sum(s.length for s in stats))
    counted = int(sum(s.interventions for s in stats))
    metrics: dict[str, float] = {
        "return_mean": float(returns.mean()),
        "return_std": sample_std(returns),  # ddof = 1, as every report (offrl_robot.stats)
        "return_min": float(returns.min()),
    }
    score = info.normalized_score(float(returns.mean()))
    if score is not None:
        metrics["normalized_score"] = float(score)
    if info.is_arm_task:
        metrics["success_rate"] = float(np.mean([bool(s.success) for s in stats]))
        metrics["final_distance_mean"] = float(np.mean([s.final_distance for s in stats]))
    metrics.update(
        {
            "episode_length_mean": float(np.mean([s.length for s in stats])),
            "ticks": float(ticks),
            "interventions": float(counted),
            "intervention_rate": counted / ticks if ticks else 0.0,
        }
    )
    for name, metric in zip(COUNTER_NAMES, INTERVENTION_METRICS, strict=True):
        metrics[metric] = float(sum(s.interventions_by_kind[name] for s in stats))
    limit_ticks = int(sum(s.joint_limit_ticks for s in stats))
    metrics.update(
        {
            "joint_limit_ticks": float(limit_ticks),
            "joint_limit_rate": limit_ticks / ticks if ticks else 0.0,
            "peak_joint_velocity": float(max(s.peak_joint_velocity for s in stats)),
            "peak_actuator_force": float(max(s.peak_actuator_force for s in stats)),
            "peak_joint_torque": float(max(s.peak_joint_torque for s in stats)),
            "nan_events": float(sum(s.nan_events for s in stats)),
            "seed": float(seed),
            "randomized": 1.0 if randomize else 0.0,
        }
    )
    return metrics


# ---------------------------------------------------------------------------------- the model
def _model_task(card: ModelCard, task: str | None, card_path: Path) -> str:
    """--task, else the task the model was trained and evaluated on (its card's train config/summary)."""
    if task:
        return task
    run_summary = card.training.get("run_summary")
    for candidate in (
        card.metadata.train_config.get("task"),
        run_summary.get("task") if isinstance(run_summary, dict) else None,
    ):
        if isinstance(candidate, str) and candidate:
            return candidate
    raise ConfigError(f"{card_path}: the card names no task; pass --task (e.g. --task ArmReach-v0)")


def validate_model(
    onnx_path: str | Path,
    task: str | None = None,
    episodes: int | None = None,
    seed: int | None = None,
    randomize: bool = False,
    config: GateConfig | None = None,
    card_path: str | Path | None = None,
    write_card: bool = True,
) -> ValidationResult:
    """The gate for one exported model: load it as a robot would, run `run_gate`, record the verdict.

    The verdict is written into the card's `validation:` block (atomically) whether it passed or
    not, unless `write_card=False`: a failing record replaces an older passing one, so a model
    that fails today is refused by the ROS node today.
    """
    from offrl_robot.mpc import load_controller  # onnxruntime: only for real models

    config = config if config is not None else load_gate_config()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ModelError(f"{onnx_path}: model file not found; check the path or export it first")
    card_file = Path(card_path) if card_path is not None else card_path_for(onnx_path)
    card = ModelCard.read(card_file)
    task_name = _model_task(card, task, card_file)
    info = task_info(task_name)
    expected_obs = list(info.observation_names) if info.is_arm_task else None
    expected_act = list(info.action_names) if info.is_arm_task else None
    # a policy -> PolicyRuntime; a dynamics ensemble -> MPCController (same act/metadata/card)
    runtime = load_controller(onnx_path, card_file, expected_obs, expected_act)
    meta = runtime.metadata
    if (meta.observation_dim, meta.action_dim) != (len(info.observation_names), len(info.action_names)):
        raise ModelError(
            f"{onnx_path}: model takes {meta.observation_dim} observations and gives {meta.action_dim} actions, "
            f"task {info.name} has {len(info.observation_names)} and {len(info.action_names)}; wrong --task?"
        )
    if not math.isclose(meta.control_rate_hz, info.control_rate_hz, rel_tol=1e-6):
        raise ModelError(
            f"{onnx_path}: model control rate {meta.control_rate_hz:g} Hz differs from task {info.name}'s "
            f"{info.control_rate_hz:g} Hz; wrong --task?"
        )
    result = run_gate(
        runtime.act, info.name, meta.action_low, meta.action_high, config, episodes, seed, randomize
    )
    result.model_path, result.card_path = onnx_path, card_file
    result.record = ValidationRecord(
        task=result.task,
        episodes=result.episodes,
        metrics=result.metrics,
        thresholds=result.thresholds,
        passed=result.passed,
        # the bytes the gate ran (load_verified hashed them as read): the verdict is for them only
        model_sha256=runtime.card.sha256,
    )
    if write_card:
        set_validation(card_file, result.record)
    return result


# ---------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="exported model, e.g. models/NAME.onnx (its NAME.card.yaml beside it)")
    parser.add_argument("--task", default=None, help="MuJoCo task (default: the task in the model's card)")
    parser.add_argument("--episodes", type=int, default=None, help="episodes to run (default: from --config)")
    parser.add_argument(
        "--seed", type=int, default=None, help="episode k uses seed + k (default: from --config)"
    )
    parser.add_argument(
        "--randomize", action="store_true", help="domain randomisation: masses, friction, sensor noise, delay"
    )
    parser.add_argument("--config", default=None, help="gate config (default: config/validate.yaml)")
    parser.add_argument("--card", default=None, help="model card (default: NAME.card.yaml beside the model)")
    parser.add_argument("--reports", default="reports", help="reports go to REPORTS/NAME/ (default: reports)")
    parser.add_argument("--no-report", action="store_true", help="skip report.md, plots and video")
    parser.add_argument(
        "--no-video", action="store_true", help="skip the rendered GIF (plots are still made)"
    )
    parser.add_argument(
        "--no-card-update", action="store_true", help="do not write the verdict into the card (a dry run)"
    )


def _print_table(result: ValidationResult) -> None:
    print(f"{'metric':<40}{'value':>14}  threshold")
    for name, value in result.metrics.items():
        bound = result.thresholds.get(name, {})
        text = ", ".join(f"{key} {limit:g}" for key, limit in bound.items())
        verdict = ""
        if bound:
            verdict = "FAIL" if ValidationRecord.failures({name: value}, {name: bound}) else "ok"
        print(f"{name:<40}{value:>14.6g}  {text:<18}{verdict}")
    for name in result.skipped_thresholds:
        print(f"{name:<40}{'n/a':>14}  skipped: task {result.task} has no {name}")


def run(args: argparse.Namespace) -> int:
    config = load_gate_config(args.config)
    result = validate_model(
        args.model,
        task=args.task,
        episodes=args.episodes,
        seed=args.seed,
        randomize=args.randomize,
        config=config,
        card_path=args.card,
        write_card=not args.no_card_update,
    )
    _print_table(result)
    if not args.no_report:
        from offrl_robot.sim.report import write_report

        report = write_report(result, Path(args.reports) / Path(args.model).stem, video=not args.no_video)
        print(
            f"report: {report.folder / 'report.md'}"
            + (f"  ({report.video_note})" if report.video_note else "")
        )
    if not args.no_card_update:
        print(f"card: {result.card_path} (validation.passed: {str(result.passed).lower()})")
    if not result.passed:
        print(f"offrl-robot validate: {result.failure_line()}", file=sys.stderr)
        return GATE_FAILED_EXIT
    print(f"gate PASSED on {result.task} ({result.episodes} episodes, seed {result.seed})")
    return 0
