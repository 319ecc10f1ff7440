"""The GPU run's kit (benchmarks/gpu): its size accounting and stand-ins, and its CPU dry run.

The dry run builds a small pack (this Python's wheels from PyPI, a few training images) and runs
``benchmarks.gpu.run --cpu-dry-run`` in an environment of the device's packages only; it skips,
saying why, where the pack cannot be built (no network, no shared data).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu import dataset, limits, report, supervise, wheels
from benchmarks.gpu.placeholders import PlaceholderUsed, import_only

REPO = Path(__file__).resolve().parents[1]


def test_check_fits_refuses_a_pack_past_the_limit() -> None:
    tree = limits.TreeSize(tracked=50 * limits.MiB, untracked=limits.MiB)
    limits.check_fits(tree, 10 * limits.MiB)
    with pytest.raises(limits.PackTooLarge, match="pack refused"):
        limits.check_fits(tree, 13 * limits.MiB)
    assert limits.room_for_pack(tree) == 12 * limits.MiB


def test_stand_ins_serve_missing_packages_only_inside_the_block() -> None:
    with import_only(["json", "geoseg_absent_package"]) as served:
        import geoseg_absent_package as absent  # type: ignore[import-not-found]

        crs = absent.CRS.from_epsg(4326)  # what torchgeo evaluates at class definition
        assert (absent.CRS | None) is not None
        with pytest.raises(PlaceholderUsed, match="geoseg_absent_package"):
            bool(crs)
    assert served == ["geoseg_absent_package"]
    with pytest.raises(ModuleNotFoundError):
        import geoseg_absent_package  # noqa: F401


def _pair(source: str, group: str, name: str) -> dataset._Pair:
    return dataset._Pair(source, Path("/"), group, Path(name), Path(name), None, False)


def test_choose_lets_a_small_source_travel_whole() -> None:
    small = [(_pair("ohio", "train", f"o{i}"), [], 10) for i in range(5)]
    large = [(_pair("dubai", f"tile_{i % 2}", f"d{i}"), [], 100) for i in range(6)]
    chosen, skipped = dataset._choose(small + large, 360)
    names = [str(p.image) for p, _, _ in chosen]
    assert [n for n in names if n.startswith("o")] == [f"o{i}" for i in range(5)]
    assert sorted(n for n in names if n.startswith("d")) == ["d0", "d1", "d2"]  # groups in turn
    assert skipped == {"dubai/tile_0": 1, "dubai/tile_1": 2}


def test_site_archive_round_trip(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "pkg").mkdir(parents=True)
    (site / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    archive = tmp_path / wheels.archive_name("3.12")
    wheels.archive(site, archive, wheels.LOCAL_PRESET)
    first = wheels.archive(site, tmp_path / "again.tar.xz", wheels.LOCAL_PRESET)
    assert first == archive.stat().st_size  # same inputs, same bytes
    target = tmp_path / "unpacked"
    assert wheels.extract(archive, target)
    assert (target / "pkg" / "__init__.py").read_text() == "VALUE = 1\n"
    assert not wheels.extract(archive, target)  # a warm machine's second call skips it


def test_window_stats_and_report_of_partial_results() -> None:
    samples = [(10.0, [50.0, 10.0, 1000.0, 200.0]), (11.0, [100.0, 20.0, 2000.0, 300.0])]
    stats = supervise.window_stats(samples, 9.5, 11.5)
    assert stats is not None and stats["gpu_util_mean"] == 75.0
    assert supervise.window_stats(samples, 20, 30) is None
    text = report.markdown({"mode": "gpu", "status": "failed", "phases": {"train": {"rc": -9}}})
    assert "| train | -9 |" in text


def _shared_data_present() -> bool:
    roots = [REPO.parent / "shared" / "data" / name for name in ("dubai-aerial", "naip-ohio")]
    return all(r.is_dir() for r in roots)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cpu_dry_run_in_a_device_like_environment(tmp_path: Path) -> None:
    if not _shared_data_present():
        pytest.skip("no ../shared/data beside the checkout: the pack has no training data")
    env = {**os.environ, "PIP_DEFAULT_TIMEOUT": "15", "PIP_RETRIES": "1"}
    pack = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu.pack", "--local-only", "--train-images", "6",
         "--out", str(tmp_path / "pack")],
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip
    if pack.returncode == 3:  # pip could not fetch the wheels
        pytest.skip(f"the pack cannot be built here: {pack.stderr.strip().splitlines()[-1]}")
    assert pack.returncode == 0, pack.stdout + pack.stderr
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu.emulate", "--pack", str(tmp_path / "pack"),
         "--env", str(tmp_path / "env"), "--work", str(tmp_path / "work"), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    logs = {p.name: p.read_text()[-3000:] for p in (tmp_path / "work" / "logs").glob("*.log")}
    assert done.returncode == 0 and results["status"] == "ok", (done.stdout[-3000:], logs)
    phases = results["phases"]
    assert phases["inference"]["rows"] and phases["inference"]["onnx"]["tiles"]
    assert phases["scene"]["segment"]["tiles"] >= 1
    trained = {row["candidate"]: row for row in phases["train"]["candidates"]}
    assert set(trained) == {"lite0", "lite2"}
    assert phases["train"]["placeholders"] == ["pyproj", "kornia_rs"]
    assert all(row["held_out"]["groups"] for row in trained.values())
    returned = sorted(p.name for p in out.iterdir())
    assert returned == ["lite0.pt", "lite2.pt", "logs.tar.gz", "results.json", "results.md"]
    assert all(p.stat().st_size <= limits.RETURN_FILE_LIMIT for p in out.iterdir())
