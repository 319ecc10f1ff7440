"""The one device call: unpack, then inference, a large scene and training, each by a deadline.

    PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu.run --pack .gpupack/device --out "$OUT"
    python -m benchmarks.gpu.emulate          # the same here, --cpu-dry-run, device-like env

Everything it measures lands in ``--out`` (the call's ``$OUT``), rewritten after every phase so
that a cut-off call still returns what it had: ``results.json`` (every number), ``results.md``
(the short tables), ``logs.tar.gz`` (each phase's output, the training logs and metrics, the
``nvidia-smi`` samples) and the exported models ``lite0.pt`` and ``lite2.pt`` (at most 8 files,
16 MiB each, come back from a call). Lightning checkpoints stay on the device machine.

The whole run keeps to ``--budget`` seconds (default 540, inside the tool's 600 s limit): each
phase is a child process with its own deadline, the deadlines add up to the budget, a phase that
ends early leaves its time to the next, and one past its deadline is stopped. Standard library
only until the packed packages are unpacked into ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

from benchmarks.gpu import dataset, limits, report, supervise, wheels

REPO = Path(__file__).resolve().parents[2]
#: Shares of the budget: set-up, inference, large scene; training gets the rest less a reserve.
SHARES = {"setup": 0.04, "inference": 0.20, "scene": 0.14}
RESERVE_S = 15.0
PHASES = ("inference", "scene", "train")


class Run:
    """The results of one call, written to ``out`` after every change."""

    def __init__(self, out: Path, budget: float, mode: str) -> None:
        self.out = out
        self.start = time.time()
        self.deadline = self.start + budget
        out.mkdir(parents=True, exist_ok=True)
        self.results: dict[str, Any] = {
            "mode": mode,
            "status": "running",
            "budget_s": budget,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.start)),
            "gpu_figures": "measured" if mode == "gpu" else "none: a CPU dry run",
            "phases": {},
        }

    def write(self) -> None:
        """``results.json`` and ``results.md`` as they stand."""
        self.results["elapsed_s"] = round(time.time() - self.start, 1)
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1, default=str))
        (self.out / "results.md").write_text(report.markdown(self.results))


def attach_gpu(name: str, phase: dict[str, Any], sampler: supervise.GpuSampler) -> None:
    """GPU utilisation of each of the phase's windows, put beside the numbers it belongs to."""
    samples = sampler.samples()
    windows = {label: supervise.window_stats(samples, *span)
               for label, span in (phase.get("windows") or {}).items()}  # fmt: skip
    phase["gpu_windows"] = windows
    for row in phase.get("rows") or []:
        row["gpu"] = {k: windows.get(f"{k}:{row['key']}") for k in ("loop", "predict", "model")}
    if phase.get("segment"):
        phase["segment"]["gpu"] = {"segment": windows.get("segment")}
    for row in phase.get("candidates") or []:
        row["gpu"] = {k: windows.get(f"{k}:{row['candidate']}") for k in ("train", "evaluate")}


def phase_argv(name: str, args: argparse.Namespace, roots: dict[str, Path]) -> list[str]:
    """The phase's own arguments besides the common ones."""
    extra = shlex.split(getattr(args, f"{name}_args"))
    if name == "train":
        return ["--roots", json.dumps({k: str(v) for k, v in roots.items()}), *extra]
    return extra


def setup(args: argparse.Namespace, run: Run) -> tuple[dict[str, str], dict[str, Path]]:
    """Unpack the packages, assemble the data; the phases' environment and the data roots."""
    t0 = time.time()
    manifest = json.loads((args.pack / "manifest.json").read_text())
    archive = args.site or args.pack / manifest["site"]["file"]
    work: Path = args.work
    site = work / "site"
    unpacked = wheels.extract(archive, site)
    roots = dataset.assemble(manifest, args.pack, REPO, work / "data",
                             limit=1 if args.cpu_dry_run else None)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), str(site)]), MPLBACKEND="Agg",
               GEOSEG_DATA=str(work / "data"), PYTHONUNBUFFERED="1")  # fmt: skip
    if args.cpu_dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""  # a dry run is a CPU run, whatever this machine has
    run.results["setup"] = {
        "seconds": round(time.time() - t0, 1),
        "site_archive": str(archive),
        "unpacked": unpacked,
        "packages": wheels.distributions(site),
        "data_roots": {k: str(v) for k, v in roots.items()},
        "pack_created": manifest.get("created"),
        "pack_git": manifest.get("git"),
        "left_out": manifest.get("left_out"),
    }
    return env, roots


def bring_back(run: Run, work: Path) -> None:
    """Exported models (when they fit what a call returns) and every log, into ``out``."""
    candidates = run.results["phases"].get("train", {}).get("candidates") or []
    logs = sorted((work / "logs").glob("*"))
    for row in candidates:
        model = Path(row["exported"])
        if model.is_file() and model.stat().st_size <= limits.RETURN_FILE_LIMIT:
            shutil.copyfile(model, run.out / model.name)
            row["returned"] = model.name
        logs += [Path(p) for p in row.get("logs", [])]
        evaluation = (row.get("pipeline_held_out") or {}).get("json")
        logs += [Path(evaluation)] if evaluation else []
    with tarfile.open(run.out / "logs.tar.gz", "w:gz") as tar:
        for path in logs:
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(work)) if path.is_relative_to(work)
                        else path.name)  # fmt: skip


def phase_deadline(run: Run, name: str) -> float:
    """Where ``name`` must end: its share added to the earlier ones', training: the rest."""
    budget = run.deadline - run.start
    if name == "train":
        return run.deadline - RESERVE_S
    shares = SHARES["setup"] + sum(SHARES[p] for p in PHASES[: PHASES.index(name) + 1])
    return min(run.start + shares * budget, run.deadline - RESERVE_S)


def run_phases(
    args: argparse.Namespace,
    run: Run,
    env: dict[str, str],
    roots: dict[str, Path],
    sampler: supervise.GpuSampler,
) -> bool:
    """Each phase in turn by its deadline, its results written as it ends; whether one failed."""
    work: Path = args.work
    failed = False
    for name in args.phases:
        deadline = phase_deadline(run, name)
        if deadline - time.time() < 20:
            run.results["phases"][name] = {"skipped": [{"what": name, "why": "deadline"}]}
            failed = True
            continue
        json_path = work / f"{name}.json"
        json_path.unlink(missing_ok=True)
        common = ["--json", str(json_path), "--deadline", str(deadline), "--work", str(work)]
        common += ["--data", str(work / "data")] + (["--dry-run"] if args.cpu_dry_run else [])
        status = supervise.run_phase(
            f"benchmarks.gpu.phase_{name}", common + phase_argv(name, args, roots),
            deadline=deadline + supervise.GRACE_S, log_path=work / "logs" / f"{name}.log",
            env=env,
        )  # fmt: skip
        phase = json.loads(json_path.read_text()) if json_path.is_file() else {}
        phase.update(status)
        attach_gpu(name, phase, sampler)
        failed |= bool(status["rc"] or status["timed_out"] or phase.get("errors"))
        run.results["phases"][name] = phase
        run.write()
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu.run", description=__doc__)
    parser.add_argument("--pack", type=Path, default=REPO / ".gpupack" / "device")
    parser.add_argument("--out", type=Path, required=True, help="the call's $OUT")
    parser.add_argument("--budget", type=float, default=None, help="seconds (540; dry run 300)")
    parser.add_argument("--site", type=Path, help="the site archive (default: the pack's)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/geoseg-gpu"))
    parser.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    parser.add_argument("--cpu-dry-run", action="store_true", help="CPU, a few tiles and steps")
    for name in PHASES:
        parser.add_argument(f"--{name}-args", default="", help=f"one string, to phase_{name}")
    args = parser.parse_args(argv)
    budget = args.budget or (300.0 if args.cpu_dry_run else 540.0)
    run = Run(args.out, budget, "cpu-dry-run" if args.cpu_dry_run else "gpu")
    work: Path = args.work
    (work / "logs").mkdir(parents=True, exist_ok=True)
    run.results["machine"] = supervise.machine()
    run.write()
    sampler = supervise.GpuSampler(work / "logs" / "nvidia-smi.csv")
    failed = False
    try:
        env, roots = setup(args, run)
        run.write()
        failed = run_phases(args, run, env, roots, sampler)
    except Exception as exc:  # noqa: BLE001 - written into the results, then re-raised
        run.results["error"] = f"{type(exc).__name__}: {exc}"
        failed = True
        raise
    finally:
        sampler.stop()
        bring_back(run, work)
        run.results["status"] = "failed" if failed else "ok"
        run.write()
        print((run.out / "results.md").read_text(), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
