"""Interrupted runs: the journal, resumable writers, and kill/Ctrl-C then ``--resume``."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import geoseg
from geoseg.cli import main
from geoseg.engine.journal import (
    JOURNAL_NAME,
    JournalState,
    PartialRun,
    differences,
    interrupts_deferred,
    partial_dir,
)
from geoseg.engine.stitch import Stitcher
from geoseg.engine.tiling import make_grid
from geoseg.errors import OutputError, ResumeError
from geoseg.io.write import RasterWriter
from tests.conftest import (
    conv_model,
    small_smp_checkpoint,
    smooth_field,
    torch_threads,
    write_raster,
)

CLI = [sys.executable, "-c", "from geoseg.cli import main; main()"]


@pytest.fixture
def one_thread():
    """Runs compared pixel for pixel use one torch thread, as the subprocesses here do."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def resume_case(tmp_path_factory):
    """A tall scene, a small smp checkpoint and a config with 16-row output blocks.

    Small blocks mean a checkpoint every 16 rows, so a kill lands between checkpoints.
    """
    root = tmp_path_factory.mktemp("resume")
    scene = write_raster(root / "tall.tif", smooth_field(3, 2400, 160, "uint8", 3), tiled=True)
    checkpoint = small_smp_checkpoint(root / "tiny.pt", tile_size=64)
    config = root / "blocks16.yaml"
    config.write_text("output:\n  block_size: 16\n")
    args = ["-m", checkpoint, "--tile-size", "64", "--overlap", "16", "--batch-size", "3",
            "--config", config, "--no-vector", "--no-preview"]  # fmt: skip
    return scene, [str(a) for a in args]


@pytest.fixture(scope="module")
def reference(resume_case, tmp_path_factory):
    """classes.tif and confidence.tif of an uninterrupted run (one torch thread)."""

    scene, args = resume_case
    out = tmp_path_factory.mktemp("reference") / "out"
    with torch_threads(1):
        result = CliRunner().invoke(main, ["run", str(scene), "-o", str(out), "-q", *args])
    assert result.exit_code == 0, result.output
    return {name: read(out / f"{name}.tif") for name in ("classes", "confidence")}


def read(path):
    with rasterio.open(path) as ds:
        return ds.read()


def start_and_stop(scene, out, args, sig, min_rows):
    """Start ``geoseg run`` in a subprocess and send ``sig`` once ``min_rows`` rows are durable."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [*CLI, "run", str(scene), "-o", str(out), "-q", *args]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    journal = partial_dir(out) / JOURNAL_NAME
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        state = JournalState.read(journal)
        if state is not None and state.rows_done >= min_rows:
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=240)
    assert not out.exists(), "the run finished before it could be stopped; make the scene taller"
    return proc.returncode, err


def test_sigkill_then_resume_is_identical(resume_case, reference, tmp_path, one_thread):
    scene, args = resume_case
    out = tmp_path / "out"
    code, _ = start_and_stop(scene, out, args, signal.SIGKILL, min_rows=320)
    assert code == -signal.SIGKILL
    state = JournalState.read(partial_dir(out) / JOURNAL_NAME)
    assert state is not None and 320 <= state.rows_done < 2400

    result = CliRunner().invoke(main, ["run", str(scene), "-o", str(out), *args, "--resume"])
    assert result.exit_code == 0, result.output
    assert f"output rows 0..{state.rows_done} are done" in result.output
    assert not partial_dir(out).exists()
    names = {p.name for p in out.iterdir()}
    assert {"classes.tif", "confidence.tif", "run.json"} <= names
    assert not {".lock", JOURNAL_NAME, "classes.stream.tif", "confidence.stream.tif"} & names
    for name, expected in reference.items():
        np.testing.assert_array_equal(read(out / f"{name}.tif"), expected, err_msg=name)


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(resume_case, reference, tmp_path, one_thread):
    scene, args = resume_case
    out = tmp_path / "out"
    code, err = start_and_stop(scene, out, args, signal.SIGINT, min_rows=160)
    assert code == 130
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert message.startswith("geoseg: interrupted; resume with: geoseg run ")
    assert message.endswith(" --resume")
    # nothing half-renamed: no output folder, the partial folder holds only stream files
    assert not out.exists()
    left = {p.name for p in partial_dir(out).iterdir()}
    assert {"classes.stream.tif", "confidence.stream.tif", JOURNAL_NAME} <= left
    assert not {"classes.tif", "confidence.tif", "run.json"} & left
    state = JournalState.read(partial_dir(out) / JOURNAL_NAME)
    assert state is not None and state.rows_done >= 160

    command = shlex.split(message.split("resume with: ", 1)[1])
    assert command[0] == "geoseg"
    result = CliRunner().invoke(main, command[1:])
    assert result.exit_code == 0, result.output
    for name, expected in reference.items():
        np.testing.assert_array_equal(read(out / f"{name}.tif"), expected, err_msg=name)


def test_resume_with_other_settings_is_refused(resume_case, tmp_path):
    scene, args = resume_case
    out = tmp_path / "out"
    code, _ = start_and_stop(scene, out, args, signal.SIGKILL, min_rows=16)
    assert code == -signal.SIGKILL
    changed = [a if a != "3" else "4" for a in args]  # --batch-size 3 -> 4
    result = CliRunner().invoke(main, ["run", str(scene), "-o", str(out), *changed, "--resume"])
    assert result.exit_code == 1
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("geoseg: error: cannot resume ")
    assert "settings.batch_size: 3 -> 4" in message and "without --resume" in message
    assert partial_dir(out).is_dir(), "a refused resume keeps the interrupted run"


# --- in-process interruptions (fast): the model raises KeyboardInterrupt on its n-th batch


def interrupt_after(model, calls):
    """Make ``model`` raise KeyboardInterrupt on forward pass ``calls`` (weights unchanged)."""
    module = model.module
    original = type(module).forward
    count = [0]

    def forward(x):
        count[0] += 1
        if count[0] == calls:
            raise KeyboardInterrupt
        return original(module, x)

    module.forward = forward
    return lambda: module.__dict__.pop("forward", None)


def segment(scene, out, model, **kw):
    kw = {"tile_size": 32, "overlap": 8, "batch_size": 2, "vectorize": False, "preview": False,
          "config": geoseg.RunConfig().replace(output={"block_size": 16}), **kw}  # fmt: skip
    return geoseg.segment(scene, out, model=model, **kw)


@pytest.mark.parametrize("probabilities", [False, True])
def test_interrupted_in_process_then_resumed(make_raster, tmp_path, probabilities, one_thread):
    scene = make_raster(height=300, width=70, seed=5)
    model = conv_model(3, 4)
    expected = segment(scene, tmp_path / "ref", model, probabilities=probabilities)
    out = tmp_path / "out"
    restore = interrupt_after(model, 12)
    with pytest.raises(KeyboardInterrupt):
        segment(scene, out, model, probabilities=probabilities)
    restore()
    assert not out.exists()
    rows = JournalState.read(partial_dir(out) / JOURNAL_NAME).rows_done
    assert 0 < rows < 300 and rows % 16 == 0
    logs = []
    result = segment(scene, out, model, probabilities=probabilities, resume=True, log=logs.append)
    assert any(f"output rows 0..{rows} are done" in line for line in logs)
    names = ["classes", "confidence"] + (["probabilities"] if probabilities else [])
    for name in names:
        np.testing.assert_array_equal(
            read(out / f"{name}.tif"), read(expected.out_dir / f"{name}.tif"), err_msg=name
        )
    assert result.tiles_total == expected.tiles_total


@pytest.mark.parametrize("stage", ["second-cog", "preview"])
def test_interrupted_after_inference_resumes_without_it(
    make_raster, tmp_path, monkeypatch, one_thread, stage
):
    """Ctrl-C while the COGs are copied (one done, one not) or the preview is drawn."""
    import geoseg.io.write

    scene = make_raster(height=150, width=50, seed=6)  # 150 rows: a partial last block row
    model = conv_model(3, 4)
    expected = segment(scene, tmp_path / "ref", model, preview=True)
    out = tmp_path / "out"
    close, calls = RasterWriter.close, []

    def close_once(self):
        calls.append(self.path.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return close(self)

    def no_preview(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        if stage == "second-cog":
            patch.setattr(RasterWriter, "close", close_once)
        else:
            patch.setattr(geoseg.io.write, "write_preview", no_preview)
        with pytest.raises(KeyboardInterrupt):
            segment(scene, out, model, preview=True)
    assert not out.exists()
    assert JournalState.read(partial_dir(out) / JOURNAL_NAME).rows_done == 150
    restore = interrupt_after(model, 1)  # any forward pass now would be a failure
    try:
        result = segment(scene, out, model, preview=True, resume=True)
    finally:
        restore()
    assert result.device.startswith("none")
    for name in ("classes", "confidence"):
        np.testing.assert_array_equal(
            read(out / f"{name}.tif"), read(expected.out_dir / f"{name}.tif"), err_msg=name
        )
    assert (out / "preview.png").exists()


def test_without_resume_a_stale_partial_run_is_replaced(make_raster, tmp_path, one_thread):
    scene = make_raster(height=200, width=60, seed=7)
    model = conv_model(3, 4)
    out = tmp_path / "out"
    restore = interrupt_after(model, 5)
    with pytest.raises(KeyboardInterrupt):
        segment(scene, out, model)
    restore()
    assert partial_dir(out).is_dir()
    logs = []
    result = segment(scene, out, model, log=logs.append)
    assert any("replacing the interrupted run" in line for line in logs)
    assert not partial_dir(out).exists()
    expected = segment(scene, tmp_path / "ref", model)
    np.testing.assert_array_equal(read(result.classes_path), read(expected.classes_path))


def test_resume_reuses_the_recorded_stretch(make_raster, tmp_path, monkeypatch, one_thread):
    """A uint16 scene for a uint8 model: the resumed run maps its values with the journal's LO/HI.

    It does not sample the scene again; another --scale is a changed setting, refused.
    """
    import geoseg.io.sample

    scene = make_raster(height=300, width=70, dtype="uint16", seed=9)
    model = conv_model(3, 4)
    expected = segment(scene, tmp_path / "ref", model)
    out = tmp_path / "out"
    restore = interrupt_after(model, 12)
    with pytest.raises(KeyboardInterrupt):
        segment(scene, out, model)
    restore()
    with pytest.raises(ResumeError, match=r"settings\.scale: auto -> 0\.0,9000\.0;"):
        segment(scene, out, model, resume=True, scale="0,9000")

    def sampled_again(*args, **kwargs):
        raise AssertionError("the resumed run computed the stretch again")

    monkeypatch.setattr(geoseg.io.sample, "scene_stretch", sampled_again)
    result = segment(scene, out, model, resume=True)
    for name in ("classes", "confidence"):
        np.testing.assert_array_equal(
            read(out / f"{name}.tif"), read(expected.out_dir / f"{name}.tif"), err_msg=name
        )
    recorded = [json.loads((r.out_dir / "run.json").read_text())["settings"]["stretch"]
                for r in (expected, result)]  # fmt: skip
    assert recorded[0] == recorded[1] and recorded[0]["rule"] == "matched"


def test_resume_with_nothing_to_resume_starts_afresh(make_raster, tmp_path):
    scene = make_raster(height=40, width=40)
    logs = []
    result = segment(scene, tmp_path / "out", conv_model(3, 4), resume=True, log=logs.append)
    assert result.classes_path.exists()
    assert any("no interrupted run to resume" in line for line in logs)


def test_resume_with_another_model_is_refused(make_raster, tmp_path):
    scene = make_raster(height=200, width=60, seed=8)
    model = conv_model(3, 4, seed=0)
    restore = interrupt_after(model, 5)
    with pytest.raises(KeyboardInterrupt):
        segment(scene, tmp_path / "out", model)
    restore()
    with pytest.raises(ResumeError, match=r"model\.sha256"):
        segment(scene, tmp_path / "out", conv_model(3, 4, seed=1), resume=True)


def test_cli_resume_skips_scenes_completed_before(make_raster, tmp_path, one_thread):
    first = make_raster(height=40, width=40, seed=1, name="a.tif")
    second = make_raster(height=40, width=40, seed=2, name="b.tif")
    out = tmp_path / "out"
    out.mkdir()
    common = ["-m", str(small_smp_checkpoint(tmp_path / "m.pt")), "--no-vector", "--no-preview"]
    done = CliRunner().invoke(main, ["run", str(first), "-o", str(out / "a_geoseg"), *common])
    assert done.exit_code == 0, done.output
    both = ["run", str(first), str(second), "-o", str(out), *common, "--resume"]
    result = CliRunner().invoke(main, both)
    assert result.exit_code == 0, result.output
    assert "a_geoseg was completed before; skipping it" in result.output
    assert (out / "b_geoseg" / "classes.tif").exists()


# --- the parts: stitcher restart, resumable writer, journal


@given(
    height=st.integers(1, 400),
    tile=st.sampled_from([16, 32, 48, 64]),
    frac=st.floats(0, 0.5),
    done_frac=st.floats(0, 1),
)
@settings(max_examples=150, deadline=None)
def test_restart_at_band_of_first_unwritten_row_is_bit_identical(height, tile, frac, done_frac):
    """Restarting one halo row above the band holding row ``d`` reproduces rows ``d..`` exactly."""
    overlap = int(tile * frac)
    grid = make_grid(height, 23, tile, overlap)
    rng = np.random.default_rng(height * 1000 + tile)
    probs = {t.index: rng.random((3, *t.read_window.shape)).astype(np.float32) for t in grid}

    def stitched(first_row, rows_done):
        stitcher = Stitcher(grid, 3, first_row=first_row)
        out = []
        for tile_ in grid:
            if tile_.row < stitcher.halo_row:
                continue
            valid = np.ones(tile_.read_window.shape, bool)
            for band in stitcher.add(tile_, probs[tile_.index], valid):
                if band.row_off + band.height <= rows_done:
                    continue
                if band.row_off < rows_done:
                    band = band.rows_from(rows_done)
                out.append((band.row_off, band.classes, band.confidence))
        return out

    done = int(done_frac * (height - 1))
    full = stitched(0, 0)
    full_rows = np.concatenate([c for _, c, _ in full])[done:]
    full_conf = np.concatenate([c for _, _, c in full])[done:]
    resumed = stitched(grid.rows.band_of(done), done)
    assert resumed[0][0] == done
    np.testing.assert_array_equal(np.concatenate([c for _, c, _ in resumed]), full_rows)
    np.testing.assert_array_equal(np.concatenate([c for _, _, c in resumed]), full_conf)


def writer(path, **kw):
    from rasterio.transform import from_origin

    return RasterWriter(
        path, width=40, height=100, count=2, crs="EPSG:32633", block=16, nodata=255,
        transform=from_origin(0, 0, 1, 1), **kw,
    )  # fmt: skip


def test_writer_checkpoint_then_resume_keeps_rows(tmp_path):
    data = np.random.default_rng(0).integers(0, 250, (2, 100, 40), dtype=np.uint8)
    first = writer(tmp_path / "a.tif")
    for row in range(0, 60, 10):
        first.write(row, data[:, row : row + 10])
        if first.rows_flushed:
            first.checkpoint()
    assert first.rows_flushed == 48  # three whole 16-row block rows; 12 rows still queued
    first.suspend()
    second = writer(tmp_path / "a.tif", resume_rows=48)
    second.write(48, data[:, 48:])
    path = second.close()
    np.testing.assert_array_equal(read(path), data)
    assert not (tmp_path / "a.stream.tif").exists()
    # a writer resumed after the copy has nothing left to do
    assert writer(tmp_path / "a.tif", resume_rows=100).close() == path


def test_writer_resume_refuses_a_damaged_partial_file(tmp_path):
    w = writer(tmp_path / "a.tif")
    w.write(0, np.zeros((2, 32, 40), np.uint8))
    w.suspend()
    stream = tmp_path / "a.stream.tif"
    stream.write_bytes(stream.read_bytes()[:200])
    with pytest.raises(ResumeError, match="without --resume"):
        writer(tmp_path / "a.tif", resume_rows=32)
    stream.unlink()
    with pytest.raises(ResumeError, match="missing or damaged"):
        writer(tmp_path / "a.tif", resume_rows=32)


FINGERPRINT = {"scene": {"size": [10, 10]}, "model": {"sha256": "ab" * 32}, "settings": {"k": 1}}


def test_journal_records_rows_and_ignores_a_torn_last_line(tmp_path):
    run = PartialRun.open(tmp_path / "out", FINGERPRINT, resume=False)
    run._append({"event": "rows", "until": 32})
    with open(run.journal_path, "a") as f:
        f.write('{"event": "rows", "un')  # killed in the middle of an append
    state = JournalState.read(run.journal_path)
    assert state is not None and state.rows_done == 32
    run.keep()
    again = PartialRun.open(tmp_path / "out", FINGERPRINT, resume=True)
    assert again.rows_done == 32
    again.discard()
    assert not run.path.exists()


def test_journal_that_is_not_one_starts_over(tmp_path):
    path = partial_dir(tmp_path / "out")
    path.mkdir()
    (path / JOURNAL_NAME).write_text("garbage\nmore garbage\n")
    logs = []
    run = PartialRun.open(tmp_path / "out", FINGERPRINT, resume=True, log=logs.append)
    assert run.rows_done == 0 and "no usable journal" in logs[0]
    assert json.loads(run.journal_path.read_text().splitlines()[0])["event"] == "start"


def test_differences_name_the_changed_keys():
    other = {**FINGERPRINT, "settings": {"k": 2}, "model": {"sha256": "cd" * 32}}
    assert differences(FINGERPRINT, other) == [
        "model.sha256: abababababab -> cdcdcdcdcdcd",
        "settings.k: 1 -> 2",
    ]


def test_a_running_run_locks_its_output_folder(tmp_path):
    run = PartialRun.open(tmp_path / "out", FINGERPRINT, resume=False)
    with pytest.raises(OutputError, match="another geoseg run is writing"):
        PartialRun.open(tmp_path / "out", FINGERPRINT, resume=True)
    run.finish(overwrite=False)
    assert (tmp_path / "out").is_dir() and not run.path.exists()
    assert list((tmp_path / "out").iterdir()) == []  # journal and lock are not outputs


def test_ctrl_c_waits_until_the_final_rename_is_done(tmp_path):
    marker = tmp_path / "renamed"
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            marker.mkdir()  # still runs: the interrupt waits for the block to end
    assert marker.is_dir()
