"""ROS 2 side of offrl_robot: the only package that imports rclpy and ROS message types.

- `policy_node` — lifecycle node: /joint_states (+ extra topics) -> PolicyRuntime -> SafetyFilter -> /cmd
- `sim_node` — MuJoCo behind the robot's ROS interface (/joint_states, /clock, /cmd, ~/reset, ~/metrics)
- `deploy` — both nodes in one process (`offrl-robot deploy`) for machines without `ros2 launch`
- helpers without ROS types (`observation`, `policy_setup`, `sim_backend`) hold the rules, so they
  are tested without DDS.

Nothing is imported here on purpose: importing `offrl_robot.ros` must not load rclpy.
"""
