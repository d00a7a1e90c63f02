"""Where a trained model's noise comes from (docs/benchmarks.md, fifth sitting): how wide its
next-sample distribution is when it reads the data (teacher forcing) and when it reads its own
samples (generation), per label and per local level.

    .venv/bin/python -m devtools.prediction_spread MODEL.keras SHARDS_DIR [--seconds 3]

If the spread is about as wide in both, the clips' noise is the model's own prediction error,
drawn afresh at every step, and not exposure bias (errors feeding on the model's own
samples): the cure is a better predictor, not another sampler. Spread: the standard deviation
of the distribution, in mu-law code steps (median over samples). Level: the RMS over the
256 samples around each sample, dBFS.
"""

from __future__ import annotations

import argparse

import numpy as np

LEVELS = ((-99, -50), (-50, -30), (-30, -20), (-20, -10), (-10, 0))


def _spread(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, Q) logits -> per-step probabilities (T, Q) and standard deviation in codes (T,)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    q = np.arange(p.shape[1])
    mean = p @ q
    return p, np.sqrt(np.maximum(p @ (q ** 2) - mean ** 2, 0.0))


def _levels(codes: np.ndarray, q: int) -> np.ndarray:
    from wavenet.data.audio import mu_law_decode

    a = mu_law_decode(codes, q).astype(np.float64)
    return 10.0 * np.log10(np.convolve(a ** 2, np.ones(256) / 256, "same") + 1e-12)


def _table(name: str, sd: np.ndarray, level: np.ndarray, bits: np.ndarray | None = None) -> None:
    head = f"  {name}: median spread {np.median(sd):.1f} codes"
    print(head + (f", {bits.mean():.2f} bits/sample" if bits is not None else ""))
    for lo, hi in LEVELS:
        s = (level >= lo) & (level < hi)
        if s.sum():
            extra = f", {bits[s].mean():.2f} bits" if bits is not None else ""
            print(f"    {lo:>4}..{hi:>3} dBFS: {100 * s.mean():4.1f}% of samples, "
                  f"spread {np.median(sd[s]):.1f} codes{extra}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    from wavenet.generation.fast import FastGenerator, sample_rows, silence_code
    from wavenet.generation.verb import read_validation_codes
    from wavenet.model import load_model

    model = load_model(a.model)
    c = model.config
    sr, q, rf = model.audio_config.sample_rate, c.quantization_channels, c.receptive_field
    n = int(a.seconds * sr)
    names = model.labels or [str(i) for i in range(max(1, c.num_classes if c.conditioned else 1))]
    one = FastGenerator(model, 1)
    print("teacher forcing (the model reads validation audio):")
    for codes, label in read_validation_codes(a.data, rf + n + 1):
        codes = np.asarray(codes[:rf + n + 1], np.int32)
        lab = np.array([label]) if c.conditioned else None
        logits = one.teacher_forced_logits(codes[None, :-1], lab)[0][rf:]
        p, sd = _spread(logits)
        bits = -np.log2(np.maximum(p[np.arange(len(p)), codes[rf + 1:]], 1e-300))
        _table(names[label] if c.conditioned else "all", sd, _levels(codes[rf + 1:], q), bits)
    # Generation: the kernel fed one code at a time, sampling at temperature 1 (as
    # FastGenerator.generate does), recording each step's distribution.
    count = len(names) if c.conditioned else 1
    streams = FastGenerator(model, count).open_streams(np.arange(count) if c.conditioned else None)
    cur = np.full(count, silence_code(q), np.int32)
    rng = np.random.default_rng(a.seed)
    warm = min(rf, n // 2)
    out, sds = np.zeros((count, warm + n), np.int32), np.zeros((count, warm + n))
    for t in range(warm + n):
        logits = streams.step(cur)
        sds[:, t] = _spread(logits)[1]
        cur = sample_rows(logits, 1.0, rng.random(count))
        out[:, t] = cur
    print(f"generation (the model reads its own samples; the first {warm} not counted):")
    for i in range(count):
        _table(names[i] if c.conditioned else "all", sds[i, warm:], _levels(out[i], q)[warm:])


if __name__ == "__main__":
    main()
