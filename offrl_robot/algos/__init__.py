"""Offline RL algorithms, one file each. Importing this package registers them all."""

from offrl_robot.algos.base import REGISTRY, AlgoConfig, Algorithm, Batch, UpdateOutput
from offrl_robot.algos.bc import BC, BCConfig
from offrl_robot.algos.bcq import BCQ, BCQConfig
from offrl_robot.algos.cql import CQL, CQLConfig
from offrl_robot.algos.iql import IQL, IQLConfig
from offrl_robot.algos.td3bc import TD3BC, TD3BCConfig

__all__ = [
    "BC",
    "BCQ",
    "CQL",
    "IQL",
    "REGISTRY",
    "TD3BC",
    "AlgoConfig",
    "Algorithm",
    "BCConfig",
    "BCQConfig",
    "Batch",
    "CQLConfig",
    "IQLConfig",
    "TD3BCConfig",
    "UpdateOutput",
]
