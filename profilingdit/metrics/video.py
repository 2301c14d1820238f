"""Fidelity of cached videos against their full-compute references: per-frame PSNR and SSIM, LPIPS and FID if possible.

References: the ProfilingDiT evaluation protocol (../shared/reference/method.md section 5: sewar PSNR with MAX 255 and
sewar SSIM defaults, LPIPS AlexNet, per-video FID on frames; averaged over frames, then over videos). Own code.

Definitions (uint8 RGB frames; a video is [frames, height, width, 3]):

* PSNR per frame: ``10 log10(255^2 / MSE)`` over all pixels and channels, ``inf`` for identical frames. A video's PSNR
  is the mean over its frames (so ``inf`` only when some frame is identical), the table's the mean over videos.
  ``psnr_video`` (from the mean MSE over all frames) is reported as well: it stays finite unless the videos match.
* SSIM per frame: sewar's defaults: 11x11 uniform window, valid region only (no padding), K1 0.01, K2 0.03,
  L 255, population (biased) variances, mean over the map and over the three channels. Equal to scikit-image's
  ``structural_similarity(win_size=11, use_sample_covariance=False, data_range=255, channel_axis=-1)``.
* LPIPS (AlexNet, v0.1) per frame, only with ``--lpips-weights`` (torchvision's AlexNet file); FID per video
  (reference frames vs test frames, Inception pool features), only where ``pytorch_fid`` imports. Otherwise the
  output says "skipped: ..." and why.
* Videos of different lengths, heights or widths are refused (both shapes in the message): a cached video is
  compared with the full-compute video of the same run settings, so a mismatch means a wrong pairing.
* The JSON is strict (no ``Infinity``): a PSNR that is infinite (identical frames or videos) is written as
  ``null`` and the pair carries ``"identical": true`` (``identical_frames`` counts the identical frames); the summary
  counts ``identical_videos``, and its mean of a PSNR is over the videos where that PSNR is finite (null when none
  is).
  The markdown table and the Python functions keep ``inf``.

The command line is ``scripts/video_metrics.py``.
"""

from __future__ import annotations

import math
import os

import numpy as np
from scipy import linalg, ndimage

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".gif")
SSIM_WINDOW, SSIM_K1, SSIM_K2 = 11, 0.01, 0.03
MAX_VALUE = 255.0


# --------------------------------------------------------------------------------------------- input checks


def as_uint8_video(video, name: str = "video") -> np.ndarray:
    """Checks a video and returns it as uint8 ``[F, H, W, 3]``.

    Accepts uint8, integer arrays within 0..255, or float arrays within [0, 1] (scaled by 255 and rounded).

    Raises:
        ValueError: naming ``name``, the shape, dtype or value range found and what is allowed.
    """
    array = np.asarray(video)
    if array.ndim != 4 or array.shape[-1] != 3 or 0 in array.shape:
        raise ValueError(f"{name} has shape {tuple(array.shape)}: expected a non-empty [frames, height, width, 3] "
                         "RGB video")
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(f"{name} ({array.dtype}) has values in [{low}, {high}]: allowed 0..255")
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{name} ({array.dtype}) contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(f"{name} ({array.dtype}) has values in [{low:.4g}, {high:.4g}]: float videos must lie in "
                             "[0, 1] (map [-1, 1] model outputs with (x + 1) / 2 first)")
        return np.rint(array * MAX_VALUE).astype(np.uint8)
    raise ValueError(f"{name} has dtype {array.dtype}: expected uint8, an integer type within 0..255, or float in "
                     "[0, 1]")


def align(ref: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Checks that two videos are comparable: the same number of frames, height and width.

    Raises:
        ValueError: with both shapes ``(frames, height, width, channels)``.
    """
    ref, test = as_uint8_video(ref, "reference video"), as_uint8_video(test, "test video")
    if ref.shape[1:] != test.shape[1:]:
        raise ValueError(f"frame sizes differ: reference {ref.shape[1:3]}, test {test.shape[1:3]} (shapes "
                         f"{ref.shape} and {test.shape}, frames x height x width x channels): compare videos of the "
                         "same resolution")
    if len(ref) != len(test):
        raise ValueError(f"lengths differ: reference {len(ref)} frames, test {len(test)} frames (shapes {ref.shape} "
                         f"and {test.shape}): compare videos generated with the same frame count")
    if min(ref.shape[1:3]) < SSIM_WINDOW:
        raise ValueError(f"frames of {ref.shape[1:3]} pixels are smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} SSIM "
                         "window")
    return ref, test


# --------------------------------------------------------------------------------------------- metrics


def psnr_frames(ref: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Per-frame PSNR (dB) of two uint8 videos of one shape; ``inf`` where a frame is identical."""
    mse = ((ref.astype(np.float64) - test.astype(np.float64)) ** 2).reshape(len(ref), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return np.where(mse == 0, np.inf, 10.0 * np.log10(MAX_VALUE**2 / np.maximum(mse, 1e-300)))


def psnr_video(ref: np.ndarray, test: np.ndarray) -> float:
    """PSNR from the MSE over the whole video (finite unless the videos are identical)."""
    mse = float(((ref.astype(np.float64) - test.astype(np.float64)) ** 2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(MAX_VALUE**2 / mse)


def _ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of one channel [H, W] (float64), sewar definition: uniform window, valid region."""
    pad = SSIM_WINDOW // 2
    crop = (slice(pad, a.shape[0] - pad), slice(pad, a.shape[1] - pad))

    def local_mean(x):  # the box mean at every window fully inside the frame
        return ndimage.uniform_filter(x, size=SSIM_WINDOW, mode="reflect")[crop]

    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mu_a**2
    var_b = local_mean(b * b) - mu_b**2
    cov = local_mean(a * b) - mu_a * mu_b
    c1, c2 = (SSIM_K1 * MAX_VALUE) ** 2, (SSIM_K2 * MAX_VALUE) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def ssim_frames(ref: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Per-frame SSIM of two uint8 videos of one shape (mean over the three channels)."""
    out = np.empty(len(ref))
    for f in range(len(ref)):
        a, b = ref[f].astype(np.float64), test[f].astype(np.float64)
        out[f] = np.mean([_ssim_channel(a[..., c], b[..., c]) for c in range(a.shape[-1])])
    return out


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D] (the FID formula)."""
    mu_a, mu_b = feats_a.mean(axis=0), feats_b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(feats_a, rowvar=False)), np.atleast_2d(np.cov(feats_b, rowvar=False))
    root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    if not np.isfinite(root).all():  # singular product: regularise as pytorch-fid does
        offset = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    root = root.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


# --------------------------------------------------------------------------------------------- optional metrics


class OptionalMetrics:
    """LPIPS and FID when their weights/installs exist; otherwise a "skipped: ..." reason each."""

    def __init__(self, lpips_weights: str | None = None, lpips_heads: str | None = None, fid: bool = False):
        self.lpips, self.fid = None, None
        self.skipped: dict[str, str] = {}
        if lpips_weights is None:
            self.skipped["lpips"] = ("skipped: weights not available, pass --lpips-weights PATH (torchvision's AlexNet "
                                     "ImageNet file alexnet-owt-7be5be79.pth)")
        else:
            from profilingdit.metrics.lpips_alex import LpipsAlex

            self.lpips = LpipsAlex(lpips_weights, lpips_heads)
        if not fid:
            self.skipped["fid"] = "skipped: not requested (--fid; needs pytorch-fid and its Inception weights)"
        else:
            self.fid = _fid_model()
            if self.fid is None:
                self.skipped["fid"] = ("skipped: pytorch-fid (with torchvision and the pt_inception-2015-12-05 "
                                       "weights) is not usable in this environment; run FID in its own "
                                       "environment (docs/evaluation.md)")

    def compute(self, ref: np.ndarray, test: np.ndarray) -> dict:
        out = {}
        if self.lpips is not None:
            frames = self.lpips.frames(ref, test)
            out.update(lpips=float(frames.mean()), lpips_frames=frames.tolist())
        if self.fid is not None:
            out["fid"] = frechet_distance(self.fid(ref), self.fid(test))
        return out


def _fid_model():
    """pytorch-fid's Inception pool features as a function of uint8 frames, or None when it cannot run."""
    try:
        import torch
        from pytorch_fid.inception import InceptionV3

        model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    except Exception:  # not installed, torchvision broken, or weights not downloadable: all mean "skip"
        return None

    def features(video: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(video).permute(0, 3, 1, 2).float() / 255.0
            return model(x)[0].squeeze(-1).squeeze(-1).numpy().astype(np.float64)

    return features


# --------------------------------------------------------------------------------------------- videos and pairs


def read_video(path: str) -> np.ndarray:
    """Decodes a video file into uint8 RGB frames [F, H, W, 3] (or loads a .npy/.npz array of them)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no video at {path}")
    if path.endswith(".npy"):
        return as_uint8_video(np.load(path), path)
    if path.endswith(".npz"):
        with np.load(path) as data:
            return as_uint8_video(data[data.files[0]], path)
    import imageio.v3 as iio

    try:
        frames = iio.imread(path, plugin="pyav")
    except Exception as err:  # pyav's errors for files that are not videos (OSError, InvalidDataError, ...)
        raise ValueError(f"{path} is not a readable video (expected {', '.join(VIDEO_EXTENSIONS)} or .npy/.npz "
                         f"frames): {err}") from None
    return as_uint8_video(frames, path)


def compare(ref, test, name: str = "video", optional: OptionalMetrics | None = None) -> dict:
    """All metrics of one pair of videos (arrays); see the module docstring for the definitions."""
    ref, test = align(ref, test)
    psnr, ssim = psnr_frames(ref, test), ssim_frames(ref, test)
    video_psnr = psnr_video(ref, test)
    row = {"name": name, "frames": len(ref), "psnr": float(psnr.mean()), "psnr_video": video_psnr,
           "ssim": float(ssim.mean()), "psnr_frames": psnr.tolist(), "ssim_frames": ssim.tolist(),
           "identical": video_psnr == math.inf, "identical_frames": int(np.isinf(psnr).sum())}
    if optional is not None:
        row.update(optional.compute(ref, test))
    return row


def pair_files(ref: str, test: str) -> list[tuple[str, str, str]]:
    """(name, ref path, test path) for two files, or for same-named videos in two folders.

    Raises:
        FileNotFoundError: a path is missing, or two folders share no video name.
        ValueError: a file and a folder are mixed.
    """
    for what, path in (("--ref", ref), ("--test", test)):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{what} {path} does not exist")
    if os.path.isfile(ref) and os.path.isfile(test):
        return [(os.path.basename(test), ref, test)]
    if not (os.path.isdir(ref) and os.path.isdir(test)):
        raise ValueError(f"--ref {ref} and --test {test} must both be files or both be folders")

    def videos(folder):
        return {f for f in os.listdir(folder) if f.lower().endswith(VIDEO_EXTENSIONS + (".npy", ".npz"))}

    common = sorted(videos(ref) & videos(test))
    if not common:
        raise FileNotFoundError(f"no video name occurs in both {ref} and {test}")
    return [(name, os.path.join(ref, name), os.path.join(test, name)) for name in common]


def summarise(rows: list[dict], skipped: dict[str, str]) -> dict:
    """The mean of every scalar metric over the videos, plus the skipped metrics and their reasons."""
    keys = [k for k in ("psnr", "psnr_video", "ssim", "lpips", "fid") if rows and all(k in r for r in rows)]
    mean = {k: _mean([r[k] for r in rows]) for k in keys}
    return {"videos": len(rows), "identical_videos": sum(bool(r.get("identical")) for r in rows), "mean": mean,
            "skipped": skipped, "pairs": rows}


def _mean(values: list[float]) -> float:
    """The mean of the finite values (a PSNR is infinite for identical inputs); inf when none is finite."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.inf


def _fmt(value, digits: int) -> str:
    if value is None:
        return "-"
    return "inf" if value == math.inf else f"{value:.{digits}f}"


def markdown(result: dict) -> str:
    """A markdown table: one row per video, then the mean; skipped metrics listed under it."""
    lines = ["| video | frames | PSNR (dB) | PSNR video (dB) | SSIM | LPIPS | FID |", "|---|---|---|---|---|---|---|"]
    for r in result["pairs"]:
        lines.append(f"| {r['name']} | {r['frames']} | {_fmt(r['psnr'], 2)} | {_fmt(r['psnr_video'], 2)} | "
                     f"{_fmt(r['ssim'], 4)} | {_fmt(r.get('lpips'), 4)} | {_fmt(r.get('fid'), 2)} |")
    m = result["mean"]
    lines.append(f"| **mean of {result['videos']}** | | {_fmt(m.get('psnr'), 2)} | {_fmt(m.get('psnr_video'), 2)} | "
                 f"{_fmt(m.get('ssim'), 4)} | {_fmt(m.get('lpips'), 4)} | {_fmt(m.get('fid'), 2)} |")
    lines += [""] + [f"- {name.upper()} {reason}" for name, reason in result["skipped"].items()]
    lines += [f"- {r['name']}: identical to its reference (PSNR inf)" for r in result["pairs"] if r.get("identical")]
    return "\n".join(lines) + "\n"
