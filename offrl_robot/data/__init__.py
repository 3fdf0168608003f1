"""Dataset layer: the in-memory Dataset, Minari storage, rosbag2 ingestion, sim collection."""

from offrl_robot.data.dataset import Dataset, DatasetMetadata

__all__ = ["Dataset", "DatasetMetadata"]
