"""onnxruntime versus PyTorch eager on the CPU: the default model on the same tiles, interleaved.

The shipped default model is exported with ``geoseg.export_onnx`` and both run through geoseg's
own :class:`~geoseg.engine.inference.Predictor` (softmax probabilities, as in ``geoseg run``) on
exactly the same batches of a synthetic but real-pixel scene (``synthetic.py``: a mosaic of the real
Dubai aerial photographs, 0.5 m): tile 512, overlap 64, batch 8. Each batch is read and normalised
once (not timed), then run by both engines, the order alternating from batch to batch, so that
background load on a shared machine hits both alike; the ratio is the robust number.

What the numbers mean:

- ``forward``: the sum over the batches of ``Predictor.predict`` (forward pass, softmax, copy to
  numpy) -- the part of the tile loop that differs between the engines. Reading, normalising and
  stitching cost the same for both and are left out. ``Mpx/s`` is scene megapixels divided by it.
- ``agreement``: the share of tile pixels whose most probable class is the same in both, and
  the largest difference of any class probability.
- ``--pipeline`` also times whole ``segment`` tile loops (``timings["tiles"]``) with each model,
  torch then onnxruntime.

Thread settings: torch ``set_num_threads(--threads)`` (default: torch's own, one per core) and
onnxruntime ``intra_op_num_threads`` equal to it, ``inter_op_num_threads`` 1 (what geoseg's
:class:`~geoseg.model.onnx_module.OnnxModule` sets).

    python benchmarks/onnx_cpu.py                  # 4096² scene
    python benchmarks/onnx_cpu.py --size 2048      # a quicker run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from synthetic import build_mosaic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def interleaved(
    models: dict[str, Any], scene: Path, tile: int, overlap: int, batch: int
) -> dict[str, Any]:
    """Run every batch of the scene's grid through each model in turn; times and agreement."""
    from geoseg.engine.inference import Normaliser, Predictor, read_batches
    from geoseg.engine.tiling import make_grid
    from geoseg.io.read import TileReader

    card = models["torch"].card
    predictors = {name: Predictor(model, "cpu") for name, model in models.items()}
    for predictor in predictors.values():  # first-call allocation and session set-up
        predictor.predict(np.zeros((batch, card.in_channels, tile, tile), np.float32))
    seconds = dict.fromkeys(models, 0.0)
    same = pixels = 0
    max_diff = 0.0
    with TileReader(scene, (1, 2, 3)) as reader:
        grid = make_grid(reader.height, reader.width, tile, overlap, multiple=card.output_stride)
        normalise = Normaliser(card.mean, card.std)
        batches = read_batches(list(grid), reader.read, normalise, batch)
        for index, item in enumerate(batches):
            if not item.run:
                continue
            order = list(models) if index % 2 == 0 else list(models)[::-1]
            probs = {}
            for name in order:
                t0 = time.perf_counter()
                probs[name] = predictors[name].predict(item.inputs)
                seconds[name] += time.perf_counter() - t0
            a, b = probs["torch"], probs["onnxruntime"]
            same += int(np.count_nonzero(a.argmax(1) == b.argmax(1)))
            pixels += a.shape[0] * a.shape[2] * a.shape[3]
            max_diff = max(max_diff, float(np.abs(a - b).max()))
            print(
                f"  batch {index + 1}: torch {seconds['torch']:.1f} s, onnxruntime "
                f"{seconds['onnxruntime']:.1f} s so far",
                flush=True,
            )
    return {
        "forward_s": seconds,
        "tiles": len(grid),
        "agreement": same / pixels,
        "max_prob_diff": max_diff,
    }


def pipeline_runs(models: dict[str, Any], scene: Path, workdir: Path, args: Any) -> dict[str, Any]:
    """One whole ``segment`` per model: its tile-loop seconds."""
    import geoseg

    out: dict[str, Any] = {}
    for name, model in models.items():
        target = workdir / f"onnx_cpu_{name}"
        shutil.rmtree(target, ignore_errors=True)
        result = geoseg.segment(
            scene, target, model=model, tile_size=args.tile, overlap=args.overlap,
            batch_size=args.batch, device="cpu", vectorize=False, preview=False, overwrite=True,
        )  # fmt: skip
        out[name] = {"tiles_s": result.timings["tiles"], "inference_s": result.timings["inference"]}
        shutil.rmtree(target, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="scene edge in pixels")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, help="torch and onnxruntime threads")
    parser.add_argument("--pipeline", action="store_true", help="also time whole segment runs")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/geoseg-bench"))
    args = parser.parse_args(argv)

    import onnxruntime

    from geoseg.model import load_model
    from geoseg.model.onnx_export import export_onnx

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    scene = build_mosaic(args.workdir / f"mosaic_{args.size}.tif", args.size)
    t0 = time.perf_counter()
    torch_model = load_model()
    load_torch = time.perf_counter() - t0
    t0 = time.perf_counter()
    export = export_onnx(torch_model, args.workdir / "default.onnx")
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    onnx_model = load_model(export.path)
    load_onnx = time.perf_counter() - t0
    models = {"torch": torch_model, "onnxruntime": onnx_model}
    load_before = os.getloadavg()[0]
    print(f"scene {args.size}² px, tile {args.tile}, overlap {args.overlap}, batch {args.batch}, "
          f"{threads} threads each; load average {load_before:.1f}", flush=True)  # fmt: skip
    result = interleaved(models, scene, args.tile, args.overlap, args.batch)
    if args.pipeline:
        result["pipeline"] = pipeline_runs(models, scene, args.workdir, args)
    load_after = os.getloadavg()[0]

    mpx = args.size * args.size / 1e6
    forward = result["forward_s"]
    rate = {name: mpx / s for name, s in forward.items()}
    ratio = forward["torch"] / forward["onnxruntime"]
    print()
    print(f"default model {torch_model.card.name}, {result['tiles']} tiles, CPU "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__} / "
          f"onnxruntime {onnxruntime.__version__}, {threads} threads each")  # fmt: skip
    print(f"{'engine':<14}{'forward s':>11}{'Mpx/s':>9}{'load s':>9}")
    for name, load in (("torch", load_torch), ("onnxruntime", load_onnx)):
        print(f"{name:<14}{forward[name]:>11.1f}{rate[name]:>9.3f}{load:>9.2f}")
    print(f"onnxruntime speed-up: {ratio:.2f}x (torch forward / onnxruntime forward)")
    print(f"classes agree on {result['agreement']:.5%} of tile pixels; largest probability "
          f"difference {result['max_prob_diff']:.2e}")  # fmt: skip
    if args.pipeline:
        for name, run in result["pipeline"].items():
            print(f"segment tile loop, {name}: {run['tiles_s']:.1f} s "
                  f"({mpx / run['tiles_s']:.3f} Mpx/s)")  # fmt: skip
    print(f"export {export_s:.1f} s; load average {load_before:.1f} before, {load_after:.1f} after")
    ok = result["agreement"] >= 0.999 and result["max_prob_diff"] <= 1e-3

    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"onnx_cpu_{args.size}_{threads}t.json"
    out.write_text(json.dumps({
        "size": args.size, "tile": args.tile, "overlap": args.overlap, "batch": args.batch,
        "threads": threads, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "mpx_per_s": rate, "speedup": ratio, "load_s": {"torch": load_torch, "onnxruntime":
        load_onnx}, "export_s": export_s, "load_average": [load_before, load_after],
        "agreement_ok": ok, **result,
    }, indent=2))  # fmt: skip
    print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
