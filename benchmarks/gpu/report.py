"""The short table of a GPU run (``results.md``), made from ``results.json``; standard library."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


def _util(row: Mapping[str, Any], key: str) -> Any:
    stats = (row.get("gpu") or {}).get(key)
    return stats["gpu_util_mean"] if stats else None


def inference_lines(phase: Mapping[str, Any]) -> list[str]:
    """The tile loop against model-only, one row per setting; then onnxruntime."""
    rows = phase.get("rows") or []
    lines = ["## Inference: tile loop vs model-only (same batches)", ""]
    if rows:
        device = rows[0].get("device", "")
        lines += [f"Device {device}; scene {rows[0]['scene_mpx']} Mpx, tta {rows[0]['tta']}.", ""]
        lines += _table(
            ["precision", "tile", "batch", "loop Mpx/s", "model Mpx/s", "loop/model",
             "busy", "GPU util % (loop)", "peak GPU MiB", "read threads"],
            [[r["precision"], r["tile"], r["batch"], r["loop_mpx_s"], r["model_mpx_s"],
              r["ratio_loop_model"], r["busy"], _util(r, "loop"), r["peak_gpu_mib_loop"],
              r.get("read_threads", 2)] for r in rows],
        )  # fmt: skip
    onnx = phase.get("onnx")
    if onnx:
        provider = "CUDA" if onnx.get("cuda_provider_used") else "CPU (no CUDA provider)"
        lines += ["", f"onnxruntime {onnx.get('onnxruntime')} on {provider}: "
                  f"{onnx.get('onnx_tile_mpx_s')} tile Mpx/s vs torch "
                  f"{onnx.get('torch_tile_mpx_s')} on {onnx.get('tiles')} tiles; classes agree "
                  f"on {onnx.get('class_agreement')} of pixels."]  # fmt: skip
    return lines


def scene_lines(phase: Mapping[str, Any]) -> list[str]:
    """The large scene's timings."""
    seg = phase.get("segment")
    if not seg:
        return []
    t = seg["timings"]
    return [
        "## Large scene through geoseg.segment", "",
        f"{seg['scene_mpx']} Mpx, {seg['tiles']} tiles of {seg['tile_size']} px, batch "
        f"{seg['batch']}, {seg['device']}: tile loop {t.get('tiles')} s "
        f"({seg['loop_mpx_s']} Mpx/s), COG {t.get('cog')} s, total {t.get('total')} s "
        f"({seg['total_mpx_s']} Mpx/s); peak GPU {seg['peak_gpu_mib']} MiB, peak RSS "
        f"{seg['peak_rss_mib']} MiB; GPU util {_util(seg, 'segment')} % over the call.",
    ]  # fmt: skip


def train_lines(phase: Mapping[str, Any]) -> list[str]:
    """One row per candidate: steps, speed, held-out scores."""
    rows = phase.get("candidates") or []
    if not rows:
        return []

    def worst(row: Mapping[str, Any]) -> str:
        w = (row.get("held_out") or {}).get("worst_group") or {}
        return f"{w.get('group')} {w.get('miou')}" if w else "-"

    lines = ["## Training: equal minutes", ""]
    lines += _table(
        ["candidate", "encoder", "steps", "fit s", "steps/s", "crops/s", "GPU util %",
         "peak GPU MiB", "held-out mIoU", "worst group (coarse mIoU)", "exported MB"],
        [[r["candidate"], r["encoder"], r["steps"], r["fit_s"], r["steps_per_s"],
          r["crops_per_s"], _util(r, "train"), r["peak_gpu_mib"],
          (r.get("held_out") or {}).get("miou"), worst(r),
          round(r["exported_bytes"] / 1e6, 1)] for r in rows],
    )  # fmt: skip
    return lines


def markdown(results: Mapping[str, Any]) -> str:
    """``results.md``: status, then one short section per phase that produced numbers."""
    phases = results.get("phases", {})
    lines = [
        f"# geoseg GPU run ({results.get('mode')})", "",
        f"Status **{results.get('status')}**, {results.get('elapsed_s')} s of a "
        f"{results.get('budget_s')} s budget. GPU: {results.get('machine', {}).get('nvidia_smi')}.",
        "",
    ]  # fmt: skip
    lines += _table(
        ["phase", "rc", "seconds", "timed out", "skipped", "errors"],
        [[name, p.get("rc"), p.get("seconds"), p.get("timed_out"), len(p.get("skipped") or []),
          "; ".join(e["what"] + ": " + e["error"] for e in p.get("errors") or []) or "-"]
         for name, p in phases.items()],
    )  # fmt: skip
    for name, make in (("inference", inference_lines), ("scene", scene_lines),
                       ("train", train_lines)):  # fmt: skip
        if name in phases:
            lines += ["", *make(phases[name])]
    return "\n".join(lines) + "\n"
