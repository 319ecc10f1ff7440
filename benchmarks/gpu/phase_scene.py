"""Phase 2: a large synthetic scene streamed through ``geoseg.segment`` as a user runs it.

The 16384² px (268 Mpx) real-pixel mosaic of ``benchmarks/synthetic.py`` is segmented with the
default settings (the shipped model, its test-time augmentation, fp16 autocast on CUDA) and a
GPU-sized batch, so that reading, the tile loop, the stitcher, the block-aligned writers and the
COG step are all timed together: ``timings`` is the run's own, beside the peak GPU memory and
the process's peak resident memory.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from benchmarks.gpu.phase_common import (
    Recorder,
    error_text,
    peak_mib,
    peak_rss_mib,
    phase_parser,
    reset_peak,
)
from benchmarks.gpu.phase_inference import scene_path


def main(argv: list[str] | None = None) -> int:
    parser = phase_parser(__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384, help="scene edge, px")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    if args.dry_run:
        args.size, args.batch = 512, 2
    rec = Recorder(args.json, args.deadline)
    import geoseg

    with rec.window("build_scene"):
        scene = scene_path(args.work, args.size, args.data)
    rec.set("scene", {"size": args.size, "bytes": scene.stat().st_size})
    out = Path(args.work) / "scene_out"
    shutil.rmtree(out, ignore_errors=True)
    lines: list[str] = []
    reset_peak()
    try:
        with rec.window("segment"):
            result = geoseg.segment(
                scene, out, batch_size=args.batch, vectorize=False, preview=False,
                overwrite=True, log=lines.append,
            )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - recorded for the report
        rec.append("errors", {"what": "segment", "error": error_text(exc)})
        return 1
    mpx = result.width * result.height / 1e6
    outputs = {p.name: p.stat().st_size for p in out.iterdir() if p.is_file()}
    rec.set(
        "segment",
        {
            "device": result.device,
            "tile_size": result.tile_size,
            "overlap": result.overlap,
            "batch": args.batch,
            "tiles": result.tiles_total,
            "scene_mpx": round(mpx, 1),
            "timings": {k: round(v, 2) for k, v in result.timings.items()},
            "loop_mpx_s": round(mpx / result.timings["tiles"], 2),
            "total_mpx_s": round(result.megapixels_per_second, 2),
            "peak_gpu_mib": peak_mib(),
            "peak_rss_mib": peak_rss_mib(),
            "outputs_bytes": outputs,
            "log": lines[-5:],
        },
    )
    shutil.rmtree(out, ignore_errors=True)
    rec.set("done", True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
