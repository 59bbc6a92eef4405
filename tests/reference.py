"""Naive NumPy references for every formula, written from docs/method.md.

Deliberately loop-based (per sample, per channel) and float64, so they share no code or
vectorisation tricks with ifa_jax. Shapes: A, G (B, *spatial, K).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

EPS = 1e-7  # the per-image min-max baseline's eps
GRADCAMPP_EPS = 1e-6  # pytorch-grad-cam's grad_cam_plusplus.py
XGRADCAM_EPS = 1e-7  # pytorch-grad-cam's xgrad_cam.py


def _channels(a, n, k):
    return np.asarray(a[n][..., k], dtype=np.float64)


def _kernel(kind, x, y, gamma):
    """One kernel entry k(x, y) for channel vectors x, y, as scikit-learn defines it."""
    dot = sum(float(a) * float(b) for a, b in zip(x, y))
    if kind == "linear":
        return dot
    if kind == "poly":
        return (gamma * dot + 1.0) ** 3
    if kind == "sigmoid":
        return math.tanh(gamma * dot + 1.0)
    if kind == "rbf":
        return math.exp(-gamma * sum((float(a) - float(b)) ** 2 for a, b in zip(x, y)))
    if kind == "cosine":
        nx, ny = math.sqrt(sum(a * a for a in x)), math.sqrt(sum(b * b for b in y))
        return dot / ((nx or 1.0) * (ny or 1.0))
    raise ValueError(kind)


def kpca_projection(cells, kernel="sigmoid", gamma=None):
    """First kernel-PCA component of the rows of cells (P, K), as pytorch-grad-cam's
    KPCA_CAM calls scikit-learn's KernelPCA(n_components=1): rows centred per column,
    kernel matrix centred in feature space, top eigenvector u signed so that its largest
    |entry| is positive, projection u * sqrt(eigenvalue). Returns (P,)."""
    X = np.asarray(cells, np.float64)
    P, K = X.shape
    X = X - X.mean(axis=0)
    g = 1.0 / K if gamma is None else gamma
    km = np.zeros((P, P))
    for i in range(P):
        for j in range(P):
            km[i, j] = _kernel(kernel, X[i], X[j], g)
    row, col, tot = km.mean(1), km.mean(0), km.mean()
    kc = np.zeros((P, P))
    for i in range(P):
        for j in range(P):
            kc[i, j] = km[i, j] - row[i] - col[j] + tot
    values, vectors = np.linalg.eigh(kc)
    u = vectors[:, np.argmax(values)]
    if u[np.argmax(np.abs(u))] < 0:
        u = -u
    return u * math.sqrt(max(values.max(), 0.0))


def channel_weights(A, G, method, key=None, **options):
    """M (B, *spatial, K) by explicit loops over samples and channels.

    ``key``: the PRNG key of randomcam; ``options`` as in ifa_jax (eps, k, kernel, gamma).
    """
    A = np.asarray(A, np.float64)
    G = None if G is None else np.asarray(G, np.float64)
    B, K = A.shape[0], A.shape[-1]
    M = np.zeros_like(A)
    if method == "randomcam":
        # The draw itself is the specification: uniform in [-1, 1) per sample and channel
        # from jax.random with the given key; the rest is a loop.
        import jax

        w = np.asarray(jax.random.uniform(key, (B, K), minval=-1.0, maxval=1.0), np.float64)
        for n in range(B):
            for k in range(K):
                M[n][..., k] = w[n, k] * A[n][..., k]
        return M
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
        if method == "segeigencam":
            # |G| A, each channel minus its grid mean; projection on the first right
            # singular vector; flipped when its most negative value outweighs the largest.
            X = np.abs(G[n]) * A[n]
            for k in range(K):
                X[..., k] -= X[..., k].sum() / X[..., k].size
            flat = X.reshape(-1, K)
            v = np.linalg.svd(flat, full_matrices=False)[2][0]
            projection = flat @ v
            if abs(projection.min()) > abs(projection.max()):
                v = -v
            for k in range(K):
                M[n][..., k] = v[k] * X[..., k]
            continue
        if method == "kpcacam":
            L = kpca_projection(A[n].reshape(-1, K), **options).reshape(A.shape[1:-1])
            for k in range(K):
                M[n][..., k] = L / K
            continue
        if method == "legrad":  # L = mean over channels of max(G, 0), spread as L / K
            L = sum(np.maximum(_channels(G, n, k), 0.0) for k in range(K)) / K
            for k in range(K):
                M[n][..., k] = L / K
            continue
        for k in range(K):
            a = _channels(A, n, k)
            g = None if G is None else _channels(G, n, k)
            if method == "gradcam":
                M[n][..., k] = g.mean() * a
            elif method == "gradcam++":
                eps = options.get("eps", GRADCAMPP_EPS)
                total_a = a.sum()
                w = 0.0
                for gi in g.ravel():
                    if gi != 0:
                        alpha = gi**2 / (2 * gi**2 + total_a * gi**3 + eps)
                        w += max(gi, 0.0) * alpha
                M[n][..., k] = w * a
            elif method == "xgradcam":
                eps = options.get("eps", XGRADCAM_EPS)
                M[n][..., k] = (g * a).sum() / (a.sum() + eps) * a
            elif method == "hirescam":
                M[n][..., k] = g * a
            elif method == "layercam":
                M[n][..., k] = np.maximum(g, 0) * a
            elif method == "gradcamelementwise":
                for idx in np.ndindex(a.shape):
                    M[n][idx + (k,)] = max(g[idx] * a[idx], 0.0)
            elif method == "fem":
                # Fuad et al. 2020: the channel mean times the k-sigma mask (std with ddof 0)
                mean = sum(a.ravel()) / a.size
                std = math.sqrt(sum((v - mean) ** 2 for v in a.ravel()) / a.size)
                threshold = mean + options.get("k", 2.0) * std
                for idx in np.ndindex(a.shape):
                    M[n][idx + (k,)] = mean if a[idx] > threshold else 0.0
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


def linear_resize(L, shape):
    """(B, *spatial) -> (B, *shape), one axis at a time: output cell o samples the input at
    (o + 0.5) * n_in / n_out - 0.5 (cell centres), clamped to the edge cells, linearly
    between its two neighbours. What jax.image.resize's "linear" does when enlarging."""
    out = np.asarray(L, np.float64)
    for axis, n_out in enumerate(shape, start=1):
        n_in = out.shape[axis]
        new = np.zeros(out.shape[:axis] + (n_out,) + out.shape[axis + 1 :])
        for o in range(n_out):
            x = min(max((o + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1.0)
            i0 = int(math.floor(x))
            i1, w = min(i0 + 1, n_in - 1), x - i0
            lo, hi = np.take(out, i0, axis=axis), np.take(out, i1, axis=axis)
            index = (slice(None),) * axis + (o,)
            new[index] = (1.0 - w) * lo + w * hi
        out = new
    return out


def refinecam(A, G, base="gradcam++", shape=None, key=None, minmax_eps=1e-8, **options):
    """RefineCAM of layers A, G ({layer: (B, *spatial_l, K_l)}): per layer the base
    method's CAM, max(., 0), min-max per image (+ minmax_eps in the denominator), enlarged
    linearly to ``shape`` (default: each axis's largest size over the layers); their
    product. ``options`` go to the base (eps, k, ...)."""
    grids = [np.shape(a)[1:-1] for a in A.values()]
    shape = (
        tuple(max(g[i] for g in grids) for i in range(len(grids[0]))) if shape is None else shape
    )
    product = None
    for layer in A:
        L, *_ = cam_outputs(channel_weights(A[layer], G[layer], base, key=key, **options))
        L = linear_resize(minmax_per_image(np.maximum(L, 0.0), minmax_eps), shape)
        product = L if product is None else product * L
    assert product is not None
    return product


def attention_grid(probs, prefix, grid):
    """Attention probabilities (B, H, Q, T) -> (B, *grid, H * Q), one entry at a time: cell
    i (row-major) holds key prefix + i, channel h * Q + q holds head h's query q."""
    probs = np.asarray(probs, np.float64)
    B, H, Q, _ = probs.shape
    out = np.zeros((B, *grid, H * Q))
    for n in range(B):
        for i, cell in enumerate(np.ndindex(*grid)):
            for h in range(H):
                for q in range(Q):
                    out[(n, *cell, h * Q + q)] = probs[n, h, q, prefix + i]
    return out


def legrad(gradients, prefix, grid):
    """LeGrad from each block's gradient at its attention probabilities (B, H, Q, T):
    max(G, 0) averaged over heads and queries, prefix keys dropped, laid row-major on
    ``grid``, averaged over the blocks. (B, *grid)."""
    maps = []
    for G in gradients:
        G = np.asarray(G, np.float64)
        B, H, Q, _ = G.shape
        L = np.zeros((B, *grid))
        for n in range(B):
            for i, cell in enumerate(np.ndindex(*grid)):
                L[(n, *cell)] = sum(
                    max(G[n, h, q, prefix + i], 0.0) for h in range(H) for q in range(Q)
                ) / (H * Q)
        maps.append(L)
    return sum(maps) / len(maps)


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


class ModelOracle(NamedTuple):
    """What the forward-method references ask of the model, as callables returning NumPy.

    x (B, *in, C), target (B,), logits (B, O), gradients G (B, *spatial, K) of the
    explained score. score_inputs(x (N, ...), target (N,)) -> (N,);
    score_with_delta(delta) -> (B,); gradient(x, delta) -> G of the explained score at
    inputs x with delta added at the layer; class_gradients() -> (O, B, *spatial, K), the
    gradient of every logit; resize(a (B, *spatial)) -> (B, *in); variables.
    """

    x: Any
    target: Any
    logits: Any
    gradients: Any
    score_inputs: Callable
    score_with_delta: Callable
    gradient: Callable
    class_gradients: Callable
    resize: Callable
    variables: Any


def _softmax_rows(scores):
    e = np.exp(scores - scores.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _minmax_masks(A, k, resize):
    """Channel k of A resized to the input grid and min-max scaled per sample (0 if flat)."""
    up = np.asarray(resize(np.asarray(A)[..., k]), np.float64)
    out = np.zeros_like(up)
    for n in range(up.shape[0]):
        lo, hi = up[n].min(), up[n].max()
        if hi > lo:
            out[n] = (up[n] - lo) / (hi - lo)
    return out


def _masked_scores(oracle, masks):
    """Scores (B,) of the inputs times per-sample masks (B, *in)."""
    x = np.asarray(oracle.x, np.float64)
    return np.asarray(oracle.score_inputs(x * masks[..., None], oracle.target), np.float64)


def finer_objective(logits, c, others, alpha):
    """sum_j p_j (l_c - alpha l_j) / (sum_j p_j + 1e-9) for one sample's logits (O,)."""
    e = [math.exp(v - max(logits)) for v in logits]
    p = [v / sum(e) for v in e]
    num = sum(p[j] * (logits[c] - alpha * logits[j]) for j in others)
    return num / (sum(p[j] for j in others) + 1e-9)


def finer_mean_contrast(logits, c, others, alpha):
    """l_c - alpha * (mean over j in others of l_j), torch-cam's Finer-CAM objective."""
    return logits[c] - alpha * sum(logits[j] for j in others) / len(others)


def forward_weights(method, A, oracle, key=None, **options):
    """Weights (B, K) of a method that needs the model, one sample, channel and model run
    at a time. Noise draws (sscam, smoothgradcam++) are specified as the exact
    jax.random calls; everything else is loops over NumPy values."""
    import jax

    A = np.asarray(A, np.float64)
    B, K = A.shape[0], A.shape[-1]
    target = [int(t) for t in np.asarray(oracle.target)]
    w = np.zeros((B, K))
    if method == "scorecam":
        return scorecam_weights(
            A, oracle.x, lambda xm: oracle.score_inputs(xm, oracle.target), oracle.resize
        )
    if method == "ablationcam":
        base = oracle.score_with_delta(np.zeros(A.shape, np.float32))
        return ablation_weights(A.astype(np.float32), oracle.score_with_delta, base)
    if method == "cam":
        head = options.get("head")
        G = np.asarray(oracle.gradients, np.float64)
        W = None if head is None else np.asarray(head(oracle.variables) if callable(head) else head)
        for n in range(B):
            for k in range(K):
                w[n, k] = G[n][..., k].sum() if W is None else W[k, target[n]]
        return w
    if method == "shapleycam":
        # H A by central differences of the gradient along A: (G(eps A) - G(-eps A)) / 2 eps
        eps = 1e-2
        plus = np.asarray(oracle.gradient(oracle.x, (eps * A).astype(np.float32)), np.float64)
        minus = np.asarray(oracle.gradient(oracle.x, (-eps * A).astype(np.float32)), np.float64)
        G = np.asarray(oracle.gradients, np.float64)
        for n in range(B):
            for k in range(K):
                hvp = (plus[n][..., k] - minus[n][..., k]) / (2 * eps)
                w[n, k] = (G[n][..., k] - 0.5 * hvp).mean()
        return w
    if method == "finercam":
        # objective "pgc": pytorch-grad-cam's contrast (alpha None = 1); "torchcam":
        # torch-cam's l_c - alpha mean_j l_j (alpha None = 0.6). base: how G weighs A_k.
        objective, alpha = options.get("objective", "pgc"), options.get("alpha")
        alpha = {"pgc": 1.0, "torchcam": 0.6}[objective] if alpha is None else alpha
        contrast = finer_objective if objective == "pgc" else finer_mean_contrast
        base, wanted = options.get("base", "gradcam"), options.get("comparisons", 3)
        eps = options.get("eps") or GRADCAMPP_EPS
        logits = np.asarray(oracle.logits, np.float64)
        per_class = np.asarray(oracle.class_gradients(), np.float64)  # (O, B, *spatial, K)
        outputs = logits.shape[1]
        for n in range(B):
            c = target[n]
            others = sorted(
                (j for j in range(outputs) if j != c),
                key=lambda j: (abs(logits[n, j] - logits[n, c]), j),
            )
            others = others[: min(wanted, outputs - 1)]
            h = 1e-5
            G = np.zeros(A.shape[1:])
            for o in range(outputs):  # chain rule: dF/dA = sum_o dF/dl_o dl_o/dA
                up, down = logits[n].copy(), logits[n].copy()
                up[o] += h
                down[o] -= h
                d = (contrast(up, c, others, alpha) - contrast(down, c, others, alpha)) / (2 * h)
                G += d * per_class[o, n]
            for k in range(K):
                if base == "gradcam":
                    w[n, k] = G[..., k].mean()
                    continue
                total_a = A[n][..., k].sum()  # gradcam++: as in channel_weights
                for gi in G[..., k].ravel():
                    if gi != 0:
                        w[n, k] += max(gi, 0.0) * gi**2 / (2 * gi**2 + total_a * gi**3 + eps)
        return w
    if method in ("sscam", "iscam"):
        samples = options.get("samples", 35 if method == "sscam" else 10)
        std = options.get("std", 2.0)
        coefficients, coefficient = [], 0.0
        for i in range(samples):  # IS-CAM's scales, torch-cam's cumulative sum
            coefficient += (i + 1) / samples
            coefficients.append(coefficient)
        scores = np.zeros((B, K))
        for k in range(K):
            masks = _minmax_masks(A, k, oracle.resize)
            for i in range(samples):
                if method == "sscam":
                    draw = jax.random.fold_in(jax.random.fold_in(key, k), i)
                    noise = np.asarray(jax.random.normal(draw, masks.shape), np.float64)
                    varied = masks + std * noise
                else:
                    varied = coefficients[i] * masks
                scores[:, k] += _masked_scores(oracle, varied) / samples
        return _softmax_rows(scores)
    if method == "smoothgradcam++":
        samples, std = options.get("samples", 4), options.get("std", 0.3)
        eps = options.get("eps", GRADCAMPP_EPS)
        x = np.asarray(oracle.x)
        moments = [np.zeros(A.shape) for _ in range(3)]
        for i in range(samples):
            noise = np.asarray(jax.random.normal(jax.random.fold_in(key, i), x.shape))
            g = np.asarray(oracle.gradient((x + std * noise).astype(np.float32), None), np.float64)
            for p in range(3):
                moments[p] += g ** (p + 1) / samples
        g1, g2, g3 = moments
        for n in range(B):
            for k in range(K):
                total_a = A[n][..., k].sum()
                for idx in np.ndindex(A.shape[1:-1]):
                    d2, d3 = g2[n][idx + (k,)], g3[n][idx + (k,)]
                    if d2 != 0:
                        alpha = d2 / (2 * d2 + total_a * d3 + eps)
                        w[n, k] += max(g1[n][idx + (k,)], 0.0) * alpha
        return w
    raise ValueError(f"no reference for {method!r}: add its loop to forward_weights")


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
    return {
        "count": count,
        "im_class": im_class,
        "im_all": im_all,
        "im_var": im_var,
        "covariance": cov / len(every),
        "cam_mean": cam_mean,
    }


# --------------------------------------------------------------------------- scale, decompose,
# diagnostics (docs/method.md)


def percentile(values, q):
    """Linear-interpolation percentile by hand: position h = (n - 1) q / 100."""
    v = sorted(float(x) for x in values)
    h = (len(v) - 1) * q / 100.0
    lo = int(np.floor(h))
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (h - lo) * (v[hi] - v[lo])


def rescale(L, vmin, vmax, mode, remove_negative=False, clip=False):
    """Elementwise common scale with math.tanh / math.atanh, one value at a time."""
    import math

    L = np.asarray(L, np.float64)
    if remove_negative and vmax > 0:
        vmin = 0.0
    out = np.zeros_like(L)
    lo, hi = math.atanh(0.05), math.atanh(0.95)
    for idx in np.ndindex(L.shape):
        x = max(L[idx], 0.0) if remove_negative else L[idx]
        if mode == "norm":
            y = (x - vmin) / (vmax - vmin)
        else:
            a = (hi - lo) / (vmax - vmin)
            y = math.tanh(a * x + lo - a * vmin)
        out[idx] = min(max(y, 0.0), 1.0) if clip else y
    return out


def minmax_per_image(L, eps=EPS):
    L = np.asarray(L, np.float64)
    out = np.zeros_like(L)
    for n in range(L.shape[0]):
        lo, hi = L[n].min(), L[n].max()
        for idx in np.ndindex(L[n].shape):
            out[n][idx] = (L[n][idx] - lo) / (hi - lo + eps)
    return out


def select(rows, mode, n=None, index=None, threshold=None, diff=None):
    """Selection masks by Python sorting with key (-score, channel) per row."""
    rows = np.atleast_2d(np.asarray(rows, np.float64))
    C, K = rows.shape
    out = np.zeros((C, K))
    for c in range(C):
        if mode == "all":
            out[c] = 1
        elif mode == "index":
            out[c, index] = 1
        elif mode == "freq":
            for k in range(K):
                out[c, k] = 1.0 if rows[c, k] > threshold else 0.0
        else:
            if mode in ("diff_top", "reverse_diff_top"):
                score = [abs(x) for x in np.atleast_2d(diff)[c]]
            else:
                score = list(rows[c])
            take = 1 if mode == "max" else n
            ranked = sorted(range(K), key=lambda k: (-score[k], k))[:take]
            for k in ranked:
                out[c, k] = 1
            if mode == "reverse_diff_top":
                out[c] = 1 - out[c]
    return out


def spectrum(cov, levels=(90, 95, 99)):
    """(eigenvalues descending, ratio, cumulative, {level: n}) via np.linalg.svd (PSD)."""
    s = np.linalg.svd(np.asarray(cov, np.float64), compute_uv=False)
    total = sum(s)
    ratio = [x / total for x in s]
    cum, run = [], 0.0
    for r in ratio:
        run += r
        cum.append(run)
    n = {}
    for lv in levels:
        for i, c in enumerate(cum):
            if c >= lv / 100 - 1e-6:
                n[lv] = i + 1
                break
    return s, np.array(ratio), np.array(cum), n


def effective_rank(variances, kind):
    import math

    var = [max(float(v), 0.0) for v in variances]
    if kind == "participation":
        return sum(var) ** 2 / sum(v * v for v in var)
    sig = [math.sqrt(v) for v in var]
    tot = sum(sig)
    h = 0.0
    for s in sig:
        if s > 0:
            h -= s / tot * math.log(s / tot)
    return math.exp(h)


def component_cam(M, v):
    M = np.asarray(M, np.float64)
    v = np.asarray(v, np.float64)
    out = np.zeros(M.shape[:-1])
    for n in range(M.shape[0]):
        for k in range(M.shape[-1]):
            out[n] += v[k] * M[n][..., k]
    return out


def ks_statistic(a, b):
    """max over every pooled point of |F_a - F_b|, ECDFs counted by hand."""
    best = 0.0
    for x in list(a) + list(b):
        fa = sum(1 for t in a if t <= x) / len(a)
        fb = sum(1 for t in b if t <= x) / len(b)
        best = max(best, abs(fa - fb))
    return best


def wasserstein_1d(a, b):
    """Integral of |F_a - F_b| between consecutive pooled points, by hand."""
    import itertools

    pts = sorted(list(a) + list(b))
    total = 0.0
    for x0, x1 in itertools.pairwise(pts):
        fa = sum(1 for t in a if t <= x0) / len(a)
        fb = sum(1 for t in b if t <= x0) / len(b)
        total += abs(fa - fb) * (x1 - x0)
    return total


def within_class_covariance(s, labels):
    """Pooled within-class covariance sum_c sum_n (s - mu_c)(s - mu_c)^T / (N - C)."""
    s = np.asarray(s, np.float64)
    classes = sorted({int(y) for y in labels})
    K = s.shape[1]
    scatter = np.zeros((K, K))
    for c in classes:
        rows = [s[n] for n in range(len(s)) if labels[n] == c]
        mu = sum(rows) / len(rows)
        for r in rows:
            scatter += np.outer(r - mu, r - mu)
    return scatter / (len(s) - len(classes))


def mahalanobis(s, labels, means, cov, r, rtol=1e-6):
    """sqrt(x^T pinv(C_r) x), C_r the covariance truncated to its top r SVD components."""
    u, w, _ = np.linalg.svd(np.asarray(cov, np.float64))
    keep = [i for i in range(r) if w[i] > rtol * w[0]]
    c_r = sum(w[i] * np.outer(u[:, i], u[:, i]) for i in keep)
    p = np.linalg.pinv(c_r, rcond=rtol, hermitian=True)
    out = np.zeros(len(s))
    for n in range(len(s)):
        x = np.asarray(s[n], np.float64) - np.asarray(means[labels[n]], np.float64)
        out[n] = np.sqrt(x @ p @ x)
    return out


def border_share(cam, width):
    """Share of |cam| on cells within `width` of any edge, by visiting every cell."""
    cam = np.asarray(cam, np.float64)
    ring = total = 0.0
    for idx in np.ndindex(cam.shape):
        m = abs(cam[idx])
        total += m
        if any(i < width or i >= n - width for i, n in zip(idx, cam.shape)):
            ring += m
    return ring / total


def gaussian_blur(L, size=11, sigma=5.0):
    """(B, *spatial): every cell the weighted sum of its neighbours along each spatial axis
    in turn, weights exp(-d^2 / 2 sigma^2) normalised, indices past an edge mirrored
    without repeating the edge cell (-1 -> 1, n -> n - 2), as often as needed."""

    def mirror(i, n):
        while not 0 <= i < n:
            i = -i if i < 0 else 2 * (n - 1) - i
        return i if n > 1 else 0

    r = size // 2
    w = [math.exp(-(d * d) / (2.0 * sigma * sigma)) for d in range(-r, r + 1)]
    w = [v / sum(w) for v in w]
    out = np.asarray(L, np.float64)
    for axis in range(1, out.ndim):
        new = np.zeros_like(out)
        n = out.shape[axis]
        for idx in np.ndindex(out.shape):
            new[idx] = sum(
                w[d + r] * out[idx[:axis] + (mirror(idx[axis] + d, n),) + idx[axis + 1 :]]
                for d in range(-r, r + 1)
            )
        out = new
    return out


def sess(x, cam_of, logits_of, target, scales, window, step, pre_filter_ratio=0.0, theta=0.0,
         pool="mean", smooth=True, softmax_scores=True, eps=EPS):  # fmt: skip
    """SESS of x (B, *spatial, C), one image, scale and window at a time. cam_of(patch
    (*window, C), n) -> the base CAM (*grid) of image n's patch; logits_of(patch) -> (O,).
    Only enlarging scales (every rescaled side >= the input's). Per image: rescale (the
    shortest side to s, every side n to floor(s n / shortest)), windows every ``step``
    cells (the last moved back inside), patch scores (softmax)[target] clipped at 0, the
    lowest ``pre_filter_ratio`` dropped; each patch CAM relu'd, min-max'd, enlarged to the
    window, min-max'd, times score / best score, pasted on a zero canvas of the rescaled
    size, resized to the input; mean over the patches above theta per cell (or max),
    blurred, min-max'd."""
    import itertools

    x = np.asarray(x, np.float64)
    out = []
    for n in range(x.shape[0]):
        spatial, channels = x.shape[1:-1], x.shape[-1]
        shortest = min(spatial)
        patches = []  # (patch, rescaled shape, corner)
        for s in scales:
            shape = tuple(s * m // shortest for m in spatial)
            scaled = np.stack(
                [linear_resize(x[n : n + 1, ..., c], shape)[0] for c in range(channels)], -1
            )
            starts = []
            for m in shape:
                axis, start = [], 0
                while start + window < m:
                    axis.append(start)
                    start += step
                starts.append(axis + [m - window])
            for corner in itertools.product(*starts):
                cut = tuple(slice(c, c + window) for c in corner)
                patches.append((scaled[cut], shape, corner))
        scores = []
        for patch, _, _ in patches:
            z = np.asarray(logits_of(patch), np.float64)
            p = np.exp(z - z.max()) / np.exp(z - z.max()).sum() if softmax_scores else z
            scores.append(max(p[int(target[n])], 0.0))
        order = sorted(range(len(patches)), key=lambda i: scores[i])
        order = order[int(len(patches) * pre_filter_ratio) :]
        best = max(scores[i] for i in order)
        total, count, top = (np.zeros(spatial) for _ in range(3))
        for i in order:
            patch, shape, corner = patches[i]
            L = np.maximum(np.asarray(cam_of(patch, n), np.float64), 0.0)[None]
            L = linear_resize(minmax_per_image(L, eps), (window,) * len(spatial))
            L = minmax_per_image(np.maximum(L, 0.0), eps)[0]
            L = L * (scores[i] / best if best > 0 else 1.0)
            canvas = np.zeros(shape)
            canvas[tuple(slice(c, c + window) for c in corner)] = L
            full = linear_resize(canvas[None], spatial)[0]
            for idx in np.ndindex(spatial):
                top[idx] = max(top[idx], full[idx])
                if full[idx] > theta:
                    total[idx] += full[idx]
                    count[idx] += 1
        fused = top if pool == "max" else np.where(count > 0, total / np.maximum(count, 1), 0.0)
        if smooth:
            fused = gaussian_blur(fused[None])[0]
        out.append(minmax_per_image(fused[None], eps)[0])
    return np.stack(out)


def fullgrad(x, grad_x, biased, minmax=True, eps=EPS):
    """FullGrad as pytorch-grad-cam computes it, channel by channel. x, grad_x (B, *in, C):
    the input and dy/dx; biased: [(b (K,), grad_z (B, *grid, K))] per biased layer, z its
    output. Each |x_c grad_x_c| and |b_k grad_z_k| is min-max scaled per image and channel,
    resized to the input grid (linear_resize), and all are summed; min-max per image."""
    x, grad_x = np.asarray(x, np.float64), np.asarray(grad_x, np.float64)
    B, spatial = x.shape[0], x.shape[1:-1]
    total = np.zeros((B, *spatial))
    terms = [(x, grad_x)] + [
        (np.broadcast_to(np.asarray(b, np.float64), np.shape(g)), np.asarray(g, np.float64))
        for b, g in biased
    ]
    for value, grad in terms:
        for n in range(B):
            for k in range(value.shape[-1]):
                v = np.abs(value[n][..., k] * grad[n][..., k])[None]
                total[n] += linear_resize(minmax_per_image(v, eps), spatial)[0]
    return minmax_per_image(total, eps) if minmax else total


def nmf_multiplicative(X, H, W, iterations, eps=1e-12):
    """Lee & Seung's multiplicative updates for 0.5 ||X - H W||_F^2, one entry at a time:
    X (N, K), H (N, n), W (n, K); each iteration updates all of H, then all of W."""
    X, H, W = (np.array(a, dtype=np.float64) for a in (X, H, W))
    N, K = X.shape
    n = W.shape[0]
    for _ in range(iterations):
        HW = [[sum(H[i, r] * W[r, k] for r in range(n)) for k in range(K)] for i in range(N)]
        newH = np.empty_like(H)
        for i in range(N):
            for j in range(n):
                num = sum(X[i, k] * W[j, k] for k in range(K))
                den = sum(HW[i][k] * W[j, k] for k in range(K))
                newH[i, j] = H[i, j] * num / (den + eps)
        H = newH
        HW = [[sum(H[i, r] * W[r, k] for r in range(n)) for k in range(K)] for i in range(N)]
        newW = np.empty_like(W)
        for j in range(n):
            for k in range(K):
                num = sum(H[i, j] * X[i, k] for i in range(N))
                den = sum(H[i, j] * HW[i][k] for i in range(N))
                newW[j, k] = W[j, k] * num / (den + eps)
        W = newW
    return H, W
