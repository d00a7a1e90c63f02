"""GPU check (`make gpu-check`): large-preset training and many-stream generation on one GPU.

One script, one JSON file, under 8 minutes. On a machine with an NVIDIA GPU it

1. makes TensorFlow see the GPU: if ``nvidia-smi`` finds one but TensorFlow
   does not, installs TensorFlow's CUDA wheels (``tensorflow[and-cuda]`` of the
   installed version, from the configured index or ``--wheels DIR``) and
   starts itself again;
2. trains the ``large`` preset through the real command (``wavenet train``:
   mixed bfloat16, XLA) on synthetic shards for a few steps, in its own process
   (first, while this one holds no GPU memory), and reports predicted samples/s
   (first step excluded) and useful training FLOP/s (``3 x flops_per_sample``
   per predicted sample) as a fraction of both peaks below;
3. measures the single-GPU bfloat16 matmul speed (an 8192^2 XLA matmul), the
   yardstick of those fractions, next to the spec-sheet peak when the GPU is
   one of :data:`SPEC_BF16_TFLOPS`;
4. generates with the cached algorithm on the GPU for many streams at once
   (:class:`TFCachedGenerator`: one XLA-compiled loop of bfloat16 steps) and
   reports samples/s per stream count.

Without a GPU it prints why and exits with status 2. ``--quick`` is the same
flow on whatever device there is (the CPU here), with the ``tiny`` preset and
a few steps: the test suite runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["SPEC_BF16_TFLOPS", "TFCachedGenerator", "run", "main"]

# Dense bfloat16 tensor-core peak, TFLOP/s, from NVIDIA's data sheets (which
# print twice these figures "with sparsity"): H100 SXM5 and H200 1,979/2,
# H100 PCIe 1,513/2, A100 312, L4 242/2, L40S 733/2.
SPEC_BF16_TFLOPS = {"H200": 989.5, "H100 80GB HBM3": 989.5, "H100 SXM": 989.5, "H100 PCIe": 756.5,
                    "H100": 756.5, "A100": 312.0, "L40S": 366.5, "L4": 121.0}

BUDGET_S = 8 * 60


def _nvidia_gpus() -> list[str]:
    """Names of the NVIDIA GPUs nvidia-smi reports (empty without a driver or GPU)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        done = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []


def spec_bf16_tflops(name: str) -> float | None:
    """The data-sheet dense bfloat16 peak of a GPU by its name (longest matching key), or None."""
    hits = [k for k in SPEC_BF16_TFLOPS if k.lower() in name.lower()]
    return SPEC_BF16_TFLOPS[max(hits, key=len)] if hits else None


def _install_cuda_wheels(wheels: str | None) -> None:
    import tensorflow as tf

    spec = f"tensorflow[and-cuda]=={tf.__version__}"
    cmd = [sys.executable, "-m", "pip", "install", "-q", spec]
    if wheels:
        cmd += ["--no-index", "--find-links", wheels]
    print(f"gpu-check: TensorFlow sees no GPU; installing {spec} ...", file=sys.stderr, flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(f"error: installing {spec} failed (no network? pass --wheels DIR with the wheels)")


# -- cached generation in TensorFlow (for GPUs) --------------------------------------

class TFCachedGenerator:
    """The cached generator of :mod:`wavenet.generation.fast` as TensorFlow ops, for many streams on a GPU.

    The same algorithm (Paine et al. 2016) and ring-buffer layout as the CPU
    kernel: layer l keeps ``(kernel_size - 1) * dilation`` past inputs; tap j
    reads slot ``(t - (k - 1 - j) * d) mod n`` and the current input is written
    to slot ``t mod n``. Weights and activations in ``dtype`` (bfloat16 on a
    GPU), logits in float32. Unconditioned or with one label per stream.

    Args:
        model: a built :class:`wavenet.model.WaveNet`.
        dtype: "float32" or "bfloat16".
    """

    def __init__(self, model, dtype: str = "bfloat16"):
        import tensorflow as tf

        c = model.config
        self.config, self.dtype = c, tf.as_dtype(dtype)

        def const(v, dt=None):
            return tf.constant(np.asarray(v.numpy() if hasattr(v, "numpy") else v, np.float32), dt or self.dtype)

        k, r, g = c.kernel_size, c.residual_channels, c.gate_channels
        self.emb = const(model.embedding.embeddings)
        self.layers = []
        for i, bl in enumerate(model.blocks):
            last = i + 1 == c.num_layers
            self.layers.append({
                "fg": tf.reshape(const(bl.filter_gate_kernel), (k * r, 2 * g)), "bfg": const(bl.filter_gate_bias),
                "skip": const(bl.skip_kernel), "bskip": const(bl.skip_bias),
                "res": None if last else const(bl.residual_kernel),
                "bres": None if last else const(bl.residual_bias),
                "cond": const(bl.condition_embedding) if c.conditioned else None})
        self.hh, self.bh = const(model.head_hidden.kernel), const(model.head_hidden.bias)
        self.ho, self.bo = const(model.head_logits.kernel, tf.float32), const(model.head_logits.bias, tf.float32)

    def initial_queues(self, batch: int):
        import tensorflow as tf

        c = self.config
        return [tf.zeros(((c.kernel_size - 1) * d, batch, c.residual_channels), self.dtype) for d in c.dilations]

    def step(self, queues, codes, t, labels=None):
        """One step for every stream: codes (B,) int32 at time t -> (new queues, logits (B, Q) float32)."""
        import tensorflow as tf

        c = self.config
        k = c.kernel_size
        x = tf.gather(self.emb, codes)  # (B, R)
        skip = None
        out = []
        for layer, d, q in zip(self.layers, c.dilations, queues):
            n = (k - 1) * d
            taps = [tf.gather(q, tf.math.floormod(t - (k - 1 - j) * d, n)) for j in range(k - 1)]
            out.append(tf.tensor_scatter_nd_update(q, [[tf.math.floormod(t, n)]], x[None]))
            z = tf.matmul(tf.concat(taps + [x], axis=-1), layer["fg"]) + layer["bfg"]  # (B, 2G)
            if layer["cond"] is not None:
                z = z + tf.gather(layer["cond"], labels)
            h = tf.tanh(z[:, :c.gate_channels]) * tf.sigmoid(z[:, c.gate_channels:])
            s = tf.matmul(h, layer["skip"]) + layer["bskip"]
            skip = s if skip is None else skip + s
            if layer["res"] is not None:
                x = x + tf.matmul(h, layer["res"]) + layer["bres"]
        hid = tf.nn.relu(tf.matmul(tf.nn.relu(skip), self.hh) + self.bh)
        return out, tf.matmul(tf.cast(hid, tf.float32), self.ho) + self.bo

    def teacher_forced_logits(self, codes: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """(B, T, Q) logits of feeding codes (B, T) step by step (a reference for tests)."""
        import tensorflow as tf

        codes = tf.constant(np.asarray(codes), tf.int32)
        lab = None if labels is None else tf.constant(np.asarray(labels), tf.int32)
        step = tf.function(lambda q, c, t: self.step(q, c, t, lab))
        queues, rows = self.initial_queues(int(codes.shape[0])), []
        for t in range(int(codes.shape[1])):
            queues, logits = step(queues, codes[:, t], tf.constant(t))
            rows.append(logits.numpy())
        return np.stack(rows, axis=1)

    def sampler(self, batch: int, steps: int):
        """An XLA-compiled function ``f(seed) -> (B, steps) int32`` sampling from silence (temperature 1)."""
        import tensorflow as tf

        from wavenet.generation.fast import silence_code

        start = silence_code(self.config.quantization_channels)

        @tf.function(jit_compile=True)
        def sample(seed):
            def body(t, queues, cur, out):
                queues, logits = self.step(queues, cur, t)
                nxt = tf.random.stateless_categorical(logits, 1, seed=tf.stack([seed, t]), dtype=tf.int32)[:, 0]
                return t + 1, queues, nxt, tf.tensor_scatter_nd_update(out, [[t]], nxt[None])

            init = (tf.constant(0), self.initial_queues(batch), tf.fill([batch], start),
                    tf.zeros((steps, batch), tf.int32))
            _, _, _, out = tf.while_loop(lambda t, *_: t < steps, body, init)
            return tf.transpose(out)

        return sample


# -- the check ---------------------------------------------------------------------------

def _bf16_matmul_tflops(n: int, seconds: float) -> float:
    import tensorflow as tf

    from wavenet.bench import calls_per_second

    a = tf.random.normal((n, n), dtype=tf.bfloat16)
    b = tf.random.normal((n, n), dtype=tf.bfloat16)
    mm = tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1, :1], tf.float32)), jit_compile=True)
    return 2.0 * n**3 * calls_per_second(lambda: mm(a, b).numpy(), seconds) / 1e12


def _train(cfg, workdir: Path, steps: int, batch: int, timeout: float) -> dict:
    """Train ``cfg`` through the real command on synthetic shards; its printed summary."""
    from wavenet.bench.train import write_synthetic_shards

    cfg = cfg.with_overrides({"train.global_batch_size": batch, "train.precision": "mixed_bfloat16",
                              "train.jit_compile": "on", "train.log_every": steps, "train.validate_every": 0,
                              "train.validation_batches": 1, "train.checkpoint_every": steps,
                              "train.warmup_steps": 0, "data.num_shards": 1})
    data = write_synthetic_shards(str(workdir / "data"), cfg, train_shards=1, examples_per_shard=2,
                                  seconds=2 * cfg.crop_length / cfg.audio.sample_rate)
    cfg_path = workdir / "train.yaml"
    cfg.save(cfg_path)
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")}
    argv = [sys.executable, "-m", "wavenet.cli", "train", data, "--out", str(workdir / "run"), "--config",
            str(cfg_path), "--steps", str(steps), "--no-progress",
            "--tracking-uri", f"sqlite:///{workdir}/mlflow.db", "--experiment", "gpu-check"]
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=workdir, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"training did not finish within {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-1500:]}
    return json.loads(done.stdout)


def run(quick: bool = False, train_batch: int = 8, train_steps: int = 20,
        streams: tuple[int, ...] = (64, 256, 1024), gen_steps: int = 2000) -> dict:
    """Measure training and generation on the first GPU (or, when quick, on any device).

    Returns:
        A JSON-able dict: ``device``, ``bf16_matmul_tflops`` (measured) and
        ``spec_bf16_tflops``, ``train`` (samples/s, useful TFLOP/s and fractions)
        and ``generate`` (samples/s per number of streams), ``seconds``.
    """
    import tensorflow as tf

    from wavenet.config import preset

    start = time.perf_counter()
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:  # take GPU memory as needed, not all of it at the first op
        tf.config.experimental.set_memory_growth(gpu, True)
    names = _nvidia_gpus()
    out: dict = {"benchmark": "gpu-check", "quick": quick, "tensorflow": tf.__version__,
                 "device": names[0] if gpus and names else ("GPU" if gpus else "CPU (no GPU)"),
                 "gpus_visible": len(gpus)}
    if quick:
        cfg = preset("tiny")
        train_batch, train_steps, streams, gen_steps = 4, 3, (8,), 32
    else:
        cfg = preset("large")
    out["preset"] = cfg.preset
    out["spec_bf16_tflops"] = spec_bf16_tflops(out["device"]) if gpus else None
    phases = out["phase_seconds"] = {}
    # Training first, in its own process, while this one holds no GPU memory yet.
    with tempfile.TemporaryDirectory(prefix="wavenet-gpu-check-") as tmp:
        remaining = BUDGET_S - (time.perf_counter() - start) - (30 if quick else 150)
        t0 = time.perf_counter()
        summary = _train(cfg, Path(tmp), train_steps, train_batch, max(60.0, remaining))
        phases["train"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with tf.device("/GPU:0" if gpus else "/CPU:0"):
        out["bf16_matmul_tflops"] = _bf16_matmul_tflops(512 if quick else 8192, 0.3 if quick else 3.0)
    phases["matmul"] = time.perf_counter() - t0
    out["train"] = _train_figures(cfg, summary, train_batch, train_steps, out)
    gen_start = time.perf_counter()
    out["generate"] = _generate_figures(cfg, streams, gen_steps, start, bool(gpus))
    phases["generate"] = time.perf_counter() - gen_start
    out["seconds"] = time.perf_counter() - start
    return out


def _train_figures(cfg, summary: dict, train_batch: int, train_steps: int, out: dict) -> dict:
    """The training measurement: samples/s and useful TFLOP/s (forward and backward: 3x
    the forward FLOPs), as fractions of the measured matmul and the spec peak in ``out``."""
    useful = 3 * cfg.model.flops_per_sample
    train = {"global_batch": train_batch, "window": cfg.train.window, "steps": train_steps,
             "precision": summary.get("precision", "mixed_bfloat16"), "xla": summary.get("jit_compile", True),
             "useful_flops_per_sample": useful}
    if "error" in summary:
        train["error"] = summary["error"]
        return train
    sps = summary.get("samples_per_s") or 0.0
    train["samples_per_s"] = sps
    train["useful_tflops"] = sps * useful / 1e12
    train["fraction_of_measured_bf16_matmul"] = train["useful_tflops"] / out["bf16_matmul_tflops"]
    if out["spec_bf16_tflops"]:
        train["fraction_of_spec_bf16_peak"] = train["useful_tflops"] / out["spec_bf16_tflops"]
    train["host_peak_rss_mb"] = summary.get("peak_rss_mb")
    return train


def _generate_figures(cfg, streams: tuple[int, ...], gen_steps: int, start: float, gpu: bool) -> dict:
    """Generation with :class:`TFCachedGenerator` (bfloat16) per number of streams, while the
    time budget since ``start`` lasts."""
    import tensorflow as tf

    from wavenet.config import resolve_auto
    from wavenet.model import build_model

    # Random weights and no data: "auto" classes resolve to an unconditioned model (a label's
    # embedding only adds a bias per stream, no work per sample), as `wavenet bench generate`.
    keras_model = build_model(resolve_auto(cfg, []))
    gen = TFCachedGenerator(keras_model, "bfloat16")
    flops = cfg.model.flops_per_sample
    figures: dict = {"dtype": "bfloat16", "steps_per_call": gen_steps, "streams": {}}
    for batch in streams:
        if time.perf_counter() - start > BUDGET_S - 30:
            figures["streams"][str(batch)] = {"skipped": "time budget"}
            continue
        with tf.device("/GPU:0" if gpu else "/CPU:0"):
            sample = gen.sampler(batch, gen_steps)
            t0 = time.perf_counter()
            codes = sample(tf.constant(0)).numpy()  # compiles
            compile_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            codes = sample(tf.constant(1)).numpy()
            dt = time.perf_counter() - t0
        assert codes.shape == (batch, gen_steps)
        figures["streams"][str(batch)] = {
            "samples_per_s": batch * gen_steps / dt, "per_stream_samples_per_s": gen_steps / dt,
            "tflops_float32_equivalent": batch * gen_steps * flops / dt / 1e12, "first_call_s": compile_s,
            "distinct_codes": int(len(np.unique(codes)))}
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu-check", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="gpu-check.json", help="where the JSON goes (default gpu-check.json)")
    p.add_argument("--quick", action="store_true", help="tiny preset, a few steps, on any device")
    p.add_argument("--wheels", default=None, metavar="DIR", help="install the CUDA wheels from this folder")
    p.add_argument("--train-batch", type=int, default=8,
                   help="global batch of the training measurement (large preset; default 8, its batch "
                        "per GPU on 4 GPUs)")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    names = _nvidia_gpus()
    if not names and not args.quick:
        print("error: no NVIDIA GPU here (nvidia-smi finds none): gpu-check measures large-preset training "
              "and generation on a GPU. Run it on a GPU machine, or `--quick` for a smoke run on this CPU.",
              file=sys.stderr)
        return 2
    if names and not args.quick:
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            if os.environ.get("WAVENET_GPU_CHECK_REEXEC"):
                print("error: CUDA wheels installed, but TensorFlow still sees no GPU "
                      f"(nvidia-smi: {', '.join(names)}): check the driver version", file=sys.stderr)
                return 2
            _install_cuda_wheels(args.wheels)
            env = {**os.environ, "WAVENET_GPU_CHECK_REEXEC": "1"}
            return subprocess.run([sys.executable, "-m", "wavenet.bench.gpu", *(argv or sys.argv[1:])],
                                  env=env).returncode
    result = run(quick=args.quick, train_batch=args.train_batch)
    from wavenet.edges.storage import write_text_atomic

    write_text_atomic(args.out, json.dumps(result, indent=2, sort_keys=True))
    print(json.dumps(result, indent=2, sort_keys=True))
    print(f"gpu-check: wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
