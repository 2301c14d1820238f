"""Training stages of the tiny Wan2.1 model: tokenizer + umT5 init, VAE, latents, decoder, DiT (+ T5), export.

Not an upstream module. Each stage works in its own folder under a work directory, saves resumable state every
``recipe.save_every`` steps and writes ``DONE`` when finished, so rerunning the training skips finished stages and
resumes an interrupted one from its last saved step. Every random draw is a pure function of the recipe seed and
the step index, so a resumed run gives the same weights as an uninterrupted one.

Flow matching as Wan2.1 trains it: ``x_t = (1 - s) x0 + s * noise``, target ``v = noise - x0``, timestep
``t = 1000 s``; ``s`` is a shifted uniform draw (``recipe.train_shift``, the same shift the sampler uses).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from common_cache.profiling import pixel_to_latent_mask

from ..modules.model import WanModel
from ..modules.t5 import T5Encoder
from ..modules.tokenizers import HuggingfaceTokenizer
from ..modules.vae import WanVAE_
from ..utils.sp_tokenizer import build_sentencepiece_tokenizer
from . import data
from .checkpoints import (StageLog, cosine_lr, ema_debiased, ema_update, is_done, latest_step_file, mark_done,
                          save_step)
from .export import export_checkpoint
from .fast_rope import batched_rope
from .recipe import TinyRecipe
from .vae_init import TINY_VAE_CONFIG, closed_form_vae

STAGES = ("text", "vae", "latents", "decoder", "dit", "export")


def _stage_dir(work: str, name: str) -> str:
    path = os.path.join(work, name)
    os.makedirs(path, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------------------------------
# Stage "text": tokenizer and the initial umT5 encoder


def init_t5_(model: T5Encoder) -> T5Encoder:
    """T5's initialisation (unscaled attention needs small query weights): N(0, 1) embeddings, q with std
    (dim * head_dim)^-1/2, k/v/gate/fc1 dim^-1/2, o (heads * head_dim)^-1/2, fc2 ffn^-1/2, bias tables dim^-1/2."""
    dim = model.dim
    with torch.no_grad():
        model.token_embedding.weight.normal_(0.0, 1.0)
        for block in model.blocks:
            attn = block.attn
            head_dim = attn.q.weight.shape[0] // attn.num_heads
            attn.q.weight.normal_(0.0, (dim * head_dim) ** -0.5)
            for linear in (attn.k, attn.v, block.ffn.gate[0], block.ffn.fc1):
                linear.weight.normal_(0.0, dim**-0.5)
            attn.o.weight.normal_(0.0, attn.o.weight.shape[1] ** -0.5)
            block.ffn.fc2.weight.normal_(0.0, block.ffn.fc2.weight.shape[1] ** -0.5)
            block.pos_embedding.embedding.weight.normal_(0.0, dim**-0.5)
    return model


def run_text_stage(work: str, recipe: TinyRecipe, log) -> None:
    stage = _stage_dir(work, "text")
    if is_done(stage):
        return
    tokenizer_dir = os.path.join(stage, "tokenizer")
    build_sentencepiece_tokenizer(tokenizer_dir, data.caption_corpus(), recipe.vocab_size)
    torch.manual_seed(recipe.seed)
    t5 = init_t5_(T5Encoder(vocab=recipe.vocab_size, max_dist=128, **recipe.t5))
    torch.save(t5.state_dict(), os.path.join(stage, "t5_init.pt"))
    log(f"text: tokenizer ({recipe.vocab_size} pieces) and umT5 init ({_count(t5)} parameters)")
    mark_done(stage)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------------------
# Stage "vae": the closed-form colour-pooling encoder and the decoder's starting point (vae_init.py)


def run_vae_stage(work: str, recipe: TinyRecipe, log) -> None:
    stage = _stage_dir(work, "vae")
    if is_done(stage):
        return
    model = closed_form_vae()
    torch.save(model.state_dict(), os.path.join(stage, "vae.pt"))
    log(f"vae: closed-form encoder and initial decoder ({_count(model)} parameters)")
    mark_done(stage)


def _resume(stage: str, objects: dict, log) -> int:
    """Loads the newest step file of a stage into ``objects`` (name -> module/optimizer); returns its step."""
    latest = latest_step_file(stage)
    if latest is None:
        return 0
    step, path = latest
    state = torch.load(path, map_location="cpu", weights_only=False)
    for name, obj in objects.items():
        obj.load_state_dict(state[name])
    log(f"{os.path.basename(stage)}: resumed from step {step}")
    return step


# ------------------------------------------------------------------------------------------------------------
# Stage "latents": encode the DiT training set once and measure the latent statistics


@torch.no_grad()
def run_latents_stage(work: str, recipe: TinyRecipe, log) -> None:
    stage = _stage_dir(work, "latents")
    if is_done(stage):
        return
    model = WanVAE_(**TINY_VAE_CONFIG)
    model.load_state_dict(torch.load(os.path.join(work, "vae", "vae.pt"), map_location="cpu"))
    model.eval()
    captions, mus, batch = [], [], 32
    for first in range(0, recipe.num_videos, batch):
        specs = [data.sample_spec(recipe.seed, i, two_object_prob=recipe.two_object_prob)
                 for i in range(first, min(first + batch, recipe.num_videos))]
        clips = torch.from_numpy(np.stack([data.to_model_range(data.render(spec)[0]) for spec in specs]))
        mus.append(model.encode_moments(clips)[0])
        captions += [data.caption(spec) for spec in specs]
        if first % 640 == 0:
            log(f"latents: {first + len(specs)}/{recipe.num_videos}")
    mu = torch.cat(mus)  # [N, 16, 5, 8, 8]
    mean = mu.mean(dim=(0, 2, 3, 4))
    std = mu.std(dim=(0, 2, 3, 4))
    latents = (mu - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)
    torch.save({"latents": latents, "captions": captions, "mean": mean, "std": std},
               os.path.join(stage, "latents.pt"))
    log(f"latents: {tuple(latents.shape)}, own mean {mean.abs().max():.3f} (max abs), "
        f"std {std.min():.3f}..{std.max():.3f}")
    mark_done(stage)


# ------------------------------------------------------------------------------------------------------------
# Stage "decoder": the VAE decoder is trained for reconstruction with the closed-form encoder frozen (independent
# of the DiT stage, so the two can run in parallel processes: the DiT only ever sees the encoder's latents)


def decoder_batch(recipe: TinyRecipe, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Full 17-frame 64x64 clips (every chunk state of the causal decoder) and their object masks."""
    videos, masks = [], []
    for i in range(recipe.decoder_batch):
        spec = data.sample_spec(recipe.seed + 2000, step * recipe.decoder_batch + i,
                                two_object_prob=recipe.two_object_prob)
        video, mask = data.render(spec)
        videos.append(data.to_model_range(video))
        masks.append(mask.any(axis=0)[None].astype(np.float32))
    return torch.from_numpy(np.stack(videos)), torch.from_numpy(np.stack(masks))


def run_decoder_stage(work: str, recipe: TinyRecipe, log) -> None:
    stage = _stage_dir(work, "decoder")
    if is_done(stage):
        return
    model = WanVAE_(**TINY_VAE_CONFIG)
    model.load_state_dict(torch.load(os.path.join(work, "vae", "vae.pt"), map_location="cpu"))
    frozen = [model.encoder, model.conv1]
    for module in frozen:
        module.requires_grad_(False).eval()
    params = [p for p in model.parameters() if p.requires_grad]  # decoder and its quant conv (conv2)
    optimizer = torch.optim.AdamW(params, lr=recipe.decoder_lr, betas=(0.9, 0.99), weight_decay=0.0)
    start = _resume(stage, {"model": model, "opt": optimizer}, log)
    if start == 0:
        log(f"decoder: {sum(p.numel() for p in params)} trainable parameters, {recipe.decoder_steps} steps")
    model.decoder.train()
    for step in range(start, recipe.decoder_steps):
        clips, masks = decoder_batch(recipe, step)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, recipe.decoder_steps, recipe.decoder_lr, 10, 0.05)
        with torch.no_grad():
            mu, _ = model.encode_moments(clips)
        error = model.decode_raw(mu) - clips
        weight = 1.0 + recipe.vae_foreground_weight * masks
        loss = ((error.abs() + error.square()) * weight).mean() / weight.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % 10 == 0 or step == recipe.decoder_steps - 1:
            log(f"decoder step {step + 1}/{recipe.decoder_steps} loss {loss.item():.4f}")
        if (step + 1) % recipe.decoder_save_every == 0 or step == recipe.decoder_steps - 1:
            save_step(stage, step + 1, {"model": model.state_dict(), "opt": optimizer.state_dict()})
    torch.save(model.state_dict(), os.path.join(stage, "vae.pt"))
    mark_done(stage)


# ------------------------------------------------------------------------------------------------------------
# Stage "dit": flow matching, T5 trained jointly, caption dropout, EMA


def shifted_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    """The sampler's shift applied to uniform draws: ``shift * u / (1 + (shift - 1) * u)``."""
    return shift * u / (1 + (shift - 1) * u)


def encode_text(t5: T5Encoder, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """As ``T5EncoderModel.__call__``: hidden states trimmed to each prompt's true length."""
    out = t5(ids, mask)  # [B, L, C]
    return [u[:n] for u, n in zip(out, mask.sum(dim=1).tolist())]


def dit_loss(dit: WanModel, t5: T5Encoder, x0: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
             recipe: TinyRecipe, generator: torch.Generator, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Flow-matching loss of one batch: x0 ``[B, 16, f, h, w]`` normalised latents, token ids/mask ``[B, L]``;
    ``weight`` ``[B, f, h, w]``: per-cell loss weights (None = plain MSE)."""
    b = x0.shape[0]
    # drawn on the CPU generator (the draws do not depend on the device), then moved to the batch's device
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    sigma = shifted_sigmas(torch.rand(b, generator=generator), recipe.train_shift).to(x0.device)
    s = sigma.view(b, 1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * noise
    seq_len = x0.shape[2] * x0.shape[3] * x0.shape[4] // 4
    pred = dit(list(x_t.unbind(0)), t=sigma * 1000, context=encode_text(t5, ids, mask), seq_len=seq_len)
    error = (torch.stack(pred) - (noise - x0)).square()
    if weight is None:
        return error.mean()
    weight = weight[:, None].expand_as(error)
    return (error * weight).mean() / weight.mean()


def dit_train_step(dit: WanModel, t5: T5Encoder, optimizer: torch.optim.Optimizer, latents: torch.Tensor,
                   ids: torch.Tensor, mask: torch.Tensor, recipe: TinyRecipe, generator: torch.Generator, batch: int,
                   lr: float, foreground: torch.Tensor | None = None,
                   foreground_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One AdamW step of the DiT and the T5 on a random batch of ``latents`` ``[N, 16, f, h, w]``: clips and caption
    dropout (to the empty caption, the last row of ``ids``/``mask``) drawn from ``generator``, learning rate ``lr``,
    gradient norm clipped to 1; ``foreground`` ``[N, f, h, w]`` weighs the loss (``latent_foreground``).

    Returns:
        The batch loss and the gradient norm before clipping.
    """
    index = torch.randint(len(latents), (batch,), generator=generator)
    text = torch.where(torch.rand(batch, generator=generator) < recipe.caption_dropout, len(latents), index)
    for group in optimizer.param_groups:
        group["lr"] = lr
    weight = None if foreground is None else 1.0 + foreground_weight * foreground[index]
    loss = dit_loss(dit, t5, latents[index], ids[text], mask[text], recipe, generator, weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad = torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], 1.0)
    optimizer.step()
    return loss, grad


def latent_foreground(work: str, recipe: TinyRecipe) -> torch.Tensor:
    """Object fraction of every latent cell of the training set ``[N, f, h, w]`` (ground-truth masks of the same
    specs as the latents stage, grouped like the causal VAE; cached in ``latents/foreground.pt``)."""
    path = os.path.join(work, "latents", "foreground.pt")
    if os.path.isfile(path):
        return torch.load(path, map_location="cpu")
    shape = torch.load(os.path.join(work, "latents", "latents.pt"), map_location="cpu")["latents"].shape
    fractions = []
    for i in range(recipe.num_videos):
        _, masks = data.render(data.sample_spec(recipe.seed, i, two_object_prob=recipe.two_object_prob))
        fractions.append(pixel_to_latent_mask(torch.from_numpy(masks.any(axis=0)), shape[2:]))
    result = torch.stack(fractions)
    torch.save(result, path)
    return result


def run_dit_stage(work: str, recipe: TinyRecipe, log, stop_after: int | None = None) -> None:
    """Trains the DiT and the T5 from their initialisation through ``recipe.dit_phases`` (``stop_after``: return
    after that many steps of a phase, as an interruption would)."""
    for index in range(len(recipe.dit_phases)):
        if not _train_dit_phase(work, recipe, log, index, stop_after):
            return


def _train_dit_phase(work: str, recipe: TinyRecipe, log, index: int, stop_after: int | None) -> bool:
    """Phase ``index`` (batch draws depend on the global step); False when interrupted."""
    phase = recipe.dit_phases[index]
    step_offset = sum(p.steps for p in recipe.dit_phases[:index])
    stage = _stage_dir(work, phase.name)
    if is_done(stage):
        return True
    batch = recipe.dit_batch
    dataset = torch.load(os.path.join(work, "latents", "latents.pt"), map_location="cpu")
    latents, captions = dataset["latents"], dataset["captions"]
    foreground = latent_foreground(work, recipe) if phase.foreground_weight > 0 else None
    tokenizer = HuggingfaceTokenizer(os.path.join(work, "text", "tokenizer"), seq_len=recipe.dit_config()["text_len"],
                                     clean="whitespace")
    ids, mask = tokenizer(captions + [""], return_mask=True, add_special_tokens=True)
    dit, t5 = initial_dit_and_t5(work, recipe)
    params = list(dit.parameters()) + list(t5.parameters())
    optimizer = torch.optim.AdamW(params, lr=phase.lr, betas=(0.9, 0.99), weight_decay=recipe.weight_decay)
    ema = {"dit": {k: v.clone() for k, v in dit.state_dict().items()},
           "t5": {k: v.clone() for k, v in t5.state_dict().items()}}
    if index:  # the previous phase's final state
        previous = recipe.dit_phases[index - 1]
        carried = os.path.join(work, previous.name, f"step_{previous.steps:06d}.pt")
        state = torch.load(carried, map_location="cpu", weights_only=False)
        dit.load_state_dict(state["dit"]), t5.load_state_dict(state["t5"]), optimizer.load_state_dict(state["opt"])
        ema = state["ema"]
    start = _resume(stage, {"dit": dit, "t5": t5, "opt": optimizer}, log)
    if start:
        ema = torch.load(latest_step_file(stage)[1], map_location="cpu", weights_only=False)["ema"]
    else:
        log(f"{phase.name}: {_count(dit)} parameters, T5 {_count(t5)}, {len(captions)} videos, {phase.steps} steps, "
            f"foreground weight {phase.foreground_weight}")
    dit.train(), t5.train()
    with batched_rope():
        for step in range(start, phase.steps):
            generator = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step_offset + step)
            lr = cosine_lr(step, phase.steps, phase.lr, phase.warmup, recipe.dit_min_lr_ratio)
            loss, grad = dit_train_step(dit, t5, optimizer, latents, ids, mask, recipe, generator, batch, lr,
                                        foreground, phase.foreground_weight)
            ema_update(ema["dit"], dit, recipe.ema_decay)
            ema_update(ema["t5"], t5, recipe.ema_decay)
            if step % 20 == 0 or step == phase.steps - 1:
                log(f"{phase.name} step {step + 1}/{phase.steps} loss {loss.item():.4f} grad {grad.item():.3f}")
            if (step + 1) % recipe.save_every == 0 or step == phase.steps - 1:
                save_step(stage, step + 1, {"dit": dit.state_dict(), "t5": t5.state_dict(),
                                            "opt": optimizer.state_dict(), "ema": ema})
            if stop_after is not None and step + 1 >= stop_after:
                return False
    torch.save(ema, os.path.join(stage, "ema.pt"))
    mark_done(stage)
    return True


# ------------------------------------------------------------------------------------------------------------
# Stage "export"


def initial_dit_and_t5(work: str, recipe: TinyRecipe) -> tuple[WanModel, T5Encoder]:
    """The DiT and T5 exactly as the DiT stage initialises them (the EMA's starting point)."""
    torch.manual_seed(recipe.seed + 2)
    dit = WanModel(**recipe.dit_config())
    t5 = T5Encoder(vocab=recipe.vocab_size, max_dist=128, **recipe.t5)
    t5.load_state_dict(torch.load(os.path.join(work, "text", "t5_init.pt"), map_location="cpu"))
    return dit, t5


def run_export_stage(work: str, recipe: TinyRecipe, out_dir: str, log) -> None:
    ema = torch.load(os.path.join(work, recipe.dit_phases[-1].name, "ema.pt"), map_location="cpu")
    dit, t5 = initial_dit_and_t5(work, recipe)
    # the EMA started at the initial weights; with decay ** updates of them left in it, remove them
    updates = sum(phase.steps for phase in recipe.dit_phases)
    ema = {"dit": ema_debiased(ema["dit"], dit.state_dict(), recipe.ema_decay, updates),
           "t5": ema_debiased(ema["t5"], t5.state_dict(), recipe.ema_decay, updates)}
    latents = torch.load(os.path.join(work, "latents", "latents.pt"), map_location="cpu")
    vae_path = os.path.join(work, "decoder", "vae.pt")
    if not os.path.isfile(vae_path):
        raise FileNotFoundError(f"the decoder stage has not finished: {vae_path} is missing")
    vae_state = torch.load(vae_path, map_location="cpu")
    export_checkpoint(out_dir, recipe.dit_config(), ema["dit"], ema["t5"], vae_state, latents["mean"],
                      latents["std"], os.path.join(work, "text", "tokenizer"))
    sizes = {name: os.path.getsize(os.path.join(out_dir, name)) for name in sorted(os.listdir(out_dir))
             if os.path.isfile(os.path.join(out_dir, name))}
    log(f"export: {out_dir} {sizes}")


def run_stages(work: str, recipe: TinyRecipe, out_dir: str, stages=STAGES, log=None,
               stop_after: int | None = None) -> None:
    """Runs the named stages in order (finished ones are skipped); ``stop_after`` interrupts the DiT stage."""
    torch.set_flush_denormal(True)  # denormal floats make CPU training several times slower
    log = log or StageLog(work)
    runners = {
        "text": run_text_stage, "vae": run_vae_stage, "latents": run_latents_stage,
        "decoder": run_decoder_stage, "dit": lambda w, r, lg: run_dit_stage(w, r, lg, stop_after),
        "export": lambda w, r, lg: run_export_stage(w, r, out_dir, lg),
    }
    for name in stages:
        if name not in runners:
            raise ValueError(f"stage {name!r} is not one of {list(runners)}")
        log(f"stage {name}")
        runners[name](work, recipe, log)
