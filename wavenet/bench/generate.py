"""Generation benchmark (`wavenet bench generate`): the cached generator at each weight precision.

For ``cfg.model`` with random weights, on one CPU thread, it measures the fast
generator at every weight precision (``float32``, ``bfloat16``, ``int8``) for
one stream and for 32 streams, the naive generator (the Keras model on the
whole receptive field per sample) for one stream, and the same run's
single-thread float32 matmul speed.

Figures, per precision ``p`` (keys ``{p}_b{1,32}_...``):

* ``samples_per_s`` (best timed call), ``samples_per_s_median``,
  ``samples_per_cpu_s`` (only the time the process held a core);
* ``gflops``: float32-equivalent GFLOP/s (``flops_per_sample`` x samples/s,
  whatever the precision), and ``fraction_of_matmul`` of the same run's matmul;
* ``{p}_weight_bytes_per_sample``: bytes of weights a batch-1 sample reads
  (packed matrices and int8 scales), which sets the batch-1 speed;
* ``{p}_b1_vs_float32``: batch-1 speed over float32's, in this run.

``fast_*`` keys repeat the figures of the configured precision
(``generate.weights``), the one users get.

Targets, judged as ratios within one run (absolute speeds swing with the
machine's load): issue 2 (``bench`` preset) asks the fast generator for real
time at 16 kHz for one stream, 25,000 samples/s for 32 and 500x naive; issue
13 asks, for reduced precisions, ``large`` batch 1 at 4x float32, batch 32 at
0.7 of the matmul peak, and ``bench`` batch 1 at 1.5x float32.

The machine may be shared: calls of every configuration are interleaved round
by round, so a busy spell slows all of them alike; each figure is the best of
several rounds (the matmul too), and ``load_average_1m`` tells how busy the
machine was.

With a trained model and its data (``--model``, ``--data``), the speed is
measured on that model's architecture and :func:`agreement` adds, for each
precision, the teacher-forced bits/sample of the cached generator on
validation windows next to the float32 Keras model's (issue 13: within 0.02
bits).
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

PRECISIONS = ("float32", "bfloat16", "int8")
BATCHES = (1, 32)


def targets_for(preset: str) -> dict[str, float]:
    """The targets that apply to a preset (key of the result -> minimum)."""
    out: dict[str, float] = {}
    if preset == "bench":
        out.update({"fast_b1_samples_per_s": 16000.0, "fast_b32_samples_per_s": 25000.0,
                    "fast_vs_naive_b1": 500.0})
        out.update({f"{p}_b1_vs_float32": 1.5 for p in PRECISIONS[1:]})
    if preset == "large":
        out.update({f"{p}_b1_vs_float32": 4.0 for p in PRECISIONS[1:]})
        out.update({f"{p}_b32_fraction_of_matmul": 0.7 for p in PRECISIONS[1:]})
    return out


def cpu_flags() -> list[str]:
    """The SIMD features of this CPU that matter to the kernels (from /proc/cpuinfo)."""
    wanted = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni",
              "amx_bf16", "amx_int8")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


class _Timer:
    """Samples/s of repeated calls of one configuration: wall clock per call, CPU time in total."""

    def __init__(self, fn, samples_per_call: int):
        self.fn, self.samples, self.rates, self.cpu = fn, samples_per_call, [], 0.0

    def once(self) -> None:
        start, cpu_start = time.perf_counter(), time.process_time()
        self.fn()
        dt = time.perf_counter() - start
        self.cpu += time.process_time() - cpu_start
        self.rates.append(self.samples / dt)

    def figures(self) -> dict[str, float]:
        return {"samples_per_s": max(self.rates), "samples_per_s_median": statistics.median(self.rates),
                "samples_per_cpu_s": self.samples * len(self.rates) / max(self.cpu, 1e-9)}


AGREEMENT_BITS = 0.02


def agreement(model, data_dir: str, cfg, max_windows: int = 16, batch_size: int = 8) -> dict:
    """Teacher-forced bits/sample of the cached generator at each precision vs the float32 Keras model.

    Both score the same validation windows (:func:`wavenet.data.dataset.validation_dataset`:
    ``evaluate.window`` predicted samples, each with a full receptive field of
    context), the first ``max_windows`` of them.

    Args:
        model: a trained :class:`wavenet.model.WaveNet`.
        data_dir: its shards (manifest.json and a validation split).
        cfg: ``evaluate.window`` sets the window; the model's own architecture is used.
        max_windows: windows scored (fewer if the split has fewer).
        batch_size: windows per pass (and streams of the cached generator).

    Returns:
        ``{"windows", "window", "keras_float32_bits", "<precision>": {"bits",
        "difference"} ..., "max_abs_difference_bits", "within_bits", "agrees"}``.
    """
    import dataclasses

    from wavenet.data.dataset import validation_dataset
    from wavenet.generation.fast import FastGenerator
    from wavenet.model import bits_per_sample

    mcfg = dataclasses.replace(cfg, model=model.config, audio=model.audio_config)
    keras_bits: list[np.ndarray] = []
    cached: dict[str, list[np.ndarray]] = {p: [] for p in PRECISIONS}
    seen = 0
    for crops, labels, notes in validation_dataset(data_dir, mcfg, batch_size):
        crops, labels, notes = (x.numpy()[:max_windows - seen] for x in (crops, labels, notes))
        lab = labels if model.config.conditioned else None
        notes = notes if model.config.scored else None
        keras_bits.append(np.asarray(bits_per_sample(model, crops, lab, notes=notes), np.float64))
        for p in PRECISIONS:
            cached[p].append(FastGenerator(model, crops.shape[0], weights=p).bits_per_sample(crops, lab, notes))
        seen += crops.shape[0]
        if seen >= max_windows:
            break
    ref = float(np.concatenate(keras_bits).mean())
    out: dict = {"windows": seen, "window": mcfg.evaluate.window, "keras_float32_bits": ref}
    for p in PRECISIONS:
        bits = float(np.concatenate(cached[p]).mean())
        out[p] = {"bits": bits, "difference": bits - ref}
    out["max_abs_difference_bits"] = max(abs(out[p]["difference"]) for p in PRECISIONS)
    out["within_bits"] = AGREEMENT_BITS
    out["agrees"] = out["max_abs_difference_bits"] <= AGREEMENT_BITS
    return out


def _matmul_timer(n: int, reps: int = 4) -> _Timer:
    """Single-thread float32 (n, n) matmuls with TensorFlow (oneDNN/Eigen), as in
    :func:`wavenet.bench.matmul_gflops`; its "samples" are FLOPs."""
    import tensorflow as tf

    a, b = tf.random.normal((n, n)), tf.random.normal((n, n))
    mm = tf.function(lambda a, b: tf.matmul(a, b))
    mm(a, b).numpy()

    def call():
        for _ in range(reps):
            mm(a, b).numpy()

    return _Timer(call, 2 * n**3 * reps)


def run(cfg, quick: bool = False, model: str | None = None, data: str | None = None) -> dict:
    """Measure fast (each precision, batch 1 and 32) and naive (batch 1) generation for ``cfg.model``.

    Args:
        cfg: an ExperimentConfig; random weights of its model are used.
        quick: a seconds-long smoke run.
        model: a trained model (``.keras`` path or MLflow URI) to measure instead;
            with ``data``, its agreement at each precision is measured too.
        data: the model's shards folder (for :func:`agreement`).

    Returns:
        A JSON-able dict of figures (see the module docstring and docs/benchmarks.md).
    """
    from wavenet.bench import machine, peak_rss_mb, pin_threads

    pin_threads(1)
    from wavenet.generation.fast import kernel_isa

    cfg, source, model = _model_to_measure(cfg, model)
    mc = model.config
    rng = np.random.default_rng(0)

    def labels(batch):
        return rng.integers(0, mc.num_classes, batch) if mc.conditioned else None

    out: dict = {"preset": cfg.preset, "model": source, "threads": 1, "quick": quick, "kernels": kernel_isa(),
                 "receptive_field": mc.receptive_field, "flops_per_sample": mc.flops_per_sample,
                 "default_weights": cfg.generate.weights}
    matmul = _matmul_timer(512 if quick else 1024)
    timers = _fast_timers(model, labels, quick, out)
    for _ in range(2 if quick else 8):
        matmul.once()
        for timer in timers.values():
            timer.once()
    for (p, batch), timer in timers.items():
        for key, value in timer.figures().items():
            out[f"{p}_b{batch}_{key}"] = value
    out["naive_b1_samples_per_s"] = _naive_samples_per_s(model, labels(1), quick)

    # The matmul is timed in the same rounds; its best round is the peak fractions are judged against.
    out["matmul_gflops"] = matmul.figures()["samples_per_s"] / 1e9
    out["matmul_gflops_median"] = matmul.figures()["samples_per_s_median"] / 1e9
    _add_derived_figures(out, mc.flops_per_sample, cfg.generate.weights)
    out["targets"] = targets_for(cfg.preset)
    out["meets_targets"] = {k: out[k] >= v for k, v in out["targets"].items()}
    if data is not None:
        out["agreement"] = agreement(model, data, cfg, max_windows=2 if quick else 16)
    out["load_average_1m"] = os.getloadavg()[0]
    out["peak_rss_mb"] = peak_rss_mb()
    out["machine"] = {**machine(), "cpu_flags": cpu_flags()}
    return out


def _model_to_measure(cfg, model: str | None):
    """``(cfg, source, model)``: the trained model at ``model`` (``cfg`` takes its
    architecture), or random weights of ``cfg.model`` (source None)."""
    from wavenet.config import resolve_auto
    from wavenet.model import build_model

    if model is not None:
        import dataclasses

        from wavenet.edges.registry import load_wavenet

        source, model = model, load_wavenet(model)
        return dataclasses.replace(cfg, model=model.config, audio=model.audio_config), source, model
    # No data: a preset's num_classes "auto" has no labels to count, and a speed benchmark
    # needs none (conditioning adds one embedding row per layer, read once per clip).
    return cfg, None, build_model(resolve_auto(cfg, []))


def _fast_timers(model, labels, quick: bool, out: dict) -> dict[tuple[str, int], _Timer]:
    """A timer of the cached generator per (precision, batch); the weight bytes one stream
    reads per sample go into ``out``."""
    from wavenet.generation.fast import FastGenerator

    # Each timed call lasts about call_s (first sized from a short warm-up call):
    # short enough that the best of several finds a quiet moment on a busy machine,
    # long enough that setting up the streams is a small part of it.
    call_s = 0.1 if quick else 0.4
    timers: dict[tuple[str, int], _Timer] = {}
    for p in PRECISIONS:
        for batch in BATCHES:
            gen = FastGenerator(model, batch, weights=p)
            lab = labels(batch)
            start = time.perf_counter()
            gen.generate(8, labels=lab, seed=0)
            rate = 8 * batch / (time.perf_counter() - start)
            n = max(8, int(call_s * rate / batch))
            if batch == 1:  # one stream reads every weight once per sample
                out[f"{p}_weight_bytes_per_sample"] = gen.weight_bytes
            timers[p, batch] = _Timer(lambda g=gen, n=n, lab=lab: g.generate(n, labels=lab, seed=1), n * batch)
    return timers


def _naive_samples_per_s(model, lab, quick: bool) -> float:
    """Samples/s of the uncached generator (the full model per sample), one stream."""
    from wavenet.generation.fast import naive_generate

    naive_n = 2 if quick else 24
    naive_generate(model, 1, labels=lab, seed=0)  # traces the model once
    naive = _Timer(lambda: naive_generate(model, naive_n, labels=lab, seed=1), naive_n)
    for _ in range(1 if quick else 2):
        naive.once()
    return naive.figures()["samples_per_s"]


def _add_derived_figures(out: dict, flops: float, default_weights: str) -> None:
    """GFLOP/s, fractions of the matmul peak, ratios between precisions, and the
    ``fast_*`` figures (those of the default weight precision)."""
    for p in PRECISIONS:
        for batch in BATCHES:
            gflops = out[f"{p}_b{batch}_samples_per_s"] * flops / 1e9
            out[f"{p}_b{batch}_gflops"] = gflops
            out[f"{p}_b{batch}_fraction_of_matmul"] = gflops / out["matmul_gflops"]
        out[f"{p}_b1_vs_float32"] = out[f"{p}_b1_samples_per_s"] / out["float32_b1_samples_per_s"]
        out[f"{p}_b1_weight_gb_per_s"] = (out[f"{p}_b1_samples_per_s"]
                                          * out[f"{p}_weight_bytes_per_sample"] / 1e9)
    for batch in BATCHES:
        for key in ("samples_per_s", "samples_per_cpu_s", "samples_per_s_median", "gflops",
                    "fraction_of_matmul"):
            out[f"fast_b{batch}_{key}"] = out[f"{default_weights}_b{batch}_{key}"]
    out["fast_vs_naive_b1"] = out["fast_b1_samples_per_s"] / out["naive_b1_samples_per_s"]
