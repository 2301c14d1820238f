"""Shape and memory check of the real Wan2.1 T2V-1.3B DiT config on the CPU: one fp32 forward, random weights.

Usage (from the repository root; about 1 minute and 6 GB of RAM on 2 cores):
    .venv/bin/python scripts/bench/wan_shape.py [--task t2v-1.3B] [--latent 16 3 30 52] [--repeats 1]

The model is built on the meta device, materialised with ``to_empty`` and initialised once with
``WanModel.init_weights`` (random weights, and the upstream zero output layer: timings only). Prints the
parameter count, the build time, the time of each forward and the peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from wan.configs import WAN_CONFIGS
from wan.modules.checkpoint import ARCHITECTURE_FIELDS
from wan.modules.model import WanModel


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="t2v-1.3B", choices=sorted(WAN_CONFIGS))
    parser.add_argument("--latent", type=int, nargs=4, default=[16, 3, 30, 52], metavar=("C", "F", "H", "W"))
    parser.add_argument("--text_tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1)
    return parser.parse_args()


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def build_model(task: str) -> WanModel:
    cfg = WAN_CONFIGS[task]
    with torch.device("meta"):
        model = WanModel(**{key: cfg[key] for key in ARCHITECTURE_FIELDS if key in cfg})
    model = model.to_empty(device="cpu")
    model.init_weights()
    return model.eval()


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()
    model = build_model(args.task)
    build_s = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    c, f, h, w = args.latent
    pt, ph, pw = model.patch_size
    tokens = (f // pt) * (h // ph) * (w // pw)
    print(
        f"task {args.task}: {params:,} parameters, {len(model.state_dict())} tensors, fp32, "
        f"built in {build_s:.1f} s"
    )
    print(f"input: latent {c}x{f}x{h}x{w} ({tokens} tokens), text 1x{args.text_tokens}x{model.text_dim}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    latent = [torch.randn(c, f, h, w)]
    context = [torch.randn(args.text_tokens, model.text_dim)]
    t = torch.tensor([999])
    with torch.inference_mode():
        for i in range(args.repeats):
            start = time.perf_counter()
            out = model(latent, t, context, seq_len=tokens)
            print(f"forward {i + 1}: {time.perf_counter() - start:.1f} s, output {list(out[0].shape)} "
                  f"{out[0].dtype}, finite={bool(torch.isfinite(out[0]).all())}")
    print(f"peak RSS: {peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
