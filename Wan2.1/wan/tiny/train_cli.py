"""Trains the tiny Wan2.1 model (``--task t2v-tiny``) from scratch on the CPU and writes its checkpoint folder.

Stages (each resumable; rerunning skips finished stages and resumes the interrupted one from its last save):

    text     SentencePiece tokenizer on the caption template + umT5 encoder initialisation
    vae      Wan VAE trained for reconstruction on generated clips
    latents  the DiT training set encoded once; the latent statistics measured
    dit      Wan DiT trained with flow matching and caption dropout, jointly with the umT5 encoder (EMA kept)
    export   the official checkpoint layout (latent statistics folded into the VAE's quant convs)
    profile  the cache profile wan/cache_profiles/t2v-tiny.json, written by the profiler (scripts/profile_wan.py)

Usage (from the repository root):

    python -m wan.tiny.train_cli --work_dir /work/tiny_train/run [--out_dir Wan2.1/Wan2.1-T2V-tiny]
    python -m wan.tiny.train_cli --work_dir /tmp/smoke --smoke --out_dir /tmp/smoke/ckpt   # 2-minute check
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

from .checkpoints import StageLog
from .recipe import TinyRecipe, smoke_recipe
from .train_stages import STAGES, run_stages

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the checkout

ALL_STAGES = (*STAGES, "profile")
PROFILE_ARGS = ["--num_prompts", "8", "--cache_k", "8"]  # uniform refresh (see docs/profiling.md, results)
FIGURES = "docs/images/profiling_t2v-tiny"


def run_profiler(ckpt_dir: str, out: str, smoke: bool) -> None:
    """The shipped profile's command (docs/profiling.md), on the checkpoint just exported: ``scripts/profile_wan.py``
    of this checkout, run in this process (same threads and logging) from the repository root (the profile records
    its command relative to it)."""
    spec = importlib.util.spec_from_file_location("profile_wan", os.path.join(ROOT, "scripts", "profile_wan.py"))
    profile_wan = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile_wan)
    argv = PROFILE_ARGS + ["--out", os.path.relpath(out, ROOT), "--figures", FIGURES]
    if smoke:
        argv = ["--num_prompts", "1", "--sample_steps", "8", "--warmup", "2", "--out", out]
    if os.path.abspath(ckpt_dir) != os.path.abspath(os.path.join(ROOT, "Wan2.1", "Wan2.1-T2V-tiny")):
        argv += ["--ckpt_dir", ckpt_dir]
    cwd = os.getcwd()
    os.chdir(ROOT)  # the recorded command is relative to the repository root
    try:
        if profile_wan.main(["--task", "t2v-tiny", *argv]) != 0:
            raise SystemExit("the profile stage failed (see the messages above)")
    finally:
        os.chdir(cwd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", required=True, help="folder for per-stage checkpoints and logs")
    parser.add_argument("--out_dir", default=os.path.join(ROOT, "Wan2.1", "Wan2.1-T2V-tiny"),
                        help="checkpoint folder to write (official layout)")
    parser.add_argument("--profile_out", default=os.path.join(ROOT, "Wan2.1", "wan", "cache_profiles", "t2v-tiny.json"),
                        help="where the profile stage writes the cache profile")
    parser.add_argument("--stages", default=",".join(ALL_STAGES), help=f"comma-separated subset of {ALL_STAGES}")
    parser.add_argument("--smoke", action="store_true", help="a few steps per stage (pipeline check)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine two threads stall each other)")
    args = parser.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in ALL_STAGES]
    if unknown:
        raise SystemExit(f"--stages: unknown stage(s) {unknown}; allowed {list(ALL_STAGES)}")
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    recipe = smoke_recipe() if args.smoke else TinyRecipe()
    os.makedirs(args.work_dir, exist_ok=True)
    with open(os.path.join(args.work_dir, "recipe.json"), "w") as handle:
        json.dump(recipe.to_dict(), handle, indent=2)
    log = StageLog(args.work_dir)
    run_stages(args.work_dir, recipe, args.out_dir, [s for s in stages if s in STAGES], log)
    if "profile" in stages:
        log("stage profile")
        run_profiler(args.out_dir, args.profile_out, args.smoke)
    log("all stages finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
