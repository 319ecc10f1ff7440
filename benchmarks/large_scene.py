"""Large scenes: wall time and peak RSS of ``geoseg run`` up to a 20000 x 20000 mosaic.

The scenes are georeferenced mosaics cut from the real Dubai aerial photographs with random
flips and rotations (``synthetic.py``; UTM 40N, 0.5 m), so a 20000² scene is 100 km² of
realistic imagery. Each run is the real CLI in a child process (``--no-vector``), measured as in
``memory.py``; the table shows wall time, throughput and peak RSS per size: RSS stays flat while
the scene grows 16x and more, because only one band of tile rows is ever in memory.

By default the light benchmark U-Net of ``memory.py`` is used so that 20000² (2025 tiles of 512
px) finishes on a 2-core CPU; ``--model resnet18`` runs the U-Net-ResNet18 (about 1.5 s per
tile there: budget 50 minutes for 20000²).

    python benchmarks/large_scene.py                          # 5000², 10000², 20000²
    python benchmarks/large_scene.py --sizes 4096 8192 --model resnet18
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory import measure_sizes, parser  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0], [5000, 10000, 20000]).parse_args(argv)
    measure_sizes(args, "large_scene")
    return 0


if __name__ == "__main__":
    sys.exit(main())
