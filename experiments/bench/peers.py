"""The PyTorch peers: pytorch-grad-cam's GradCAM and ScoreCAM, and bare torch passes, on the
torch twin of each case's model (:mod:`experiments.bench.torch_twins`)."""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import io
from collections.abc import Sequence

import numpy as np

from experiments.bench.cases import Case
from experiments.bench.jax_side import CAM_ROW, scorecam_row
from experiments.bench.timing import Entry


def peer_versions() -> dict[str, str] | str:
    """Versions of torch and pytorch-grad-cam, or why they cannot be used."""
    try:
        import pytorch_grad_cam  # noqa: F401
        import torch
    except Exception as err:  # ImportError, or a broken CUDA build
        return (
            f"{type(err).__name__}: {err}. Install the peers with "
            "`pip install -e '.[bench]'` (best in a separate venv, see README)"
        )
    out = {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
    }
    for pkg in ("grad-cam", "torchvision"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[pkg] = importlib.metadata.version(pkg)
    return out


def peer_entries(
    case: Case, model, variables, x, y, threads: Sequence[int] = (2,)
) -> tuple[list[Entry], dict]:
    """Timed PyTorch calls, one set per torch thread count in ``threads``."""
    import torch
    from pytorch_grad_cam import GradCAM, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from experiments.bench.torch_twins import (
        check_logits,
        to_torch_input,
        torch_twin,
        torch_twin_layer,
    )

    b, bs = case.batch, min(case.scorecam_batch, case.batch)
    base = torch_twin(case, model, variables)
    info = {"logits_max_abs_diff": check_logits(case, model, variables, base, x[:8])}
    xt, yt = to_torch_input(x), torch.from_numpy(np.array(y)).long()
    targets = [ClassifierOutputTarget(int(c)) for c in np.asarray(y)]

    def twin():  # one model per user, so hooks of one CAM object never fire in another
        m = copy.deepcopy(base)
        layer = torch_twin_layer(case, m)
        return m, layer

    bare, _ = twin()

    def fwd_bwd_all():
        bare.zero_grad(set_to_none=True)
        out = bare(xt)
        out.gather(1, yt[:, None]).sum().backward()

    frozen, frozen_layer = twin()
    for p in frozen.parameters():
        p.requires_grad_(False)
    grabbed = {}

    def grab(module, inputs, output):
        output = output.detach().requires_grad_(True)
        grabbed["a"] = output
        return output

    frozen_layer.register_forward_hook(grab)

    def fwd_grad_layer():
        out = frozen(xt)
        (g,) = torch.autograd.grad(out.gather(1, yt[:, None]).sum(), grabbed["a"])
        return g

    m_grad, l_grad = twin()
    gradcam = GradCAM(model=m_grad, target_layers=[l_grad])
    m_score, l_score = twin()
    scorecam = ScoreCAM(model=m_score, target_layers=[l_score])
    xs = xt[:bs]

    def run_scorecam():
        with contextlib.redirect_stderr(io.StringIO()):  # its per-image tqdm bars
            return scorecam(input_tensor=xs, targets=targets[:bs])

    def with_threads(n, fn):
        def run():
            if torch.get_num_threads() != n:
                torch.set_num_threads(n)
            return fn()

        return run

    entries = []
    for n in threads:
        entries += [
            Entry(
                f"torch fwd + bwd (all params) [{n} thr]", "torch", b, with_threads(n, fwd_bwd_all)
            ),
            Entry(
                f"torch fwd + grad to layer only [{n} thr]",
                "torch",
                b,
                with_threads(n, fwd_grad_layer),
            ),
            Entry(
                f"grad-cam GradCAM [{n} thr]",
                "peer",
                b,
                with_threads(n, lambda: gradcam(input_tensor=xt, targets=targets)),
                compare_to=CAM_ROW,
            ),
            Entry(
                f"grad-cam ScoreCAM (batch {bs}) [{n} thr]",
                "peer",
                bs,
                with_threads(n, run_scorecam),
                compare_to=scorecam_row(bs),
            ),
        ]
    return entries, info
