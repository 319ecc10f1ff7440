"""What one device call may carry, and how much of it the working tree already takes.

The call sends the whole working tree (tracked files and untracked files git does not ignore)
plus the ignored paths named in ``carry``, at most 64 MiB together. :func:`tree_bytes` measures
the tree as it is on disk now; :func:`check_fits` refuses a pack that would not fit.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024
#: Tracked and untracked-not-ignored files plus the carried paths, per call.
CALL_LIMIT = 64 * MiB
#: Kept free for files others add to the tree between packing and the call.
HEADROOM = 1 * MiB
#: At most this many files come back from ``$OUT``, each at most ``RETURN_FILE_LIMIT``.
RETURN_FILES = 8
RETURN_FILE_LIMIT = 16 * MiB
RETURN_TOTAL_LIMIT = 64 * MiB


class PackTooLarge(SystemExit):
    """The tree and the pack together exceed what one call may carry."""


def _git_files(repo: Path, *args: str) -> list[Path]:
    out = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z", *args],
        check=True,
        capture_output=True,
    ).stdout
    return [repo / name for name in out.decode().split("\0") if name]


def _size(paths: list[Path]) -> int:
    # A tracked file deleted in the working tree does not travel.
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


@dataclass(frozen=True)
class TreeSize:
    """Bytes of the working tree that every call sends."""

    tracked: int
    untracked: int

    @property
    def total(self) -> int:
        """Tracked plus untracked-not-ignored bytes."""
        return self.tracked + self.untracked


def tree_bytes(repo: Path) -> TreeSize:
    """The working tree's travelling bytes: tracked files, untracked files git does not ignore."""
    tracked = _size(_git_files(repo))
    untracked = _size(_git_files(repo, "--others", "--exclude-standard"))
    return TreeSize(tracked, untracked)


def dir_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (what carrying it costs)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def room_for_pack(tree: TreeSize, headroom: int = HEADROOM) -> int:
    """Bytes left for the carried pack once the tree and the headroom are counted."""
    return CALL_LIMIT - headroom - tree.total


def check_fits(tree: TreeSize, carried: int, headroom: int = HEADROOM) -> None:
    """Refuse (exit, with the reason) when the tree plus ``carried`` bytes exceed the call's limit.

    Raises:
        PackTooLarge: naming the sizes and the limit.
    """
    total = tree.total + carried
    if total > CALL_LIMIT - headroom:
        raise PackTooLarge(
            f"pack refused: tree {tree.total / MiB:.2f} MiB + pack {carried / MiB:.2f} MiB = "
            f"{total / MiB:.2f} MiB, over the call's {CALL_LIMIT / MiB:.0f} MiB less "
            f"{headroom / MiB:.2f} MiB headroom; pack less data (--data-budget) or fewer packages"
        )
