"""Model-predictive control over an exported dynamics ensemble: CEM and MPPI planners and the
`MPCController`, a drop-in for `PolicyRuntime` (`act(observation) -> action`, `.metadata`,
`.card`, `.card_path`), so the validation gate and policy_node run MPC like any policy.

Each control tick plans a sequence of `horizon` actions by sampling `samples` candidate
sequences around the current plan, rolling them out through the ONNX ensemble (the one-step
graph unrolled over the horizon in memory: one onnxruntime call per planner iteration, batched
over candidates, every member on every row) and scoring them with

    J = sum_t discount^t * (reward_t - penalty * disagreement_t)

reward_t is the ensemble's learned reward head or a *registered* data-only reward function
(`fn(obs, act, next_obs) -> [N]`, e.g. `arm_reach`; offrl_robot/registry.py: a card can only name
a function on the allow-list, never make the node import arbitrary code),
and disagreement_t the ensemble spread of the predicted next state (normalised units, computed
in the graph; see `offrl_robot.export.dynamics`). The penalty is the pessimism: plans through states the
data never covered are uncertain, hence punished, so the controller stays where its model is
right (MOPO/MOReL's idea applied at planning time). Candidates roll out on the ensemble mean.

CEM refits a Gaussian to the elite fraction for `iterations` rounds; MPPI takes the
exponentially return-weighted average of the candidates. Both warm start: after acting, the
plan is shifted by one tick (the last action repeated) and is the next tick's sampling mean
(for CEM it is also one of the candidates). An optional per-tick rate limit keeps every
candidate, and so every command, within what the SafetyFilter's slew limit lets through.
Sampling draws from one seeded generator: same seed, same observations -> same actions.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from offrl_robot.card import (
    DYNAMICS_OUTPUTS,
    ModelCard,
    ModelMetadata,
    card_path_for,
)
from offrl_robot.errors import ConfigError, ModelError
from offrl_robot.registry import is_registered_reward, registered_rewards
from offrl_robot.registry import resolve_reward as registry_reward

LEARNED_REWARD = "learned"
OBSERVATION_INPUT = "observation"
PLANNERS = ("cem", "mppi")
DYNAMICS_ALGORITHM = "dynamics"
Objective = Callable[[np.ndarray], np.ndarray]


@dataclass
class MPCConfig:
    """Planner settings (the card's `training.mpc`; what a tick costs: BENCHMARKS.md "MPC latency").

    method: "mppi" or "cem". horizon: planned ticks. samples: candidate sequences per iteration.
    iterations: refinement rounds per tick. init_std: sampling std as a fraction of each
    action's half-range. min_std: CEM's floor on it (same units). elite_fraction, smoothing: CEM
    (new = smoothing * old + (1 - smoothing) * elite statistics). temperature: MPPI's lambda,
    relative to the std of the candidates' returns (scale-free across tasks). penalty: weight
    of the ensemble disagreement. reward: "learned" or "module:function". discount: per tick.
    seed: the sampling generator's seed. threads: onnxruntime intra-op threads.
    max_action_change: the most an action may change per tick (physical units; one value for
    every action or one per action; 0 = off). Every candidate, and so the plan, respects it
    from the last commanded action on: set it at or below the SafetyFilter's slew limit per
    tick and the filter never has to cut an MPC command (sampling noise would otherwise make
    consecutive commands jump; measured on ArmReach: 98 % of ticks slew-limited without it).
    """

    method: str = "mppi"
    horizon: int = 10
    samples: int = 256
    iterations: int = 1
    init_std: float = 0.5
    min_std: float = 0.05
    elite_fraction: float = 0.1
    smoothing: float = 0.1
    temperature: float = 0.1
    penalty: float = 1.0
    reward: str = LEARNED_REWARD
    discount: float = 1.0
    seed: int = 0
    threads: int = 1
    max_action_change: float | list[float] = 0.0

    def validate(self, source: str = "mpc config") -> MPCConfig:
        if self.method not in PLANNERS:
            raise ConfigError(f"{source}: method {self.method!r} is not a planner; choose one of {PLANNERS}")
        for name in ("horizon", "samples", "iterations", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{source}: {name} must be an integer >= 1, got {value!r}")
        if self.samples < 2:
            raise ConfigError(f"{source}: samples must be >= 2 (the previous plan is one of them)")
        for name in (
            "init_std",
            "min_std",
            "elite_fraction",
            "smoothing",
            "temperature",
            "penalty",
            "discount",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{source}: {name} must be a finite number, got {value!r}")
            setattr(self, name, float(value))
        if not (self.init_std > 0 and self.temperature > 0 and self.penalty >= 0):
            raise ConfigError(f"{source}: init_std and temperature must be > 0 and penalty >= 0")
        if not (
            0 <= self.min_std <= self.init_std and 0 < self.elite_fraction <= 1 and 0 <= self.smoothing < 1
        ):
            raise ConfigError(
                f"{source}: need 0 <= min_std <= init_std, 0 < elite_fraction <= 1, 0 <= smoothing < 1"
            )
        limits = (
            self.max_action_change if isinstance(self.max_action_change, list) else [self.max_action_change]
        )
        if not limits or not all(_is_number(v) and v >= 0 for v in limits):
            raise ConfigError(
                f"{source}: max_action_change must be a number >= 0 or a list of them, got {self.max_action_change!r}"
            )
        if not 0 < self.discount <= 1:
            raise ConfigError(f"{source}: discount must be in (0, 1], got {self.discount}")
        if not isinstance(self.reward, str) or (
            self.reward != LEARNED_REWARD and not is_registered_reward(self.reward)
        ):
            raise ConfigError(
                f"{source}: reward {self.reward!r} must be 'learned' or a registered reward function "
                f"(e.g. arm_reach; registered: {', '.join(sorted(n for n in registered_rewards() if ':' not in n))})"
            )
        return self

    @property
    def num_elites(self) -> int:
        return max(1, int(self.elite_fraction * self.samples))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, source: str = "mpc config") -> MPCConfig:
        data = dict(data or {})
        known = sorted(cls.__dataclass_fields__)
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown planner key(s) {unknown}; valid keys are {known}")
        return cls(**data).validate(source)


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


# ---------------------------------------------------------------------------------- planners
class SamplingPlanner:
    keep_plan_candidate = True

    """Shared machinery of CEM and MPPI over a box [low, high]^A: sampling, warm start, seeding.

    `plan(objective)` maximises objective(sequences [N, H, A]) -> returns [N] and returns the
    plan [H, A]; `advance()` shifts it by one tick for the next call; `reset()` forgets it.
    """

    def __init__(self, config: MPCConfig, action_low: Sequence[float], action_high: Sequence[float]) -> None:
        self.config = config.validate()
        self.low = np.asarray(action_low, dtype=np.float64)
        self.high = np.asarray(action_high, dtype=np.float64)
        if self.low.shape != self.high.shape or self.low.ndim != 1 or np.any(self.low >= self.high):
            raise ConfigError(
                f"planner action bounds low {self.low} / high {self.high} must satisfy low < high"
            )
        self.half_range = (self.high - self.low) / 2.0
        if np.asarray(config.max_action_change).size not in (1, self.low.size):
            raise ConfigError(
                f"mpc max_action_change has {np.asarray(config.max_action_change).size} values for "
                f"{self.low.size} actions; give one value or one per action"
            )
        change = np.broadcast_to(np.asarray(config.max_action_change, dtype=np.float64), self.low.shape)
        self.max_change = change.copy() if np.any(change > 0) else None
        self.reset()

    def reset(self) -> None:
        """Back to the mid-range plan and the seed's first draws (episode start, e-stop reset)."""
        self.rng = np.random.default_rng(self.config.seed)
        self.mean = np.tile((self.low + self.high) / 2.0, (self.config.horizon, 1))
        # The command before the first plan: mid-range (zero velocity for symmetric bounds).
        self.previous = (self.low + self.high) / 2.0
        self.last_returns: np.ndarray | None = None

    def advance(self) -> None:
        """Warm start: the first action was commanded; drop it and repeat the last one."""
        self.previous = self.mean[0].copy()
        self.mean = np.concatenate([self.mean[1:], self.mean[-1:]], axis=0)

    def rate_limited(self, sequences: np.ndarray) -> np.ndarray:
        """[N, H, A] -> the same with |a_t - a_(t-1)| <= max_change from `previous` on (in place)."""
        if self.max_change is None:
            return sequences
        lower, upper = self.previous - self.max_change, self.previous + self.max_change
        for t in range(sequences.shape[1]):
            step = np.clip(sequences[:, t], np.maximum(lower, self.low), np.minimum(upper, self.high))
            sequences[:, t] = step
            lower, upper = step - self.max_change, step + self.max_change
        return sequences

    def plan(self, objective: Objective) -> np.ndarray:
        cfg = self.config
        mean = self.mean
        std = np.broadcast_to(cfg.init_std * self.half_range, mean.shape).copy()
        for _ in range(cfg.iterations):
            noise = self.rng.standard_normal((cfg.samples, *mean.shape))
            samples = self.rate_limited(np.clip(mean + std * noise, self.low, self.high))
            if self.keep_plan_candidate:
                samples[0] = mean  # the current plan competes: re-planning never scores worse
            returns = np.asarray(objective(samples), dtype=np.float64).reshape(cfg.samples)
            returns = np.where(np.isfinite(returns), returns, -np.inf)
            if not np.isfinite(returns).any():
                raise ModelError("every MPC candidate scored NaN/inf; the dynamics model or reward is broken")
            mean, std = self._update(mean, std, samples, returns)
            self.last_returns = returns
        self.mean = self.rate_limited(np.clip(mean, self.low, self.high)[None])[0]
        return self.mean.copy()

    def _update(
        self, mean: np.ndarray, std: np.ndarray, samples: np.ndarray, returns: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class CEMPlanner(SamplingPlanner):
    """Cross-entropy method: refit mean/std to the top `elite_fraction` candidates (smoothed)."""

    def _update(
        self, mean: np.ndarray, std: np.ndarray, samples: np.ndarray, returns: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        elite = samples[np.argpartition(-returns, cfg.num_elites - 1)[: cfg.num_elites]]
        new_mean = cfg.smoothing * mean + (1.0 - cfg.smoothing) * elite.mean(axis=0)
        new_std = cfg.smoothing * std + (1.0 - cfg.smoothing) * elite.std(axis=0)
        return new_mean, np.maximum(new_std, cfg.min_std * self.half_range)


class MPPIPlanner(SamplingPlanner):
    """MPPI: mean = sum_i w_i * sample_i, w ∝ exp((R_i - max R) / (temperature * std(R))).

    The current plan is not a candidate here: in many dimensions the unperturbed mean beats
    almost every noisy sample, and a weight on it would freeze the average (measured on a
    quadratic: no progress at all). The weighted average of perturbations is what moves MPPI.
    """

    keep_plan_candidate = False

    def _update(
        self, mean: np.ndarray, std: np.ndarray, samples: np.ndarray, returns: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        finite = np.isfinite(returns)
        spread = float(returns[finite].std()) if finite.sum() > 1 else 0.0
        scale = self.config.temperature * max(spread, 1e-12)
        weights = np.where(finite, np.exp((returns - returns[finite].max()) / scale), 0.0)
        weights /= weights.sum()
        return np.tensordot(weights, samples, axes=1), std


def make_planner(
    config: MPCConfig, action_low: Sequence[float], action_high: Sequence[float]
) -> SamplingPlanner:
    return (CEMPlanner if config.method == "cem" else MPPIPlanner)(config, action_low, action_high)


# ---------------------------------------------------------------------------------- reward
def resolve_reward(name: str) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None:
    """None for the learned head, else the registered reward function (never an arbitrary import)."""
    if name == LEARNED_REWARD:
        return None
    return registry_reward(name, allow_import=False)


def check_reward_source(name: str, observation_dim: int, action_dim: int) -> None:
    """Call a named reward once on [2, ...] zeros: it must return 2 finite numbers for this model."""
    function = resolve_reward(name)
    if function is None:
        return
    obs = np.zeros((2, observation_dim))
    try:
        value = np.asarray(function(obs, np.zeros((2, action_dim)), obs), dtype=np.float64)
    except Exception as err:
        raise ConfigError(
            f"mpc reward {name!r} fails on observations [N, {observation_dim}], actions [N, {action_dim}] ({err}); "
            "is it the reward of this robot?"
        ) from None
    if value.shape != (2,) or not np.isfinite(value).all():
        raise ConfigError(
            f"mpc reward {name!r} must return one finite value per row, got shape {value.shape}"
        )


# ---------------------------------------------------------------------------------- model
def _check_dynamics_io(model: Any, meta: ModelMetadata, path: Path) -> None:
    """Inputs observation [batch, O] + action [batch, A]; the outputs `offrl_robot.export.dynamics` writes."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in initializers}
    if sorted(inputs) != ["action", "observation"]:
        raise ModelError(
            f"{path}: graph inputs are {sorted(inputs)}, a dynamics model takes ['action', 'observation']"
        )
    for name, size in (("observation", meta.observation_dim), ("action", meta.action_dim)):
        dims = inputs[name].type.tensor_type.shape.dim
        if len(dims) != 2 or dims[1].dim_value != size:
            raise ModelError(f"{path}: input {name!r} must be [batch, {size}] (from the metadata names)")
    outputs = [o.name for o in model.graph.output]
    if outputs != list(DYNAMICS_OUTPUTS):
        raise ModelError(
            f"{path}: graph outputs are {outputs}, expected {list(DYNAMICS_OUTPUTS)}; re-export it"
        )


HORIZON_ACTIONS = "actions"


def horizon_graph(step: Any, horizon: int, learned_reward: bool) -> Any:
    """The exported one-step ensemble graph unrolled over `horizon` ticks: ONE onnxruntime call
    scores every candidate sequence.

    Why: with one call per horizon step a tick paid `horizon` x (call overhead + numpy copies of
    [N, O] states in and out); unrolled, onnxruntime runs the whole rollout in native code,
    batched over candidates, and keeps the states in its own buffers. Built in memory from the
    verified model (same weights, shared initialisers, no re-export): the deployed file and its
    sha256 stay the one-step graph the card describes.

    Inputs: observation [N, O] (the start state, one row per candidate), actions [N, H, A].
    Outputs: disagreement [N, H]; reward [N, H] (learned head, when `learned_reward`) or
    next_observation [N, H, O] (for a named reward function). Step t runs the step graph's
    nodes on (state_t, actions[:, t]); state_(t+1) is its ensemble-mean next observation.
    Nodes no kept output depends on (the member outputs, the unused head) are dropped.
    """
    import onnx
    from onnx import helper

    graph = step.graph
    shared = {t.name for t in graph.initializer}
    wanted = ["next_observation", "disagreement"] + (["reward"] if learned_reward else [])
    needed: set[str] = set(wanted)
    kept = []
    for node in reversed(graph.node):  # exported graphs are topologically sorted
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    kept.reverse()

    nodes: list[Any] = []
    extra = [
        helper.make_tensor("horizon/axis1", onnx.TensorProto.INT64, [1], [1]),
        *(helper.make_tensor(f"horizon/t{t}", onnx.TensorProto.INT64, [], [t]) for t in range(horizon)),
    ]
    state = OBSERVATION_INPUT
    per_step: dict[str, list[str]] = {name: [] for name in wanted}
    for t in range(horizon):
        action = f"h{t}/action"
        nodes.append(helper.make_node("Gather", [HORIZON_ACTIONS, f"horizon/t{t}"], [action], axis=1))
        rename = {OBSERVATION_INPUT: state, "action": action}

        def name(tensor: str, t: int = t, rename: dict[str, str] = rename) -> str:
            if not tensor or tensor in shared:
                return tensor
            return rename.get(tensor, f"h{t}/{tensor}")

        for node in kept:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = f"h{t}/{node.name}"
            copy.input[:] = [name(i) for i in node.input]
            copy.output[:] = [name(o) for o in node.output]
            nodes.append(copy)
        for output in wanted:
            unsqueezed = f"h{t}/{output}/unsqueezed"
            nodes.append(helper.make_node("Unsqueeze", [name(output), "horizon/axis1"], [unsqueezed]))
            per_step[output].append(unsqueezed)
        state = name("next_observation")
    outputs = ["disagreement", "reward" if learned_reward else "next_observation"]
    for output in outputs:
        nodes.append(helper.make_node("Concat", per_step[output], [output], axis=1))
    value_type = {o.name: o.type.tensor_type for o in graph.output}
    observation = next(i for i in graph.input if i.name == OBSERVATION_INPUT).type.tensor_type
    act = next(i for i in graph.input if i.name == "action").type.tensor_type
    obs_dim, act_dim = observation.shape.dim[1].dim_value, act.shape.dim[1].dim_value
    float32 = onnx.TensorProto.FLOAT
    shapes = {
        "disagreement": ["batch", horizon],
        "reward": ["batch", horizon],
        "next_observation": ["batch", horizon, obs_dim],
    }
    if any(value_type[o].elem_type != float32 for o in outputs):
        raise ModelError("the dynamics graph's outputs must be float32; re-export it")
    used = {i for node in kept for i in node.input}
    unrolled = helper.make_graph(
        nodes,
        "mpc_horizon",
        [
            helper.make_tensor_value_info(OBSERVATION_INPUT, float32, ["batch", obs_dim]),
            helper.make_tensor_value_info(HORIZON_ACTIONS, float32, ["batch", horizon, act_dim]),
        ],
        [helper.make_tensor_value_info(o, float32, shapes[o]) for o in outputs],
        initializer=[*(t for t in graph.initializer if t.name in used), *extra],
    )
    return helper.make_model(unrolled, opset_imports=step.opset_import, ir_version=step.ir_version)


class EnsembleObjective:
    """Scores candidate action sequences from one observation: one call of the unrolled
    horizon graph (`horizon_graph`) per planner iteration, then

        J = sum_t discount^t * (reward_t - penalty * disagreement_t)

    with reward_t from the learned head (in the graph) or the named reward function, called
    once on all N x H transitions (reward functions are row-wise, so flattening is exact; one
    vectorised call instead of H amortises its Python overhead)."""

    def __init__(
        self,
        session: Any,
        config: MPCConfig,
        observation_dim: int,
        reward_fn: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None,
    ) -> None:
        self.session = session
        self.config = config
        self.reward_fn = reward_fn
        self.outputs = ["disagreement", "reward" if reward_fn is None else "next_observation"]
        self.state = np.zeros((config.samples, observation_dim), dtype=np.float32)
        self.observation = np.zeros(observation_dim, dtype=np.float32)
        self.discounts = config.discount ** np.arange(config.horizon, dtype=np.float64)

    def __call__(self, sequences: np.ndarray) -> np.ndarray:
        cfg = self.config
        self.state[...] = self.observation
        actions = np.ascontiguousarray(sequences, dtype=np.float32)
        disagreement, second = self.session.run(
            self.outputs, {OBSERVATION_INPUT: self.state, HORIZON_ACTIONS: actions}
        )
        if self.reward_fn is None:
            reward = second
        else:
            n, h, o = second.shape
            states = np.concatenate([self.state[:, None], second[:, :-1]], axis=1)
            flat = self.reward_fn(
                states.reshape(n * h, o), actions.reshape(n * h, -1), second.reshape(n * h, o)
            )
            reward = np.asarray(flat, dtype=np.float64).reshape(n, h)
        step_scores = np.asarray(reward, dtype=np.float64) - cfg.penalty * disagreement
        return step_scores @ self.discounts


class MPCController:
    """A verified dynamics ensemble + planner: `act(observation [O]) -> action [A]` (physical).

    The file checks are PolicyRuntime's (reused from `offrl_robot.runtime`): ONNX parses and is
    self-contained, the card's sha256 matches the bytes, metadata_props equal the card, every
    constant is finite, the caller's expected names equal the model's. Planner settings come
    from the card's `training.mpc`; `config` overrides them (benchmarks, tests). Stateful (the
    warm-start plan): one controller per control loop; `reset()` at an episode start.
    """

    def __init__(
        self,
        onnx_path: str | os.PathLike[str],
        card_path: str | os.PathLike[str] | None = None,
        expected_observation_names: Sequence[str] | None = None,
        expected_action_names: Sequence[str] | None = None,
        config: MPCConfig | Mapping[str, Any] | None = None,
    ) -> None:
        from offrl_robot.runtime import check_finite_constants, check_names, load_verified, make_session

        verified = load_verified(onnx_path, card_path)
        path, card_file, card, props, model = (
            verified.path,
            verified.card_path,
            verified.card,
            verified.metadata,
            verified.model,
        )
        if props.algorithm != DYNAMICS_ALGORITHM:
            raise ModelError(
                f"{path}: is a {props.algorithm!r} policy, not a dynamics model; load it with PolicyRuntime"
            )
        _check_dynamics_io(model, props, path)
        check_finite_constants(model, path)
        check_names("observation", expected_observation_names, props.observation_names, path)
        check_names("action", expected_action_names, props.action_names, path)
        self.config = (
            config.validate()
            if isinstance(config, MPCConfig)
            else MPCConfig.from_dict(
                {**embedded_planner(props, card, path, card_file), **dict(config or {})},
                source=f"{path} metadata controller.mpc",
            )
        )
        reward_fn = resolve_reward(self.config.reward)
        unrolled = horizon_graph(model, self.config.horizon, learned_reward=reward_fn is None)
        session = make_session(unrolled.SerializeToString(), path, threads=self.config.threads)
        self.path = path
        self.card_path = card_file
        self.card = card
        self._metadata = props
        self._session = session
        self._objective = EnsembleObjective(session, self.config, props.observation_dim, reward_fn)
        self.planner = make_planner(self.config, props.action_low, props.action_high)

    @property
    def metadata(self) -> ModelMetadata:
        return self._metadata

    def reset(self) -> None:
        self.planner.reset()

    def plan(self, observation: np.ndarray) -> np.ndarray:
        """The full plan [H, A] for this observation (updates the warm start; does not advance)."""
        observation = np.asarray(observation)
        if observation.shape != (self._metadata.observation_dim,):
            raise ValueError(
                f"observation has shape {observation.shape}, the model takes ({self._metadata.observation_dim},)"
            )
        self._objective.observation[...] = observation
        return self.planner.plan(self._objective)

    def act(self, observation: np.ndarray) -> np.ndarray:
        """Plan from `observation`, return the first action (float32), keep the rest as warm start."""
        action = self.plan(observation)[0].astype(np.float32)
        self.planner.advance()
        return action

    def act_batch(self, observations: np.ndarray) -> np.ndarray:
        """[B, O] -> [B, A]: each row planned from a fresh reset (independent of call order)."""
        observations = np.atleast_2d(np.asarray(observations))
        actions = []
        for row in observations:
            self.reset()
            actions.append(self.act(row))
        self.reset()
        return np.stack(actions)


def embedded_planner(props: ModelMetadata, card: ModelCard, path: Path, card_file: Path) -> dict[str, Any]:
    """The planner settings inside the ONNX file (`metadata.controller.mpc`, covered by its sha256).

    The card's `training.mpc` is a readable copy; a copy that differs means the card was edited,
    and the edit is refused rather than silently ignored or obeyed.
    """
    embedded = props.controller.get("mpc")
    if not isinstance(embedded, dict):
        raise ModelError(
            f"{path}: dynamics model carries no planner settings (metadata controller.mpc); "
            "re-export it with `offrl-robot export`"
        )
    copy = card.training.get("mpc")
    if copy is not None and copy != embedded:
        raise ModelError(
            f"{card_file}: training.mpc differs from the planner settings inside the model file "
            "(which its sha256 covers); the card was edited: export again"
        )
    return dict(embedded)


def load_controller(
    onnx_path: str | os.PathLike[str],
    card_path: str | os.PathLike[str] | None = None,
    expected_observation_names: Sequence[str] | None = None,
    expected_action_names: Sequence[str] | None = None,
) -> Any:
    """What the gate and policy_node load: an MPCController for a dynamics model (the card's
    metadata says `algorithm: dynamics`), a PolicyRuntime for everything else."""
    from offrl_robot.runtime import PolicyRuntime

    card_file = Path(card_path) if card_path is not None else card_path_for(onnx_path)
    if card_file.is_file():
        card = ModelCard.read(card_file)
        if card.metadata.algorithm == DYNAMICS_ALGORITHM:
            return MPCController(onnx_path, card_file, expected_observation_names, expected_action_names)
    return PolicyRuntime(onnx_path, card_path, expected_observation_names, expected_action_names)
