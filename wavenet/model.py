"""WaveNet in Keras 3 (van den Oord et al. 2016).

Codes ``x_1..x_T`` are embedded, pass through a stack of residual blocks, each
a causal dilated convolution (kernel 2, dilation 2^i) with a gated activation
``tanh(W_f * x) * sigmoid(W_g * x)`` and 1x1 residual and skip outputs; the sum
of skips goes through ReLU-1x1-ReLU-1x1 to logits over the quantisation
channels. The logits at position t are the distribution of code t+1. The last
block is skip-only: nothing follows it on the residual stream, so it has no
residual weights.

Global conditioning (paper section 2.5) adds a per-layer label embedding
``V^T h`` inside both halves of every gate. Local conditioning on a score (same
section; ``model.score_channels``): at each position the embeddings of the notes
that sound there, and of those that began in the last 20 ms, are summed into a
vector ``y_t`` (:func:`score_vectors`), and every layer adds its own ``V_k y_t``
inside the gate.

Training objective: targets are the inputs shifted by one sample, and only
positions whose whole receptive field lies inside the crop contribute.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import zipfile

import keras
from keras import ops

from wavenet.config import AUTO_CLASSES, SCORE_TOKENS, AudioConfig, ExperimentConfig, ModelConfig
from wavenet.data.labels import check_vocabulary
from wavenet.data.notes import key_hz, onset_samples
from wavenet.edges import storage
from wavenet.errors import ConfigError, WavenetError, one_line
from wavenet.memory import check_fits

__all__ = [
    "ResidualBlock",
    "WaveNet",
    "build_model",
    "split_crop",
    "bits_per_sample",
    "score_vectors",
    "save_model",
    "load_model",
]

LN2 = math.log(2.0)


def _shift_right(x, shift: int):
    """Delay a (B, T, C) sequence by ``shift`` steps, zero-filling the start (causal)."""
    if shift == 0:
        return x
    padded = ops.pad(x, [[0, 0], [shift, 0], [0, 0]])
    return padded[:, :-shift, :]


@keras.saving.register_keras_serializable(package="wavenet")
class ResidualBlock(keras.layers.Layer):
    """One WaveNet layer: causal dilated conv -> gate -> 1x1 residual and 1x1 skip.

    The causal dilated convolution is built by hand: the k delayed copies of the
    input are concatenated on channels and multiplied by the (k*R, 2G) kernel in
    one matmul. It computes what ``Conv1D(padding="causal", dilation_rate=d)``
    computes, with the same kernel layout (gradients agree to 1e-8). Why not
    ``ops.conv``: a training step of the ``bench`` model (forward and backward,
    XLA, one CPU thread, best of 5) took 5.48 CPU-seconds with it and 5.23 with
    this form (1.05x); on GPU the two have not been compared.

    Args:
        dilation: dilation of the causal convolution.
        residual_channels: channels of the residual stream (input and output).
        gate_channels: channels of each gate half (tanh filter, sigmoid gate).
        skip_channels: channels of the skip output.
        kernel_size: taps of the dilated convolution (2 in the paper).
        num_classes: labels for global conditioning; 0 disables it.
        score_channels: channels of the score's vectors (local conditioning); 0 disables it.
        skip_only: no residual output (the last block of a WaveNet, whose
            residual output nothing would read): no residual weights, and the
            input passes through unchanged.

    Call args:
        x: (B, T, residual_channels).
        labels: (B,) int labels, required when ``num_classes > 0``.
        score: (B, T', score_channels) score vectors, required when ``score_channels > 0``;
            right-aligned with ``x`` (the last position is the same), T' >= T.

    Returns:
        ``(residual_out, skip)``: (B, T, residual_channels), (B, T, skip_channels).
    """

    def __init__(self, dilation: int, residual_channels: int, gate_channels: int,
                 skip_channels: int, kernel_size: int = 2, num_classes: int = 0,
                 skip_only: bool = False, score_channels: int = 0, **kwargs):
        super().__init__(**kwargs)
        for name, v, lo in (("dilation", dilation, 1), ("residual_channels", residual_channels, 1),
                            ("gate_channels", gate_channels, 1), ("skip_channels", skip_channels, 1),
                            ("kernel_size", kernel_size, 2), ("num_classes", num_classes, 0),
                            ("score_channels", score_channels, 0)):
            if not isinstance(v, int) or v < lo:
                raise ValueError(f"`{name}` must be an integer >= {lo}. Received: {name}={v!r}")
        if not isinstance(skip_only, bool):
            raise ValueError(f"`skip_only` must be a bool. Received: skip_only={skip_only!r}")
        self.dilation = dilation
        self.residual_channels = residual_channels
        self.gate_channels = gate_channels
        self.skip_channels = skip_channels
        self.kernel_size = kernel_size
        self.num_classes = num_classes
        self.skip_only = skip_only
        self.score_channels = score_channels

    def build(self, input_shape=None):
        r, g, s, k = self.residual_channels, self.gate_channels, self.skip_channels, self.kernel_size
        # Tap j of the kernel multiplies x[t - (k - 1 - j) * dilation], as in
        # keras.layers.Conv1D(padding="causal"): the last tap is the current sample.
        self.filter_gate_kernel = self.add_weight(
            name="filter_gate_kernel", shape=(k, r, 2 * g), initializer="glorot_uniform")
        self.filter_gate_bias = self.add_weight(
            name="filter_gate_bias", shape=(2 * g,), initializer="zeros")
        if not self.skip_only:
            self.residual_kernel = self.add_weight(
                name="residual_kernel", shape=(g, r), initializer="glorot_uniform")
            self.residual_bias = self.add_weight(name="residual_bias", shape=(r,),
                                                 initializer="zeros")
        self.skip_kernel = self.add_weight(
            name="skip_kernel", shape=(g, s), initializer="glorot_uniform")
        self.skip_bias = self.add_weight(name="skip_bias", shape=(s,), initializer="zeros")
        if self.num_classes:
            self.condition_embedding = self.add_weight(
                name="condition_embedding", shape=(self.num_classes, 2 * g),
                initializer=keras.initializers.RandomNormal(stddev=0.1))
        if self.score_channels:
            self.score_kernel = self.add_weight(
                name="score_kernel", shape=(self.score_channels, 2 * g),
                initializer=keras.initializers.RandomNormal(stddev=1.0 / math.sqrt(self.score_channels)))
        self.built = True

    def call(self, x, labels=None, valid: bool = False, skip_from: int = 0, score=None):
        """``valid``: no zero padding; the output starts ``(kernel_size - 1) * dilation``
        positions later than ``x`` (each position sees real input only), and the skip
        output drops a further ``skip_from`` leading positions (see
        :meth:`WaveNet.logits_from`)."""
        k, d, r, g = self.kernel_size, self.dilation, self.residual_channels, self.gate_channels
        # All taps in one matmul: concat delayed copies on channels, (B, T, k*r) @ (k*r, 2g).
        if valid:
            # Tap j reads x[t - (k - 1 - j) * d] for the T - (k - 1) * d outputs that have it.
            taps = [x[:, j * d:(j - k + 1) * d or None, :] for j in range(k)]
        else:
            taps = [_shift_right(x, (k - 1 - j) * d) for j in range(k)]
        stacked = ops.concatenate(taps, axis=-1)
        kernel = ops.reshape(ops.cast(self.filter_gate_kernel, x.dtype), (k * r, 2 * g))
        z = ops.matmul(stacked, kernel) + ops.cast(self.filter_gate_bias, x.dtype)  # (B, T, 2g)
        if self.num_classes:
            if labels is None:
                raise ValueError("this block is conditioned: `labels` is required. Received: None")
            cond = ops.take(ops.cast(self.condition_embedding, x.dtype),
                            ops.cast(labels, "int32"), axis=0)  # (B, 2g)
            z = z + cond[:, None, :]
        if self.score_channels:
            if score is None:
                raise ValueError("this block plays a score: `score` is required. Received: None")
            positions = ops.shape(z)[1]
            z = z + ops.matmul(score[:, -positions:, :], ops.cast(self.score_kernel, x.dtype))
        h = ops.tanh(z[..., :g]) * ops.sigmoid(z[..., g:])  # (B, T, g)
        skip = ops.matmul(h[:, skip_from:, :], ops.cast(self.skip_kernel, x.dtype)) + ops.cast(
            self.skip_bias, x.dtype)
        if valid:
            x = x[:, (k - 1) * d:, :]
        if self.skip_only:
            return x, skip
        residual = ops.matmul(h, ops.cast(self.residual_kernel, x.dtype)) + ops.cast(
            self.residual_bias, x.dtype)
        return x + residual, skip

    def compute_output_shape(self, input_shape):
        return input_shape, (*input_shape[:-1], self.skip_channels)

    def get_config(self):
        return {
            **super().get_config(),
            "dilation": self.dilation,
            "residual_channels": self.residual_channels,
            "gate_channels": self.gate_channels,
            "skip_channels": self.skip_channels,
            "kernel_size": self.kernel_size,
            "num_classes": self.num_classes,
            "skip_only": self.skip_only,
            "score_channels": self.score_channels,
        }


@keras.saving.register_keras_serializable(package="wavenet")
class WaveNet(keras.Model):
    """The full network, built from a :class:`ModelConfig`.

    Call with codes ``(B, T)`` int, or a dict ``{"codes": (B, T), "labels": (B,)}``
    for a conditioned model, plus ``"notes"``: (B, E, 3) int ``(start, end, token)`` rows
    (:func:`wavenet.data.notes.pack_scores`, token -1 for padding) in the samples of
    ``codes`` for a model that plays a score (``score_channels > 0``): the logits that
    predict sample t see the notes sounding at t. Returns float32 logits
    ``(B, T, quantization_channels)``; position t holds the distribution of code t+1.

    The audio config travels with the model so a saved model alone can turn
    its codes back into sound at the right rate, and so does a conditioned
    model's label vocabulary (``labels``: the name of each label id, in id
    order; None for a model saved before models recorded it, see
    :mod:`wavenet.data.labels`), so that other data's labels map to its ids by name.
    """

    def __init__(self, model_config: ModelConfig | dict, audio_config: AudioConfig | dict | None = None,
                 labels: list[str] | tuple[str, ...] | None = None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(model_config, dict):
            model_config = ModelConfig(**model_config)
        if audio_config is None:
            audio_config = AudioConfig(quantization_channels=model_config.quantization_channels)
        elif isinstance(audio_config, dict):
            audio_config = AudioConfig(**audio_config)
        for name in ("num_classes", "score_channels"):
            if getattr(model_config, name) == AUTO_CLASSES:
                raise ConfigError(f"model.{name} is 'auto': resolve it against the data "
                                  "(wavenet.config.resolve_auto) before building a model. "
                                  f"Received: model.{name}={getattr(model_config, name)!r}")
        self.config = model_config
        self.audio_config = audio_config
        self.labels = check_vocabulary(labels, model_config.num_classes)
        c = model_config
        self.embedding = keras.layers.Embedding(c.quantization_channels, c.residual_channels,
                                                name="embedding")
        last = len(c.dilations) - 1
        self.blocks = [
            ResidualBlock(d, c.residual_channels, c.gate_channels, c.skip_channels,
                          kernel_size=c.kernel_size, num_classes=c.num_classes,
                          skip_only=i == last, score_channels=c.score_channels, name=f"block_{i}")
            for i, d in enumerate(c.dilations)
        ]
        self.head_hidden = keras.layers.Dense(c.skip_channels, name="head_hidden")
        # Logits stay float32 under mixed precision for a stable softmax.
        self.head_logits = keras.layers.Dense(c.quantization_channels, name="head_logits",
                                              dtype="float32")
        self.onset = onset_samples(audio_config.sample_rate)

    @property
    def receptive_field(self) -> int:
        return self.config.receptive_field

    def build(self, input_shape=None):
        c = self.config
        self.embedding.build((None, None))
        for block in self.blocks:
            block.build((None, None, c.residual_channels))
        self.head_hidden.build((None, None, c.skip_channels))
        self.head_logits.build((None, None, c.skip_channels))
        if c.scored:  # rows 0..255: a token sounds; 256..511: it began in the last 20 ms
            self.score_embedding = self.add_weight(
                name="score_embedding", shape=(2 * SCORE_TOKENS, c.score_channels),
                initializer=keras.initializers.RandomNormal(stddev=0.1))
        if c.lagged:  # [k, code]: the code k + 1 samples further back than a period sounded
            self.lag_embedding = self.add_weight(
                name="lag_embedding", shape=(2, c.quantization_channels, c.score_channels),
                initializer=keras.initializers.RandomNormal(stddev=0.1))
        self.built = True

    def call(self, inputs, training=False):
        return self._logits(*self._inputs(inputs))  # (B, T, Q)

    def logits_from(self, inputs, first: int, training=False):
        """``self(inputs)[:, first:]``, computing only what those positions read.

        Teacher forcing predicts the positions after a receptive field of context
        (:func:`bits_per_sample`), yet :meth:`call` runs every layer on every input
        position and the head on all of them. When ``first >= receptive_field - 1``
        no wanted position reads the zero padding, so each layer runs as a *valid*
        convolution: a layer of dilation d drops the d positions that nothing after
        it reads, each skip output and the head run on the wanted positions only.
        For the demo preset (crop 4,095, 2,048 predicted) that is 1.4x fewer
        multiply-adds; the values equal :meth:`call`'s (to float rounding).

        Returns:
            ``(B, T - first, Q)`` logits, as :meth:`call`'s slice.
        """
        context = self.receptive_field - 1
        if first < context:
            return self(inputs, training=training)[:, first:, :]
        codes, labels, notes = self._inputs(inputs)
        # Positions before first - context feed no wanted position (but their codes may be a
        # period back of one that does: the lag reads them).
        score = None if notes is None else self._score(codes, notes, first - context)
        return self._logits(codes[:, first - context:], labels, score=score, valid=True)

    def _inputs(self, inputs):
        """``inputs`` unpacked: labels None unless the model is conditioned, notes None
        unless it plays a score (then each is required)."""
        codes, labels, notes = _unpack(inputs)
        if not self.config.conditioned:
            labels = None
        elif labels is None:
            raise ValueError("this WaveNet is conditioned on labels: call it with "
                             "{'codes': ..., 'labels': ...}. Received: no labels")
        if not self.config.scored:
            notes = None
        elif notes is None:
            raise ValueError("this WaveNet plays a score: call it with {'codes': ..., 'notes': ...} "
                             "(wavenet.data.notes.pack_scores). Received: no notes")
        return codes, labels, notes

    def _score(self, codes, notes, first: int = 0):
        """(B, T - first, D): what the score says at positions ``first ..`` of ``codes``
        (position t predicts sample t + 1, ``codes[:, 0]`` being sample 0 of the notes' time
        line), plus, for a model with ``score_lag``, the codes a period back (:func:`lag_vectors`)."""
        positions = ops.arange(first, ops.shape(codes)[1], dtype="int32") + 1
        score = score_vectors(notes, positions, self.score_embedding, self.onset)
        if self.config.lagged:
            score = score + lag_vectors(codes, notes, self.lag_embedding, self.audio_config.sample_rate,
                                        self.receptive_field, first)
        return score

    def _logits(self, codes, labels, notes=None, valid: bool = False, score=None):
        """The network on ``codes``: causal (every position) or, ``valid``, only the
        positions a full receptive field in (:meth:`logits_from`), with ``score`` (from
        :meth:`_score`) in place of the notes'. ``codes[:, 0]`` is sample 0 of the notes'
        time line."""
        x = self.embedding(ops.cast(codes, "int32"))  # (B, T, R)
        if score is None and notes is not None:
            score = self._score(codes, notes)
        if score is not None:
            score = ops.cast(score, x.dtype)  # (B, T, D)
        ahead, skips = self.receptive_field - 1, None  # context the layers from here on read
        for block in self.blocks:
            ahead -= (block.kernel_size - 1) * block.dilation
            x, skip = block(x, labels, valid=valid, skip_from=ahead if valid else 0, score=score)
            skips = skip if skips is None else skips + skip  # (B, T', S)
        h = self.head_hidden(ops.relu(skips))
        return self.head_logits(ops.relu(h))

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "model_config": dataclasses.asdict(self.config),
            "audio_config": dataclasses.asdict(self.audio_config),
            "labels": None if self.labels is None else list(self.labels),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _unpack(inputs):
    if isinstance(inputs, dict):
        return inputs["codes"], inputs.get("labels"), inputs.get("notes")
    return inputs, None, None


def score_vectors(notes, positions, embedding, onset: int):
    """What a score says at some samples, embedded: (B, T, D).

    At sample p: the sum of ``embedding[token]`` over the notes sounding there
    (``start <= p < end``) and of ``embedding[256 + token]`` over those that began less
    than ``onset`` samples before. The model and the fast generator both call this.

    Args:
        notes: (B, E, 3) int ``(start, end, token)``; token < 0 marks padding.
        positions: (T,) int samples to describe.
        embedding: (2 * 256, D) float.
        onset: samples a note counts as beginning.
    """
    notes = ops.cast(notes, "int32")
    t = ops.cast(positions, "int32")[None, :, None]  # (1, T, 1)
    start, end, token = notes[:, None, :, 0], notes[:, None, :, 1], notes[..., 2]  # (B,1,E) x2, (B,E)
    sounding = (start <= t) & (t < end) & (token >= 0)[:, None, :]  # (B, T, E)
    beginning = sounding & (t < start + onset)
    token = ops.maximum(token, 0)
    emb = ops.cast(embedding, "float32")
    sound = ops.take(emb[:SCORE_TOKENS], token, axis=0)  # (B, E, D)
    attack = ops.take(emb[SCORE_TOKENS:], token, axis=0)
    return (ops.matmul(ops.cast(sounding, "float32"), sound)
            + ops.matmul(ops.cast(beginning, "float32"), attack))


def note_periods(notes, positions, sample_rate: int):
    """(B, T) int32: the period, in whole samples, of the pitched note heard at each of
    ``positions``: of the most recently begun pitched note sounding there (of simultaneous
    ones, the first in ``notes``' order: :func:`wavenet.data.notes.pack_scores` puts the
    lowest first); 0 where none sounds. ``floor(sample_rate / f0)``, f0 in equal temperament
    (A4 = 440 Hz)."""
    notes = ops.cast(notes, "int32")
    t = ops.cast(positions, "int32")[None, :, None]  # (1, T, 1)
    start, end, token = notes[:, None, :, 0], notes[:, None, :, 1], notes[..., 2]
    pitched = ((token >= 0) & (token < SCORE_TOKENS // 2))[:, None, :]  # percussion: 128 + key
    on = (start <= t) & (t < end) & pitched  # (B, T, E)
    # (B, T): the latest start, the first of ties; a note may start before the codes (< 0).
    pick = ops.argmax(ops.where(on, start, -(2**30)), axis=-1)
    key = ops.take_along_axis(ops.cast(token, "float32"), ops.cast(pick, "int32"), axis=1)
    period = ops.cast(ops.floor(float(sample_rate) / key_hz(key)), "int32")
    return ops.where(ops.any(on, axis=-1), ops.maximum(period, 1), 0)


def lag_vectors(codes, notes, embedding, sample_rate: int, reach: int, first: int = 0):
    """(B, T - first, D): at each position t >= ``first`` of ``codes`` (predicting sample
    t + 1, ``codes[:, 0]`` being sample 0), ``embedding[k, codes[t + 1 - P - k]]`` summed
    over k = 0, 1, where P is :func:`note_periods` at sample t + 1; nothing where no pitched note sounds, where
    ``P + k`` exceeds ``reach`` (the receptive field: what one prediction reads, so that a
    crop of it, a generator's window and its whole past agree), or where the code lies
    before ``codes``."""
    length = ops.shape(codes)[1]
    positions = ops.arange(first, length, dtype="int32") + 1  # the predicted samples, indices into codes
    period = note_periods(notes, positions, sample_rate)  # (B, T - first)
    codes = ops.cast(codes, "int32")
    emb = ops.cast(embedding, "float32")
    out = 0.0
    for k in range(2):
        back = positions[None, :] - period - k  # (B, T - first)
        heard = ops.cast((period > 0) & (period + k <= reach) & (back >= 0), "float32")[..., None]
        code = ops.take_along_axis(codes, ops.clip(back, 0, length - 1), axis=1)
        out = out + ops.take(emb[k], code, axis=0) * heard
    return out


def build_model(config: ExperimentConfig, labels: list[str] | tuple[str, ...] | None = None) -> WaveNet:
    """A built WaveNet (weights created) for ``config``.

    Args:
        config: the architecture and audio settings.
        labels: a conditioned model's label vocabulary (name of each id), recorded
            with the model; None: unknown.

    Raises:
        ConfigError: the weights, with their gradients and two Adam slots
            (4 float32 copies), would not fit in this machine's memory.
    """
    check_fits(config.model.num_params * 4 * 4, "the model's weights, gradients and optimizer "
               f"state ({config.model.num_params:,} parameters)",
               "model.stacks, model.layers_per_stack or the model's channels")
    model = WaveNet(config.model, config.audio, labels=labels, name="wavenet")
    model.build()
    return model


def split_crop(crop, context: int):
    """Teacher forcing: a crop of C + W codes -> inputs (C + W - 1) and targets (W).

    The logits at input position t predict code t+1; positions t >= C - 1 see
    at least C codes (a full receptive field when C is the model's), and their
    targets are ``crop[:, C:]``.
    """
    return crop[:, :-1], crop[:, context:]


def bits_per_sample(model: WaveNet, crop, labels=None, *, context: int | None = None,
                    training: bool = False, read=None, notes=None):
    """Mean negative log-likelihood in bits per predicted sample, per example.

    The one definition of the objective: training minimises it, validation
    and evaluation report it.

    Args:
        model: a WaveNet.
        crop: (B, context + W) int codes.
        labels: (B,) int labels for a conditioned model (ignored otherwise).
        context: codes in front of the W predicted ones; default the model's
            receptive field. Evaluation passes the widest receptive field of
            the models it compares, so that all of them score the same samples.
        training: passed to the model.
        read: codes the network reads in place of ``crop``'s (same shape; training's
            injected noise): the targets stay ``crop``'s.
        notes: (B, E, 3) the crops' scores in the crops' samples, for a model that plays
            one (ignored otherwise).

    Returns:
        (B,) float32 bits per sample over the W predicted positions.
    """
    context = model.receptive_field if context is None else context
    inputs, targets = split_crop(crop, context)
    if read is not None:
        inputs = read[:, :-1]
    x = {"codes": inputs, "labels": labels, "notes": notes}
    logits = model.logits_from(x, context - 1, training=training)  # (B, W, Q)
    nats = keras.losses.sparse_categorical_crossentropy(
        ops.cast(targets, "int32"), logits, from_logits=True)  # (B, W)
    return ops.mean(nats, axis=-1) / LN2


def save_model(model: WaveNet, path: str) -> None:
    """Save a ``.keras`` file atomically (local path, or ``gs://`` via upload)."""
    if not path.endswith(".keras"):
        raise WavenetError(f"model path must end with .keras. Received: {path}")
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "model.keras")
        model.save(local)
        storage.upload_file(local, path)


def _check_keras_archive(local: str, path: str) -> None:
    """A ``.keras`` file is a zip with ``config.json``; Keras reports anything else as
    "File not found", which sends users looking for a file that is there."""
    try:
        with zipfile.ZipFile(local) as z:
            names = set(z.namelist())
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError) as e:
        raise WavenetError(f"not a valid .keras file: {path}: {one_line(e, with_type=False)}") from None
    if bad is not None:
        raise WavenetError(f"not a valid .keras file: {path}: corrupt member {bad}")
    if "config.json" not in names:
        raise WavenetError(f"not a valid .keras file: {path}: the archive has no config.json")


def load_model(path: str) -> WaveNet:
    """Load a WaveNet saved by :func:`save_model` (safe mode: no arbitrary code)."""
    if not storage.exists(path):
        raise WavenetError(f"model file not found: {path}")
    with tempfile.TemporaryDirectory() as tmp:
        local = storage.local_copy(path, tmp)
        _check_keras_archive(local, path)
        try:
            model = keras.models.load_model(local, safe_mode=True, compile=False)
        except Exception as e:  # noqa: BLE001 - keras raises many types; report one line
            raise WavenetError(f"cannot load model {path}: {one_line(e)}") from None
    if not isinstance(model, WaveNet):
        raise WavenetError(f"{path} is not a WaveNet model. Received: {type(model).__name__}")
    return model
