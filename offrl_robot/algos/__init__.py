"""Offline RL algorithms, one file each. Importing this package registers them all."""

from offrl_robot.algos.base import REGISTRY, AlgoConfig, Algorithm, Batch, UpdateOutput

__all__ = ["REGISTRY", "AlgoConfig", "Algorithm", "Batch", "UpdateOutput"]
