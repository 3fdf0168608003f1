"""`offrl-robot ingest --workers N`: bags ingested in parallel on a real local Ray give the same
dataset directory, byte for byte, as a serial ingest; Ray listens on loopback only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from bagkit import EPOCH_NS, write_arm_bag

pytest.importorskip("ray", reason="the scale extra (requirements-scale.txt) is not installed")

from offrl_robot.cli import main
from offrl_robot.data.ingest_spec import spec_from_dict
from offrl_robot.errors import BagError
from offrl_robot.scale import fleet_ingest
from offrl_robot.scale.ray_local import exposed_listeners, listening_sockets, ray_session

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "config" / "ingest" / "arm_reach.yaml"


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """One loopback-only Ray for the module (starting Ray costs seconds on a shared CPU);
    `ingest --workers` joins the running instance instead of starting its own."""
    with ray_session(num_cpus=2):
        yield


def _write_fleet(folder: Path) -> list[str]:
    """Bags that differ in every way the merge must handle: storage plugin, episode counts,
    a bag with dropped ticks (counted drops and stale topics), clocks far apart."""
    bags = []
    for i in range(5):
        path = folder / f"robot_{i}"
        write_arm_bag(
            path,
            storage="mcap" if i % 2 == 0 else "sqlite3",
            episodes=1 + i % 3,
            steps=8 + i,
            seed=i,
            start_ns=EPOCH_NS + i * 3_600 * 10**9,
            first_episode=10 * i,
            jitter_ns=3_000_000,
            skip_joint_ticks=frozenset({(10 * i, 3), (10 * i, 5)}) if i == 3 else frozenset(),
        )
        bags.append(str(path))
    return bags


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_parallel_ingest_equals_serial_byte_for_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # relative bag paths: both paths must report them the same way
    bags = [str(Path(b).relative_to(tmp_path)) for b in _write_fleet(tmp_path)]
    spec = tmp_path / "spec.yaml"
    data = yaml.safe_load(SPEC.read_text())
    data["alignment"]["max_age_s"] = 0.02  # the skipped joint ticks become stale drops
    data["reward"] = {"function": "offrl_robot.data.robot_rewards:joint_tracking_reward"}  # no MuJoCo
    spec.write_text(yaml.safe_dump(data))

    assert (
        main(["ingest", "--spec", str(spec), "--out", "fleet/arm", "--root", str(tmp_path / "serial"), *bags])
        == 0
    )
    serial_out = capsys.readouterr().out

    seen: list[tuple[list[object], list[object]]] = []
    real_get = fleet_ingest._get

    def get_and_look_at_sockets(ray: object, ref: object) -> object:
        """Pass-through that records what our process tree listens on while Ray is up."""
        seen.append((listening_sockets(), exposed_listeners()))
        return real_get(ray, ref)

    monkeypatch.setattr(fleet_ingest, "_get", get_and_look_at_sockets)
    code = main(
        [
            "ingest",
            "--spec",
            str(spec),
            "--out",
            "fleet/arm",
            "--root",
            str(tmp_path / "parallel"),
            "--workers",
            "2",
            *bags,
        ]
    )
    parallel_out = capsys.readouterr().out
    assert code == 0

    assert "dropped" in serial_out and "stale or missing at tick" in serial_out
    # the printed sync report too (only the output folder in the last line differs)
    assert parallel_out.rsplit("wrote", 1)[0] == serial_out.rsplit("wrote", 1)[0]
    serial_files = _files(tmp_path / "serial" / "fleet" / "arm-v0")
    parallel_files = _files(tmp_path / "parallel" / "fleet" / "arm-v0")
    assert "offrl_metadata.json" in serial_files and "data/main_data.hdf5" in serial_files
    assert serial_files.keys() == parallel_files.keys()
    for name, content in serial_files.items():
        assert parallel_files[name] == content, f"{name} differs between serial and parallel ingest"

    assert len(seen) == len(bags)
    listeners, exposed = seen[0]
    assert listeners, "Ray should be listening (on loopback) while the tasks run"
    assert exposed == [], f"Ray listens beyond loopback: {exposed}"


def test_bad_bag_on_a_worker_is_the_serial_one_line_error(tmp_path: Path) -> None:
    good = _write_fleet(tmp_path)[:1]
    spec = yaml.safe_load(SPEC.read_text())
    missing = str(tmp_path / "no_such_bag")
    with pytest.raises(BagError) as err:
        fleet_ingest.ingest_parallel([*good, missing], spec_from_dict(spec, "spec"), workers=2)
    message = str(err.value)
    assert "\n" not in message and missing in message and "does not exist" in message
