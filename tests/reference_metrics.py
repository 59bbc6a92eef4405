"""Naive NumPy references for ifa_jax.metrics, written from docs/method.md (evaluation).

Loop-based and float64, sharing no code with ifa_jax.metrics.
"""

from __future__ import annotations

import itertools

import numpy as np


def pearson(a, b):
    a, b = [float(v) for v in a], [float(v) for v in b]
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    sab = sum((a[i] - ma) * (b[i] - mb) for i in range(n))
    saa = sum((a[i] - ma) ** 2 for i in range(n))
    sbb = sum((b[i] - mb) ** 2 for i in range(n))
    return sab / (saa * sbb) ** 0.5


def ranks(a):
    """1-based ranks with ties averaged: (number below) + (ties + 1) / 2."""
    a = [float(v) for v in a]
    out = []
    for v in a:
        below = sum(1 for u in a if u < v)
        equal = sum(1 for u in a if u == v)
        out.append(below + (equal + 1) / 2)
    return out


def spearman(a, b):
    return pearson(ranks(a), ranks(b))


def auroc(scores, positives):
    """P(score of a positive > score of a negative) + 0.5 P(equal), by all pairs."""
    pos = [s for s, p in zip(scores, positives) if p]
    neg = [s for s, p in zip(scores, positives) if not p]
    total = 0.0
    for sp in pos:
        for sn in neg:
            total += 1.0 if sp > sn else 0.5 if sp == sn else 0.0
    return total / (len(pos) * len(neg))


def drop_increase(score_one, x, saliency, target):
    """score_one(x_n (*in, C), t) -> float; loops over samples and grid cells."""
    drops, incs = [], []
    for n in range(len(x)):
        masked = np.array(x[n], np.float64)
        for idx in np.ndindex(*saliency.shape[1:]):
            masked[idx] = masked[idx] * saliency[n][idx]
        y = score_one(np.asarray(x[n], np.float64), int(target[n]))
        o = score_one(masked, int(target[n]))
        drops.append(max(0.0, y - o) / y)
        incs.append(1.0 if o > y else 0.0)
    return 100 * sum(drops) / len(drops), 100 * sum(incs) / len(incs)


def insertion_deletion(
    score_one, x, saliency, target, window, windows_per_step, base_del, base_ins
):
    """Curves (B, S+1) and AUCs (B,) by explicit loops over windows, steps and cells."""
    B, spatial = x.shape[0], x.shape[1:-1]
    counts = [-(-n // w) for n, w in zip(spatial, window)]
    windows = list(itertools.product(*[range(c) for c in counts]))
    S = -(-len(windows) // windows_per_step)
    dels, inss, aucs_d, aucs_i = [], [], [], []
    for n in range(B):
        sums = {}
        for wi in windows:
            sums[wi] = 0.0
        for idx in np.ndindex(*spatial):
            wi = tuple(i // w for i, w in zip(idx, window))
            sums[wi] += float(saliency[n][idx])
        # Largest sum first; ties by window index (row-major order).
        ranked = sorted(range(len(windows)), key=lambda j: (-sums[windows[j]], j))
        dcurve, icurve, fracs = [], [], []
        for step in range(S + 1):
            chosen = {windows[j] for j in ranked[: min(step * windows_per_step, len(windows))]}
            deleted = np.array(x[n], np.float64)
            inserted = np.array(base_ins[n], np.float64)
            for idx in np.ndindex(*spatial):
                wi = tuple(i // w for i, w in zip(idx, window))
                if wi in chosen:
                    deleted[idx] = base_del[n][idx]
                    inserted[idx] = x[n][idx]
            dcurve.append(score_one(deleted, int(target[n])))
            icurve.append(score_one(inserted, int(target[n])))
            fracs.append(len(chosen) / len(windows))
        dels.append(dcurve)
        inss.append(icurve)
        aucs_d.append(trapezoid(dcurve, fracs))
        aucs_i.append(trapezoid(icurve, fracs))
    return np.array(dels), np.array(inss), np.array(aucs_d), np.array(aucs_i), np.array(fracs)


def trapezoid(ys, xs):
    return sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1))


def gap_head_logits(A, keep, kernel, bias):
    """ConvNet head on kept channels: mean over the grid of relu(A_k * m_k), then dense.

    A: (B, *spatial, K); keep: (B, K) per-sample masks.
    """
    A = np.asarray(A, np.float64)
    B, K = A.shape[0], A.shape[-1]
    out = np.zeros((B, kernel.shape[1]))
    for n in range(B):
        pooled = np.zeros(K)
        for k in range(K):
            pooled[k] = np.maximum(A[n][..., k] * keep[n, k], 0).mean()
        out[n] = pooled @ np.asarray(kernel, np.float64) + np.asarray(bias, np.float64)
    return out


def ssim(a, b, window, win_size, sigma, data_range, k1=0.01, k2=0.03):
    """Mean SSIM over every full window position, weighted statistics per window."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    c = (win_size - 1) / 2
    w2 = np.zeros((win_size, win_size))
    for i in range(win_size):
        for j in range(win_size):
            w2[i, j] = (
                np.exp(-((i - c) ** 2 + (j - c) ** 2) / (2 * sigma**2))
                if window == "gaussian"
                else 1.0
            )
    w2 /= w2.sum()
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    vals = []
    H, W = a.shape
    for i in range(H - win_size + 1):
        for j in range(W - win_size + 1):
            pa, pb = a[i : i + win_size, j : j + win_size], b[i : i + win_size, j : j + win_size]
            ma, mb = (w2 * pa).sum(), (w2 * pb).sum()
            va, vb = (w2 * (pa - ma) ** 2).sum(), (w2 * (pb - mb) ** 2).sum()
            cov = (w2 * (pa - ma) * (pb - mb)).sum()
            vals.append(
                (2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
            )
    return sum(vals) / len(vals)
