"""Throughput of ifa_jax against its floor and against the PyTorch peers.

    python -m experiments.benchmark [--quick] [--cases mnist64,mnist256,resnet18,cnn3d]
                                    [--json out.json] [--memory] [--torch-threads 2,1]
                                    [--no-peers] [--no-e2e]
                                    [--only cases,e2e,memory,methods,allocator,metrics]
                                    [--method-names gradcam,scorecam,...]
                                    [--allocators default,tuned,jemalloc,tcmalloc]

For each case (model, input, batch, layer) it times, interleaved in one process:

* the floor: one jitted forward + vjp of the target score to the layer's activations
  (``probe.tapped`` with zero deltas; returns logits, A and G, nothing else), and a
  forward pass alone (ScoreCAM's bound is its throughput / K);
* ifa_jax: the analysis step (``analysis.analysis_step``: probe, CAM, statistics update)
  for GradCAM, HiResCAM and four methods from one probe call; the whole ``analyze()`` pass
  of the four methods over 8 host batches (the host loop and the per-sample values'
  transfer included, with the runner's options); a CAM with the common scale
  at input resolution (probe + cam + apply_scale + upsample, one jit); the eager
  ``explain()`` API; ScoreCAM via ``explain(..., 'scorecam')`` (+ the same scale and
  upsample);
* the PyTorch peers when ``torch`` and ``pytorch_grad_cam`` import (``pip install -e
  '.[bench]'``, best in a separate venv), once per ``--torch-threads`` count (default:
  JAX's CPU thread count): the same architecture with the same weights (converted from
  Flax, logits checked with assert_allclose), a bare forward + backward into all
  parameters, a forward + gradient to the layer only, pytorch-grad-cam's GradCAM and
  ScoreCAM.

Every call ends in ``block_until_ready`` (or returns host arrays). Each entry gets a first
call (its extra time over the median is the trace + compile time) and a warm-up call, then
``--repeats`` rounds over all entries in turn; a measurement repeats fast calls to last
``--min-time``. Throughputs are images/second (medians); "x floor" (a row's throughput over
the floor's) and "speedup" (ifa_jax's over the peer's) are medians of ratios taken within
one round, which cancels most of the load of a shared machine.

End to end (``--no-e2e`` skips it): the whole integrated feature analysis of embedded MNIST
as the runner does it (one analysis pass for all methods, common scale, consistency
evaluation for every method, scale and feature subset), in seconds per 1,000 images, with
the model passes counted. ``--memory`` adds the peak RSS of the analysis pass at 5,000 and
50,000 samples (:mod:`experiments.bench_memory`, one subprocess per size).

``--only methods`` (a section that runs only when named) times every registered CAM
method (``ifa_jax.cams.REGISTRY``, read when it runs) through ``explain()`` with its
default options on the ``mnist256`` case, interleaved with GradCAM, and reports each one's
seconds per image over GradCAM's in the same round (median, min, max) and its images per
second (:mod:`~experiments.bench.methods` says which probe and batch each kind gets).

``--only allocator`` (only run when named) measures the floor, the 4-method analysis step
at batch 256 and ``analyze()`` of 4 methods on 1,024 images (``mnist256``, layer relu2)
with the default and the tuned memory allocator (and jemalloc / tcmalloc preloaded where
installed), each in its own worker process, the workers alternating over
``--allocator-rounds`` rounds: wall time, system share of the CPU time and minor page
faults per call, peak RSS, and each allocator's wall time against the default's in the
same round (:mod:`~experiments.bench.allocator`). The benchmark itself restarts once with
the tuning, like ``ifa-jax`` (docs/performance.md).

``--only metrics`` (only run when named) times each metric of :mod:`ifa_jax.metrics`
against its peer on the same inputs, interleaved: ROAD combined and ARCC against
pytorch-grad-cam 1.5.7, faithfulness correlation, pixel-flipping, the localisation,
complexity, sensitivity and random-logit metrics against Quantus 0.6.0, on MnistCNN
28x28x1 (random weights) at batch 32 (quick 8), the peers on the torch twin at 1 and 2
threads (``--torch-threads``): each side's seconds per image and the peer's over
ifa_jax's within a round (:mod:`~experiments.bench.metric_peers`). Peers that do not
import are reported as missing; ifa_jax's rows still run.

``--quick`` shrinks the ResNet-18 case to 112x112 inputs, the 3-D case to batch 2, the
ScoreCAM batches and the end-to-end dataset (1,000 digits), and takes 3 repeats.

The modules, one per concern:

* :mod:`~experiments.bench.cases`: the cases (model, input size, batch, layer);
* :mod:`~experiments.bench.timing`: ``Entry``, interleaved timing, paired ratios;
* :mod:`~experiments.bench.floor`: the JAX floor (forward + vjp to the layer);
* :mod:`~experiments.bench.jax_side`: the ifa_jax rows (analysis step, CAM, explain, ScoreCAM);
* :mod:`~experiments.bench.torch_twins`: the PyTorch twins of the Flax models and their
  weight porting (needs torch);
* :mod:`~experiments.bench.peers`: the pytorch-grad-cam and bare torch rows;
* :mod:`~experiments.bench.end_to_end`: the pipeline timings and the model pass count;
* :mod:`~experiments.bench.memory`: peak RSS per size, one subprocess each;
* :mod:`~experiments.bench.methods`: every registered CAM method against GradCAM;
* :mod:`~experiments.bench.allocator`: the default and the tuned allocator, a process each;
* :mod:`~experiments.bench.metric_peers`: the metrics against pytorch-grad-cam and Quantus;
* :mod:`~experiments.bench.report`: versions, tables, JSON;
* :mod:`~experiments.bench.suite`: one case and the whole run (``run_benchmark``);
* :mod:`~experiments.bench.main`: the command line.
"""
