"""offrl_robot: offline reinforcement learning for real robots.

Data flow: rosbag2 / Minari / sim collection -> Dataset -> Trainer(algo) -> checkpoint
-> ONNX export (+ model card) -> MuJoCo validation gate -> ROS 2 policy node behind a SafetyFilter.
ROS imports live only under `offrl_robot.ros`.
"""

__version__ = "0.1.0"
