"""MuJoCo tasks: our arm task `offrl_robot/ArmReach-v0` plus gymnasium's MuJoCo v5 tasks, by name.

Importing this package registers `offrl_robot/ArmReach-v0` with gymnasium. Use
`make_env(task)` to build any known task and `task_info(task)` for its static facts.
"""

from offrl_robot.sim.tasks import ARM_REACH_ID, TaskInfo, known_tasks, make_env, register_arm_reach, task_info

register_arm_reach()

__all__ = ["ARM_REACH_ID", "TaskInfo", "known_tasks", "make_env", "task_info"]
