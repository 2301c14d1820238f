"""From statistics to a cache profile: which blocks to cache, and when to refresh.

Block split (the paper's rule, method.md section 2.1 item 7: F = {R_attn >= tau}, B = {R_attn < tau}; the paper
gives no tau). :func:`split_blocks` offers three documented rules, each caching the *least* foreground-focused
blocks:

* ``cache_k``: a compute budget, "cache the k blocks with the lowest score";
* ``tau``: cache every block whose score is below tau;
* neither (default): tau = the mean score over the blocks of the group.

Refresh schedule. The step-change curve c[s] (mean absolute change of the prediction from step s-1 to s) says how
fast the model's output drifts. A delta recorded at refresh step r and reused at step s is off by roughly the
drift accumulated since r, D(r, s) = c[r+1] + ... + c[s]. :func:`refresh_steps_from_change` places a given number
of refresh steps (the budget, the warm-up's end included) so that the summed drift over all reuse steps is
minimal (exact dynamic programming, O(n S^2)); where the curve is steep the refreshes come closer together.
"""

from __future__ import annotations

import math

import numpy as np


def split_blocks(scores, cache_k: int | None = None, tau: float | None = None) -> tuple[int, ...]:
    """Background (cached) blocks from per-block foreground scores.

    Args:
        scores: one score per block (higher = more foreground-focused).
        cache_k: cache exactly this many blocks, the lowest-scoring ones (ties: lower block index first).
        tau: cache the blocks with a score below ``tau``.

    Returns:
        Sorted block indices to cache.

    Raises:
        ValueError: both rules given, ``cache_k`` outside 1..depth-1, NaN scores, or no block below ``tau``.
    """
    values = np.asarray(scores, dtype=np.float64)
    depth = values.size
    if np.isnan(values).any():
        raise ValueError(f"block scores contain NaN at blocks {np.flatnonzero(np.isnan(values)).tolist()}")
    if cache_k is not None and tau is not None:
        raise ValueError("give either cache_k (a compute budget) or tau (a score threshold), not both")
    if cache_k is not None:
        if isinstance(cache_k, bool) or not isinstance(cache_k, int) or not 1 <= cache_k <= depth - 1:
            raise ValueError(f"cache_k={cache_k!r} is not allowed: expected an integer in 1..{depth - 1}")
        order = np.lexsort((np.arange(depth), values))  # by score, then index
        return tuple(sorted(int(b) for b in order[:cache_k]))
    threshold = float(values.mean()) if tau is None else float(tau)
    cached = tuple(int(b) for b in np.flatnonzero(values < threshold))
    if not cached:
        raise ValueError(f"no block has a score below tau={threshold:.4g} (scores {values.round(4).tolist()})")
    if len(cached) == depth:
        raise ValueError(f"every block has a score below tau={threshold:.4g}: nothing would stay computed")
    return cached


def uniform_refresh_count(interval: int, warmup_steps: int, num_steps: int) -> int:
    """Refresh steps of a uniform schedule (the budget a profiled schedule is compared at)."""
    return len(range(warmup_steps, num_steps, interval))


def refresh_steps_from_change(curve, warmup_steps: int, num_steps: int, num_refresh: int) -> tuple[int, ...]:
    """The refresh steps that minimise the drift summed over all reuse steps (see the module docstring).

    Args:
        curve: step-change curve ``[num_steps]`` (entry s = change from step s-1 to s; NaNs count as the mean).
        warmup_steps: s0; the first refresh is always at s0.
        num_steps: S.
        num_refresh: the budget: refresh steps including s0 (more than S - s0 means every step).

    Returns:
        Sorted refresh steps, starting with ``warmup_steps``.
    """
    if not 0 <= warmup_steps < num_steps:
        raise ValueError(
            f"warmup_steps={warmup_steps} is not allowed for {num_steps} steps: expected 0..{num_steps - 1}"
        )
    if isinstance(num_refresh, bool) or not isinstance(num_refresh, int) or num_refresh < 1:
        raise ValueError(f"refresh budget={num_refresh!r} is not allowed: expected an integer >= 1")
    c = np.asarray(curve, dtype=np.float64)
    if c.size != num_steps:
        raise ValueError(f"step-change curve has {c.size} entries: expected one per step ({num_steps})")
    fill = np.nanmean(c) if np.isfinite(c).any() else 0.0
    c = np.where(np.isfinite(c), c, fill)
    c[: warmup_steps + 1] = 0.0  # no reuse before s0
    if num_refresh >= num_steps - warmup_steps:
        return tuple(range(warmup_steps, num_steps))
    prefix = np.cumsum(c)  # P[s]
    prefix2 = np.cumsum(prefix)  # Q[s]

    def segment(r: int, end: int) -> float:  # drift summed over reuse steps r+1 .. end-1
        return float(prefix2[end - 1] - prefix2[r] - (end - 1 - r) * prefix[r]) if end - 1 > r else 0.0

    steps = list(range(warmup_steps, num_steps))
    best = {warmup_steps: (0.0, (warmup_steps,))}  # last refresh -> (cost so far, refresh steps)
    for _ in range(num_refresh - 1):
        nxt: dict[int, tuple[float, tuple[int, ...]]] = {}
        for r in steps:
            candidates = [(cost + segment(p, r), path + (r,)) for p, (cost, path) in best.items() if p < r]
            if candidates:
                nxt[r] = min(candidates, key=lambda item: (item[0], item[1]))
        best = nxt
    total = {r: (cost + segment(r, num_steps), path) for r, (cost, path) in best.items()}
    return min(total.values(), key=lambda item: (round(item[0], 12), item[1]))[1]


def schedule_drift(curve, refresh_steps, warmup_steps: int, num_steps: int) -> float:
    """The objective of :func:`refresh_steps_from_change` for any refresh list (to compare schedules)."""
    c = np.nan_to_num(np.asarray(curve, dtype=np.float64), nan=0.0)
    refresh = set(refresh_steps) | {warmup_steps}
    total, drift = 0.0, math.nan
    for s in range(warmup_steps, num_steps):
        if s in refresh:
            drift = 0.0
        else:
            drift += c[s]
            total += drift
    return total
