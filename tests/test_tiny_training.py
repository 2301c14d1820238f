"""Training machinery of the tiny model: batched RoPE, resumable stages, the exported checkpoint layout."""

import json
import os
import pytest
import torch

from wan.configs import WAN_CONFIGS
from wan.modules.checkpoint import load_wan_model
from wan.modules.model import WanModel, rope_apply
from wan.modules.t5 import build_t5_encoder, load_t5_state_dict
from wan.modules.vae import load_vae_state_dict, infer_vae_config
from wan.tiny import data, train_stages
from wan.tiny.checkpoints import StageLog, cosine_lr, ema_debiased, ema_update, latest_step_file
from wan.tiny.fast_rope import batched_rope, rope_apply_batched
from wan.tiny.recipe import DitPhase, TinyRecipe
from wan.tiny.vae_init import TINY_VAE_CONFIG

pytestmark = pytest.mark.usefixtures("one_thread")

MICRO = TinyRecipe(num_videos=6, decoder_steps=1, decoder_batch=1, dit_batch=2, save_every=1, dit_phases=(
    DitPhase("dit", steps=3, lr=5e-4, warmup=1), DitPhase("dit2", steps=1, lr=3e-4, warmup=1, foreground_weight=8.0)))


def test_batched_rope_is_bit_identical_and_falls_back_for_mixed_grids():
    model = WanModel(dim=64, ffn_dim=64, num_heads=4, num_layers=1, text_dim=32, text_len=8)
    freqs = model.rope_table(torch.device("cpu"))
    x = torch.randn(3, 80, 4, 16, dtype=torch.float32)
    grids = torch.tensor([[5, 4, 4]] * 3)
    assert torch.equal(rope_apply_batched(x, grids, freqs), rope_apply(x, grids, freqs))
    mixed = torch.tensor([[5, 4, 4], [4, 4, 4], [5, 4, 4]])
    assert torch.equal(rope_apply_batched(x, mixed, freqs), rope_apply(x, mixed, freqs))
    latents = [torch.randn(16, 5, 8, 8) for _ in range(2)]
    context = [torch.randn(5, 32), torch.randn(7, 32)]
    t = torch.tensor([300.0, 800.0])
    with torch.no_grad():
        plain = model(latents, t, context, seq_len=80)
        with batched_rope():
            fast = model(latents, t, context, seq_len=80)
    assert all(torch.equal(a, b) for a, b in zip(plain, fast))
    import wan.modules.model as wan_model

    assert wan_model.rope_apply is rope_apply  # restored


def test_cosine_lr_schedule():
    assert cosine_lr(0, 100, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert cosine_lr(9, 100, 1.0, 10, 0.1) == pytest.approx(1.0)
    assert cosine_lr(100, 100, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert cosine_lr(55, 100, 1.0, 10, 0.1) == pytest.approx(0.55)


def test_debiased_ema_removes_the_initial_weights():
    model = torch.nn.Linear(3, 2)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    ema = {k: v.clone() for k, v in initial.items()}
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(0.5)  # constant trained weights
    for _ in range(7):
        ema_update(ema, model, 0.9)
    debiased = ema_debiased(ema, initial, 0.9, 7)
    assert all(torch.allclose(v, torch.full_like(v, 0.5)) for v in debiased.values())


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    """Stages text, vae, latents and decoder of a micro recipe (shared by the tests below)."""
    torch.set_flush_denormal(True)
    work = str(tmp_path_factory.mktemp("tiny_work"))
    log = StageLog(work)
    for stage in ("text", "vae", "latents", "decoder"):
        train_stages.run_stages(work, MICRO, "", [stage], log)
    return work


def _dit_state(work):
    return torch.load(os.path.join(work, "dit", "ema.pt"), map_location="cpu")


def test_foreground_weighted_loss(micro_run):
    """Weights of one give the plain MSE; the weighted loss equals the weighted mean computed by hand; the
    foreground fractions are the ground-truth object share of each latent cell."""
    dit, t5 = train_stages.initial_dit_and_t5(micro_run, MICRO)
    x0 = torch.randn(2, 16, 5, 8, 8)
    ids, mask = torch.randint(1, 50, (2, 32)), torch.ones(2, 32, dtype=torch.long)

    def loss(weight):
        with torch.no_grad():
            return train_stages.dit_loss(dit, t5, x0, ids, mask, MICRO, torch.Generator().manual_seed(3), weight)

    plain = loss(None)
    assert torch.allclose(loss(torch.ones(2, 5, 8, 8)), plain)
    weight = torch.rand(2, 5, 8, 8) + 0.5
    generator = torch.Generator().manual_seed(3)  # the same draws as dit_loss makes
    noise = torch.randn(x0.shape, generator=generator)
    sigma = train_stages.shifted_sigmas(torch.rand(2, generator=generator), MICRO.train_shift)
    x_t = (1 - sigma.view(2, 1, 1, 1, 1)) * x0 + sigma.view(2, 1, 1, 1, 1) * noise
    with torch.no_grad():
        pred = torch.stack(dit(list(x_t), t=sigma * 1000, context=train_stages.encode_text(t5, ids, mask), seq_len=80))
    error = (pred - (noise - x0)).square().mean(dim=1)  # [2, 5, 8, 8]: mean over channels
    assert torch.allclose(loss(weight), (error * weight).sum() / weight.sum(), rtol=1e-5)
    fractions = train_stages.latent_foreground(micro_run, MICRO)
    assert fractions.shape == (MICRO.num_videos, 5, 8, 8)
    _, masks = data.render(data.sample_spec(MICRO.seed, 0, two_object_prob=MICRO.two_object_prob))
    assert torch.isclose(fractions[0, 0].mean(), torch.tensor(masks.any(axis=0)[0].mean(), dtype=torch.float32))
    assert 0 < fractions.max() <= 1 and fractions.min() == 0


def test_interrupted_dit_stage_resumes_to_the_same_weights(micro_run, tmp_path):
    import shutil

    log = StageLog(str(tmp_path))
    straight = str(tmp_path / "straight")
    shutil.copytree(micro_run, straight)
    train_stages.run_stages(straight, MICRO, "", ["dit"], log)
    resumed = str(tmp_path / "resumed")
    shutil.copytree(micro_run, resumed)
    train_stages.run_stages(resumed, MICRO, "", ["dit"], log, stop_after=2)  # interrupted after 2 steps
    assert not os.path.exists(os.path.join(resumed, "dit", "DONE"))
    train_stages.run_stages(resumed, MICRO, "", ["dit"], log)
    assert latest_step_file(os.path.join(resumed, "dit"))[0] == 3
    a, b = _dit_state(straight), _dit_state(resumed)
    assert all(torch.equal(a["dit"][k], b["dit"][k]) for k in a["dit"])
    assert all(torch.equal(a["t5"][k], b["t5"][k]) for k in a["t5"])
    with open(os.path.join(str(tmp_path), "log.txt")) as handle:
        assert "dit: resumed from step 2" in handle.read()


def test_finished_stages_are_skipped(micro_run, tmp_path):
    files = [os.path.join(micro_run, "vae", "vae.pt"), os.path.join(micro_run, "decoder", "vae.pt")]
    before = [os.path.getmtime(path) for path in files]
    train_stages.run_stages(micro_run, MICRO, "", ["text", "vae", "latents", "decoder"], StageLog(str(tmp_path)))
    assert [os.path.getmtime(path) for path in files] == before


def test_decoder_stage_keeps_the_encoder(micro_run):
    first = torch.load(os.path.join(micro_run, "vae", "vae.pt"))
    refined = torch.load(os.path.join(micro_run, "decoder", "vae.pt"))
    encoder_keys = [k for k in first if k.startswith("encoder.") or k.startswith("conv1.")]
    assert encoder_keys and all(torch.equal(first[k], refined[k]) for k in encoder_keys)
    assert any(not torch.equal(first[k], refined[k]) for k in first if k.startswith("decoder."))


def test_export_writes_the_official_layout(micro_run, tmp_path):
    work = str(tmp_path / "work")
    import shutil

    shutil.copytree(micro_run, work)
    out = str(tmp_path / "ckpt")
    train_stages.run_stages(work, MICRO, out, ["dit", "export"], StageLog(work))
    assert sorted(os.listdir(out)) == ["Wan2.1_VAE.pth", "config.json",
                                       "diffusion_pytorch_model-00001-of-00002.safetensors",
                                       "diffusion_pytorch_model-00002-of-00002.safetensors",
                                       "diffusion_pytorch_model.safetensors.index.json", "google",
                                       "models_t5_umt5-xxl-enc-bf16.pth"]  # 12 MB of DiT: two shards of <= 8 MB
    assert {"tokenizer.json", "tokenizer_config.json", "spiece.model"} <= set(os.listdir(os.path.join(out, "google",
                                                                                                    "umt5-xxl")))
    with open(os.path.join(out, "config.json")) as handle:
        config = json.load(handle)
    assert config["_class_name"] == "WanModel" and config["num_layers"] == WAN_CONFIGS["t2v-tiny"].num_layers
    model = load_wan_model(out, expected_config=WAN_CONFIGS["t2v-tiny"])
    initial, _ = train_stages.initial_dit_and_t5(work, MICRO)
    final = torch.load(os.path.join(work, "dit2", "ema.pt"), map_location="cpu")["dit"]  # one EMA over both phases
    ema = ema_debiased(final, initial.state_dict(), MICRO.ema_decay, 3 + 1)
    assert all(torch.allclose(model.state_dict()[k], ema[k]) for k in ema)
    t5_state = load_t5_state_dict(os.path.join(out, "models_t5_umt5-xxl-enc-bf16.pth"))
    assert all(v.dtype == torch.bfloat16 for v in t5_state.values())
    build_t5_encoder(t5_state)
    vae_state = load_vae_state_dict(os.path.join(out, "Wan2.1_VAE.pth"))
    assert infer_vae_config(vae_state) == TINY_VAE_CONFIG
    assert all(v.dtype == torch.float32 for v in vae_state.values())
