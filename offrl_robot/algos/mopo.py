"""MOPO (Yu et al., 2020): SAC on short rollouts of a learned dynamics ensemble, with the reward
penalised by the ensemble's uncertainty, mixed with a small fraction of real transitions.

    r~(s, a) = r^(s, a) - lambda * u(s, a)

The algorithm of the paper (its Algorithm 2, MBPO-style), step by step, and what runs here:

- **Model**: an ensemble of N probabilistic models, each a Gaussian over (s' - s, r); the
  `elites` members with the lowest held-out error (MBPO/MOPO: 5 of 7) are the ones rollouts
  sample from. MOPO fits its own by default, N = 7 (`dynamics:` overrides DynamicsConfig fields).
- **Rollouts**: from dataset states (the Trainer's batch, every `rollout_every` updates), h =
  `rollout_length` steps of the current policy a ~ pi(.|s); each row picks one elite member at
  random and SAMPLES from its Gaussian, (s' - s, r) = mean + std * eps (the reference code's
  `FakeEnv.step`, not the member's mean). The next state ends the rollout where the task would:
  `termination` names a termination function (`offrl_robot.registry`; "auto" takes the task's,
  e.g. Hopper/Walker2d falls, `offrl_robot.sim.terminations`). The terminal transition is kept
  with terminal = 1 (no bootstrap); nothing is rolled out from the state after it.
- **Penalty** u: max over ALL members of the distance of a member's mean next state from the
  ensemble mean, in observation-std units (the reference code's `penalty_learned_var=False`
  form and the same signal the MPC planner penalises, `offrl_robot.export.dynamics`). The
  paper's headline form, max_i ||Sigma_i(s, a)||_F of the learned std, is `uncertainty:
  aleatoric` (here the norm of each member's std of s' - s in observation-std units).
- **Policy**: SAC (our CQL with conservative weight 0) with the soft backup
  y = r + gamma (1 - d) (min_i Q'_i(s', a') - alpha log pi(a'|s')) (`backup_entropy`, on for
  MOPO; CQL's own default keeps it off), on batches of `real_fraction` real rows plus model
  rows drawn uniformly from a fixed-size ring buffer per seed.

Deviations from the reference code, and why: rollouts start from the current training batch
(256 states every 10 updates) instead of 50,000 states every 1,000 updates, with a ring buffer
instead of 5 epochs of rollouts (the same model-data freshness at a batch-sized cost, and no
second sampler to checkpoint); termination comes from a named function of the task, not a
learned termination head (the reference code does the same: static `termination_fn`s per
task); `termination: auto` refuses a dataset that has true terminals but whose task names no
termination function, rather than rolling through them.

Where the dynamics model comes from (one ensemble per seed, `self.dynamics[i]` for seed i):

- By default MOPO fits its own, inside the same run, as OfflineRL-Kit does: `prepare(dataset)`
  (called by the Trainer on a fresh run, before the first update) runs `fit_dynamics` on the
  run's dataset for each seed: held-out split, per-member early stopping, at most
  `dynamics_steps` gradient steps of `dynamics_batch_size` rows, ensemble shape and fit settings
  from `dynamics:` (DynamicsConfig fields over MOPO's default of 7 members). The fit is seeded
  by the seed alone and runs in a forked RNG, so seed s of `--seeds 0,1,2` gets exactly the
  model of a `--seeds s` run (and of `offrl-robot train --algo dynamics --seeds s` with the same
  settings), and the run's own RNG streams do not depend on it. The fitted weights and the elite
  members are module state, so every checkpoint holds them: a resumed run restores the model,
  it never refits it.
- `dynamics_checkpoint`: a run of `offrl-robot train --algo dynamics` fitted on the SAME
  dataset (checked: its dataset sha256 must equal the run's), shared by all seeds.

Either way the model's observation normaliser equals the Trainer's (same formula, same data),
which is how normalised batch states are mapped to the model's physical units.

Not CUDA-graph capturable: the rollout schedule and the ring-buffer cursors are host-side Python
state a captured graph would freeze, and storing a rollout reads the number of live (not yet
terminated) rows back to the host, one sync per rollout; so `accelerate: graph|compile` is
refused with a ConfigError. Between rollouts the update keeps the hot-loop rules (fixed sizes,
no host read).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from offrl_robot.algos.base import Batch, UpdateOutput, register
from offrl_robot.algos.cql import CQL, CQLConfig
from offrl_robot.algos.dynamics import DynamicsConfig, DynamicsEnsemble
from offrl_robot.data.dataset import Dataset
from offrl_robot.errors import ConfigError

# MOPO's own ensemble (MBPO / MOPO): 7 members, of which the 5 best on held-out data are the
# elites rollouts sample from. `dynamics:` entries override these and DynamicsConfig's defaults.
DYNAMICS_DEFAULTS: dict[str, Any] = {"members": 7}
UNCERTAINTIES = ("disagreement", "aleatoric")


@dataclass
class MOPOConfig(CQLConfig):
    """SAC hyper-parameters (CQL's, conservative weight 0, soft backup) plus the model-based ones.

    dynamics: DynamicsConfig fields (members, hidden_sizes, patience, ...) of the ensemble MOPO
    fits itself (members 7 unless given); dynamics_steps / dynamics_batch_size: that fit's step
    cap and per-member batch. dynamics_checkpoint: a dynamics run to use instead (then `dynamics`
    must stay empty; it must have been fitted on this run's dataset). elites: members rollouts
    sample from, the best on held-out data (paper: 5 of 7). termination: "auto" (the dataset
    task's termination function, `offrl_robot.sim.tasks`), "none" (rollouts never terminate), or
    a registered termination function's name (`offrl_robot.registry`).
    uncertainty: "disagreement" (ensemble spread of the mean next states) or "aleatoric" (the
    paper's max over members of the norm of the learned std), in observation-std units.
    rollout_length: h (paper: 1-5). penalty: lambda (paper: 0.5-5). real_fraction: share of
    real rows per batch (paper: 0.05). rollout_every: updates between rollouts (each rollout
    starts from the current batch's states). model_buffer_size: model transitions kept per seed
    (oldest overwritten). backup_entropy: SAC's -alpha log pi(a'|s') in the TD target (MOPO
    trains SAC; CQL's default keeps it off).
    """

    conservative_weight: float = 0.0
    # CQL's regulariser is computed even at weight 0 (3 x N extra critic rows per state) and its
    # value is unused here; N = 1 keeps that waste small. The TD target uses one sample anyway.
    num_sampled_actions: int = 1
    backup_entropy: bool = True
    target_action: str = "sample"  # SAC's soft backup: a sampled a' and its entropy term
    dynamics: dict[str, Any] = field(default_factory=dict)
    dynamics_steps: int = 20_000
    dynamics_batch_size: int = 256
    dynamics_checkpoint: str = ""
    elites: int = 5
    termination: str = "auto"
    uncertainty: str = "disagreement"
    rollout_length: int = 5
    penalty: float = 1.0
    real_fraction: float = 0.05
    rollout_every: int = 10
    model_buffer_size: int = 50_000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dynamics_checkpoint and self.dynamics:
            raise ConfigError(
                "algo_config.dynamics and dynamics_checkpoint are both set; give the checkpoint or the "
                "settings MOPO fits its own ensemble with, not both"
            )
        members = self.dynamics_config().members  # a bad key or value fails here, before any training
        if self.dynamics_steps < 1 or self.dynamics_batch_size < 1:
            raise ConfigError("algo_config.dynamics_steps and dynamics_batch_size must be >= 1")
        if self.rollout_length < 1 or self.rollout_every < 1 or self.model_buffer_size < 1:
            raise ConfigError("algo_config.rollout_length, rollout_every and model_buffer_size must be >= 1")
        if not 0.0 <= self.real_fraction < 1.0 or self.penalty < 0:
            raise ConfigError("algo_config.real_fraction must be in [0, 1) and penalty >= 0")
        if self.elites < 1 or (not self.dynamics_checkpoint and self.elites > members):
            raise ConfigError(
                f"algo_config.elites {self.elites}: must be between 1 and the ensemble's {members} members"
            )
        if self.uncertainty not in UNCERTAINTIES:
            raise ConfigError(
                f"algo_config.uncertainty {self.uncertainty!r}: choose one of {', '.join(UNCERTAINTIES)}"
            )
        if not isinstance(self.termination, str) or not self.termination:
            raise ConfigError(
                "algo_config.termination must be 'auto', 'none' or a termination function's name"
            )
        if self.termination not in ("auto", "none"):
            from offrl_robot.registry import resolve_termination

            resolve_termination(self.termination)  # an unknown name fails here, before any training

    def dynamics_settings(self) -> dict[str, Any]:
        """The `algo_config:` of the self-fitted ensemble: MOPO's defaults under `dynamics:`."""
        if not isinstance(self.dynamics, dict):
            raise ConfigError(
                "algo_config.dynamics must be a mapping of DynamicsConfig fields, e.g. {members: 7}"
            )
        return {**DYNAMICS_DEFAULTS, **self.dynamics}

    def dynamics_config(self) -> DynamicsConfig:
        """The DynamicsConfig of the self-fitted ensemble (`dynamics:` over MOPO's defaults)."""
        from offrl_robot.algos.dynamics import build_algo_config

        try:
            return build_algo_config(self.dynamics_settings())
        except ConfigError as err:
            raise ConfigError(f"algo_config.dynamics: {err}") from None


def elite_members(holdout_mse: Sequence[float], count: int) -> list[int]:
    """The `count` members with the lowest held-out error (ties: lower index first), ascending."""
    order = sorted(range(len(holdout_mse)), key=lambda k: (holdout_mse[k], k))
    return sorted(order[:count])


@register
class MOPO(CQL):
    """Model-based offline policy optimisation; see the module docstring."""

    name = "mopo"
    config_class = MOPOConfig
    value_based = False  # TD errors are of the mixed batch, not of the sampled dataset rows

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        num_seeds: int,
        config: MOPOConfig,
        seeds: Sequence[int] | None = None,
    ) -> None:
        super().__init__(observation_dim, action_dim, num_seeds, config, seeds)
        self.dynamics_fit: list[dict[str, Any]] = []
        self._checkpoint_dataset: dict[str, Any] = {}
        if config.dynamics_checkpoint:
            model, record = self._load_checkpoint_model(config.dynamics_checkpoint)
            models = [model if i == 0 else copy.deepcopy(model) for i in range(num_seeds)]
            self.dynamics_fit = [dict(record) for _ in self.seeds]
        else:  # fitted by prepare(); until then (or until a checkpoint is loaded) untrained
            dynamics_config = config.dynamics_config()
            models = [
                DynamicsEnsemble(observation_dim, action_dim, dynamics_config, seed) for seed in self.seeds
            ]
        members = models[0].members
        if config.elites > members:
            raise ConfigError(
                f"algo_config.elites {config.elites} exceeds the {members} members of dynamics_checkpoint "
                f"{config.dynamics_checkpoint}; set elites <= {members}"
            )
        self.dynamics = nn.ModuleList(models).requires_grad_(False).eval()
        # Elite members per seed: the best on held-out data once fitted (prepare, checkpoint),
        # the first `elites` members of an unfitted model.
        elites = [
            elite_members(fit["holdout_mse_per_member"], config.elites)
            if "holdout_mse_per_member" in fit
            else list(range(config.elites))
            for fit in (self.dynamics_fit or [{}] * num_seeds)
        ]
        self.register_buffer("elite_members", torch.tensor(elites, dtype=torch.int64))
        size = config.model_buffer_size
        for name, width in (
            ("model_obs", observation_dim),
            ("model_actions", action_dim),
            ("model_next_obs", observation_dim),
        ):
            self.register_buffer(name, torch.zeros(num_seeds, size, width))
        self.register_buffer("model_rewards", torch.zeros(num_seeds, size))
        self.register_buffer("model_terminals", torch.zeros(num_seeds, size))
        # Ring-buffer state per seed (host ints: rollouts store a data-dependent number of rows).
        self.cursor = [0] * num_seeds
        self.filled = [0] * num_seeds
        self._filled_rows: Tensor | None = None  # `filled` as a device tensor, refreshed per rollout
        # "auto" is resolved from the dataset by prepare() (and restored from checkpoints); an
        # unprepared MOPO (built directly, untrained model) rolls out without terminations.
        self.termination = "none" if config.termination == "auto" else config.termination
        self._terminated = _termination_function(self.termination)

    def _load_checkpoint_model(self, path: str) -> tuple[DynamicsEnsemble, dict[str, Any]]:
        from offrl_robot.algos.dynamics import load_dynamics
        from offrl_robot.checkpoint import load_checkpoint, resolve_checkpoint

        state = load_checkpoint(resolve_checkpoint(path))
        if state.get("algo") != "dynamics":
            raise ConfigError(f"algo_config.dynamics_checkpoint {path} is not a dynamics run")
        if (int(state["observation_dim"]), int(state["action_dim"])) != (
            self.observation_dim,
            self.action_dim,
        ):
            raise ConfigError(
                f"algo_config.dynamics_checkpoint {path} models obs {state['observation_dim']} / "
                f"act {state['action_dim']}, the dataset has {self.observation_dim} / {self.action_dim}"
            )
        self._checkpoint_dataset = dict(state.get("dataset") or {})
        summary = dict(state.get("summary") or {})
        record = {
            k: summary[k] for k in ("steps_run", "epochs", "stop_reason", "holdout_mse") if k in summary
        }
        if "holdout_mse_per_member" in summary:
            record["holdout_mse_per_member"] = list(summary["holdout_mse_per_member"])
        record["checkpoint"] = str(path)
        return load_dynamics(state), record

    def prepare(self, dataset: Dataset) -> None:
        """Resolve the termination rule from the data, then fit each seed's ensemble on the run's
        dataset and pick its elites (with a dynamics_checkpoint: check it was fitted on it)."""
        cfg: MOPOConfig = self.config  # type: ignore[assignment]
        self.termination = resolve_termination_setting(cfg.termination, dataset)
        self._terminated = _termination_function(self.termination)
        if cfg.dynamics_checkpoint:
            fitted_on = str(self._checkpoint_dataset.get("sha256", ""))
            mine = dataset.sha256()
            if fitted_on != mine:
                name = self._checkpoint_dataset.get("name", "?")
                raise ConfigError(
                    f"algo_config.dynamics_checkpoint {cfg.dynamics_checkpoint} was fitted on dataset {name!r} "
                    f"(sha256 {fitted_on[:12]}…), this run's dataset has sha256 {mine[:12]}…; fit dynamics on "
                    "this dataset (offrl-robot train --algo dynamics) or drop dynamics_checkpoint so MOPO fits its own"
                )
            return
        from offrl_robot.algos.dynamics import fit_dynamics
        from offrl_robot.train_config import TrainConfig

        device = self.model_obs.device
        self.dynamics_fit = []
        for index, (seed, model) in enumerate(zip(self.seeds, self.dynamics, strict=True)):
            fit_config = TrainConfig(
                algo="dynamics",
                algo_config=cfg.dynamics_settings(),
                steps=cfg.dynamics_steps,
                seeds=[seed],
                batch_size=cfg.dynamics_batch_size,
                device=str(device),
                progress=False,
            )
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                fit = fit_dynamics(fit_config, dataset, write=False)
            model.load_state_dict(fit.model.state_dict())
            record = {
                k: fit.summary[k]
                for k in ("steps_run", "epochs", "stop_reason", "holdout_mse", "holdout_mse_per_member")
            }
            self.dynamics_fit.append(record)
            elites = elite_members(record["holdout_mse_per_member"], cfg.elites)
            self.elite_members[index].copy_(torch.tensor(elites))

    # ------------------------------------------------------------------ model rollouts
    @torch.no_grad()
    def _model_step(self, obs_n: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Normalised states [S, B, O] and actions in [-1, 1] -> (normalised next states,
        penalised rewards, terminal flags [S, B] bool), seed i's rows on seed i's ensemble, each
        row sampled from the Gaussian of a random elite member."""
        steps = [
            self._seed_model_step(dyn, elites, o, a)
            for dyn, elites, o, a in zip(self.dynamics, self.elite_members, obs_n, actions, strict=True)
        ]
        return tuple(torch.stack(parts) for parts in zip(*steps, strict=True))  # type: ignore[return-value]

    def _seed_model_step(
        self, dyn: DynamicsEnsemble, elites: Tensor, obs_n: Tensor, actions: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One seed: [B, O], [B, A] -> [B, O], [B], [B]."""
        cfg: MOPOConfig = self.config  # type: ignore[assignment]
        o = self.observation_dim
        physical = obs_n * dyn.obs_std + dyn.obs_mean
        act = dyn.action_low + (actions + 1.0) * 0.5 * (dyn.action_high - dyn.action_low)
        mean, std = dyn.predict_distribution(physical, act)  # [K, B, O + 1] of (s' - s, r)
        if cfg.uncertainty == "disagreement":
            delta = mean[..., :o]
            spread = (delta - delta.mean(0)) / dyn.obs_std
        else:  # aleatoric: the members' own predicted std of s' - s
            spread = std[..., :o] / dyn.obs_std
        uncertainty = spread.square().sum(-1).sqrt().amax(0)
        rows = torch.arange(obs_n.shape[0], device=obs_n.device)
        pick = elites[torch.randint(elites.shape[0], rows.shape, device=obs_n.device)]
        sample = mean[pick, rows] + std[pick, rows] * torch.randn_like(mean[0])
        next_obs = physical + sample[:, :o]
        reward = sample[:, o] - cfg.penalty * uncertainty
        terminal = self._terminated(physical, act, next_obs)
        return (next_obs - dyn.obs_mean) / dyn.obs_std, reward, terminal

    @torch.no_grad()
    def _rollout(self, start: Tensor) -> None:
        """h policy steps from the batch's states into the ring buffer; a row stops after the
        step whose next state is terminal (that transition is kept, with terminal = 1)."""
        obs = start
        alive = torch.ones(start.shape[:2], dtype=torch.bool, device=start.device)
        steps = []
        for _ in range(self.config.rollout_length):
            actions, _ = self.actor.sample(obs)
            next_obs, reward, terminal = self._model_step(obs, actions)
            steps.append((obs, actions, next_obs, reward, terminal.float(), alive))
            alive = alive & ~terminal
            obs = next_obs
        obs, actions, next_obs, reward, terminal, valid = (
            torch.cat(parts, 1) for parts in zip(*steps, strict=True)
        )
        self._store(valid, obs, actions, next_obs, reward, terminal)

    def _store(
        self, valid: Tensor, obs: Tensor, actions: Tensor, next_obs: Tensor, reward: Tensor, terminal: Tensor
    ) -> None:
        """Append each seed's valid rows [S, N] to its ring buffer (one host read of the row lists)."""
        size = self.config.model_buffer_size
        for seed, rows in enumerate(valid.unbind(0)):
            kept = rows.nonzero().squeeze(1)[-size:]  # host sync: how many rows lived
            count = int(kept.shape[0])
            index = (torch.arange(count, device=obs.device) + self.cursor[seed]) % size
            self.model_obs[seed, index] = obs[seed, kept]
            self.model_actions[seed, index] = actions[seed, kept]
            self.model_next_obs[seed, index] = next_obs[seed, kept]
            self.model_rewards[seed, index] = reward[seed, kept]
            self.model_terminals[seed, index] = terminal[seed, kept]
            self.cursor[seed] = (self.cursor[seed] + count) % size
            self.filled[seed] = min(size, self.filled[seed] + count)
        self._filled_rows = None

    def _filled_tensor(self, device: torch.device) -> Tensor:
        if self._filled_rows is None or self._filled_rows.device != device:
            self._filled_rows = torch.tensor(self.filled, dtype=torch.float32, device=device)
        return self._filled_rows

    def update(self, batch: Batch) -> UpdateOutput:
        if batch.observations.is_cuda and torch.cuda.is_current_stream_capturing():
            raise ConfigError(
                "accelerate: MOPO's rollout schedule and model-buffer cursor are host-side state a CUDA "
                "graph would freeze; set accelerate: none for algo mopo"
            )
        if self.num_updates % self.config.rollout_every == 0:
            self._rollout(batch.observations)
        s, b, _ = batch.observations.shape
        real = max(1, round(self.config.real_fraction * b)) if self.config.real_fraction > 0 else 0
        model = b - real
        device = batch.observations.device
        filled = self._filled_tensor(device)
        # Uniform over each seed's filled part of its buffer (the seeds' fill levels differ).
        index = (torch.rand(s, model, device=device) * filled[:, None]).long()

        def take(buffer: Tensor) -> Tensor:
            return buffer.gather(1, index.unsqueeze(-1).expand(-1, -1, buffer.shape[-1]))

        mixed = Batch(
            observations=torch.cat([batch.observations[:, :real], take(self.model_obs)], 1),
            actions=torch.cat([batch.actions[:, :real], take(self.model_actions)], 1),
            rewards=torch.cat([batch.rewards[:, :real], self.model_rewards.gather(1, index)], 1),
            next_observations=torch.cat([batch.next_observations[:, :real], take(self.model_next_obs)], 1),
            terminals=torch.cat([batch.terminals[:, :real], self.model_terminals.gather(1, index)], 1),
        )
        out = super().update(mixed)
        in_buffer = (torch.arange(self.config.model_buffer_size, device=device) < filled[:, None]).float()
        out.metrics["model_reward"] = (self.model_rewards * in_buffer).sum(-1) / filled
        out.metrics["model_terminal_rate"] = (self.model_terminals * in_buffer).sum(-1) / filled
        return UpdateOutput(metrics=out.metrics, td_error=None)

    # ------------------------------------------------------------------ checkpoints
    def optimizer_state_dict(self) -> dict[str, Any]:
        state = super().optimizer_state_dict()
        state["model_buffer"] = {"cursor": list(self.cursor), "filled": list(self.filled)}
        state["dynamics_fit"] = list(self.dynamics_fit)  # a record; the weights are module state
        state["termination"] = self.termination  # resolved from the data by prepare()
        return state

    def load_optimizer_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        buffer = state.pop("model_buffer", {"cursor": 0, "filled": 0})
        self.dynamics_fit = list(state.pop("dynamics_fit", []))
        self.termination = str(state.pop("termination", self.termination))
        self._terminated = _termination_function(self.termination)
        super().load_optimizer_state_dict(state)
        s = self.num_seeds
        cursor, filled = buffer["cursor"], buffer["filled"]
        self.cursor = [int(c) for c in cursor] if isinstance(cursor, list) else [int(cursor)] * s
        self.filled = [int(f) for f in filled] if isinstance(filled, list) else [int(filled)] * s
        self._filled_rows = None


def _never_terminates(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    return torch.zeros(next_obs.shape[:-1], dtype=torch.bool, device=next_obs.device)


def _termination_function(name: str) -> Any:
    if name == "none":
        return _never_terminates
    from offrl_robot.registry import resolve_termination

    return resolve_termination(name)


def resolve_termination_setting(setting: str, dataset: Dataset) -> str:
    """`termination: auto` -> the dataset task's termination function, or "none" for a task that
    ends only by time; a dataset with true terminals and no known rule is refused, since model
    rollouts would roll through the states where the data ends."""
    if setting != "auto":
        return setting
    task = dataset.metadata.task
    named = ""
    if task:
        from offrl_robot.sim.tasks import task_info

        try:
            named = task_info(task).termination
        except ConfigError:  # a task the project does not know (a real robot's): no rule
            named = ""
    if named:
        return named
    terminals = int(dataset.terminals.sum())
    if terminals:
        from offrl_robot.registry import registered_terminations

        known = sorted(n for n in registered_terminations() if ":" not in n)
        raise ConfigError(
            f"algo_config.termination auto: the dataset has {terminals} true terminals but its task "
            f"{task or '(none)'!r} names no termination function, so model rollouts could not stop where "
            f"the data does; set algo_config.termination to a registered one ({', '.join(known)}) or to "
            "none to roll through them"
        )
    return "none"
