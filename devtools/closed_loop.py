"""Is a clip's noise sampling jitter fed back, or the predictor's own closed-loop dynamics?
(docs/benchmarks.md, seventh sitting.)

    .venv/bin/python -m devtools.closed_loop MODEL.keras SHARDS [--ks 0,4,8,256] [--seeds 0,1,2]

Generates one clip per label as `wavenet generate` does (temperature 1, from one code of
silence, the kernel's sampler), except that a draw landing within K code steps of the
distribution's centre (its mean, rounded, or ``--centre mode``) is replaced by the centre:
small deviations are no longer fed back, tail events (a drum hit) still happen. K=0 is plain
sampling; K=256 (``--ks 256``) feeds back the centre only: the predictor run deterministically.
``--rule shrink`` instead keeps the fraction K of every deviation from the mean. Each clip is
judged by the calibrated checks, per label: if the deterministic trajectory is tonal, the
noise is jitter that compounds (a sampler could help); if it is noise too, the predictor's
closed-loop dynamics are, and only a better predictor helps. An experiment, not a product
sampler: the clips are no longer samples of the model's distribution.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def _centre(logits: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """(B, Q) logits -> (B,) centre code (rounded mean or mode) and (B,) mean."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    mean = p @ np.arange(p.shape[1])
    return (np.rint(mean) if how == "mean" else p.argmax(axis=1)).astype(np.int64), mean


def new_tally() -> dict:
    """One label's tally: the fraction of checks each clip passed, how often each check
    failed, each clip's tonal flatness (the `noise` check's value)."""
    return {"checks_passed": [], "failed": {}, "tonal_flatness": []}


def add_checks(tally: dict, checks: list[dict]) -> None:
    """Add one clip's calibrated checks (``analyze(...)["checks"]``) to ``tally``."""
    tally["checks_passed"].append(float(np.mean([x["passed"] for x in checks])))
    for x in checks:
        if not x["passed"]:
            tally["failed"][x["name"]] = tally["failed"].get(x["name"], 0) + 1
        if x["name"] == "noise":
            tally["tonal_flatness"].append(round(x["value"], 3))


def decode(streams, count: int, n: int, q: int, k: float, how: str, rule: str, seed: int) -> np.ndarray:
    """(count, n) codes: each step's draw pulled to the centre by ``rule`` with parameter ``k``."""
    from wavenet.generation.fast import sample_rows, silence_code

    rng = np.random.default_rng(seed)
    cur, out = np.full(count, silence_code(q), np.int32), np.zeros((count, n), np.int32)
    for t in range(n):
        logits = streams.step(cur)
        drawn = sample_rows(logits, 1.0, rng.random(count)).astype(np.int64)
        centre, mean = _centre(logits, how)
        if rule == "hard":
            nxt = np.where(np.abs(drawn - centre) <= k, centre, drawn)
        else:  # shrink
            nxt = np.rint(mean + k * (drawn - mean))
        cur = np.clip(nxt, 0, q - 1).astype(np.int32)
        out[:, t] = cur
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--ks", default="0,4,8,256")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--centre", choices=("mean", "mode"), default="mean")
    ap.add_argument("--rule", choices=("hard", "shrink"), default="hard")
    ap.add_argument("--preset", default="demo", help="whose generate.* settings (clip length, calibration)")
    a = ap.parse_args()
    from wavenet.config import preset
    from wavenet.data.audio import mu_law_decode
    from wavenet.data.manifest import read_manifest
    from wavenet.generation.fast import FastGenerator
    from wavenet.generation.quality import analyze
    from wavenet.generation.verb import clip_calibrations
    from wavenet.model import load_model

    net = load_model(a.model)
    c, g = net.config, preset(a.preset).generate
    sr, q = net.audio_config.sample_rate, c.quantization_channels
    n = int(round(g.seconds * sr))
    vocabulary = list(read_manifest(a.data).labels)
    count = len(vocabulary) if c.conditioned else 1
    labels = np.arange(count) if c.conditioned else None  # the model's and the calibrations' ids
    calibrations = clip_calibrations(a.data, g, sr, q, n, vocabulary, labels)
    names = vocabulary if c.conditioned else ["all"]
    gen = FastGenerator(net, count, weights=g.weights)
    for k in (float(x) for x in a.ks.split(",")):
        row: dict = {"k": k, "centre": a.centre, "rule": a.rule}
        for name in names:
            row[name] = new_tally()
        for seed in (int(s) for s in a.seeds.split(",")):
            codes = decode(gen.open_streams(labels), count, n, q, k, a.centre, a.rule, seed).astype(np.uint8)
            for i, name in enumerate(names):
                checks = analyze(mu_law_decode(codes[i], q).astype(np.float64), sr, codes=codes[i],
                                 calibration=calibrations[None if labels is None else labels[i]])["checks"]
                add_checks(row[name], checks)
        for name in names:
            row[name]["checks_passed"] = round(float(np.mean(row[name]["checks_passed"])), 3)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
