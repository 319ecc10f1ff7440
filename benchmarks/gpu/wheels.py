"""The packages the device lacks, as one compressed site folder that a call carries.

The device's Python 3.12 has torch, timm, lightning, onnxruntime, xarray, tifffile,
scikit-image and more (``device_packages.txt``), but not rasterio, shapely, geopandas, torchgeo,
segmentation-models-pytorch or kornia, which the benchmark imports. Their wheels (36 MB for
rasterio alone) would not fit beside the 37 MB working tree, so the pack holds them installed:
the wheels unpacked into one folder, test folders and byte code dropped, shared libraries
stripped, and the folder written as one tar compressed by xz with its x86 filter (about half
the wheels' size). The device unpacks it with Python's own ``tarfile`` (:func:`extract`).

Versions are those of ``constraints.txt`` (the set the suite passed with). Two packages that
torchgeo imports but the benchmark never uses stay out (:mod:`benchmarks.gpu.placeholders`).

Standard library only: :mod:`benchmarks.gpu.run` uses :func:`extract` before anything is
installed.
"""

from __future__ import annotations

import email.parser
import hashlib
import lzma
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

#: Distributions the benchmark imports that the device lacks (pyproj and kornia-rs excepted).
PACKED = (
    "rasterio",
    "affine",
    "cligj",
    "click-plugins",
    "shapely",
    "geopandas",
    "torchgeo",
    "segmentation-models-pytorch",
    "kornia",
    "lightly",
)
#: pip's platform tags of a manylinux x86-64 machine (pip matches each exactly).
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
#: The device's Python.
DEVICE_PYTHON = "3.12"
#: xz settings: the device pack as small as xz makes it; a local (dry-run) pack quickly.
DEVICE_PRESET = 9 | lzma.PRESET_EXTREME
LOCAL_PRESET = 0


def python_tag(version: str) -> str:
    """``cp312`` for ``3.12``."""
    return "cp" + version.replace(".", "")


def archive_name(version: str) -> str:
    """The site archive's file name for a Python version (``site-cp312.tar.xz``)."""
    return f"site-{python_tag(version)}.tar.xz"


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def pinned_versions(constraints: Path, names: Sequence[str] = PACKED) -> dict[str, str]:
    """``{name: version}`` of ``names`` as ``constraints.txt`` pins them.

    Raises:
        SystemExit: naming a distribution the file does not pin.
    """
    pins = {}
    for line in constraints.read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep:
            pins[_canonical(name)] = version.strip()
    missing = [n for n in names if _canonical(n) not in pins]
    if missing:
        raise SystemExit(f"{constraints} pins no version of {missing}; add them or pass versions")
    return {n: pins[_canonical(n)] for n in names}


def download(versions: Mapping[str, str], python: str, dest: Path) -> list[Path]:
    """The wheels of ``versions`` for CPython ``python`` on manylinux x86-64, in ``dest``.

    ``--no-deps``: each dependency the device lacks is named in :data:`PACKED` itself, so pip
    never pulls torch or numpy in.

    Raises:
        RuntimeError: with pip's last lines when it cannot get a wheel (no network, say).
    """
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [arg for tag in PLATFORMS for arg in ("--platform", tag)]
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
        "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
        *platforms, "--dest", str(dest), *(f"{n}=={v}" for n, v in versions.items()),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"pip download for Python {python} failed:\n{tail}")
    wheels = []
    for name, version in versions.items():
        stem = f"{_canonical(name).replace('-', '_')}-{version}-"
        found = [w for w in dest.glob("*.whl") if w.name.lower().startswith(stem)]
        tag = python_tag(python)
        found = [w for w in found if f"-{tag}-" in w.name or w.name.endswith("-none-any.whl")]
        if not found:
            raise RuntimeError(f"pip download left no wheel of {name}=={version} in {dest}")
        wheels.append(sorted(found)[-1])
    return wheels


def _is_shared_library(path: Path) -> bool:
    return path.suffix == ".so" or ".so." in path.name


def unpack(wheels: Iterable[Path], site: Path) -> dict[str, int]:
    """Install ``wheels`` into the folder ``site`` the way pip would, then slim it.

    Test folders and byte code are dropped and shared libraries stripped of symbols that
    linking does not need (``strip --strip-unneeded``, where ``strip`` exists). Returns byte
    counts before and after.
    """
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(site)
    before = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
    for folder in sorted(site.rglob("*"), reverse=True):
        if folder.is_dir() and folder.name in ("tests", "__pycache__"):
            shutil.rmtree(folder)
    strip = shutil.which("strip")
    if strip is not None:
        libraries = [str(p) for p in site.rglob("*") if p.is_file() and _is_shared_library(p)]
        for start in range(0, len(libraries), 50):
            subprocess.run([strip, "--strip-unneeded", *libraries[start : start + 50]], check=True)
    after = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
    return {"unpacked_bytes": before, "slimmed_bytes": after, "stripped": int(strip is not None)}


def archive(site: Path, out: Path, preset: int = DEVICE_PRESET) -> int:
    """Write the folder ``site`` as a tar compressed by xz (x86 filter, then LZMA2 ``preset``).

    Entries are sorted and their owners and times zeroed, so equal inputs give equal bytes.
    Returns the archive's size.
    """
    filters = [{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2, "preset": preset}]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    with lzma.open(tmp, "wb", format=lzma.FORMAT_XZ, filters=filters) as xz:
        with tarfile.open(fileobj=xz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(site.rglob("*")):
                info = tar.gettarinfo(str(path), arcname=str(path.relative_to(site)))
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0
                if info.isfile():
                    with path.open("rb") as fh:
                        tar.addfile(info, fh)
                else:
                    tar.addfile(info)
    tmp.replace(out)
    return out.stat().st_size


def sha256(path: Path) -> str:
    """Hex digest of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract(archive_path: Path, site: Path) -> bool:
    """Unpack a site archive into ``site`` unless the same archive is unpacked there already.

    A warm machine keeps ``site`` between calls, so a second call skips the work. Returns
    whether it unpacked.
    """
    stamp = site / ".geoseg-gpu-archive"
    digest = sha256(archive_path)
    if stamp.is_file() and stamp.read_text() == digest:
        return False
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    with tarfile.open(archive_path, mode="r:xz") as tar:
        if sys.version_info >= (3, 12):
            tar.extractall(site, filter="data")
        else:  # the local dry run's Python 3.11 (the archive is the packer's own)
            tar.extractall(site)  # noqa: S202
    stamp.write_text(digest)
    return True


def distributions(site: Path) -> dict[str, str]:
    """``{name: version}`` of the distributions installed in ``site`` (from their dist-info)."""
    out = {}
    for meta in sorted(site.glob("*.dist-info/METADATA")):
        headers = email.parser.Parser().parsestr(meta.read_text(), headersonly=True)
        out[str(headers.get("Name", meta.parent.name))] = str(headers.get("Version", ""))
    return out
