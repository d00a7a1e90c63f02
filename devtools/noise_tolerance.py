"""How much sampling noise the calibrated checks let through (docs/benchmarks.md, sixth sitting):
windows of validation audio, each code moved by Gaussian noise of so many mu-law code steps
(rounded, kept in range), judged by the same checks as generated clips, per label.

    .venv/bin/python -m devtools.noise_tolerance SHARDS [--sigmas 0,0.5,1,2,3] [--windows 6]

Compare with the model's own spread (devtools/prediction_spread.py): a model whose next-sample
distribution is that wide, with errors drawn independently at every step, would score about
this. If the clips fail where this passes at the model's spread, the errors are not independent: the model continues its own sampled errors (an autoregressive
model filters its sampling noise through what it predicts next), and the cure is still a
better predictor. Clip length and calibration are the `demo` preset's generation settings
(generate.seconds, generate.reference_seconds), as `wavenet generate` calibrates them.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("--sigmas", default="0,0.5,1,1.5,2,3")
    ap.add_argument("--windows", type=int, default=6, help="windows per label and sigma")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    from wavenet.config import preset
    from wavenet.data.audio import mu_law_decode
    from wavenet.data.manifest import read_manifest
    from wavenet.generation.quality import analyze
    from wavenet.generation.verb import clip_calibrations, read_validation_codes

    cfg = preset(a.preset)
    g, q = cfg.generate, cfg.audio.quantization_channels
    manifest = read_manifest(a.data)
    sr, vocabulary = manifest.audio.sample_rate, list(manifest.labels)
    n = int(g.seconds * sr)
    labels = np.arange(len(vocabulary))
    calibrations = clip_calibrations(a.data, g, sr, q, n, vocabulary, labels)
    examples = [(c, lab) for c, lab in read_validation_codes(a.data, 4 * a.windows * n) if len(c) >= n]
    rng = np.random.default_rng(a.seed)
    for sigma in (float(s) for s in a.sigmas.split(",")):
        row = {"sigma_codes": sigma}
        for lab, name in enumerate(vocabulary):
            signals = [c for c, k in examples if k == lab]
            if not signals:
                continue
            passed, failed = [], {}
            for w in range(a.windows):
                codes = signals[w % len(signals)]
                start = (w * 7919) % (len(codes) - n + 1)  # spread over the example
                noisy = codes[start:start + n].astype(np.float64) + sigma * rng.standard_normal(n)
                noisy = np.clip(np.round(noisy), 0, q - 1).astype(np.uint8)
                checks = analyze(mu_law_decode(noisy, q).astype(np.float64), sr, codes=noisy,
                                 calibration=calibrations[lab])["checks"]
                passed.append(np.mean([c["passed"] for c in checks]))
                for c in checks:
                    if not c["passed"]:
                        failed[c["name"]] = failed.get(c["name"], 0) + 1
            row[name] = {"checks_passed": round(float(np.mean(passed)), 3), "failed": failed}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
