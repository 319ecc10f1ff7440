"""The GPU run's ``--cpu-dry-run`` here, in an environment that has only what the device has.

    python -m benchmarks.gpu.pack --local            # once: the pack, and this Python's archive
    python -m benchmarks.gpu.emulate                 # about two minutes on two cores

A fresh virtual environment (no pip, no system packages) gets links to those distributions of
the current environment that ``device_packages.txt`` lists (torch, timm, lightning,
onnxruntime, xarray, tifffile, scikit-image, ... and their dependencies as the device has them);
everything else the run imports must come from the pack, as on the device: the site archive
(built for this Python by ``--local``) unpacked by the run itself, and the repository on
``PYTHONPATH``. geoseg's own editable install is not linked. Then ``benchmarks.gpu.run
--cpu-dry-run`` runs in it: every phase, a few tiles and training steps, on the CPU.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from benchmarks.gpu import wheels

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def device_names(path: Path = HERE / "device_packages.txt") -> set[str]:
    """The device's distributions, names normalised (``device_packages.txt``)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {_norm(line) for line in lines if line}


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _top_levels(dist: importlib.metadata.Distribution) -> set[str]:
    """First path components of a distribution's files inside site-packages."""
    return {
        Path(str(f)).parts[0]
        for f in dist.files or []
        if not str(f).startswith("..") and Path(str(f)).parts
    }


def link_device_set(
    site: Path, names: set[str], source: Iterable[importlib.metadata.Distribution]
) -> list[str]:
    """Link the listed distributions' files from the current environment into ``site``.

    A top-level entry that another, unlisted distribution shares (a namespace folder such as
    ``nvidia``) is made a real folder and linked one level down, so nothing unlisted leaks in.
    Returns the linked distributions.
    """
    dists = list(source)
    owners: dict[str, set[str]] = {}
    for dist in dists:
        for top in _top_levels(dist):
            owners.setdefault(top, set()).add(_norm(dist.metadata["Name"]))
    linked = []
    for dist in dists:
        name = _norm(dist.metadata["Name"])
        if name not in names:
            continue
        base = Path(str(dist.locate_file("")))
        for top in _top_levels(dist):
            shared = owners[top] - names
            entries = [top]
            if shared and (base / top).is_dir():
                parts = [Path(str(f)).parts for f in dist.files or []]
                mine = {p[1] for p in parts if p[:1] == (top,) and len(p) > 1}
                (site / top).mkdir(exist_ok=True)
                entries = [f"{top}/{child}" for child in sorted(mine)]
            for entry in entries:
                target = site / entry
                if (base / entry).exists() and not target.exists():
                    target.symlink_to(base / entry)
        linked.append(name)
    return sorted(linked)


def with_dependencies(
    names: set[str], dists: Iterable[importlib.metadata.Distribution]
) -> set[str]:
    """``names`` and, recursively, what they require here (markers evaluated, no extras).

    The device has its packages' dependencies installed; here those of the versions this
    environment holds stand for them (a newer huggingface-hub needs httpx2, say).
    """
    from packaging.requirements import Requirement

    by_name = {_norm(d.metadata["Name"]): d for d in dists}
    todo, out = [n for n in names if n in by_name], set(names)
    while todo:
        for text in by_name[todo.pop()].requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            name = _norm(req.name)
            if name not in out and name in by_name:
                out.add(name)
                todo.append(name)
    return out


def make_env(env: Path) -> Path:
    """A fresh venv at ``env`` with the device set linked in; its Python."""
    subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip())  # fmt: skip
    dists = list(importlib.metadata.distributions())
    listed = device_names()
    names = with_dependencies(listed, dists)
    linked = link_device_set(site, names, dists)
    extra = sorted(set(linked) - listed)
    print(f"emulate: {len(linked)} distributions linked into {site} (the device's, and "
          f"their dependencies here: {', '.join(extra) or 'none'})", flush=True)  # fmt: skip
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu.emulate", description=__doc__)
    parser.add_argument("--pack", type=Path, default=REPO / ".gpupack", help="the packer's --out")
    parser.add_argument("--env", type=Path, default=Path("/tmp/geoseg-gpu-emulated/env"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/geoseg-gpu-emulated/work"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/geoseg-gpu-emulated/out"))
    parser.add_argument("--budget", type=float, default=300.0)
    args, rest = parser.parse_known_args(argv)
    local = f"{sys.version_info.major}.{sys.version_info.minor}"
    archive = args.pack / "local" / wheels.archive_name(local)
    if not archive.is_file():
        print(f"emulate: no {archive}; run python -m benchmarks.gpu.pack --local", file=sys.stderr)
        return 2
    python = make_env(args.env)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}  # fmt: skip
    env["PATH"] = os.pathsep.join([str(python.parent), env.get("PATH", "")])
    command = [
        str(python), "-m", "benchmarks.gpu.run", "--cpu-dry-run", "--pack",
        str(args.pack / "device"), "--site", str(archive), "--work", str(args.work),
        "--out", str(args.out), "--budget", str(args.budget), *rest,
    ]  # fmt: skip
    return subprocess.run(command, cwd=REPO, env=env).returncode


if __name__ == "__main__":
    raise SystemExit(main())
