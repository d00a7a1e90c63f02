"""Does a score help? A WaveNet locally conditioned on the demo corpus's notes (docs/benchmarks.md,
eighth sitting; issue 20).

    .venv/bin/python -m devtools.notes_probe OUT SHARDS [--steps 1800] [--stacks 1 --layers 9]
        [--tracks 15] [--dim 32] [--no-notes] [--seeds 0,1,2,3,4,5] [--temperatures 1.0]

Synthesises the demo corpus with its scores (:func:`wavenet.data.demo.synthesize_with_score`,
20 s tracks, ``--tracks`` per genre for training and one more for validation), trains in one
process with the `demo` preset's recipe (batch, window, peak learning rate and schedule, injected
noise, clipping, the one loss :func:`wavenet.model.bits_per_sample`) and the architecture given
here, with ``model.score_channels=--dim``, and generates one clip per genre from the validation
track's score with :class:`FastGenerator`, judged by the calibrated checks of SHARDS (`make
run`'s demo shards: the same synthesiser, so the same references). ``--no-notes`` trains the same
network without a score: the control. It synthesises its corpus itself, in memory, so that one
process can sweep many tracks and seeds quickly; the product's own path for scores (MIDI beside
each track, preprocessing, the shards, `wavenet train` and `generate`) is what `make run` runs
(docs/data.md, "A model that plays a score").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np

TRACK_SECONDS = 20.0
MAX_NOTES = 64  # notes in one training crop (the demo's busiest, drums, has about 10)


def corpus(genres: list[str], tracks: int, sr: int, q: int, seed: int = 0):
    """Train and validation tracks as ``(codes, score, label)``: ``tracks`` and one per genre."""
    from wavenet.data.audio import mu_law_encode
    from wavenet.data.demo import synthesize_with_score

    train, val = [], []
    for label, genre in enumerate(genres):
        for i in range(tracks + 1):
            x, score = synthesize_with_score(genre, TRACK_SECONDS, seed=seed, track=i, sample_rate=sr)
            x = x / (np.max(np.abs(x)) or 1.0) * 10 ** (-1 / 20)  # preprocess's -1 dB peak
            (val if i == tracks else train).append(
                (np.asarray(mu_law_encode(x, q)).astype(np.int32), score, label))
    return train, val


def crops(pool, rng: np.random.Generator, n: int, length: int):
    """``n`` random crops: codes (n, length), labels (n,), their scores (n, MAX_NOTES, 3)."""
    from wavenet.data.notes import pack_scores

    picks = [pool[rng.integers(len(pool))] for _ in range(n)]
    starts = [int(rng.integers(0, len(p[0]) - length)) for p in picks]
    return (np.stack([p[0][s:s + length] for p, s in zip(picks, starts)]),
            np.array([p[2] for p in picks], np.int32),
            pack_scores([p[1].shifted(-s, length) for p, s in zip(picks, starts)], MAX_NOTES))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("data", help="the demo shards (`make run`'s), for the checks' references")
    ap.add_argument("--steps", type=int, default=1800)
    ap.add_argument("--stacks", type=int, default=1)
    ap.add_argument("--layers", type=int, default=9)
    ap.add_argument("--tracks", type=int, default=15, help="20 s training tracks per genre")
    ap.add_argument("--dim", type=int, default=32, help="model.score_channels")
    ap.add_argument("--no-notes", action="store_true", help="the control: the same network, no score")
    ap.add_argument("--seeds", default="0,1,2,3,4,5")
    ap.add_argument("--temperatures", default="1.0", help="one JSON line per temperature")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a demo preset override, as wavenet train's (e.g. train.input_noise=0)")
    a = ap.parse_args()
    import keras
    import soundfile as sf
    import tensorflow as tf

    from devtools.closed_loop import add_checks, new_tally
    from wavenet.config import resolve_config
    from wavenet.data.audio import mu_law_decode
    from wavenet.data.manifest import read_manifest
    from wavenet.data.notes import pack_scores
    from wavenet.generation.fast import FastGenerator
    from wavenet.generation.quality import analyze
    from wavenet.generation.verb import clip_calibrations
    from wavenet.model import WaveNet, bits_per_sample
    from wavenet.train.schedule import WarmupCosine
    from wavenet.train.step import injected_noise

    cfg = resolve_config("demo", None, a.set)
    t_cfg, sr, q = cfg.train, cfg.audio.sample_rate, cfg.audio.quantization_channels
    genres = list(read_manifest(a.data).labels)
    scored = not a.no_notes
    model = WaveNet(dataclasses.replace(cfg.model, num_classes=len(genres), stacks=a.stacks,
                                        layers_per_stack=a.layers, score_channels=a.dim if scored else 0),
                    cfg.audio, labels=genres, name="wavenet")
    model.build()
    train, val = corpus(genres, a.tracks, sr, q)
    crop = model.receptive_field + t_cfg.window
    opt = keras.optimizers.Adam(WarmupCosine(t_cfg.learning_rate, t_cfg.warmup_steps, a.steps,
                                             t_cfg.min_lr_ratio))
    variables = model.trainable_variables
    opt.build(variables)

    @tf.function(jit_compile=True)
    def forward_backward(codes, labels, notes, seed):  # as wavenet.train.step's, in one process
        read = injected_noise(codes, seed, t_cfg.input_noise, q - 1) if t_cfg.input_noise > 0 else None
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(bits_per_sample(model, codes, labels, training=True, read=read, notes=notes))
        grads, _ = tf.clip_by_global_norm(tape.gradient(loss, variables), t_cfg.gradient_clip_norm)
        return loss, grads

    apply = tf.function(lambda grads: opt.apply(grads, variables))
    val_bits = tf.function(lambda c_, l_, n_: tf.reduce_mean(bits_per_sample(model, c_, l_, notes=n_)),
                           jit_compile=True)
    rng, t0 = np.random.default_rng(t_cfg.seed), time.time()
    for step in range(a.steps):
        loss, grads = forward_backward(*crops(train, rng, t_cfg.global_batch_size, crop),
                                       tf.constant([step, t_cfg.seed], tf.int64))
        apply(grads)
        if step % 100 == 0 or step == a.steps - 1:
            print(f"step {step} train bits {float(loss):.3f} {time.time() - t0:.0f} s", flush=True)
    train_s = time.time() - t0
    vrng = np.random.default_rng(123)
    bits_val = float(np.mean([float(val_bits(*crops(val, vrng, 8, crop))) for _ in range(8)]))

    g = cfg.generate
    n = int(round(g.seconds * sr))
    labels = np.arange(len(genres))
    calibrations = clip_calibrations(a.data, g, sr, q, n, genres, labels)
    gen = FastGenerator(model, len(genres), weights=g.weights)
    start = int(1.0 * sr)  # the clip plays the validation track's score from its second 1
    notes = pack_scores([v[1].shifted(-start, n) for v in val]) if scored else None
    os.makedirs(a.out, exist_ok=True)
    for temperature in (float(x) for x in a.temperatures.split(",")):
        tally = {name: new_tally() for name in genres}
        for seed in (int(s) for s in a.seeds.split(",")):
            codes = gen.generate(n, labels=labels, temperature=temperature, seed=seed, notes=notes)
            for i, name in enumerate(genres):
                audio = mu_law_decode(codes[i], q).astype(np.float64)
                sf.write(os.path.join(a.out, f"{name}-{seed}-t{temperature}.wav"), audio, sr)
                add_checks(tally[name], analyze(audio, sr, codes=codes[i], calibration=calibrations[i])["checks"])
        for row in tally.values():  # each clip's fraction, rounded
            row["checks_passed"] = [round(v, 3) for v in row["checks_passed"]]
        print(json.dumps({"notes": scored, "steps": a.steps, "stacks": a.stacks, "layers": a.layers,
                          "tracks": a.tracks, "train_s": round(train_s), "val_bits": round(bits_val, 3),
                          "temperature": temperature, **tally}), flush=True)


if __name__ == "__main__":
    main()
