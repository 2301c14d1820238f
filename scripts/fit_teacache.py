"""Fit TeaCache's rescaling polynomial for a Wan2.1 checkpoint from full-compute runs.

References: TeaCache (ali-vilab/TeaCache, issue #2: the coefficients are a polynomial fit, over calibration prompts
and all steps, of the model-output relative L1 between consecutive steps against the indicator's). Own code.

Every calibration generation runs in full. For each guidance branch and step i the indicator's relative L1 to step
i-1 (``x``) and the model output's (the branch's velocity prediction, ``y``) are collected, for both Wan2.1
indicators at once: ``e`` (timestep embedding; default mode) and ``e0`` (its 6-way projection; ``--use_ret_steps``).
Each indicator is fitted on the steps its mode decides on (``e``: 1..n-2, as the first and last steps are forced;
``e0``: 5..n-1), or on every step with ``--all_steps``. ``numpy.polyfit`` gives the coefficients, highest degree
first, which is the order ``--teacache_coefficients`` and the published tables use.

The published coefficients were fitted on the real Wan2.1/HunyuanVideo models; for any other checkpoint (the tiny
model included) fit them here, then pass the JSON to generate.py:

    python scripts/fit_teacache.py --task t2v-tiny --num_prompts 8 --seeds 0 1 \
        --out Wan2.1/Wan2.1-T2V-tiny/teacache_coefficients.json --plot docs/images/tiny_teacache_fit.png
    cd Wan2.1 && python generate.py --task t2v-tiny --prompt "..." --teacache_thresh 0.1 \
        --teacache_coefficients Wan2.1-T2V-tiny/teacache_coefficients.json

Calibration prompts default to training-distribution captions of the tiny model (disjoint from the held-out
evaluation captions the benchmark uses); pass ``--prompts FILE`` for any other model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from common_cache import CacheStats, attach_cache, call_block, detach_cache
from common_cache.teacache import COEFFICIENTS_FORMAT, relative_l1
from profilingdit.bench.runner import generation_settings, load_pipeline, read_prompts

INDICATORS = {"e": (1, 1), "e0": (5, 0)}  # indicator -> (forced first steps, forced last steps) of its mode


class SignalRecorder:
    """A cache that runs every block and keeps each forward's signals and output, per (branch, step)."""

    def __init__(self, names=tuple(INDICATORS)) -> None:
        self.names = names
        self.stats = CacheStats()  # no block is ever skipped: what the pipeline's report reads
        self.signals: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
        self.outputs: dict[tuple[str, int], torch.Tensor] = {}
        self._context: tuple[str, int] | None = None

    def bind(self, model_depths) -> None:
        pass

    def begin(self, num_steps: int, sigmas=None) -> None:
        self.signals.clear()
        self.outputs.clear()

    @contextmanager
    def step(self, index: int, branch: str = "cond") -> Iterator[None]:
        self._context = (branch, index)
        try:
            yield
        finally:
            self._context = None

    def receive_signals(self, group: str, signals) -> None:
        if self._context is not None:
            self.signals[self._context] = {n: (v() if callable(v) else v).detach().float().cpu()
                                           for n, v in signals.items() if n in self.names}

    def run(self, group, blocks, states, kwargs):
        for block in blocks:
            states = call_block(block, states, kwargs)
        return states

    def output_hook(self, module, inputs, output) -> None:
        """Forward hook on the model: the velocity prediction of the current forward."""
        if self._context is not None:
            self.outputs[self._context] = torch.stack([o.detach().float().cpu() for o in output])


def calibration_prompts(count: int) -> list[str]:
    """Training-distribution captions of the tiny model (not the held-out evaluation captions)."""
    from wan.tiny.data import caption, sample_spec

    return [caption(sample_spec(9001, index, held_out=False)) for index in range(count)]


def collect_pairs(recorder: SignalRecorder, num_steps: int) -> dict[str, list[tuple[int, float, float]]]:
    """(step, indicator distance, output distance) for every branch and step >= 1 of one generation."""
    pairs: dict[str, list] = {name: [] for name in recorder.names}
    for (branch, step), output in recorder.outputs.items():
        if step == 0:
            continue
        previous = recorder.outputs[(branch, step - 1)]
        y = relative_l1(output, previous)
        for name in recorder.names:
            x = relative_l1(recorder.signals[(branch, step)][name], recorder.signals[(branch, step - 1)][name])
            pairs[name].append((step, x, y))
    return pairs


def fit(points: list[tuple[int, float, float]], num_steps: int, forced: tuple[int, int], degree: int,
        all_steps: bool) -> dict:
    """Polynomial fit of output distance on indicator distance over the steps the mode decides on."""
    first, last = (1, 0) if all_steps else forced
    used = [(x, y) for step, x, y in points if max(first, 1) <= step < num_steps - last]
    if len(used) <= degree:
        raise ValueError(f"only {len(used)} (indicator, output) pairs for a degree-{degree} fit: use more prompts, "
                         "seeds or steps")
    x, y = np.array(used).T
    if len(np.unique(x)) <= degree:  # Wan's indicators depend on t only: one distinct value per step
        raise ValueError(f"only {len(np.unique(x))} distinct indicator distances for a degree-{degree} fit: use more "
                         "--sample_steps or a lower --degree")
    # Fitted on a scaled domain (well conditioned), then expanded to plain coefficients, highest degree first.
    coefficients = np.polynomial.Polynomial.fit(x, y, degree).convert().coef[::-1]
    predicted = np.polyval(coefficients, x)
    r2 = 1.0 - float(((y - predicted) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-300))
    return {"coefficients": [float(c) for c in coefficients], "points": len(used),
            "steps": [max(first, 1), num_steps - last - 1], "r2": r2,
            "x_range": [float(x.min()), float(x.max())], "y_range": [float(y.min()), float(y.max())],
            "data": [[float(a), float(b)] for a, b in used]}


def plot_fits(fits: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(fits), figsize=(5 * len(fits), 3.8), dpi=110)
    for ax, (name, f) in zip(np.atleast_1d(axes), fits.items()):
        x, y = np.array(f["data"]).T
        grid = np.linspace(x.min(), x.max(), 200)
        ax.scatter(x, y, s=6, alpha=0.3)
        ax.plot(grid, np.polyval(f["coefficients"], grid), color="black", lw=1.2, label=f"fit, R2 {f['r2']:.3f}")
        ax.set_xlabel(f"relative L1 of indicator {name} (step to step)")
        ax.set_ylabel("relative L1 of the model output")
        ax.set_title(f"{title}: {name}", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(args) -> dict:
    prompts = read_prompts(args.prompts) if args.prompts else calibration_prompts(args.num_prompts)
    pipeline, ckpt_dir = load_pipeline(args.task, args.ckpt_dir)
    settings = generation_settings(pipeline, args)
    steps = settings["sampling_steps"]
    for name, (first, last) in INDICATORS.items():  # Wan's indicators take one distinct value per step
        decided = steps - (1 if args.all_steps else first) - (0 if args.all_steps else last)
        if decided <= args.degree:
            raise ValueError(f"only {max(decided, 0)} distinct indicator distances for a degree-{args.degree} fit of "
                             f"{name} at {steps} steps: use more --sample_steps or a lower --degree")
    recorder = SignalRecorder()
    attach_cache(pipeline.model, recorder)
    handle = pipeline.model.register_forward_hook(recorder.output_hook)
    pairs: dict[str, list] = {name: [] for name in INDICATORS}
    try:
        for prompt in prompts:
            for seed in args.seeds:
                pipeline.generate(prompt, seed=seed, **settings)
                for name, points in collect_pairs(recorder, settings["sampling_steps"]).items():
                    pairs[name] += points
                print(f"calibrated on seed {seed}: {prompt}", flush=True)
    finally:
        handle.remove()
        detach_cache(pipeline.model)
    fits = {name: fit(pairs[name], steps, INDICATORS[name], args.degree, args.all_steps) for name in INDICATORS}
    return {"format": COEFFICIENTS_FORMAT, "version": 1, "task": args.task, "ckpt_dir": os.path.abspath(ckpt_dir),
            "steps": steps, "shift": settings["shift"], "solver": settings["sample_solver"],
            "guide_scale": settings["guide_scale"], "size": list(settings["size"]), "frame_num": settings["frame_num"],
            "degree": args.degree, "all_steps": args.all_steps, "seeds": args.seeds, "prompts": prompts, "fits": fits}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="t2v-tiny")
    parser.add_argument("--ckpt_dir", default=None)
    parser.add_argument("--prompts", default=None, help="Calibration prompts, one per line.")
    parser.add_argument("--num_prompts", type=int, default=8, help="Tiny-model training captions without --prompts.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--degree", type=int, default=4, help="Polynomial degree (TeaCache: 4).")
    parser.add_argument("--all_steps", action="store_true", help="Fit on every step, forced ones included.")
    parser.add_argument("--size", default=None)
    parser.add_argument("--frame_num", type=int, default=None)
    parser.add_argument("--sample_steps", type=int, default=None)
    parser.add_argument("--sample_shift", type=float, default=None)
    parser.add_argument("--sample_solver", default="unipc")
    parser.add_argument("--sample_guide_scale", type=float, default=5.0)
    parser.add_argument("--out", required=True, help="Coefficients JSON to write.")
    parser.add_argument("--plot", default=None, help="Scatter + fitted curve PNG.")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.degree < 1:
            raise ValueError(f"--degree {args.degree} is not allowed: expected an integer >= 1")
        result = run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    os.replace(tmp, args.out)
    if args.plot:
        plot_fits(result["fits"], args.plot, args.task)
    for name, f in result["fits"].items():
        print(f"{name}: coefficients {', '.join(f'{c:.6g}' for c in f['coefficients'])} "
              f"(R2 {f['r2']:.3f}, {f['points']} points, steps {f['steps'][0]}..{f['steps'][1]})")
    print(f"wrote {args.out}; use it with --teacache_coefficients {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
