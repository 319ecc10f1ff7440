"""Phase 1: the default model's tile loop against its bare forward passes, on the same batches.

For each precision (``fp16`` then ``bf16`` on CUDA; ``fp32`` on the CPU), tile size and batch
size, in that order of priority until the deadline:

- **tile loop**: one :func:`geoseg.segment` call on a synthetic real-pixel scene
  (``benchmarks/synthetic.py``) with the engine's own settings: autocast, channels-last, pinned
  non-blocking copies, reads on background threads ``prefetch_batches`` ahead, stitching and
  writing on another. ``loop_s`` is ``timings["tiles"]``;
- **predict**: :meth:`Predictor.predict` (copy in, every test-time view, softmax, copy out) on
  exactly the batches the loop ran, read beforehand;
- **model**: the network's forward passes alone on those batches already on the device, under
  the same autocast, timed with CUDA events (every test-time view, as the loop runs them).

``busy`` is model / loop: the share of the tile loop the GPU's kernels would fill if nothing
else cost time. Then the shipped ONNX export through onnxruntime on the same batches (the CUDA
provider where this onnxruntime has one, else recorded as falling back to the CPU).
"""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.gpu.phase_common import (
    Recorder,
    device_info,
    error_text,
    peak_mib,
    phase_parser,
    reset_peak,
)


def scene_path(work: Path, size: int, data: Path | None) -> Path:
    """The synthetic scene of ``size``² px (built once, compressed on every core)."""
    import rasterio

    from benchmarks.synthetic import build_mosaic

    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):
        return build_mosaic(work / f"mosaic_{size}.tif", size, data=data)


def tile_arrays(scene: Path, card: Any, tile: int, overlap: int) -> np.ndarray:
    """Every tile of the scene's grid, read and normalised as the loop reads them (N, C, H, W)."""
    from geoseg.engine.inference import Normaliser, read_batches
    from geoseg.engine.tiling import make_grid
    from geoseg.io.read import TileReader

    with TileReader(scene, (1, 2, 3)) as reader:
        grid = make_grid(reader.height, reader.width, tile, overlap, multiple=card.output_stride)
        normalise = Normaliser(card.mean, card.std)
        chunks = [b.inputs for b in read_batches(list(grid), reader.read, normalise, 16, 4)]
    return np.concatenate(chunks)


def model_seconds(predictor: Any, batches: Sequence[np.ndarray]) -> float:
    """Forward passes alone over ``batches`` (on the device beforehand), every test-time view."""
    import torch

    from geoseg.engine.inference import TTA_TRANSFORMS, tta_forward

    cuda = predictor.device.type == "cuda"
    layout = torch.channels_last if cuda else torch.contiguous_format
    on_device = [torch.from_numpy(b).to(predictor.device).contiguous(memory_format=layout)
                 for b in batches]  # fmt: skip
    views = TTA_TRANSFORMS[predictor.tta]
    dtype = predictor.amp_dtype

    def run_all() -> None:
        for x in on_device:
            for turns, mirror in views:
                view = tta_forward(x, turns, mirror).contiguous(memory_format=layout)
                if dtype is not None:
                    with torch.autocast(device_type=predictor.device.type, dtype=dtype):
                        predictor.module(view)
                else:
                    predictor.module(view)

    with torch.inference_mode():
        if not cuda:
            t0 = time.perf_counter()
            run_all()
            return time.perf_counter() - t0
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run_all()
        end.record()
        torch.cuda.synchronize()
        return float(start.elapsed_time(end)) / 1000


def predict_seconds(predictor: Any, batches: Sequence[np.ndarray]) -> float:
    """``Predictor.predict`` over ``batches``: copies, every view, softmax, back to numpy."""
    t0 = time.perf_counter()
    for batch in batches:
        predictor.predict(batch)
    return time.perf_counter() - t0


def loop_run(
    model: Any, scene: Path, out: Path, tile: int, batch: int, overlap: int, **inference: Any
) -> Any:
    """One ``segment`` call with the engine's settings (and ``inference`` changes)."""
    import geoseg
    from geoseg.config import RunConfig

    config = RunConfig().replace(inference={"batch_size": batch, **inference})
    shutil.rmtree(out, ignore_errors=True)
    result = geoseg.segment(
        scene, out, model=model, tile_size=tile, overlap=overlap, config=config,
        vectorize=False, preview=False, overwrite=True,
    )  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    return result


def measure(
    rec: Recorder, model: Any, scene: Path, tiles: np.ndarray, setting: dict[str, Any]
) -> dict[str, Any]:
    """One row: the tile loop, then predict and model-only on its batches."""
    from geoseg.engine.inference import Predictor

    tile, batch, overlap = setting["tile"], setting["batch"], setting["overlap"]
    extra = {k: setting[k] for k in ("precision", "read_threads") if k in setting}
    key = "/".join(f"{k}={v}" for k, v in setting.items())
    batches = [tiles[i : i + batch] for i in range(0, len(tiles), batch)]
    predictor = Predictor(model, "auto", setting["precision"])
    predictor.predict(batches[0])  # first-call set-up stays out of every number
    reset_peak()
    with rec.window(f"loop:{key}"):
        result = loop_run(model, scene, rec.path.parent / "loop_out", tile, batch, overlap, **extra)
    loop_peak = peak_mib()
    reset_peak()
    with rec.window(f"predict:{key}"):
        predict_s = predict_seconds(predictor, batches)
    with rec.window(f"model:{key}"):
        model_s = model_seconds(predictor, batches)
    t = result.timings
    mpx = result.width * result.height / 1e6
    return {
        **setting,
        "key": key,
        "device": predictor.description,
        "tta": predictor.tta,
        "tiles": len(tiles),
        "tiles_loop": result.tiles_total,
        "scene_mpx": round(mpx, 2),
        "loop_s": round(t["tiles"], 3),
        "loop_forward_s": round(t.get("inference", float("nan")), 3),
        "stitch_write_s": round(t.get("stitch_write", float("nan")), 3),
        "cog_s": round(t.get("cog", float("nan")), 3),
        "segment_total_s": round(t["total"], 3),
        "predict_s": round(predict_s, 3),
        "model_s": round(model_s, 3),
        "ratio_loop_model": round(t["tiles"] / model_s, 3),
        "busy": round(model_s / t["tiles"], 3),
        "loop_mpx_s": round(mpx / t["tiles"], 2),
        "model_mpx_s": round(mpx / model_s, 2),
        "peak_gpu_mib_loop": loop_peak,
        "peak_gpu_mib_model": peak_mib(),
    }


def onnx_rows(
    rec: Recorder, torch_model: Any, tiles: np.ndarray, batch: int, seconds: float
) -> None:
    """The shipped ONNX export through onnxruntime on the first batches, against torch."""
    import onnxruntime

    from geoseg.engine.inference import Predictor
    from geoseg.model import default_onnx_path, load_model

    info: dict[str, Any] = {"available_providers": onnxruntime.get_available_providers(),
                            "onnxruntime": onnxruntime.__version__}  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        onnx_model = load_model(default_onnx_path())
        predictor = Predictor(onnx_model, "auto")
        predictor.predict(tiles[:batch])
    sessions = getattr(predictor.module, "_sessions", {})
    info["session_providers"] = [s.get_providers() for s in sessions.values()]
    info["warnings"] = [str(w.message) for w in caught]
    info["cuda_provider_used"] = any(
        "CUDAExecutionProvider" in p for p in info["session_providers"]
    )
    torch_predictor = Predictor(torch_model, "auto")
    done, onnx_s, torch_s, same, pixels = 0, 0.0, 0.0, 0, 0
    with rec.window("onnx"):
        start = time.time()
        for i in range(0, len(tiles), batch):
            if time.time() - start > seconds:
                break
            chunk = tiles[i : i + batch]
            t0 = time.perf_counter()
            a = predictor.predict(chunk)
            t1 = time.perf_counter()
            b = torch_predictor.predict(chunk)
            onnx_s, torch_s = onnx_s + t1 - t0, torch_s + time.perf_counter() - t1
            same += int(np.count_nonzero(a.argmax(1) == b.argmax(1)))
            pixels += a.shape[0] * a.shape[2] * a.shape[3]
            done += len(chunk)
    mpx = done * tiles.shape[2] * tiles.shape[3] / 1e6
    info.update(tiles=done, batch=batch, onnx_s=round(onnx_s, 3), torch_s=round(torch_s, 3),
                onnx_tile_mpx_s=round(mpx / max(onnx_s, 1e-9), 2),
                torch_tile_mpx_s=round(mpx / max(torch_s, 1e-9), 2),
                class_agreement=round(same / max(pixels, 1), 6))  # fmt: skip
    rec.set("onnx", info)


def plan(args: Any, cuda: bool) -> list[dict[str, Any]]:
    """The settings to measure, most wanted first."""
    precisions = args.precisions or (["fp16", "bf16"] if cuda else ["fp32"])
    rows = []
    for position, precision in enumerate(precisions):
        for tile, batches in ((512, args.batches_512), (1024, args.batches_1024)):
            # the first precision over every batch size, the others at the middle one
            for batch in batches if position == 0 else batches[len(batches) // 2 :][:1]:
                rows.append({"precision": precision, "tile": tile, "batch": batch,
                             "overlap": args.overlap})  # fmt: skip
    if args.read_threads:
        rows.append({"precision": precisions[0], "tile": 512, "batch": args.batches_512[-1],
                     "overlap": args.overlap, "read_threads": args.read_threads})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = phase_parser(__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=6144, help="scene edge, px")
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batches-512", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--batches-1024", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--read-threads", type=int, default=8,
                        help="one extra row with this many read threads (0: none)")  # fmt: skip
    parser.add_argument("--onnx-seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    if args.dry_run:
        args.size, args.batches_512, args.batches_1024, args.read_threads = 768, [2], [], 0
        args.onnx_seconds = 3.0
    rec = Recorder(args.json, args.deadline)
    import torch

    from geoseg.model import load_model

    rec.set("device", device_info())
    model = load_model(None)
    rec.set("model", {"name": model.card.name, "encoder": model.card.encoder,
                      "tta": model.card.tta, "tile_size": model.card.tile_size})  # fmt: skip
    with rec.window("build_scene"):
        scene = scene_path(args.work, args.size, args.data)
    rec.set("scene", {"size": args.size, "path": str(scene), "bytes": scene.stat().st_size})
    tiles_by_size: dict[int, np.ndarray] = {}
    last_cost = 10.0
    for setting in plan(args, torch.cuda.is_available()):
        label = "/".join(f"{k}={v}" for k, v in setting.items())
        if rec.left() < 1.5 * last_cost + args.onnx_seconds:
            rec.skip(label, "deadline")
            continue
        t0 = time.time()
        try:
            if setting["tile"] not in tiles_by_size:
                tiles_by_size.clear()  # one tile size's arrays in memory at a time
                tiles_by_size[setting["tile"]] = tile_arrays(
                    scene, model.card, setting["tile"], args.overlap
                )
            rec.append("rows", measure(rec, model, scene, tiles_by_size[setting["tile"]], setting))
        except Exception as exc:  # noqa: BLE001 - recorded; the next setting may work
            rec.append("errors", {"what": label, "error": error_text(exc)})
        last_cost = time.time() - t0
    if rec.left() > args.onnx_seconds:
        try:
            tiles = tiles_by_size.get(512)
            if tiles is None:
                tiles = tile_arrays(scene, model.card, 512, args.overlap)
            onnx_rows(rec, model, tiles, args.batches_512[0], args.onnx_seconds)
        except Exception as exc:  # noqa: BLE001
            rec.append("errors", {"what": "onnx", "error": error_text(exc)})
    else:
        rec.skip("onnx", "deadline")
    rec.set("done", True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
