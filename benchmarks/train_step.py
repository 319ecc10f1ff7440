"""Training-step and inference cost of the default-model candidates, measured side by side.

Each round times one training step (forward, backward, AdamW update on 8 random 256² crops) and
one inference batch (8 x 512², no gradient) for every candidate in turn, so a busy machine slows
all of them alike and the ratios hold. Prints a table and writes JSON.

    python benchmarks/train_step.py [--rounds 5] [--threads 2] [--json results/train_step.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from geoseg.model import create_module

CANDIDATES = {
    "unet / tf_efficientnet_lite0": ("tu-tf_efficientnet_lite0", [128, 64, 32, 16, 16]),
    "unet / tf_efficientnet_lite2": ("tu-tf_efficientnet_lite2", [128, 64, 32, 16, 16]),
    "unet / mobilenet_v2": ("mobilenet_v2", [128, 64, 32, 16, 16]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "train_step.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    nets = {}
    for name, (encoder, decoder) in CANDIDATES.items():
        module = create_module("unet", encoder, 3, 6, decoder_channels=decoder)
        nets[name] = (module, torch.optim.AdamW(module.parameters(), lr=1e-3))
    x = torch.randn(8, 3, 256, 256)
    y = torch.randint(0, 6, (8, 256, 256))
    tiles = torch.randn(8, 3, 512, 512)
    train_s: dict[str, list[float]] = {n: [] for n in nets}
    infer_s: dict[str, list[float]] = {n: [] for n in nets}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name, (module, opt) in nets.items():
            module.train()
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(module(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            t1 = time.perf_counter()
            module.eval()
            with torch.inference_mode():
                module(tiles)
            t2 = time.perf_counter()
            if round_:
                train_s[name].append(t1 - t0)
                infer_s[name].append(t2 - t1)
    rows = []
    for name, (module, _) in nets.items():
        params = sum(p.numel() for p in module.parameters()) / 1e6
        step = statistics.median(train_s[name])
        infer = statistics.median(infer_s[name])
        rows.append(
            {
                "model": name,
                "parameters_m": round(params, 2),
                "train_step_s": round(step, 3),
                "forward_8x512_s": round(infer, 3),
                "forward_mpx_per_s": round(8 * 512 * 512 / 1e6 / infer, 3),
            }
        )
    print(
        f"{'model':<32}{'params (M)':>12}{'train step (s)':>16}{'fwd 8x512² (s)':>16}{'Mpx/s':>8}"
    )
    for r in rows:
        print(
            f"{r['model']:<32}{r['parameters_m']:>12}{r['train_step_s']:>16}"
            f"{r['forward_8x512_s']:>16}{r['forward_mpx_per_s']:>8}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"threads": args.threads, "rounds": args.rounds, "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
