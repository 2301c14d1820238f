"""Does the tiny model use the motion words of its prompt? Three probes behind docs/benchmarks.md, section 6.

1. **direction swap**: for each seed and object, four prompts that differ only in the direction ("moves to the
   right / left / up / down"), generated with the same seed; reported: how often the checker finds the asked
   direction, and the spread of the net displacement across the four prompts (0 px: the word changes nothing).
2. **loss gap**: the flow-matching loss (the training objective, same noise) on freshly rendered training clips
   with the true caption, with the direction reversed, and with the empty caption, at several noise levels. A
   model that uses the direction word pays clearly more with the reversed caption; compare the gap with the
   caption's whole effect (empty minus true).
3. **absolute position**: "gradient" backgrounds are brighter at the bottom; the bottom/top brightness ratio of
   generated gradient and plain backgrounds against the generator's own gradient shows how well the model knows
   where the bottom of the frame is (the DiT has no absolute position embedding, only RoPE).

Usage (from the repository root):

    python -m wan.tiny.probe_motion [--ckpt_dir DIR] [--seeds 4] [--clips 48] [--json probe.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import numpy as np
import torch

from ..configs import WAN_CONFIGS
from ..text2video import WanT2V
from . import adherence, data

DIRECTIONS = ("right", "left", "up", "down")
REVERSED = {"right": "left", "left": "right", "up": "down", "down": "up", "bounces": "bounces"}
OBJECTS = (("large", "red", "circle"), ("large", "blue", "square"))


def reversed_caption(spec: data.VideoSpec) -> str:
    """The caption of a spec with every object's straight motion reversed (bounces stay)."""
    objects = tuple(dataclasses.replace(obj, motion=REVERSED[obj.motion]) for obj in spec.objects)
    return data.caption(dataclasses.replace(spec, objects=objects))


def _generate(pipeline: WanT2V, prompt: str, seed: int, steps: int, guide_scale: float) -> np.ndarray:
    """One 64x64 clip with the task's frame count and shift, ``[T, H, W, 3]`` in [0, 1]."""
    config = pipeline.config
    video, _ = pipeline.generate(prompt, size=(64, 64), frame_num=config.frame_num, shift=config.sample_shift,
                                 sampling_steps=steps, guide_scale=guide_scale, seed=seed, progress=False)
    return adherence.as_unit_video(video)


def direction_swap(pipeline: WanT2V, seeds: int, steps: int, guide_scale: float) -> dict:
    """Same seed, four directions: checker accuracy and how much the displacement moves with the word."""
    correct, spreads, rows = 0, [], []
    for seed in range(seeds):
        for size, colour, shape in OBJECTS:
            displacements = []
            for direction in DIRECTIONS:
                prompt = f"a {size} {colour} {shape} {data.MOTION_PHRASES[direction]} over a black background"
                video = _generate(pipeline, prompt, seed, steps, guide_scale)
                found = {obj.colour: obj for obj in adherence.analyse_video(video)}.get(colour)
                motion = found.motion if found else "nothing"
                correct += motion == direction
                shift = _net_displacement(found.track) if found is not None and len(found.track) >= 6 else None
                displacements.append(shift)
                rows.append({"seed": seed, "prompt": prompt, "found": motion, "displacement": shift})
            known = [d for d in displacements if d is not None]
            if len(known) > 1:
                spreads.append(float(np.linalg.norm(np.std(np.asarray(known), axis=0))))
    total = seeds * len(OBJECTS) * len(DIRECTIONS)
    return {"accuracy": correct / total, "count": total,
            "displacement_spread_px": float(np.mean(spreads)) if spreads else None, "rows": rows}


def _net_displacement(track: np.ndarray) -> list[float]:
    """(dx, dy) in pixels between the first and the last three visible frames of a checker track."""
    return [float(track[-3:, axis].mean() - track[:3, axis].mean()) for axis in (1, 2)]


@torch.no_grad()
def loss_gap(pipeline: WanT2V, clips: int, sigmas: list[float], seed: int = 0) -> list[dict]:
    """Flow loss with the true / reversed / empty caption on straight-motion training clips, per noise level."""
    specs = [spec for spec in (data.sample_spec(seed, i, two_object_prob=0.0) for i in range(4 * clips))
             if spec.objects[0].motion != "bounces"][:clips]
    latents = [pipeline.vae.encode([torch.from_numpy(data.to_model_range(data.render(spec)[0]))])[0] for spec in specs]
    captions = [data.caption(spec) for spec in specs]
    contexts = {name: [pipeline.text_encoder([text], torch.device("cpu"))[0] for text in texts]
                for name, texts in (("true", captions), ("reversed", [reversed_caption(spec) for spec in specs]),
                                    ("empty", [""] * len(captions)))}
    generator = torch.Generator().manual_seed(seed)
    seq_len = int(np.prod(latents[0].shape[1:])) // 4  # tokens: patch 1x2x2
    results = []
    for sigma in sigmas:
        totals = dict.fromkeys(contexts, 0.0)
        for index, x0 in enumerate(latents):
            noise = torch.randn(x0.shape, generator=generator)
            x_t = (1 - sigma) * x0 + sigma * noise
            for name, context in contexts.items():
                v = pipeline.model([x_t], t=torch.tensor([sigma * 1000.0]), context=[context[index]], seq_len=seq_len)[0]
                totals[name] += float(((v - (noise - x0)) ** 2).mean()) / len(latents)
        results.append({"sigma": sigma, **totals, "direction_gap": totals["reversed"] - totals["true"],
                        "caption_gap": totals["empty"] - totals["true"]})
    return results


def _bottom_top_ratio(video: np.ndarray) -> float:
    """Median brightness of rows 48-59 over rows 4-15 (away from the borders), ``[T, H, W, 3]`` in [0, 1]."""
    brightness = video.mean(axis=-1)
    return float(np.median(brightness[:, 48:60]) / max(np.median(brightness[:, 4:16]), 1e-6))


def absolute_position(pipeline: WanT2V, seeds: int, steps: int, guide_scale: float) -> dict:
    """Bottom/top brightness of generated gray gradient and plain backgrounds, and of the generator's gradient."""
    result = {}
    for background in ("gray gradient", "gray"):
        prompt = f"a small white circle moves up over a {background} background"
        ratios = []
        for seed in range(seeds):
            ratios.append(_bottom_top_ratio(_generate(pipeline, prompt, seed, steps, guide_scale)))
        result[background] = ratios
    truth = np.stack([data.background_frame(data.BackgroundSpec("gray", "gradient"), t) for t in range(data.FRAMES)])
    result["ground truth gray gradient"] = _bottom_top_ratio(truth)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_dir", default=WAN_CONFIGS["t2v-tiny"].default_ckpt_dir)
    parser.add_argument("--seeds", type=int, default=4,
                        help="seeds of the direction-swap probe (x 2 objects x 4 words) and of the position probe")
    parser.add_argument("--sample_steps", type=int, default=30)
    parser.add_argument("--sample_guide_scale", type=float, default=5.0)
    parser.add_argument("--clips", type=int, default=48, help="training clips of the loss-gap probe")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.95, 0.8, 0.6, 0.4, 0.2])
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    for name in ("seeds", "sample_steps", "clips"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)} is not allowed: expected a positive integer")
    if any(not 0.0 < s <= 1.0 for s in args.sigmas):
        parser.error(f"--sigmas {args.sigmas} is not allowed: every noise level must be in (0, 1]")
    torch.set_flush_denormal(True)
    pipeline = WanT2V(WAN_CONFIGS["t2v-tiny"], args.ckpt_dir, device="cpu")
    swap = direction_swap(pipeline, args.seeds, args.sample_steps, args.sample_guide_scale)
    spread = swap["displacement_spread_px"]
    print(f"direction swap: {swap['accuracy']:.1%} of {swap['count']} right; spread (std) of the net displacement "
          f"across the four words: {'n/a' if spread is None else f'{spread:.1f} px'} (0 = the word changes nothing)")
    position = absolute_position(pipeline, args.seeds, args.sample_steps, args.sample_guide_scale)
    print("bottom/top brightness: generated gradient " + ", ".join(f"{r:.2f}" for r in position["gray gradient"])
          + "; generated plain " + ", ".join(f"{r:.2f}" for r in position["gray"])
          + f"; the generator's gradient {position['ground truth gray gradient']:.2f}")
    gaps = loss_gap(pipeline, args.clips, args.sigmas)
    for row in gaps:
        print(f"sigma {row['sigma']:.2f}: loss true {row['true']:.4f}, reversed {row['reversed']:.4f}, "
              f"empty {row['empty']:.4f}; direction gap {row['direction_gap']:+.4f}, caption gap "
              f"{row['caption_gap']:+.4f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"ckpt_dir": args.ckpt_dir, "direction_swap": swap, "absolute_position": position,
                       "loss_gap": gaps}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
