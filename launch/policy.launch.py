"""Launch policy_node (and, with use_sim:=true, the MuJoCo sim_node) from the installed package.

    ros2 launch offrl_robot policy.launch.py model:=/abs/path/NAME.onnx
    ros2 launch offrl_robot policy.launch.py use_sim:=true            # closed loop in MuJoCo
    ros2 launch offrl_robot policy.launch.py params_file:=/path/my_robot_policy.yaml

policy_node is a lifecycle node, started as a launch_ros LifecycleNode so launch event handlers
(ChangeState, OnStateTransition) can drive it; config/policy.yaml sets autostart: true so it
configures and activates itself (set it false to drive the transitions from launch or a lifecycle
manager instead). With use_sim:=true the policy runs on the simulator's /clock (use_sim_time), so
the sim's real_time_factor can speed the whole loop up consistently.

IncludeLaunchDescription does not scope launch arguments: every argument of this file is visible
to sim.launch.py. So each name the two files share (model, params_file, real_time_factor) is
passed explicitly (tests/test_launch_files.py checks it); without that, this file's `model`
(the .onnx) reached sim_node as its MJCF and the simulator died at start-up.
"""

from launch.actions import DeclareLaunchArgument, GroupAction, IncludeLaunchDescription
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare("offrl_robot")
    use_sim = LaunchConfiguration("use_sim")
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "model",
                default_value=PathJoinSubstitution([share, "models", "arm_reach.onnx"]),
                description="exported policy (.onnx) with its NAME.card.yaml beside it",
            ),
            DeclareLaunchArgument(
                "params_file",
                default_value=PathJoinSubstitution([share, "config", "policy.yaml"]),
                description="ROS 2 parameter file for policy_node",
            ),
            DeclareLaunchArgument(
                "use_sim",
                default_value="false",
                description="also start sim_node (MuJoCo) and use its /clock",
            ),
            DeclareLaunchArgument(
                "sim_params_file",
                default_value=PathJoinSubstitution([share, "config", "sim.yaml"]),
                description="ROS 2 parameter file for sim_node (with use_sim:=true)",
            ),
            DeclareLaunchArgument(
                "sim_model",
                default_value="ArmReach-v0",
                description="sim_node's task id or MJCF file (with use_sim:=true)",
            ),
            DeclareLaunchArgument(
                "real_time_factor",
                default_value="1.0",
                description="simulated seconds per wall second (with use_sim:=true)",
            ),
            LifecycleNode(
                package="offrl_robot",
                executable="policy_node",
                name="policy_node",
                namespace="",
                output="screen",
                parameters=[
                    LaunchConfiguration("params_file"),
                    {"model_path": LaunchConfiguration("model"), "use_sim_time": use_sim},
                ],
            ),
            # A scoped group: what the include sets (its `model`, `params_file`) stays inside it.
            GroupAction(
                [
                    IncludeLaunchDescription(
                        PythonLaunchDescriptionSource(
                            PathJoinSubstitution([share, "launch", "sim.launch.py"])
                        ),
                        launch_arguments={
                            "model": LaunchConfiguration("sim_model"),
                            "params_file": LaunchConfiguration("sim_params_file"),
                            "real_time_factor": LaunchConfiguration("real_time_factor"),
                        }.items(),
                    )
                ],
                condition=IfCondition(use_sim),
            ),
        ]
    )
