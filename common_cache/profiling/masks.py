"""Foreground masks per denoising step, behind one interface, plus pooling to the token grid.

The paper (method.md section 2.1 item 4) reduces the model's prediction to three channels with PCA, renders them
as an RGB latent video and runs SAM2 on it. Providers here:

* :class:`PCAMaskProvider` (default, no weights): PCA to three channels, then 2-means clustering (or an Otsu
  threshold on the distance from the video's median colour); the cluster that is under-represented on the frame
  border is the foreground.
* :class:`MaskVideoProvider`: user-supplied masks (a ``.npy`` array or a video/GIF file per prompt, pixel or latent
  resolution), e.g. from an external segmenter run on the generated video (same seed, same video).
* :class:`SAM2MaskProvider`: SAM2's automatic mask generator on the PCA rendering, when the ``sam2`` package and
  local weights are installed; a clear error otherwise.

Every provider returns a float mask ``[T, H, W]`` in [0, 1] at latent resolution (1 = foreground; fractions are
allowed); :func:`pool_to_tokens` turns it into per-token foreground weights.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

POOLING_MODES = ("fraction", "majority", "any")


@dataclass
class StepView:
    """What a mask provider sees of one denoising step (latent resolution, batch dimension removed).

    Attributes:
        step: 0-based step index.
        num_steps: steps of the generation.
        prediction: the model output that drives the sampler (guided over branches) ``[C, T, H, W]``.
        clean_estimate: the model's estimate of the clean latent at this step ``[C, T, H, W]`` (flow matching:
            ``x_t - sigma * velocity``), or None when the adapter cannot form it.
        prompt_index: which profiling prompt is running (for per-prompt providers).
    """

    step: int
    num_steps: int
    prediction: torch.Tensor
    clean_estimate: torch.Tensor | None = None
    prompt_index: int = 0


class MaskProvider(Protocol):
    """Returns the foreground mask ``[T, H, W]`` (float in [0, 1], latent resolution) of one step."""

    name: str

    def __call__(self, view: StepView) -> torch.Tensor: ...


# ---------------------------------------------------------------------------------------------------------------
# PCA + clustering (default)


def pca_channels(latent: torch.Tensor, components: int = 3) -> torch.Tensor:
    """Projects ``[C, T, H, W]`` onto its top principal components over channels: ``[components, T, H, W]``.

    The sign of each component is fixed (largest absolute loading positive) so results are deterministic.
    """
    c, t, h, w = latent.shape
    x = latent.reshape(c, -1).T.double()  # [N, C]
    x = x - x.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)  # rows of vh: principal directions
    basis = vh[: min(components, c)]  # [k, C]
    signs = torch.sign(basis.gather(1, basis.abs().argmax(dim=1, keepdim=True)))
    scores = x @ (basis * signs).T  # [N, k]
    return scores.T.reshape(-1, t, h, w).float()


def border_mask(t: int, h: int, w: int) -> torch.Tensor:
    """True on the outermost row/column of every frame ``[T, H, W]``."""
    border = torch.zeros(t, h, w, dtype=torch.bool)
    border[:, [0, -1], :] = True
    border[:, :, [0, -1]] = True
    return border


def border_share(members: torch.Tensor, border: torch.Tensor) -> float:
    """How over-represented a pixel set is on the border: (share of border pixels) / (share of all pixels)."""
    total = members.float().mean().item()
    if total == 0:
        return float("inf")
    return members[border].float().mean().item() / total


def two_means(features: torch.Tensor, iterations: int = 30) -> torch.Tensor:
    """2-means on ``[N, k]`` features, initialised at the extremes of the first feature; returns labels ``[N]``."""
    centres = torch.stack([features[features[:, 0].argmin()], features[features[:, 0].argmax()]])
    labels = torch.zeros(features.shape[0], dtype=torch.long)
    for iteration in range(iterations):
        labels_new = torch.cdist(features, centres).argmin(dim=1)
        if iteration > 0 and torch.equal(labels_new, labels):
            break
        labels = labels_new
        for j in range(2):
            if bool((labels == j).any()):
                centres[j] = features[labels == j].mean(dim=0)
    return labels


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """The threshold maximising the between-class variance of a 1-D sample (Otsu's method)."""
    lo, hi = values.min().item(), values.max().item()
    if hi <= lo:
        return hi
    hist = torch.histc(values.double(), bins=bins, min=lo, max=hi)
    centres = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    centres = (centres[:-1] + centres[1:]) / 2
    weight0 = hist.cumsum(0)
    weight1 = hist.sum() - weight0
    mean0 = (hist * centres).cumsum(0) / weight0.clamp(min=1e-12)
    mean1 = ((hist * centres).sum() - (hist * centres).cumsum(0)) / weight1.clamp(min=1e-12)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return centres[int(between[:-1].argmax())].item()


@dataclass
class PCAMaskProvider:
    """Foreground from the model's own prediction: PCA to ``components`` channels, then a binary split.

    Attributes:
        source: ``"clean"`` (the clean-latent estimate; falls back to the prediction when the adapter cannot form
            it) or ``"prediction"`` (the raw model output, the paper's "noise prediction").
        method: ``"kmeans"`` (2-means in PCA space) or ``"otsu"`` (Otsu threshold on the distance from the video's
            median PCA colour). Either way the side that is under-represented on the frame border is foreground.
        components: PCA channels (the paper renders three, as RGB).
    """

    source: str = "clean"
    method: str = "kmeans"
    components: int = 3
    name: str = field(default="pca", init=False)

    def __post_init__(self) -> None:
        if self.source not in ("clean", "prediction"):
            raise ValueError(f"PCA mask source={self.source!r} is not allowed: expected 'clean' or 'prediction'")
        if self.method not in ("kmeans", "otsu"):
            raise ValueError(f"PCA mask method={self.method!r} is not allowed: expected 'kmeans' or 'otsu'")
        if self.components < 1:
            raise ValueError(f"PCA mask components={self.components} is not allowed: expected >= 1")

    def __call__(self, view: StepView) -> torch.Tensor:
        latent = view.clean_estimate if self.source == "clean" and view.clean_estimate is not None else view.prediction
        return pca_foreground(latent.detach().float().cpu(), self.method, self.components)


def pca_foreground(latent: torch.Tensor, method: str = "kmeans", components: int = 3) -> torch.Tensor:
    """Binary foreground mask ``[T, H, W]`` (float 0/1) of a latent ``[C, T, H, W]`` (see :class:`PCAMaskProvider`)."""
    _, t, h, w = latent.shape
    features = pca_channels(latent, components).reshape(-1, t * h * w).T  # [N, k]
    if method == "kmeans":
        side = two_means(features).reshape(t, h, w).bool()
    else:
        distance = (features - features.median(dim=0).values).norm(dim=1)
        side = (distance > otsu_threshold(distance)).reshape(t, h, w)
    border = border_mask(t, h, w)
    a, b = border_share(side, border), border_share(~side, border)
    if a == b:
        foreground = side if side.float().mean() <= 0.5 else ~side
    else:
        foreground = side if a < b else ~side
    return foreground.float()


# ---------------------------------------------------------------------------------------------------------------
# User masks


def pixel_to_latent_mask(mask: torch.Tensor, latent_thw: Sequence[int], temporal_stride: int = 4) -> torch.Tensor:
    """Area-averages a pixel mask ``[F, H, W]`` to the latent grid ``[T, h, w]`` (foreground fractions).

    Both VAEs are causal: latent frame 0 encodes pixel frame 0, latent frame t >= 1 encodes pixel frames
    ``stride*(t-1)+1 .. stride*t``. A mask that already has ``T`` frames is only resized spatially.

    Raises:
        ValueError: the frame count fits neither ``T`` nor ``1 + stride * (T - 1)``.
    """
    t, h, w = (int(v) for v in latent_thw)
    frames = mask.shape[0]
    spatial = F.adaptive_avg_pool2d(mask.float()[:, None], (h, w))[:, 0]  # [F, h, w]
    if frames == t:
        return spatial
    if frames != 1 + temporal_stride * (t - 1):
        raise ValueError(
            f"mask video has {frames} frames: expected {t} (latent frames) or {1 + temporal_stride * (t - 1)} "
            f"(pixel frames for {t} latent frames)"
        )
    groups = [spatial[:1]] + [spatial[1 + temporal_stride * i : 1 + temporal_stride * (i + 1)] for i in range(t - 1)]
    return torch.stack([g.mean(dim=0) for g in groups])


def load_mask_file(path: str) -> torch.Tensor:
    """Reads a mask ``[F, H, W]`` in [0, 1] from ``.npy`` (bool or numbers) or a video/GIF (grey > 127)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mask video not found: {path}")
    if path.endswith(".npy"):
        array = np.load(path).astype(np.float32)
        if array.ndim != 3:
            raise ValueError(f"mask array {path} has shape {array.shape}: expected [frames, height, width]")
        return torch.from_numpy(np.clip(array, 0.0, 1.0))
    import imageio.v3 as iio

    frames = np.asarray(iio.imread(path, index=None), dtype=np.float32)  # [F, H, W] or [F, H, W, C]
    if frames.ndim == 4:
        frames = frames[..., :3].mean(axis=-1)
    return torch.from_numpy((frames > 127).astype(np.float32))


@dataclass
class MaskVideoProvider:
    """User-supplied masks, one per profiling prompt (the same mask on every step of that prompt).

    Attributes:
        masks: per prompt, a file path (``.npy``, video, GIF) or a tensor ``[F, H, W]``; pixel or latent frames.
        temporal_stride: the VAE's temporal compression (4 for both models).
    """

    masks: Sequence[str | torch.Tensor]
    temporal_stride: int = 4
    name: str = field(default="video", init=False)

    def __post_init__(self) -> None:
        self.masks = [load_mask_file(m) if isinstance(m, str) else torch.as_tensor(m).float() for m in self.masks]
        if not self.masks:
            raise ValueError("mask videos: expected at least one (one per profiling prompt)")

    def __call__(self, view: StepView) -> torch.Tensor:
        if view.prompt_index >= len(self.masks):
            raise ValueError(
                f"prompt {view.prompt_index} has no mask video: {len(self.masks)} given, one per prompt needed"
            )
        return pixel_to_latent_mask(self.masks[view.prompt_index], view.prediction.shape[1:], self.temporal_stride)


# ---------------------------------------------------------------------------------------------------------------
# SAM2 (optional)


SAM2_MISSING = (
    "the SAM2 mask provider needs the 'sam2' package (github.com/facebookresearch/sam2) and a local checkpoint; "
    "'sam2' is not installed here. Install it, or use --mask_provider pca (default, no weights) or "
    "--mask_provider video with your own masks"
)


@dataclass
class SAM2MaskProvider:
    """SAM2's automatic mask generator on the PCA rendering of the clean estimate (the paper's choice).

    The paper does not say how SAM2 is prompted; here every latent frame is rendered as RGB (PCA channels scaled
    to 0..255), upscaled to ``render_size`` pixels, and the masks that cover less than ``max_area`` of the frame and
    are under-represented on its border are united.

    Attributes:
        checkpoint: local SAM2 checkpoint file (``.pt``).
        config: the SAM2 model config name matching the checkpoint (e.g. ``configs/sam2.1/sam2.1_hiera_t.yaml``).
        device: where SAM2 runs.
        render_size: the longer side of the rendered frames in pixels.
        max_area: masks larger than this fraction of the frame are background.
    """

    checkpoint: str
    config: str
    device: str = "cpu"
    render_size: int = 512
    max_area: float = 0.5
    name: str = field(default="sam2", init=False)

    def __post_init__(self) -> None:
        if importlib.util.find_spec("sam2") is None:
            raise ValueError(SAM2_MISSING)
        if not os.path.isfile(self.checkpoint):
            raise FileNotFoundError(f"SAM2 checkpoint not found: {self.checkpoint} (pass a local .pt file)")
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
        from sam2.build_sam import build_sam2

        self._generator = SAM2AutomaticMaskGenerator(build_sam2(self.config, self.checkpoint, device=self.device))

    def __call__(self, view: StepView) -> torch.Tensor:
        latent = view.clean_estimate if view.clean_estimate is not None else view.prediction
        rgb = pca_channels(latent.detach().float().cpu(), 3)  # [3, T, h, w]
        lo = rgb.amin(dim=(1, 2, 3), keepdim=True)
        hi = rgb.amax(dim=(1, 2, 3), keepdim=True)
        rgb = ((rgb - lo) / (hi - lo).clamp(min=1e-6) * 255).round().to(torch.uint8)
        _, t, h, w = rgb.shape
        scale = max(1, self.render_size // max(h, w))
        frames = []
        for i in range(t):
            image = rgb[:, i].repeat_interleave(scale, 1).repeat_interleave(scale, 2).permute(1, 2, 0).numpy()
            frames.append(self._frame_mask(image))
        big = torch.stack(frames)[:, None]  # [T, 1, H*s, W*s]
        return F.adaptive_avg_pool2d(big, (h, w))[:, 0]

    def _frame_mask(self, image: np.ndarray) -> torch.Tensor:
        height, width = image.shape[:2]
        border = border_mask(1, height, width)[0]
        union = torch.zeros(height, width, dtype=torch.bool)
        for record in self._generator.generate(image):
            segment = torch.as_tensor(record["segmentation"], dtype=torch.bool)
            if segment.float().mean() < self.max_area and border_share(segment, border) < 1.0:
                union |= segment
        return union.float()


# ---------------------------------------------------------------------------------------------------------------
# Token grid


def pool_to_tokens(mask: torch.Tensor, patch_size: Sequence[int], mode: str = "fraction") -> torch.Tensor:
    """Per-token foreground weights from a latent mask.

    Args:
        mask: ``[T, H, W]`` in [0, 1] at latent resolution.
        patch_size: the model's (frames, height, width) patch, e.g. (1, 2, 2).
        mode: ``"fraction"`` (the foreground share of the token's latent pixels), ``"majority"`` (1 when at least
            half of them are foreground, the paper's suggestion) or ``"any"``.

    Returns:
        ``[T / pt, H / ph, W / pw]`` float in [0, 1].
    """
    if mode not in POOLING_MODES:
        raise ValueError(f"mask pooling={mode!r} is not allowed: expected one of {POOLING_MODES}")
    pt, ph, pw = (int(p) for p in patch_size)
    t, h, w = mask.shape
    if t % pt or h % ph or w % pw:
        raise ValueError(f"mask shape {tuple(mask.shape)} is not divisible by the patch size {tuple(patch_size)}")
    share = F.avg_pool3d(mask.float()[None, None], (pt, ph, pw))[0, 0]
    if mode == "majority":
        return (share >= 0.5).float()
    if mode == "any":
        return (share > 0).float()
    return share


def mask_iou(predicted: torch.Tensor, reference: torch.Tensor, threshold: float | None = 0.5) -> float:
    """Intersection over union of two masks (1.0 when both are empty).

    Args:
        predicted, reference: masks of the same shape with values in [0, 1].
        threshold: binarise both at this value first; None = soft IoU, sum(min) / sum(max), for fractional masks.
    """
    if threshold is None:
        union = torch.maximum(predicted, reference).sum().item()
        return 1.0 if union == 0 else torch.minimum(predicted, reference).sum().item() / union
    a, b = predicted >= threshold, reference >= threshold
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


MASK_PROVIDERS: dict[str, type] = {"pca": PCAMaskProvider, "video": MaskVideoProvider, "sam2": SAM2MaskProvider}
