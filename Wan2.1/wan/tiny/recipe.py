"""The training recipe of the tiny Wan2.1 model: every size and hyperparameter in one place.

Not an upstream module. The DiT sizes come from the task config (``wan/configs/wan_t2v_tiny.py``) so that the
trained checkpoint always matches ``--task t2v-tiny``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..configs.wan_t2v_tiny import t2v_tiny


@dataclass(frozen=True)
class DitPhase:
    """One DiT training phase: it continues the previous phase's weights, optimizer state and EMA, with its own
    warm-up and cosine decay from ``lr``. ``foreground_weight`` w weighs each latent cell's loss by
    ``1 + w * (object fraction of the cell)`` (ground-truth masks; 0 = plain MSE)."""

    name: str
    steps: int
    lr: float
    warmup: int
    foreground_weight: float = 0.0


@dataclass(frozen=True)
class TinyRecipe:
    seed: int = 0
    # tokenizer (SentencePiece unigram trained on the caption template) and umT5 encoder
    vocab_size: int = 54  # the most pieces SentencePiece can make from the caption template
    t5: dict = field(default_factory=lambda: dict(
        dim=t2v_tiny.text_dim, dim_attn=t2v_tiny.text_dim, dim_ffn=2 * t2v_tiny.text_dim, num_heads=4,
        num_layers=2, num_buckets=32, shared_pos=False))
    # VAE: Wan VAE architecture (vae_init.TINY_VAE_CONFIG), closed-form encoder; the decoder is trained
    vae_foreground_weight: float = 4.0  # extra reconstruction weight on object pixels (ground-truth masks)
    # decoder training (encoder frozen; runs alongside the DiT stage)
    decoder_steps: int = 500
    decoder_batch: int = 4
    decoder_lr: float = 3e-4
    decoder_save_every: int = 25
    # latent dataset for the DiT
    num_videos: int = 2400
    two_object_prob: float = 0.25
    # DiT (sizes from the task config) trained with flow matching, jointly with the T5, in consecutive phases
    dit_batch: int = 48
    dit_phases: tuple = (
        DitPhase("dit", steps=1200, lr=5e-4, warmup=100),
        DitPhase("dit2", steps=1000, lr=3e-4, warmup=20),
        # the objects are a few percent of the latent: weight their cells so that the loss is not all background
        DitPhase("dit3", steps=2000, lr=3e-4, warmup=20, foreground_weight=8.0),
    )
    dit_min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    ema_decay: float = 0.998
    caption_dropout: float = 0.1
    train_shift: float = 3.0  # timestep shift of the training distribution (sigma' = s*u / (1 + (s-1)*u))
    save_every: int = 100

    def dit_config(self) -> dict:
        """WanModel keyword arguments (and the checkpoint's config.json fields)."""
        return dict(
            model_type="t2v", patch_size=list(t2v_tiny.patch_size), text_len=t2v_tiny.text_len, in_dim=16,
            dim=t2v_tiny.dim, ffn_dim=t2v_tiny.ffn_dim, freq_dim=t2v_tiny.freq_dim, text_dim=t2v_tiny.text_dim,
            out_dim=16, num_heads=t2v_tiny.num_heads, num_layers=t2v_tiny.num_layers, eps=t2v_tiny.eps,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def smoke_recipe() -> TinyRecipe:
    """A few steps of every stage (checks the pipeline end to end in about two minutes)."""
    phases = (DitPhase("dit", steps=6, lr=5e-4, warmup=2),
              DitPhase("dit2", steps=2, lr=3e-4, warmup=1, foreground_weight=8.0))
    return TinyRecipe(num_videos=48, decoder_steps=2, dit_batch=8, save_every=3, dit_phases=phases)
