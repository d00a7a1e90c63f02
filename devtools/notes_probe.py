"""Does a score help? A WaveNet locally conditioned on the demo corpus's notes (docs/benchmarks.md,
eighth sitting; issue 20).

    .venv/bin/python -m devtools.notes_probe OUT SHARDS [--steps 1800] [--stacks 1 --layers 9]
        [--tracks 15] [--no-notes] [--seeds 0,1,2,3,4,5]

Synthesises the demo corpus with its scores (:func:`wavenet.data.demo.synthesize_with_score`,
20 s tracks, ``--tracks`` per genre for training and one more for validation), trains in one
process with the `demo` preset's recipe (batch, window, peak learning rate and schedule, injected
noise, clipping) plus the architecture given here, and generates one clip per genre from the
validation track's score, judged by the calibrated checks of SHARDS (`make run`'s demo shards:
the same synthesiser, so the same references). ``--no-notes`` trains the same network without
the score: the control.

The conditioning is local conditioning as in the paper (section 2.5): at each sample, which
notes sound and which began in the last 20 ms (:func:`wavenet.data.notes.note_rows`) are summed
through a learned embedding into a vector c_t, and every layer adds ``c_t V_k`` to its filter and
gate pre-activations. Generation runs the product's kernel (:class:`FastGenerator`) in chunks
between the score's changes, each chunk with the layers' biases moved by that stretch's ``c_t
V_k``: the kernel's per-stream gate biases are where global conditioning already lives. An
experiment, not yet a product feature: the shards, the trainer and `wavenet generate` know no
scores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time

import numpy as np

ONSET_SECONDS = 0.02
TRACK_SECONDS = 20.0


def corpus(genres: list[str], tracks: int, sr: int, q: int, seed: int = 0):
    """Train and validation tracks ``(codes, row ids, label)`` and one table of distinct rows."""
    from wavenet.data.audio import mu_law_encode
    from wavenet.data.demo import synthesize_with_score
    from wavenet.data.notes import note_rows

    rows: dict[bytes, int] = {}
    table: list[np.ndarray] = []
    train, val = [], []
    for label, genre in enumerate(genres):
        for i in range(tracks + 1):
            x, score = synthesize_with_score(genre, TRACK_SECONDS, seed=seed, track=i, sample_rate=sr)
            x = x / (np.max(np.abs(x)) or 1.0) * 10 ** (-1 / 20)  # preprocess's -1 dB peak
            ids, local = note_rows(score, x.size, max(1, int(ONSET_SECONDS * sr)))
            remap = np.zeros(len(local), np.int32)
            for j, r in enumerate(local):  # this track's rows -> rows of the whole corpus
                if r.tobytes() not in rows:
                    rows[r.tobytes()] = len(table)
                    table.append(r)
                remap[j] = rows[r.tobytes()]
            (val if i == tracks else train).append(
                (np.asarray(mu_law_encode(x, q)).astype(np.int32), remap[ids], label))
    return train, val, np.stack(table)


class NoteConditioned:
    """A WaveNet plus the score's weights: an embedding of the rows and one ``V_k`` per layer."""

    def __init__(self, model, table: np.ndarray, dim: int, seed: int = 0):
        import keras

        c = model.config
        self.model, self.dim = model, dim
        self.layers, self.gate = len(model.blocks), c.gate_channels
        rng = np.random.default_rng(seed)
        self.table = table.astype(np.float32)
        self.embedding = keras.Variable(rng.normal(0, 0.1, (table.shape[1], dim)).astype(np.float32),
                                        name="note_embedding")
        self.local = keras.Variable(rng.normal(0, 1 / math.sqrt(dim), (dim, self.layers * 2 * self.gate))
                                    .astype(np.float32), name="local_kernel")

    @property
    def variables(self):
        return self.model.trainable_variables + [self.embedding, self.local]

    def logits(self, codes, labels, ids, notes: bool = True):
        """Teacher forcing, valid positions only: ``codes`` (B, T) read, ``ids`` (B, T) the rows
        of the samples they predict; (B, T - receptive_field + 1, Q) logits."""
        import tensorflow as tf

        m = self.model
        c_t = tf.gather(tf.matmul(tf.constant(self.table), self.embedding), ids)  # (B, T, D)
        v = tf.reshape(self.local, (self.dim, self.layers, 2 * self.gate))
        x = m.embedding(tf.cast(codes, tf.int32))
        ahead, skips = m.receptive_field - 1, None
        for k_, block in enumerate(m.blocks):
            k, d, r, g = block.kernel_size, block.dilation, block.residual_channels, block.gate_channels
            ahead -= (k - 1) * d
            taps = [x[:, j * d:(j - k + 1) * d or None, :] for j in range(k)]
            z = tf.matmul(tf.concat(taps, -1), tf.reshape(block.filter_gate_kernel, (k * r, 2 * g)))
            z = z + block.filter_gate_bias
            if block.num_classes:
                z = z + tf.gather(block.condition_embedding, labels)[:, None, :]
            if notes:
                z = z + tf.matmul(c_t[:, -tf.shape(z)[1]:, :], v[:, k_, :])
            h = tf.tanh(z[..., :g]) * tf.sigmoid(z[..., g:])
            skip = tf.matmul(h[:, ahead:, :], block.skip_kernel) + block.skip_bias
            x = x[:, (k - 1) * d:, :]
            if not block.skip_only:
                x = x + tf.matmul(h, block.residual_kernel) + block.residual_bias
            skips = skip if skips is None else skips + skip
        return m.head_logits(tf.nn.relu(m.head_hidden(tf.nn.relu(skips))))

    def biases(self) -> np.ndarray:
        """(R, L, 2G): each row's addition to every layer's filter and gate pre-activations."""
        c = self.table @ self.embedding.numpy()
        return np.einsum("rd,dlg->rlg", c, self.local.numpy().reshape(self.dim, self.layers, 2 * self.gate))


def _segments(ids: np.ndarray) -> list[tuple[int, int]]:
    """[a, b) stretches over which no stream's row changes; ids (B, n)."""
    change = np.flatnonzero(np.any(ids[:, 1:] != ids[:, :-1], axis=0)) + 1
    cuts = np.concatenate([[0], change, [ids.shape[1]]])
    return list(zip(cuts[:-1].tolist(), cuts[1:].tolist()))


def _kernel_run(gen, biases: np.ndarray, ids: np.ndarray, labels, step):
    """Drive the kernel over ``ids``'s stretches; ``step(params, state, xq, t, a, b)`` runs one."""
    params, state, xq = gen._fresh(labels)
    nb, ldz = gen.batch_size, gen._ldz
    view = params[gen._params_base.size:].reshape(len(gen._bfg), nb, ldz)
    base = view[:, :, :biases.shape[2]].copy()
    for a, b in _segments(ids):
        view[:, :, :biases.shape[2]] = base + biases[ids[:, a]].transpose(1, 0, 2)
        step(params, state, xq, a, b)


def teacher_forced_logits(gen, nc: NoteConditioned, codes: np.ndarray, ids: np.ndarray, labels) -> np.ndarray:
    """The kernel's logits fed ``codes`` (B, T); ``ids[:, t]`` is the row of the code after t."""
    out = np.zeros((*codes.shape, gen.config.quantization_channels), np.float32)
    seq = np.ascontiguousarray(codes, dtype=np.int32)

    def step(params, state, xq, a, b):
        logits = np.zeros((len(seq), b - a, out.shape[2]), np.float32)
        gen._run(gen._plan, gen._wbuf, params, state, xq, a, np.ascontiguousarray(seq[:, a:b]),
                 logits, None, 1.0, None, 0)
        out[:, a:b] = logits

    _kernel_run(gen, nc.biases(), ids, labels, step)
    return out


def generate(gen, nc: NoteConditioned, ids: np.ndarray, labels, seed: int, temperature: float = 1.0,
             notes: bool = True) -> np.ndarray:
    """(B, n) codes from one code of silence; code t is sampled under row ``ids[:, t]``."""
    from wavenet.generation.fast import _uniforms, silence_code

    nb, n = ids.shape
    out = np.zeros((nb, n), np.int32)
    cur = np.full(nb, silence_code(gen.config.quantization_channels), np.int32)
    draw = _uniforms(seed, nb)
    biases = nc.biases() if notes else np.zeros((len(nc.table), nc.layers, 2 * nc.gate), np.float32)

    def step(params, state, xq, a, b):
        gen._run(gen._plan, gen._wbuf, params, state, xq, a, cur, None, draw(b - a), 1.0 / temperature,
                 out, a)

    _kernel_run(gen, biases, ids, labels, step)
    return out.astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("data", help="the demo shards (`make run`'s), for the checks' references")
    ap.add_argument("--steps", type=int, default=1800)
    ap.add_argument("--stacks", type=int, default=1)
    ap.add_argument("--layers", type=int, default=9)
    ap.add_argument("--tracks", type=int, default=15, help="20 s training tracks per genre")
    ap.add_argument("--dim", type=int, default=32, help="channels of c_t")
    ap.add_argument("--no-notes", action="store_true", help="the control: the same network, no score")
    ap.add_argument("--seeds", default="0,1,2,3,4,5")
    ap.add_argument("--temperatures", default="1.0", help="one JSON line per temperature")
    a = ap.parse_args()
    import keras
    import soundfile as sf
    import tensorflow as tf

    from wavenet.config import preset
    from wavenet.data.audio import mu_law_decode
    from wavenet.data.manifest import read_manifest
    from wavenet.generation.fast import FastGenerator
    from wavenet.generation.quality import analyze
    from wavenet.generation.verb import clip_calibrations
    from wavenet.model import LN2, WaveNet
    from wavenet.train.schedule import WarmupCosine

    cfg = preset("demo")
    t_cfg, sr, q = cfg.train, cfg.audio.sample_rate, cfg.audio.quantization_channels
    genres = list(read_manifest(a.data).labels)
    model_cfg = dataclasses.replace(cfg.model, num_classes=len(genres), stacks=a.stacks,
                                    layers_per_stack=a.layers)
    model = WaveNet(model_cfg, cfg.audio, labels=genres, name="wavenet")
    model.build()
    train, val, table = corpus(genres, a.tracks, sr, q)
    nc = NoteConditioned(model, table, a.dim)
    notes = not a.no_notes
    variables = nc.variables if notes else model.trainable_variables
    rf, crop = model.receptive_field, model.receptive_field + t_cfg.window
    opt = keras.optimizers.Adam(WarmupCosine(t_cfg.learning_rate, t_cfg.warmup_steps, a.steps,
                                             t_cfg.min_lr_ratio))
    opt.build(variables)

    def bits(crops, labels, ids, read):
        logits = nc.logits(read[:, :-1], labels, ids[:, 1:], notes)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(crops[:, rf:], logits)) / LN2

    @tf.function(jit_compile=True)
    def forward_backward(crops, labels, ids, seed):
        noise = tf.random.stateless_normal(tf.shape(crops), seed, stddev=t_cfg.input_noise)
        read = tf.cast(tf.clip_by_value(tf.round(tf.cast(crops, tf.float32) + noise), 0.0, q - 1.0), tf.int32)
        with tf.GradientTape() as tape:
            loss = bits(crops, labels, ids, read)
        grads, _ = tf.clip_by_global_norm(tape.gradient(loss, variables), t_cfg.gradient_clip_norm)
        return loss, grads

    apply = tf.function(lambda grads: opt.apply(grads, variables))
    val_bits = tf.function(lambda c_, l_, i_: bits(c_, l_, i_, c_), jit_compile=True)

    def batch(pool, rng, n):
        picks = [pool[rng.integers(len(pool))] for _ in range(n)]
        starts = [rng.integers(0, len(p[0]) - crop) for p in picks]
        return (tf.constant(np.stack([p[0][s:s + crop] for p, s in zip(picks, starts)])),
                tf.constant(np.array([p[2] for p in picks], np.int32)),
                tf.constant(np.stack([p[1][s:s + crop] for p, s in zip(picks, starts)])))

    rng, t0 = np.random.default_rng(t_cfg.seed), time.time()
    for step in range(a.steps):
        loss, grads = forward_backward(*batch(train, rng, t_cfg.global_batch_size),
                                       tf.constant([step, t_cfg.seed], tf.int64))
        apply(grads)
        if step % 100 == 0 or step == a.steps - 1:
            print(f"step {step} train bits {float(loss):.3f} {time.time() - t0:.0f} s", flush=True)
    train_s = time.time() - t0
    vrng = np.random.default_rng(123)
    bits_val = float(np.mean([float(val_bits(*batch(val, vrng, 8))) for _ in range(8)]))

    g = cfg.generate
    n = int(round(g.seconds * sr))
    labels = np.arange(len(genres))
    calibrations = clip_calibrations(a.data, g, sr, q, n, genres, labels)
    gen = FastGenerator(model, len(genres), weights=g.weights)
    start = int(1.0 * sr)  # the clip plays the validation track's score from its second 1
    ids = np.stack([v[1][start:start + n] for v in val])
    os.makedirs(a.out, exist_ok=True)
    for temperature in (float(x) for x in a.temperatures.split(",")):
        tally = {name: {"checks_passed": [], "failed": {}, "tonal_flatness": []} for name in genres}
        for seed in (int(s) for s in a.seeds.split(",")):
            codes = generate(gen, nc, ids, labels, seed, temperature, notes)
            for i, name in enumerate(genres):
                audio = mu_law_decode(codes[i], q).astype(np.float64)
                sf.write(os.path.join(a.out, f"{name}-{seed}-t{temperature}.wav"), audio, sr)
                checks = analyze(audio, sr, codes=codes[i], calibration=calibrations[i])["checks"]
                row = tally[name]
                row["checks_passed"].append(round(float(np.mean([x["passed"] for x in checks])), 3))
                for x in checks:
                    if not x["passed"]:
                        row["failed"][x["name"]] = row["failed"].get(x["name"], 0) + 1
                    if x["name"] == "noise":
                        row["tonal_flatness"].append(round(x["value"], 3))
        print(json.dumps({"notes": notes, "steps": a.steps, "stacks": a.stacks, "layers": a.layers,
                          "tracks": a.tracks, "train_s": round(train_s), "val_bits": round(bits_val, 3),
                          "temperature": temperature, **tally}), flush=True)

if __name__ == "__main__":
    main()
