"""Render speed of the procedural factor datasets (goal: 12,000 images in a few seconds on 2 cores).

    python benchmarks/bench_render.py [--n 12000]

Prints wall and CPU seconds and images per CPU second for each renderer.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from harness.datasets import shapes, sprites

RENDERERS = (("sprites", sprites.render_sprites, (3, 6, 40, 32, 32)),
             ("shapes", shapes.render_shapes, (10, 10, 10, 8, 4, 15)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=12000, help="images per renderer")
    n = ap.parse_args().n
    rng = np.random.default_rng(0)
    for name, render, sizes in RENDERERS:
        codes = np.stack([rng.integers(0, s, n) for s in sizes], 1)
        wall, cpu = time.perf_counter(), time.process_time()
        render(codes)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"{name:8s} {n} images: {wall:6.2f} s wall, {cpu:6.2f} s CPU, {n / cpu:8.0f} images per CPU second")


if __name__ == "__main__":
    main()
