"""Launch the MuJoCo sim_node: our ArmReach task or any MJCF robot with actuators.

    ros2 launch offrl_robot sim.launch.py
    ros2 launch offrl_robot sim.launch.py model:=/path/to/mujoco_menagerie/kinova_gen3/scene.xml
    ros2 launch offrl_robot sim.launch.py real_time_factor:=5.0

It publishes /joint_states, /clock, /goal, /episode (a latched marker per episode start) and
~/metrics, and takes /cmd (one value per actuator).
"""

from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare("offrl_robot")
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "params_file",
                default_value=PathJoinSubstitution([share, "config", "sim.yaml"]),
                description="ROS 2 parameter file for sim_node",
            ),
            DeclareLaunchArgument(
                "model",
                default_value="ArmReach-v0",
                description="task id or path to an MJCF file with actuators",
            ),
            DeclareLaunchArgument(
                "real_time_factor", default_value="1.0", description="simulated seconds per wall second"
            ),
            Node(
                package="offrl_robot",
                executable="sim_node",
                name="sim_node",
                output="screen",
                parameters=[
                    LaunchConfiguration("params_file"),
                    {
                        "model": LaunchConfiguration("model"),
                        "real_time_factor": LaunchConfiguration("real_time_factor"),
                    },
                ],
            ),
        ]
    )
