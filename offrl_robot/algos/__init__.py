"""Offline RL algorithms, one file each. Importing this package registers them all (the dynamics
ensemble, `algos/dynamics.py`, is a model for MPC and MOPO, not a registered policy learner)."""

from offrl_robot.algos.base import REGISTRY, AlgoConfig, Algorithm, Batch, UpdateOutput
from offrl_robot.algos.bc import BC, BCConfig
from offrl_robot.algos.bcq import BCQ, BCQConfig
from offrl_robot.algos.cql import CQL, CQLConfig
from offrl_robot.algos.iql import IQL, IQLConfig
from offrl_robot.algos.mopo import MOPO, MOPOConfig
from offrl_robot.algos.td3bc import TD3BC, TD3BCConfig

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
]
