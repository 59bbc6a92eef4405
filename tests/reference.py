"""Naive NumPy references for every formula, written from ../shared/METHOD.md.

Deliberately loop-based (per sample, per channel) and float64, so they share no code or
vectorisation tricks with ifa_jax. Shapes: A, G (B, *spatial, K).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-7


def _channels(a, n, k):
    return np.asarray(a[n][..., k], dtype=np.float64)


def channel_weights(A, G, method):
    """M (B, *spatial, K) by explicit loops over samples and channels."""
    A = np.asarray(A, np.float64)
    G = None if G is None else np.asarray(G, np.float64)
    B, K = A.shape[0], A.shape[-1]
    M = np.zeros_like(A)
    for n in range(B):
        if method in ("eigencam", "eigengradcam"):
            src = A[n] if method == "eigencam" else A[n] * G[n]
            flat = src.reshape(-1, K)
            _, _, vt = np.linalg.svd(flat, full_matrices=False)
            v = vt[0]
            if (flat @ v).sum() < 0:
                v = -v
            for k in range(K):
                M[n][..., k] = v[k] * src[..., k]
            continue
        for k in range(K):
            a, g = _channels(A, n, k), _channels(G, n, k)
            if method == "gradcam":
                M[n][..., k] = g.mean() * a
            elif method == "gradcam++":
                total_a = a.sum()
                w = 0.0
                for gi in g.ravel():
                    if gi != 0:
                        alpha = gi**2 / (2 * gi**2 + total_a * gi**3 + EPS)
                        w += max(gi, 0.0) * alpha
                M[n][..., k] = w * a
            elif method == "xgradcam":
                M[n][..., k] = (g * a).sum() / (a.sum() + EPS) * a
            elif method == "hirescam":
                M[n][..., k] = g * a
            elif method == "layercam":
                M[n][..., k] = np.maximum(g, 0) * a
            else:
                raise ValueError(method)
    return M


def cam_outputs(M, mask=None):
    """(L, s, max, min) from contributions, with an optional (K,) or (B, K) mask."""
    M = np.asarray(M, np.float64)
    B, K = M.shape[0], M.shape[-1]
    m = np.ones((B, K)) if mask is None else np.broadcast_to(np.asarray(mask, np.float64), (B, K))
    L = np.zeros(M.shape[:-1])
    s = np.zeros((B, K))
    for n in range(B):
        for k in range(K):
            L[n] += m[n, k] * M[n][..., k]
            s[n, k] = m[n, k] * M[n][..., k].sum()
    return L, s, L.reshape(B, -1).max(1), L.reshape(B, -1).min(1)


def scorecam_weights(A, x, score_fn, resize):
    """Softmax over channels of score_fn(x * minmax(resize(A_k))), one channel at a time."""
    A = np.asarray(A, np.float64)
    B, K = A.shape[0], A.shape[-1]
    scores = np.zeros((B, K))
    for k in range(K):
        up = np.asarray(resize(A[..., k]), np.float64)
        norm = np.zeros_like(up)
        for n in range(B):
            lo, hi = up[n].min(), up[n].max()
            if hi > lo:
                norm[n] = (up[n] - lo) / (hi - lo)
        scores[:, k] = score_fn(np.asarray(x) * norm[..., None])
    e = np.exp(scores - scores.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def ablation_weights(A, ablated_score_fn, base):
    """y - y^(k), zeroing one channel at a time."""
    A = np.asarray(A)
    K = A.shape[-1]
    out = np.zeros((A.shape[0], K))
    for k in range(K):
        delta = np.zeros_like(A)
        delta[..., k] = -A[..., k]
        out[:, k] = np.asarray(base) - np.asarray(ablated_score_fn(delta))
    return out


def dataset_statistics(s, L, labels, counted, num_classes):
    """Importance statistics keeping every per-sample vector: accumulate per class in loops.

    s: (N, K), L: (N, *spatial), labels (N,), counted (N,) bool. Returns a dict with
    count (C,), im_class (C, K) (NaN rows for empty classes), im_all (K,), im_var (C, K),
    covariance (K, K) (ddof=0) and cam_mean (C, *spatial).
    """
    s = np.asarray(s, np.float64)
    L = np.asarray(L, np.float64)
    K = s.shape[1]
    rows = {c: [] for c in range(num_classes)}
    cam_rows = {c: [] for c in range(num_classes)}
    for n in range(len(s)):
        if counted[n]:
            rows[int(labels[n])].append(s[n])
            cam_rows[int(labels[n])].append(L[n])
    count = np.array([len(rows[c]) for c in range(num_classes)], np.float64)
    im_class = np.full((num_classes, K), np.nan)
    im_var = np.full((num_classes, K), np.nan)
    cam_mean = np.full((num_classes, *L.shape[1:]), np.nan)
    for c in range(num_classes):
        if rows[c]:
            total = np.zeros(K)
            for v in rows[c]:
                total += v
            im_class[c] = total / len(rows[c])
            im_var[c] = sum((v - im_class[c]) ** 2 for v in rows[c]) / len(rows[c])
            cam_mean[c] = sum(cam_rows[c]) / len(rows[c])
    every = [v for c in range(num_classes) for v in rows[c]]
    im_all = sum(every) / len(every)
    cov = np.zeros((K, K))
    for v in every:
        cov += np.outer(v - im_all, v - im_all)
    return dict(count=count, im_class=im_class, im_all=im_all, im_var=im_var,
                covariance=cov / len(every), cam_mean=cam_mean)
