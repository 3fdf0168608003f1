"""Minari storage (real minari + h5py on disk): exact round trip, foreign datasets, errors, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
import pytest

from offrl_robot.data import minari_io
from offrl_robot.data.collect import collect
from offrl_robot.data.dataset import ARRAY_FIELDS, Dataset
from offrl_robot.data.minari_io import dataset_id_from_name, list_local, load_dataset, save_dataset
from offrl_robot.errors import DatasetError


@pytest.fixture(scope="module")
def arm_dataset() -> Dataset:
    return collect("ArmReach-v0", "scripted-expert", episodes=3, seed=0, noise=0.05).dataset


def assert_same(a: Dataset, b: Dataset) -> None:
    for name in ARRAY_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert a.metadata == b.metadata
    assert a.sha256() == b.sha256()


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_round_trip_is_exact_and_minari_reads_it(arm_dataset: Dataset, minari_root: Path) -> None:
    path = save_dataset(arm_dataset, "arm_reach/expert")
    assert path == minari_root / "arm_reach" / "expert-v0"
    loaded = load_dataset("arm_reach/expert")
    assert_same(arm_dataset, loaded)
    assert load_dataset(path).sha256() == arm_dataset.sha256()  # by folder path too
    # Minari's own reader sees a normal dataset with the same episodes
    theirs = minari.load_dataset("arm_reach/expert-v0")
    assert theirs.total_episodes == 3 and theirs.total_steps == len(arm_dataset)
    episode = next(theirs.iterate_episodes([1]))
    start, stop = arm_dataset.episode_bounds()[1]
    np.testing.assert_array_equal(episode.observations[:-1], arm_dataset.observations[start:stop])
    np.testing.assert_array_equal(episode.actions, arm_dataset.actions[start:stop])
    assert "arm_reach/expert-v0" in minari.list_local_datasets() and list_local() == ["arm_reach/expert-v0"]


def test_round_trip_keeps_broken_observation_chains(arm_dataset: Dataset) -> None:
    """Ingestion can drop a stale tick inside an episode: next_obs[i] != obs[i+1] must survive."""
    keep = np.ones(len(arm_dataset), dtype=bool)
    keep[[10, 11, 200]] = False
    arrays = {name: getattr(arm_dataset, name)[keep] for name in ARRAY_FIELDS}
    gappy = Dataset(**arrays, metadata=arm_dataset.metadata)
    assert gappy.num_episodes == 3
    save_dataset(gappy, "arm_reach/gappy-v2")
    loaded = load_dataset("arm_reach/gappy")  # unversioned -> newest local version
    assert_same(gappy, loaded)
    assert minari.load_dataset("arm_reach/gappy-v2").total_episodes == 5  # split where the chain breaks


def test_existing_dataset_needs_overwrite(arm_dataset: Dataset) -> None:
    save_dataset(arm_dataset, "dup")
    with pytest.raises(DatasetError, match="already exists"):
        save_dataset(arm_dataset, "dup-v0")
    arrays = {name: getattr(arm_dataset, name)[:150] for name in ARRAY_FIELDS}
    smaller = Dataset(**arrays, metadata=arm_dataset.metadata)
    save_dataset(smaller, "dup", overwrite=True)
    assert len(load_dataset("dup")) == 150


def test_missing_dataset_is_one_line_naming_it(minari_root: Path) -> None:
    with pytest.raises(DatasetError) as err:
        load_dataset("arm_reach/nothing-v0")
    message = str(err.value)
    assert "\n" not in message and "arm_reach/nothing-v0" in message and "--list" in message
    assert str(minari_root) in message
    with pytest.raises(DatasetError, match="not a Minari dataset folder"):
        load_dataset(minari_root)


def test_bad_names_are_rejected() -> None:
    assert dataset_id_from_name("ab/c") == "ab/c-v0" and dataset_id_from_name("ab/c-v3") == "ab/c-v3"
    for bad in ("", "../escape", "a b", "a//b/../c", "my.data", "ns.x/data-v0", "a/b"):
        with pytest.raises(DatasetError, match="is not valid"):
            dataset_id_from_name(bad)
    # every name we accept is one Minari accepts (a '.' was ours-valid and Minari-"Malformed")
    from minari.dataset.minari_dataset import parse_dataset_id

    for good in ("ab/c", "arm_reach/expert-v3", "a-b", "A_1/x-y_z"):
        parse_dataset_id(dataset_id_from_name(good))


def test_nothing_left_behind_on_failure(
    arm_dataset: Dataset, minari_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = Dataset(**{n: getattr(arm_dataset, n).copy() for n in ARRAY_FIELDS}, metadata=arm_dataset.metadata)
    bad.rewards[5] = np.nan
    with pytest.raises(DatasetError, match=r"rewards.*row 5"):
        save_dataset(bad, "arm_reach/bad")
    assert files_under(minari_root) == []

    # a crash after Minari has written its files (during our final step) leaves nothing either
    def crash(*_args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(minari_io, "_copy_namespace_metadata", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_dataset(arm_dataset, "arm_reach/crash")
    assert files_under(minari_root) == []
    assert not any(p.name.startswith(".") for p in minari_root.rglob("*"))
    with pytest.raises(DatasetError):
        load_dataset("arm_reach/crash")


def test_tampered_dataset_is_detected(arm_dataset: Dataset) -> None:
    path = save_dataset(arm_dataset, "tamper")
    sidecar = path / minari_io.METADATA_FILE
    content = json.loads(sidecar.read_text())
    content["metadata"]["control_rate_hz"] = 10.0
    sidecar.write_text(json.dumps(content))
    with pytest.raises(DatasetError, match="sha256"):
        load_dataset("tamper")


def record_with_data_collector(env_id: str, dataset_id: str, episodes: int) -> minari.MinariDataset:
    """Record with Minari's own DataCollector (it needs jax, a test-only dependency here)."""
    from minari import DataCollector

    env = DataCollector(gym.make(env_id))
    env.action_space.seed(0)
    for episode in range(episodes):
        env.reset(seed=episode)
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            done = terminated or truncated
    return env.create_dataset(
        dataset_id,
        eval_env=env_id,
        algorithm_name="random",
        author="test",
        author_email="t@e.invalid",
        code_permalink="https://example.invalid",
        description="DataCollector dataset",
    )


def test_dataset_written_by_minari_data_collector_loads() -> None:
    theirs = record_with_data_collector("Reacher-v5", "foreign/reacher/random-v0", episodes=3)
    ours = load_dataset("foreign/reacher/random-v0")
    assert ours.num_episodes == 3 and len(ours) == theirs.total_steps == 150
    assert ours.metadata.task == "Reacher-v5" and ours.metadata.control_rate_hz == pytest.approx(50.0)
    assert ours.metadata.action_low == [-1.0, -1.0] and ours.metadata.action_high == [1.0, 1.0]
    assert ours.metadata.source["kind"] == "minari"
    assert ours.metadata.source["dataset_id"] == "foreign/reacher/random-v0"
    for (start, stop), episode in zip(ours.episode_bounds(), theirs.iterate_episodes(), strict=True):
        np.testing.assert_array_equal(
            ours.observations[start:stop], episode.observations[:-1].astype(np.float32)
        )
        np.testing.assert_array_equal(
            ours.next_observations[stop - 1], episode.observations[-1].astype(np.float32)
        )
        np.testing.assert_array_equal(ours.actions[start:stop], episode.actions.astype(np.float32))
        np.testing.assert_array_equal(ours.rewards[start:stop], episode.rewards.astype(np.float32))
        assert ours.timeouts[stop - 1] and not ours.terminals.any()
    # ... and it can be re-saved as ours and round-trips exactly
    save_dataset(ours, "foreign/reacher/resaved")
    assert_same(ours, load_dataset("foreign/reacher/resaved"))


def test_foreign_dataset_of_an_unknown_env_needs_or_derives_a_rate() -> None:
    record_with_data_collector("Pendulum-v1", "foreign/pendulum-v0", episodes=1)
    ours = load_dataset("foreign/pendulum-v0")  # rate from the registered env's dt (0.05 s)
    assert ours.metadata.task is None and ours.metadata.control_rate_hz == pytest.approx(20.0)
    assert ours.metadata.observation_names == ["obs_0", "obs_1", "obs_2"]
    assert load_dataset("foreign/pendulum-v0", control_rate_hz=7.0).metadata.control_rate_hz == 7.0


def test_foreign_dict_observation_dataset_is_flattened_with_names() -> None:
    from minari.data_collector import EpisodeBuffer

    obs_space = gym.spaces.Dict(
        {"achieved": gym.spaces.Box(-1, 1, (2,), np.float32), "goal": gym.spaces.Box(-1, 1, (3,), np.float32)}
    )
    act_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)  # unbounded: bounds come from the data
    rng = np.random.default_rng(0)
    steps = 6
    buffer = EpisodeBuffer(
        id=0,
        observations={
            "achieved": rng.uniform(-1, 1, (steps + 1, 2)).astype(np.float32),
            "goal": rng.uniform(-1, 1, (steps + 1, 3)).astype(np.float32),
        },
        actions=rng.normal(size=(steps, 2)).astype(np.float32),
        rewards=list(rng.normal(size=steps)),
        terminations=[False] * (steps - 1) + [True],
        truncations=[False] * steps,
    )
    with pytest.warns(UserWarning):
        minari.create_dataset_from_buffers(
            "foreign/dict-v0", [buffer], observation_space=obs_space, action_space=act_space
        )
    ours = load_dataset("foreign/dict-v0", control_rate_hz=10.0)
    assert ours.metadata.observation_names == ["achieved.0", "achieved.1", "goal.0", "goal.1", "goal.2"]
    np.testing.assert_array_equal(ours.observations[:, 2:], buffer.observations["goal"][:-1])
    assert ours.terminals[-1] and ours.metadata.extra == {"action_bounds_from_data": True}
    np.testing.assert_allclose(ours.metadata.action_low, buffer.actions.min(axis=0))
    with pytest.raises(DatasetError, match="control rate unknown"):
        load_dataset("foreign/dict-v0")
