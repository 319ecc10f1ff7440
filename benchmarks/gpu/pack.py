"""Build what the GPU call carries into ``.gpupack/device``; print its sizes and the call.

    python -m benchmarks.gpu.pack                 # the device pack (about 2 minutes, cached)
    python -m benchmarks.gpu.pack --local         # and a site archive for this Python (dry run)
    python -m benchmarks.gpu.pack --local-only --train-images 4 --out /tmp/p   # dry run only

``.gpupack/`` (ignored by git) holds ``device/`` (carried: ``site-cp312.tar.xz``, ``data/``,
``manifest.json``), ``local/`` (this Python's site archive, for the dry run) and ``cache/``
(wheels, unpacked folders). The working tree travels with every call, so the pack gets what the
tree leaves of the call's 64 MiB, less 1 MiB of headroom: the site archive first, then the data
(held-out groups whole, training images as many as fit). The packer refuses a pack over that.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.gpu import dataset, limits, wheels
from benchmarks.gpu.placeholders import LEFT_OUT

REPO = Path(__file__).resolve().parents[2]
#: Bytes kept for ``manifest.json`` when the data budget is worked out.
MANIFEST_RESERVE = 256 * 1024
CARRY = ".gpupack/device"
COMMAND = f'PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu.run --pack {CARRY} --out "$OUT"'
TIMEOUT_S = 600


def site_archive(python: str, cache: Path, dest: Path, preset: int) -> dict[str, Any]:
    """Download, unpack, slim and compress the packed distributions for ``python``.

    Reuses the archive when it was built from the same wheels with the same preset.
    """
    tag = wheels.python_tag(python)
    versions = wheels.pinned_versions(REPO / "constraints.txt")
    found = wheels.download(versions, python, cache / f"wheels-{tag}")
    key = json.dumps({"wheels": sorted(w.name for w in found), "preset": preset})
    key_file = cache / f"site-{tag}.key"
    out = dest / wheels.archive_name(python)
    sizes: dict[str, Any] = {}
    if not (out.is_file() and key_file.is_file() and key_file.read_text() == key):
        print(f"pack: unpacking and compressing {len(found)} wheels for Python {python} ...",
              flush=True)  # fmt: skip
        sizes = wheels.unpack(found, cache / f"site-{tag}")
        wheels.archive(cache / f"site-{tag}", out, preset)
        key_file.write_text(key)
    return {
        "file": out.name,
        "python": python,
        "bytes": out.stat().st_size,
        "sha256": wheels.sha256(out),
        "wheel_bytes": sum(w.stat().st_size for w in found),
        "versions": versions,
        **sizes,
    }


def git_state() -> dict[str, Any]:
    """The commit the pack was made at and how many paths differ from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return done.stdout.strip()

    changed = len(git("status", "--short").splitlines())
    return {"head": git("rev-parse", "HEAD"), "changed_paths": changed}


def build(args: argparse.Namespace) -> dict[str, Any]:
    """Build the pack described by ``args``; its manifest."""
    out: Path = args.out
    device, cache = out / "device", out / "cache"
    device.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": git_state(),
        "left_out": LEFT_OUT,
    }
    local = f"{sys.version_info.major}.{sys.version_info.minor}"
    if args.local or args.local_only:
        manifest["local_site"] = site_archive(local, cache, out / "local", wheels.LOCAL_PRESET)
    archive_bytes = 0
    if not args.local_only:
        manifest["site"] = site_archive(wheels.DEVICE_PYTHON, cache, device, wheels.DEVICE_PRESET)
        archive_bytes = manifest["site"]["bytes"]
    tree = limits.tree_bytes(REPO)
    room = limits.room_for_pack(tree, args.headroom)
    budget = args.data_budget or room - archive_bytes - MANIFEST_RESERVE
    print(f"pack: data budget {budget / limits.MiB:.2f} MiB", flush=True)
    manifest["data"] = dataset.pack_data(
        args.config, REPO, device, budget, train_images=args.train_images
    )
    manifest["tree"] = {"tracked": tree.tracked, "untracked": tree.untracked}
    manifest["run"] = {"command": COMMAND, "carry": [CARRY], "timeout_s": TIMEOUT_S}
    dataset.write_manifest(device / "manifest.json", manifest)
    report(manifest, tree, limits.dir_bytes(device))
    if not args.local_only:
        limits.check_fits(tree, limits.dir_bytes(device), args.headroom)
    return manifest


def report(manifest: dict[str, Any], tree: limits.TreeSize, carried: int) -> None:
    """Print the size breakdown and, for a device pack, the exact call to make."""
    mib = limits.MiB
    data = manifest["data"]
    rows = [("tracked files", tree.tracked), ("untracked, not ignored", tree.untracked)]
    if "site" in manifest:
        site = manifest["site"]
        rows.append((f"{site['file']} (wheels {site['wheel_bytes'] / mib:.1f} MiB)", site["bytes"]))
    rows += [("training data", data["bytes"]), ("carried in all", carried)]
    rows.append(("travels per call", tree.total + carried))
    print(f"\n{'what':<44}{'MiB':>9}")
    for name, size in rows:
        print(f"{name:<44}{size / mib:>9.2f}")
    print(f"{'limit (less headroom in the check)':<44}{limits.CALL_LIMIT / mib:>9.2f}")
    for group, g in sorted(data["summary"]["groups"].items()):
        print(f"  {group:<22}{g['role']:<9}{g['images']:>4} images {g['bytes'] / mib:7.2f} MiB  "
              f"{', '.join(g['how'])}")  # fmt: skip
    left = data["summary"]["train_images_left_out"]
    if left:
        print(f"  training images left out for room: {left}")
    if "site" in manifest:
        run = manifest["run"]
        print("\nthe device call (run tool):")
        print(f"  command:   {run['command']}")
        print(f"  carry:     {json.dumps(run['carry'])}")
        print(f"  timeout_s: {run['timeout_s']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu.pack", description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / ".gpupack")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "train_default.yaml")
    parser.add_argument("--local", action="store_true", help="also a site archive for this Python")
    parser.add_argument(
        "--local-only", action="store_true", help="only the dry run's part, no size check"
    )
    parser.add_argument("--data-budget", type=int, help="bytes of data (default: what fits)")
    parser.add_argument("--train-images", type=int, help="at most this many training images")
    parser.add_argument("--headroom", type=int, default=limits.HEADROOM, help="bytes kept free")
    args = parser.parse_args(argv)
    try:
        build(args)
    except RuntimeError as exc:  # pip could not fetch a wheel
        print(f"pack: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
