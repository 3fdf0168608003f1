"""The physics behind `sim_node`: a task (ArmReach, a task file), or any MJCF file with actuators.

Kept free of ROS so the in-process runner and the tests drive exactly the same stepping code.
Two kinds of model are supported because they answer different questions: a task (the project's
ArmReach, or a user's arm described by a task file: goal, reward, success, distance: does the
policy *do the task* over ROS?) and an
arbitrary robot MJCF, e.g. a Menagerie arm (does the node pipeline work on a robot we did not
design: joint naming, actuator count, ctrl ranges, unlimited joints?).

Command semantics match ros2_control's forward_command_controller: `/cmd` carries one value per
actuator in actuator order (for ArmReach: the joint velocity commands in joint order); it is
clipped to each actuator's ctrlrange where the model declares one.

Without a (fresh) command the actuators get their *hold* control, which depends on what they
are: a position servo (MuJoCo `position`/affine-bias actuator, what most Menagerie arms use)
holds the joint where it is — at reset its keyframe/current pose, when commands stop the pose at
that moment — because a control of zero means "go to q = 0" for it (a Kinova Gen3 reached
363 rad/s at start-up that way); velocity and motor actuators get 0 (stop, no torque).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

from offrl_robot.errors import ConfigError

DEFAULT_MJCF_RATE_HZ = 50.0
_ONE_DOF_JOINTS = (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))


@dataclass
class StepMetrics:
    """What the task says about the last control period (NaN where the model has no task)."""

    reward: float = float("nan")
    success: float = float("nan")
    distance_to_goal: float = float("nan")


METRIC_NAMES = ("reward", "success", "distance_to_goal", "episode_return", "episode", "sim_time")


class SimBackend:
    """A MuJoCo model stepped one control period at a time, reporting named 1-DoF joints."""

    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData, control_rate_hz: float) -> None:
        if model.nu == 0:
            raise ConfigError("the MJCF has no actuators; sim_node needs at least one to take /cmd")
        if control_rate_hz <= 0:
            raise ConfigError(f"control_rate_hz must be > 0, got {control_rate_hz}")
        self.model, self.data = model, data
        self.control_rate_hz = float(control_rate_hz)
        self.substeps = max(1, round(1.0 / (self.control_rate_hz * model.opt.timestep)))
        joints = [
            j for j in range(model.njnt) if int(model.jnt_type[j]) in _ONE_DOF_JOINTS and model.joint(j).name
        ]
        self.joint_names: list[str] = [model.joint(j).name for j in joints]
        self._qpos_adr = np.array([model.jnt_qposadr[j] for j in joints], dtype=np.intp)
        self._dof_adr = np.array([model.jnt_dofadr[j] for j in joints], dtype=np.intp)
        limited = model.actuator_ctrllimited.astype(bool)
        self.ctrl_low = np.where(limited, model.actuator_ctrlrange[:, 0], -np.inf)
        self.ctrl_high = np.where(limited, model.actuator_ctrlrange[:, 1], np.inf)
        self.position_actuators = position_servo_mask(model)
        # qpos address of each position servo's joint (-1: not a joint transmission, e.g. a tendon gripper)
        self._servo_qpos = np.array(
            [
                model.jnt_qposadr[model.actuator_trnid[a, 0]]
                if self.position_actuators[a] and model.actuator_trntype[a] == mujoco.mjtTrn.mjTRN_JOINT
                else -1
                for a in range(model.nu)
            ],
            dtype=np.intp,
        )
        self._hold_ctrl = np.zeros(model.nu)
        self._commanded = False  # the last step had a command (its end freezes the hold pose)
        self.episode_return = 0.0

    @property
    def num_commands(self) -> int:
        return int(self.model.nu)

    @property
    def sim_time(self) -> float:
        return float(self.data.time)

    def joint_state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(position, velocity, actuator effort) of every named 1-DoF joint, in `joint_names` order."""
        return (
            self.data.qpos[self._qpos_adr].copy(),
            self.data.qvel[self._dof_adr].copy(),
            self.data.qfrc_actuator[self._dof_adr].copy(),
        )

    def hold_control(self) -> np.ndarray:
        """The control that keeps the robot where it is: each position servo's joint position (or,
        for a servo not on a joint, its current control), 0 for velocity and motor actuators."""
        ctrl = np.where(self.position_actuators, self.data.ctrl, 0.0)
        on_joint = self._servo_qpos >= 0
        ctrl[on_joint] = self.data.qpos[self._servo_qpos[on_joint]]
        return np.clip(ctrl, self.ctrl_low, self.ctrl_high)

    def step(self, command: np.ndarray | None) -> StepMetrics:
        """Hold `command` for one control period; None = the hold control (see the module docstring)."""
        if command is None:
            if self._commanded:  # commands just stopped: freeze where the arm is now
                self._hold_ctrl = self.hold_control()
                self._commanded = False
            ctrl = self._hold_ctrl
        else:
            ctrl = np.clip(command, self.ctrl_low, self.ctrl_high)
            self._commanded = True
        self.data.ctrl[:] = ctrl
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        return StepMetrics()

    def reset(self, seed: int) -> None:
        mujoco.mj_resetData(self.model, self.data)
        if self.model.nkey > 0:
            mujoco.mj_resetDataKeyframe(self.model, self.data, 0)  # also its ctrl, when it has one
        mujoco.mj_forward(self.model, self.data)
        self._hold_ctrl = self.hold_control()  # position servos start at the keyframe/current pose
        self._commanded = False
        self.episode_return = 0.0

    def goal(self) -> np.ndarray | None:
        return None


class TaskBackend(SimBackend):
    """A task (ArmReach-v0, a task file, an installed task): adds goal, reward, success, distance.

    `/cmd` carries the task's actions (for a task file: its `actuators`, in that order; actuators
    the task does not command keep their start controls). Without a fresh command the task's hold
    action applies, frozen when commands stop: zero for velocity commands, the joint positions of
    that moment for position commands (a position target of zero would swing the arm to q = 0).
    """

    def __init__(self, task: str, control_rate_hz: float, goal: list[float] | None) -> None:
        from offrl_robot.sim import make_env

        self.env = make_env(task, episode_steps=None)
        self.task = self.env.unwrapped
        rate = control_rate_hz or float(self.task.control_rate_hz)
        if abs(rate - float(self.task.control_rate_hz)) > 1e-9:
            raise ConfigError(
                f"control_rate_hz {rate:g} differs from task {task}'s {self.task.control_rate_hz:g} Hz; "
                "leave it 0 for task models"
            )
        super().__init__(self.task.model, self.task.data, rate)
        self._fixed_goal = None if goal is None else np.asarray(goal, dtype=np.float64)
        self.ctrl_low, self.ctrl_high = np.asarray(self.task.action_low), np.asarray(self.task.action_high)
        self._task_hold = self._hold_action()

    @property
    def num_commands(self) -> int:
        return len(self.ctrl_low)

    def _hold_action(self) -> np.ndarray:
        hold = getattr(self.task, "hold_action", None)
        return np.asarray(hold(), dtype=np.float64) if hold is not None else np.zeros(self.num_commands)

    def step(self, command: np.ndarray | None) -> StepMetrics:
        if command is None:
            if self._commanded:  # commands just stopped: freeze where the arm is now
                self._task_hold = self._hold_action()
                self._commanded = False
            action = self._task_hold
        else:
            action = np.asarray(command, dtype=np.float64)
            self._commanded = True
        # The bare env: wrappers (TimeLimit, checkers) assume episodes; the node runs continuously.
        _, reward, _, _, info = self.task.step(action)
        self.episode_return += float(reward)
        return StepMetrics(float(reward), float(info["is_success"]), float(info["distance"]))

    def reset(self, seed: int) -> None:
        self.env.reset(seed=seed)
        if self._fixed_goal is not None:
            self.task.set_goal(self._fixed_goal)
            mujoco.mj_forward(self.model, self.data)
        self.episode_return = 0.0
        self._task_hold = self._hold_action()
        self._commanded = False

    def goal(self) -> np.ndarray | None:
        return self.task.goal_position()


def position_servo_mask(model: mujoco.MjModel) -> np.ndarray:
    """True for actuators whose control is a position setpoint: affine bias with a position term
    (MuJoCo's `position` shortcut and Menagerie's `general` servos: bias = -kp * q)."""
    affine = model.actuator_biastype == mujoco.mjtBias.mjBIAS_AFFINE
    return affine & (model.actuator_biasprm[:, 1] < 0)


def make_backend(model: str, control_rate_hz: float, goal: list[float] | None) -> SimBackend:
    """`model` is a task (ArmReach-v0, a task file `*.yaml`, an installed task) or an MJCF file."""
    from offrl_robot.sim.task_file import looks_like_task_file

    if looks_like_task_file(model):
        return TaskBackend(model, control_rate_hz, goal)
    if model.endswith(".xml") or Path(model).is_file():
        path = Path(model).expanduser()
        if not path.is_file():
            raise ConfigError(f"sim model {path} not found; pass a task id (ArmReach-v0) or an MJCF path")
        try:
            mj_model = mujoco.MjModel.from_xml_path(str(path))
        except ValueError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"sim model {path} does not load in MuJoCo: {first}") from err
        if goal is not None:
            raise ConfigError("goal is only meaningful for a task (ArmReach-v0), not for a bare MJCF")
        return SimBackend(mj_model, mujoco.MjData(mj_model), control_rate_hz or DEFAULT_MJCF_RATE_HZ)
    return TaskBackend(model, control_rate_hz, goal)
