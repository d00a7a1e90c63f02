"""Training throughput benchmark (`wavenet bench train`).

Trains the given config (the ``bench`` preset by default) on synthetic shards
in a temporary folder, through the real command (``python -m wavenet.cli
train``: launcher, MultiWorkerMirroredStrategy, MLflow to a temporary SQLite
store), with 1 worker and with 2 local workers, each worker pinned to one
TensorFlow thread. Reports predicted audio samples per second
(``global_batch * window / step time``, first step excluded: it traces),
the model's training FLOPs per sample, the same process's single-thread
matmul GFLOP/s, and peak memory per worker (also for the ``demo`` preset).

How FLOPs are counted. ``ModelConfig.flops_per_sample`` is the forward cost
of one output position (2 x multiply-adds of the dilated conv, residual and
skip 1x1s of every layer, and the two head layers). Training costs about 3x
the forward pass (forward, backward to activations, backward to weights).
A crop of ``receptive_field + window`` codes predicts only ``window``
samples, but each layer runs on more positions than that, the context its
successors read (``ModelConfig.teacher_forced_flops``): *useful* FLOPs count
only the predicted samples (``3 * flops_per_sample`` per sample), *executed*
FLOPs include that overhead. The target is judged on useful FLOPs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from wavenet.bench import machine, matmul_gflops, pin_threads
from wavenet.config import ExperimentConfig, preset
from wavenet.context import RunContext
from wavenet.data.audio import mu_law_encode
from wavenet.data.shards import dataset_from_codes
from wavenet.train import train_command

__all__ = ["run", "write_synthetic_shards"]


def write_synthetic_shards(folder: str, cfg: ExperimentConfig, train_shards: int = 2,
                           examples_per_shard: int = 2, seconds: float = 4.0, seed: int = 0) -> str:
    """A small dataset in the real format: noisy harmonic tones as mu-law codes.

    ``train_shards`` shards per split, ``examples_per_shard`` tracks per training
    shard and one per validation shard, written by :func:`wavenet.data.shards.dataset_from_codes`.

    Returns:
        ``folder``, holding manifest.json, train/ and validation/ shards.
    """
    rng = np.random.default_rng(seed)
    length = max(int(seconds * cfg.audio.sample_rate), 2 * cfg.crop_length)
    t = np.arange(length) / cfg.audio.sample_rate

    def tone() -> np.ndarray:
        f0 = rng.uniform(110, 440)
        wave = sum(0.5 / k * np.sin(2 * np.pi * k * f0 * t) for k in (1, 2, 3))
        wave = wave + rng.normal(0, 0.02, length)
        return mu_law_encode(np.clip(wave, -1, 1).astype(np.float32), cfg.audio.quantization_channels)

    splits = ["train"] * (train_shards * examples_per_shard) + ["validation"] * train_shards
    config = cfg.with_overrides({"data.num_shards": train_shards, "data.chunk_seconds": 2 * seconds})
    dataset_from_codes(folder, config, [(tone(), "synthetic", split) for split in splits])
    return folder


def _train(data: str, cfg: ExperimentConfig, workdir: Path, name: str, workers: int,
           steps: int) -> dict:
    """The real command (launcher, workers, MLflow to a temporary SQLite store), one thread each."""
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env.pop("MLFLOW_RUN_ID", None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ctx = RunContext(f"sqlite:///{workdir}/mlflow.db", experiment="bench-train", threads=1,
                     progress=False)
    env.update(ctx.worker_env())  # the tracking URI, as a launcher passes it
    argv = train_command(data, str(workdir / name), cfg.with_overrides({"train.steps": steps}), ctx,
                         workers=workers)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=workdir)
    if done.returncode != 0:
        raise RuntimeError(f"bench training ({name}) failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def _training_runs(cfg: ExperimentConfig, quick: bool, steps: int
                   ) -> tuple[dict, dict, dict | None, dict]:
    """The measured runs' summaries, on synthetic shards: one worker, two workers, one
    worker without XLA (None when quick) and the demo preset on two workers."""
    with tempfile.TemporaryDirectory(prefix="wavenet-bench-train-") as tmp:
        workdir = Path(tmp)
        data = write_synthetic_shards(str(workdir / "data"), cfg,
                                      seconds=1.0 if quick else 4.0)
        one = _train(data, cfg, workdir, "one", 1, steps)
        two = _train(data, cfg, workdir, "two", 2, steps)
        # The same 1-worker run without XLA, to show what train.jit_compile buys.
        plain = None if quick else _train(data, cfg.with_overrides({"train.jit_compile": "off"}),
                                          workdir, "one-no-xla", 1, steps)
        demo_cfg = preset("demo").with_overrides({"train.validate_every": 0,
                                                  "train.validation_batches": 1})
        demo_data = data if quick else write_synthetic_shards(
            str(workdir / "demo-data"), demo_cfg, train_shards=2, seconds=4.0)
        demo = _train(demo_data, cfg if quick else demo_cfg, workdir, "demo", 2, 2 if quick else 3)
    return one, two, plain, demo


def run(cfg: ExperimentConfig, quick: bool = False) -> dict:
    """Measure training throughput, FLOP efficiency and memory; one JSON-able dict.

    Args:
        cfg: the model and training config to measure (``wavenet bench train``
            passes the ``bench`` preset).
        quick: a seconds-long smoke version (the tiny model, 3 steps).
    """
    pin_threads(1)
    if quick:
        cfg = dataclasses.replace(preset("tiny"), name=cfg.name)
    steps = 3 if quick else 6
    # Logging, validation and checkpoints off the measured path: measure steps.
    cfg = cfg.with_overrides({"train.log_every": steps, "train.validate_every": 0,
                              "train.validation_batches": 1, "train.checkpoint_every": steps,
                              "train.warmup_steps": 0})
    gflops = matmul_gflops(512 if quick else 1024, seconds=0.3 if quick else 1.0)
    m = cfg.model
    useful = 3 * m.flops_per_sample
    executed = 3 * m.teacher_forced_flops(cfg.train.window) / cfg.train.window
    one, two, plain, demo = _training_runs(cfg, quick, steps)
    sps1, sps2 = one["samples_per_s"], two["samples_per_s"]
    reached = sps1 * useful / (gflops * 1e9)
    return {
        "benchmark": "train",
        "preset": cfg.preset,
        "quick": quick,
        "steps": steps,
        "global_batch_size": cfg.train.global_batch_size,
        "window": cfg.train.window,
        "receptive_field": m.receptive_field,
        "samples_per_s_1worker": round(sps1, 1),
        "samples_per_s_2workers": round(sps2, 1),
        "jit_compile": one["jit_compile"],
        "samples_per_s_1worker_no_xla": round(plain["samples_per_s"], 1) if plain else None,
        "speedup_2workers": round(sps2 / sps1, 3),
        "flops_per_sample": useful,
        "executed_flops_per_sample": round(executed),
        "forward_flops_per_sample": m.flops_per_sample,
        "matmul_gflops": round(gflops, 2),
        "useful_gflops_1worker": round(sps1 * useful / 1e9, 2),
        "fraction_of_matmul_1worker": round(reached, 3),
        "peak_rss_mb": round(max(one["peak_rss_mb"], two["peak_rss_mb"]), 1),
        "peak_rss_mb_1worker": one["peak_rss_mb"],
        "peak_rss_mb_2workers_chief": two["peak_rss_mb"],
        "demo_peak_rss_mb_per_worker": demo["peak_rss_mb"],
        "targets": {
            "fraction_of_matmul_1worker >= 0.35": reached >= 0.35,
            "speedup_2workers >= 1.6": sps2 / sps1 >= 1.6,
            "demo_peak_rss_mb_per_worker <= 4096": demo["peak_rss_mb"] <= 4096,
        },
        "machine": machine(),
    }
