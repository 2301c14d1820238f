"""The "Use with diffusers" example of docs/diffusers.md really runs: its first code block is executed against a
tiny random WanPipeline (tokenizer, umT5 encoder, VAE and a 40-block transformer) saved locally, with only the
model folder, the video size, the dtype and the device substituted."""

import os
import re

import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers_twins import tiny_wan_pipeline
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel
from wan_ckpt_dit import TINY_CONFIG
from wan_ckpt_text import build_tiny_tokenizer

from common_cache import CacheProfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "diffusers.md")


def doc_example(index: int = 0) -> str:
    """The ``index``-th ```python block of the doc."""
    with open(DOC, encoding="utf-8") as handle:
        blocks = re.findall(r"```python\n(.*?)```", handle.read(), re.DOTALL)
    assert len(blocks) > index, f"{DOC} has no python code block {index}"
    return blocks[index]


def substitute(code: str, model_dir: str) -> str:
    """Points the example at the tiny pipeline; fails if a line it relies on is gone from the doc."""
    replacements = [
        (r'^MODEL = .*$', f"MODEL = {model_dir!r}"),
        (r'^SIZE = .*$', "SIZE = dict(height=64, width=64, num_frames=5)"),
        (r'torch\.bfloat16', "torch.float32"),
        (r'\.to\("cuda"\)', '.to("cpu")'),
    ]
    for pattern, new in replacements:
        code, count = re.subn(pattern, new, code, flags=re.MULTILINE)
        assert count == 1, f"the doc example no longer contains {pattern!r}"
    return code


def save_tiny_pipeline(folder: str) -> None:
    pipe = tiny_wan_pipeline(num_layers=40)
    pipe.tokenizer = AutoTokenizer.from_pretrained(build_tiny_tokenizer(os.path.join(folder, "spm")))
    config = UMT5Config(vocab_size=pipe.tokenizer.vocab_size, d_model=TINY_CONFIG["text_dim"], d_kv=8, d_ff=64,
                        num_layers=1, num_heads=2, relative_attention_num_buckets=8)
    pipe.text_encoder = UMT5EncoderModel(config).eval()
    pipe.vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, attn_scales=[],
                                temperal_downsample=[False, True, True]).eval()
    pipe.register_modules(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae)
    pipe.save_pretrained(os.path.join(folder, "pipeline"))


@pytest.mark.usefixtures("one_thread")
def test_the_documented_example_runs(tmp_path, monkeypatch, capsys):
    save_tiny_pipeline(str(tmp_path))
    code = substitute(doc_example(), str(tmp_path / "pipeline"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with torch.no_grad():
        exec(compile(code, DOC, "exec"), namespace)  # noqa: S102 - our own documentation
    assert (tmp_path / "cat.mp4").stat().st_size > 0
    cache = namespace["cache"]
    assert cache.stats.total_calls == 50 * 2 * 40 and cache.stats.ideal_speedup == pytest.approx(2.016, abs=1e-3)
    assert "ideal speedup 2.016x" in capsys.readouterr().out
    assert not hasattr(namespace["pipe"].transformer.blocks, "stack_call")  # disabled again


@pytest.mark.usefixtures("one_thread")
def test_the_documented_profiling_example_runs(tmp_path, monkeypatch):
    save_tiny_pipeline(str(tmp_path))
    code = substitute(doc_example(1), str(tmp_path / "pipeline"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with torch.no_grad():
        exec(compile(code, DOC, "exec"), namespace)  # noqa: S102 - our own documentation
    profile = CacheProfile.load(str(tmp_path / "my_profile.json"))
    (group,) = profile.config.groups
    assert group.depth == 40 and len(group.cached_blocks) == 15 and group.warmup_steps == 6
    assert namespace["statistics"].prompts == namespace["PROMPTS"]
    assert namespace["statistics"].counts["r_attn"]["blocks"][:, 0].tolist() == [2 * 2] * 40  # prompts x branches
    assert namespace["cache"] is not None and namespace["cache"].config == profile.config
