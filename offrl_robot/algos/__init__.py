"""Offline RL algorithms, one file each. Importing this package registers them all (the dynamics
ensemble, `algos/dynamics.py`, is a model for MPC and MOPO, not a registered policy learner)."""

from offrl_robot.algos.base import REGISTRY, AlgoConfig, Algorithm, Batch, UpdateOutput
from offrl_robot.algos.bc import BC, BCConfig
from offrl_robot.algos.bcq import BCQ, BCQConfig
from offrl_robot.algos.cql import CQL, CQLConfig
from offrl_robot.algos.iql import IQL, IQLConfig
from offrl_robot.algos.mopo import MOPO, MOPOConfig
from offrl_robot.algos.td3bc import TD3BC, TD3BCConfig
from offrl_robot.errors import ConfigError


def resolve_algo(name: str) -> type[Algorithm]:
    """Registry lookup with a one-line error listing what exists (every algorithm is registered
    once this package is imported)."""
    if name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY)) or "none registered"
        raise ConfigError(f"unknown algorithm {name!r}; choose one of: {known}")
    return REGISTRY[name]


__all__ = [
    "BC",
    "BCQ",
    "CQL",
    "IQL",
    "MOPO",
    "REGISTRY",
    "TD3BC",
    "AlgoConfig",
    "Algorithm",
    "BCConfig",
    "BCQConfig",
    "Batch",
    "CQLConfig",
    "IQLConfig",
    "MOPOConfig",
    "TD3BCConfig",
    "UpdateOutput",
    "resolve_algo",
]
