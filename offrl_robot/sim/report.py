"""Reports people would rather look at than read: the sim gate's `reports/NAME/`, learning curves.

`write_report(result, folder)` turns a `ValidationResult` into one folder, written atomically
(a temp folder renamed into place, so a crashed report never half-replaces a good one):

    report.md      verdict, gate table, all metrics, interventions by kind, per-episode table
    report.json    the same numbers, machine-readable (no trajectories)
    returns.png    histogram of episode returns (+ success / failure counts on arm tasks)
    joints.png     joint positions of one episode against their limits and the limit margin
    actions.png    policy action vs the SafetyFilter's command for one episode, interventions marked
                   (of the recorded episodes, the one where the filter intervened / a joint came
                   closest to a limit most often: the interesting one)
    episodes.gif   the first two episodes rendered offscreen (320x240, every 2nd tick)

Why rendering runs in a child process: the GL backend (`MUJOCO_GL`) is fixed when MuJoCo is
imported, and a broken EGL/OSMesa install can crash or hang the process. The child replays the
recorded joint positions (no physics, no policy) with EGL, then OSMesa; if both fail the report
says why and every other file is still written.

`plot_learning_curves(run_dir)` draws a training run's metrics.csv / eval.csv next to them.
Plots use matplotlib's object API on the Agg canvas (no pyplot global state, no display).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from offrl_robot.atomic import atomic_dir, atomic_write_bytes
from offrl_robot.card import ValidationRecord
from offrl_robot.safety import COUNTER_NAMES, Intervention, intervention_names
from offrl_robot.sim.results import EpisodeTrace, ValidationResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

VIDEO_NAME = "episodes.gif"
VIDEO_SIZE = (320, 240)  # width, height
VIDEO_FRAME_EVERY = 2  # render every 2nd control tick
RENDER_TIMEOUT_S = 120.0
GL_BACKENDS = ("egl", "osmesa")
MAX_EPISODE_ROWS = 50  # per-episode table rows in report.md (report.json has all)


@dataclass
class ReportFiles:
    """What `write_report` produced. `video_note` says why there is no video ('' when there is)."""

    folder: Path
    files: list[str] = field(default_factory=list)
    video_note: str = ""


# ---------------------------------------------------------------------------------- plots
def _figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (8.0, 4.0)) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig: Figure, path: Path) -> None:
    """PNG via temp + rename (then made readable: mkstemp files are private)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())
    os.chmod(path, 0o644)


def plot_returns(result: ValidationResult, path: Path) -> None:
    """Histogram of episode returns; on arm tasks a second panel with success / failure counts."""
    returns = [s.episode_return for s in result.per_episode]
    arm = result.per_episode[0].success is not None
    fig, axes = _figure(1, 2 if arm else 1, (9.0 if arm else 6.0, 3.6))
    ax = axes[0][0]
    ax.hist(returns, bins=min(20, max(5, len(returns) // 2)), color="#4c72b0", edgecolor="white")
    ax.axvline(float(np.mean(returns)), color="black", linestyle="--", label=f"mean {np.mean(returns):.1f}")
    ax.set(
        xlabel="episode return", ylabel="episodes", title=f"{result.task}: returns ({len(returns)} episodes)"
    )
    ax.legend()
    if arm:
        wins = sum(bool(s.success) for s in result.per_episode)
        ax = axes[0][1]
        ax.bar(["success", "failure"], [wins, len(returns) - wins], color=["#55a868", "#c44e52"])
        ax.set(ylabel="episodes", title=f"success rate {wins / len(returns):.2f}")
    _save(fig, path)


def plot_joints(result: ValidationResult, episode: int, path: Path) -> None:
    """Joint positions of one episode against their limits (dashed) and the limit margin (shaded)."""
    trace = result.traces[episode]
    n = len(result.joint_names)
    cols = min(3, max(1, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = _figure(rows, cols, (4.0 * cols, 2.6 * rows))
    t = np.arange(trace.qpos.shape[0]) / result.control_rate_hz
    for j, name in enumerate(result.joint_names):
        ax = axes[j // cols][j % cols]
        lo, hi, margin = result.joint_low[j], result.joint_high[j], result.joint_margin[j]
        ax.plot(t, trace.qpos[:, result.joint_qpos_addresses[j]], color="#4c72b0")
        for bound in (lo, hi):
            ax.axhline(bound, color="#c44e52", linestyle="--", linewidth=1)
        ax.axhspan(lo, lo + margin, color="#c44e52", alpha=0.15)
        ax.axhspan(hi - margin, hi, color="#c44e52", alpha=0.15)
        span = hi - lo
        ax.set(title=name, xlabel="s", ylim=(lo - 0.05 * span, hi + 0.05 * span))
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    fig.suptitle(f"episode {episode}: joint positions against limits (dashed) and limit margin (shaded)")
    _save(fig, path)


def plot_actions(result: ValidationResult, episode: int, path: Path) -> None:
    """What the policy asked for vs what the SafetyFilter sent, one panel per action."""
    trace = result.traces[episode]
    n = len(result.action_names)
    cols = min(3, max(1, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = _figure(rows, cols, (4.0 * cols, 2.6 * rows))
    t = np.arange(trace.command.shape[0]) / result.control_rate_hz
    counted = np.array([bool(set(intervention_names(int(f))) - {"blending"}) for f in trace.flags])
    for j, name in enumerate(result.action_names):
        ax = axes[j // cols][j % cols]
        ax.plot(t, trace.policy_action[:, j], color="#dd8452", label="policy")
        ax.plot(t, trace.command[:, j], color="#4c72b0", linestyle="--", label="sent (filtered)")
        for bound in (result.action_low[j], result.action_high[j]):
            ax.axhline(bound, color="#c44e52", linestyle=":", linewidth=1)
        if counted.any():
            ax.plot(
                t[counted],
                trace.command[counted, j],
                "x",
                color="#c44e52",
                markersize=4,
                label="intervention",
            )
        ax.set(title=name, xlabel="s")
        if j == 0:
            ax.legend(fontsize="small")
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    fig.suptitle(
        f"episode {episode}: commanded (policy) vs sent (SafetyFilter) action; dotted: action limits"
    )
    _save(fig, path)


# ---------------------------------------------------------------------------------- video
def render_video(
    task: str,
    traces: Sequence[EpisodeTrace],
    path: Path,
    frame_every: int = VIDEO_FRAME_EVERY,
    timeout_s: float = RENDER_TIMEOUT_S,
) -> str:
    """Render `traces` to a GIF at `path` in a child process; return '' or why it is missing.

    Every `frame_every`-th control tick becomes a frame, played back in real time.
    """
    if not traces:
        return "no episode trajectories were recorded"
    reasons = []
    with tempfile.TemporaryDirectory(prefix="offrl_render_") as tmp:
        replay = Path(tmp) / "replay.npz"
        arrays: dict[str, np.ndarray] = {}
        for k, trace in enumerate(traces):
            arrays[f"qpos_{k}"], arrays[f"mocap_{k}"] = trace.qpos, trace.mocap_pos
        np.savez(replay, **arrays)
        preferred = os.environ.get("MUJOCO_GL")
        backends = (
            [preferred] + [b for b in GL_BACKENDS if b != preferred] if preferred else list(GL_BACKENDS)
        )
        for backend in backends:
            env = {**os.environ, "MUJOCO_GL": backend}
            if backend == "osmesa":
                env["PYOPENGL_PLATFORM"] = "osmesa"
            elif backend == "egl":
                env["PYOPENGL_PLATFORM"] = "egl"
            cmd = [sys.executable, "-m", "offrl_robot.sim.report", "render", task, str(replay), str(path)]
            cmd.append(str(frame_every))
            try:
                done = subprocess.run(
                    cmd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
                )
            except subprocess.TimeoutExpired:
                reasons.append(f"{backend}: timed out after {timeout_s:g} s")
                continue
            if done.returncode == 0 and path.is_file():
                return ""
            lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
            reasons.append(f"{backend}: {lines[-1] if lines else f'exit {done.returncode}'}")
    return "offscreen rendering unavailable (" + "; ".join(reasons) + ")"


def _render_child(task: str, replay: Path, out: Path, frame_every: int) -> None:
    """Child-process side of `render_video`: replay joint positions, write the GIF."""
    import imageio.v3 as iio
    import mujoco

    from offrl_robot.sim.tasks import make_env, task_info

    env = make_env(task)
    model = env.unwrapped.model
    data = mujoco.MjData(model)
    width, height = VIDEO_SIZE
    model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
    model.vis.global_.offheight = max(model.vis.global_.offheight, height)
    renderer = mujoco.Renderer(model, height=height, width=width)
    # a task env names its view (a task file's: the model's free camera, which Menagerie scenes set
    # up; a robot's first camera may be on its wrist); otherwise the model's first camera
    camera: int | str = getattr(env.unwrapped, "render_camera", 0 if model.ncam else -1)
    frames = []
    try:
        with np.load(replay) as arrays:
            for k in range(len(arrays.files) // 2):
                qpos, mocap = arrays[f"qpos_{k}"], arrays[f"mocap_{k}"]
                for t in range(0, qpos.shape[0], frame_every):
                    data.qpos[:] = qpos[t]
                    if model.nmocap:
                        data.mocap_pos[:] = mocap[t]
                    mujoco.mj_forward(model, data)
                    renderer.update_scene(data, camera=camera)
                    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
                    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
                    frames.append(renderer.render().copy())
    finally:
        renderer.close()
        env.close()
    if not frames or max(float(f.std()) for f in frames) == 0.0:
        raise RuntimeError("renderer returned blank frames")
    frame_ms = 1000.0 * frame_every / task_info(task).control_rate_hz
    iio.imwrite(out, np.stack(frames), extension=".gif", duration=frame_ms, loop=0)


# ---------------------------------------------------------------------------------- report
def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) and not value.is_integer() else f"{value:g}"


def _episodes_to_plot(result: ValidationResult) -> tuple[int, int]:
    """(joints, actions): the recorded episode with most joint-limit ticks / most interventions."""
    recorded = result.per_episode[: len(result.traces)]
    joints = max(range(len(recorded)), key=lambda k: (recorded[k].joint_limit_ticks, -k), default=0)
    actions = max(range(len(recorded)), key=lambda k: (recorded[k].interventions, -k), default=0)
    return joints, actions


def _markdown(result: ValidationResult, name: str, files: list[str], video_note: str) -> str:
    verdict = "PASSED" if result.passed else "FAILED"
    lines = [f"# Validation report: {name}", ""]
    lines.append(f"**{verdict}**" + ("" if result.passed else ": " + "; ".join(result.failures)))
    lines += [
        "",
        f"- model: `{result.model_path}`  card: `{result.card_path}`",
        f"- task: {result.task}, {result.episodes} episodes, seed {result.seed}, "
        f"domain randomisation {'on' if result.randomized else 'off'}",
        f"- date: {result.record.date if result.record else 'not recorded'}",
        "",
        "## Gate",
        "",
        "| metric | value | threshold | verdict |",
        "|---|---:|---|---|",
    ]
    for metric, bound in result.thresholds.items():
        value = result.metrics[metric]
        failed = ValidationRecord.failures({metric: value}, {metric: bound})
        text = ", ".join(f"{key} {limit:g}" for key, limit in bound.items())
        lines.append(f"| {metric} | {_fmt(value)} | {text} | {'FAIL' if failed else 'ok'} |")
    for metric in result.skipped_thresholds:
        lines.append(f"| {metric} | n/a | skipped | task {result.task} has no {metric} |")
    joint_episode, action_episode = _episodes_to_plot(result)
    lines += ["", "## Plots", ""]
    for png, title in (
        ("returns.png", "Episode returns"),
        ("joints.png", f"Joint positions against limits (episode {joint_episode})"),
        ("actions.png", f"Policy action vs SafetyFilter command (episode {action_episode})"),
    ):
        if png in files:
            lines += [f"### {title}", "", f"![{title}]({png})", ""]
    lines += ["## Video", ""]
    lines.append(
        f"![first two episodes]({VIDEO_NAME})" if VIDEO_NAME in files else f"No video: {video_note}."
    )
    ticks = result.metrics["ticks"]
    lines += [
        "",
        "## SafetyFilter interventions by kind",
        "",
        "| kind | ticks | share of ticks | counted |",
        "|---|---:|---:|---|",
    ]
    count_blend = bool(result.config.get("count_blend_in"))
    for kind in COUNTER_NAMES:
        value = result.metrics[f"interventions_{kind}"]
        counted = "yes" if kind != Intervention.BLENDING.name.lower() or count_blend else "no (blend-in ramp)"
        lines.append(f"| {kind} | {value:g} | {value / ticks:.2%} | {counted} |")
    lines += ["", "## All metrics", "", "| metric | value |", "|---|---:|"]
    lines += [f"| {metric} | {_fmt(value)} |" for metric, value in result.metrics.items()]
    lines += [
        "",
        "## Episodes",
        "",
        "| # | env seed | return | length | success | final distance | interventions | joint-limit ticks "
        "| NaN events | delay |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for s in result.per_episode[:MAX_EPISODE_ROWS]:
        success = "-" if s.success is None else ("yes" if s.success else "no")
        distance = "-" if s.final_distance is None else f"{s.final_distance:.3f} m"
        lines.append(
            f"| {s.index} | {s.env_seed} | {s.episode_return:.2f} | {s.length} | {success} | {distance} "
            f"| {s.interventions} "
            f"| {s.joint_limit_ticks} | {s.nan_events} | {s.conditions.action_delay_ticks} |"
        )
    if len(result.per_episode) > MAX_EPISODE_ROWS:
        lines.append(f"\n({len(result.per_episode) - MAX_EPISODE_ROWS} more episodes in report.json)")
    lines += ["", "## Settings", "", "```yaml"]
    lines += [yaml.safe_dump(result.config, sort_keys=False, default_flow_style=None).rstrip(), "```", ""]
    return "\n".join(lines)


def write_report(
    result: ValidationResult,
    folder: str | os.PathLike[str],
    video: bool = True,
    video_frame_every: int = VIDEO_FRAME_EVERY,
) -> ReportFiles:
    """Write `folder/` (report.md, report.json, PNGs, GIF) atomically; see the module docstring."""
    target = Path(folder)
    report = ReportFiles(folder=target)
    with atomic_dir(target, overwrite=True) as tmp:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a report is meant to be shared
        plot_returns(result, tmp / "returns.png")
        joint_episode, action_episode = _episodes_to_plot(result)
        if result.traces:
            if result.joint_names:
                plot_joints(result, joint_episode, tmp / "joints.png")
            plot_actions(result, action_episode, tmp / "actions.png")
        if video:
            report.video_note = render_video(result.task, result.traces, tmp / VIDEO_NAME, video_frame_every)
        else:
            report.video_note = "rendering skipped (--no-video)"
        summary = result.summary()
        summary["video"] = VIDEO_NAME if not report.video_note else None
        summary["video_note"] = report.video_note or None
        (tmp / "report.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        files = sorted(p.name for p in tmp.iterdir())
        (tmp / "report.md").write_text(
            _markdown(result, target.name, files, report.video_note), encoding="utf-8"
        )
        report.files = sorted(p.name for p in tmp.iterdir())
    return report


# ---------------------------------------------------------------------------------- training
def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _plot_per_seed(rows: list[dict[str, str]], metrics: list[str], title: str, path: Path) -> None:
    cols = min(3, len(metrics))
    grid_rows = math.ceil(len(metrics) / cols)
    fig, axes = _figure(grid_rows, cols, (4.2 * cols, 2.8 * grid_rows))
    seeds = sorted({row.get("seed", "") for row in rows}, key=lambda s: _number(s))
    for i, metric in enumerate(metrics):
        ax = axes[i // cols][i % cols]
        for seed in seeds:
            points = [(_number(r["step"]), _number(r.get(metric))) for r in rows if r.get("seed", "") == seed]
            points = [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]
            if points:
                xs, ys = zip(*sorted(points), strict=True)
                ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=f"seed {seed}")
        ax.set(title=metric, xlabel="update step")
        if i == 0 and len(seeds) > 1:
            ax.legend(fontsize="small")
    for i in range(len(metrics), grid_rows * cols):
        axes[i // cols][i % cols].set_visible(False)
    fig.suptitle(title)
    _save(fig, path)


def plot_learning_curves(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Write learning_curves.png (metrics.csv) and eval_curves.png (eval.csv) into `run_dir`.

    One panel per logged metric, one line per seed. Returns the files written (none for a run
    without CSV logs).
    """
    run = Path(run_dir)
    written = []
    skip = {"step", "seed"}
    for csv_name, png_name, title in (
        ("metrics.csv", "learning_curves.png", f"{run.name}: training metrics"),
        ("eval.csv", "eval_curves.png", f"{run.name}: evaluation in the task's env"),
    ):
        rows = _read_csv(run / csv_name)
        if not rows:
            continue
        metrics = [
            key
            for key in rows[0]
            if key not in skip and any(math.isfinite(_number(r.get(key))) for r in rows)
        ]
        if metrics:
            _plot_per_seed(rows, metrics, title, run / png_name)
            written.append(run / png_name)
    return written


def write_learning_curves_quietly(run_dir: str | os.PathLike[str]) -> list[Path]:
    """`plot_learning_curves` for the Trainer: a finished run must never fail because of a plot."""
    try:
        return plot_learning_curves(run_dir)
    except Exception as err:  # plots are a convenience; warn and carry on
        warnings.warn(f"learning-curve plots for {run_dir} were not written: {err}", stacklevel=2)
        return []


def _main(argv: list[str]) -> int:
    """`python -m offrl_robot.sim.report render TASK REPLAY.npz OUT.gif FRAME_EVERY` (render_video).

    TASK is anything `offrl_robot.sim.tasks.resolve_task` accepts (the gate passes its canonical
    name: an absolute path for a task file), so the child builds the very model the gate ran."""
    if len(argv) != 5 or argv[0] != "render":
        print(
            "usage: python -m offrl_robot.sim.report render TASK REPLAY.npz OUT.gif FRAME_EVERY",
            file=sys.stderr,
        )
        return 2
    _render_child(argv[1], Path(argv[2]), Path(argv[3]), int(argv[4]))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
