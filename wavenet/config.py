"""One typed configuration for every stage.

`ExperimentConfig` holds frozen dataclasses for audio, data, model, training,
generation and evaluation. The same object builds the training model and the
fast generator, is saved with every checkpoint and model, and is logged to
MLflow as flattened params, so runs describe themselves.

Presets (`tiny`, `demo`, `bench`, `large`) are plain functions looked up by
name; YAML files and ``key=value`` overrides are applied on top of them.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from wavenet.edges import storage
from wavenet.errors import ConfigError

__all__ = [
    "AudioConfig",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "GenerateConfig",
    "EvaluateConfig",
    "ExperimentConfig",
    "PRESETS",
    "preset",
    "load_config",
    "overrides_from_yaml",
    "resolve_config",
    "AUTO_CLASSES",
    "resolve_auto",
    "AUTO_SCORE_CHANNELS",
]


def _require(cond: bool, name: str, value: Any, what: str) -> None:
    if not cond:
        raise ConfigError(f"{name} must be {what}. Received: {name}={value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# Upper bounds per field. They are far above any sensible run (the `large`
# preset sits well inside them) and exist so that a typo such as
# generate.seconds=1e9 fails here, with the bound named, instead of as a
# terabyte allocation later. Memory is also estimated where the size is used
# (wavenet.memory), because fields that are each in bounds can multiply up.
UPPER_BOUNDS: dict[str, float] = {
    "data.num_shards": 100_000,
    "data.chunk_seconds": 3600.0,
    "data.max_track_seconds": 86400.0,
    "data.processes": 1024,
    "model.stacks": 64,
    "model.layers_per_stack": 24,
    "model.kernel_size": 64,
    "model.residual_channels": 4096,
    "model.gate_channels": 4096,
    "model.skip_channels": 8192,
    "model.num_classes": 100_000,
    "model.score_channels": 4096,
    "train.global_batch_size": 65_536,
    "train.window": 1 << 22,
    "train.steps": 1_000_000_000,
    "train.learning_rate": 10.0,
    "train.warmup_steps": 1_000_000_000,
    "train.gradient_clip_norm": 1e6,
    "train.checkpoint_every": 1_000_000_000,
    "train.keep_checkpoints": 10_000,
    "train.log_every": 1_000_000_000,
    "train.validate_every": 1_000_000_000,
    "train.validation_batches": 1_000_000,
    "generate.num_clips": 1024,
    "generate.seconds": 3600.0,
    "generate.temperature": 100.0,
    "generate.prime_seconds": 3600.0,
    "generate.reference_seconds": 3600.0,
    "evaluate.promotion_margin_bits": 64.0,
    "evaluate.bigram_smoothing": 1e6,
    "evaluate.unigram_smoothing": 1e6,
    "evaluate.window": 1 << 22,
    "evaluate.batch_size": 4096,
}


# model.num_classes: one class per label of the data; model.score_channels: AUTO_SCORE_CHANNELS
# when the data has scores (resolve_auto).
AUTO_CLASSES = "auto"
# What model.score_channels: auto becomes for data with scores: the width measured for the demo
# (docs/benchmarks.md, eighth sitting: 32 channels of score beside 32 residual ones).
AUTO_SCORE_CHANNELS = 32
# Tokens of a score (wavenet.data.notes.NUM_TOKENS: 128 pitched keys, 128 percussion keys).
SCORE_TOKENS = 256


def _check_finite_and_bounded(section: Any, prefix: str) -> None:
    """Every number of ``section`` is finite and, where a bound is listed, within it.

    Runs before the per-field checks, so ``inf`` and ``nan`` are refused with the
    field named whatever the field's own rule (``nan > 0`` is False, ``inf > 0`` True).
    """
    for f in fields(section):
        name, v = f"{prefix}.{f.name}", getattr(section, f.name)
        if not _is_number(v):
            continue
        _require(math.isfinite(v), name, v, "a finite number")
        bound = UPPER_BOUNDS.get(name)
        if bound is not None:
            _require(v <= bound, name, v, f"at most {bound:g}")


@dataclass(frozen=True)
class AudioConfig:
    """How raw audio becomes codes and back."""

    # 16 kHz is the paper's rate for music and speech experiments.
    sample_rate: int = 16000
    # 8-bit mu-law (mu = 255): the paper's quantisation, a 256-way softmax.
    quantization_channels: int = 256
    # Leading and trailing audio quieter than this (dBFS, frame RMS) is trimmed.
    silence_threshold_db: float = -50.0
    # Tracks are peak-normalised to this level (dBFS) before mu-law encoding,
    # so quiet recordings still use the full code range.
    normalize_peak_db: float = -1.0

    def __post_init__(self) -> None:
        _check_finite_and_bounded(self, "audio")
        _require(_is_int(self.sample_rate) and 1000 <= self.sample_rate <= 192000,
                 "audio.sample_rate", self.sample_rate, "an integer in [1000, 192000]")
        _require(_is_int(self.quantization_channels) and 2 <= self.quantization_channels <= 256,
                 "audio.quantization_channels", self.quantization_channels,
                 "an integer in [2, 256] (codes are stored as uint8)")
        _require(_is_number(self.silence_threshold_db) and self.silence_threshold_db < 0,
                 "audio.silence_threshold_db", self.silence_threshold_db, "a negative number (dBFS)")
        _require(_is_number(self.normalize_peak_db) and self.normalize_peak_db <= 0,
                 "audio.normalize_peak_db", self.normalize_peak_db, "a number <= 0 (dBFS)")

    @property
    def mu(self) -> int:
        return self.quantization_channels - 1


@dataclass(frozen=True)
class DataConfig:
    """How preprocessed codes are sharded and split."""

    # At least the number of training workers (FILE auto-sharding needs one per worker).
    num_shards: int = 4
    # Fraction of tracks (by hash of their path) held out for validation.
    validation_fraction: float = 0.1
    # Long tracks are cut into examples of at most this length, so shards balance.
    chunk_seconds: float = 30.0
    # Worker processes for preprocessing; 0 means one per CPU core.
    processes: int = 0
    # Longer files are skipped with this reason, read from the header before
    # decoding. Preprocessing holds a track at audio.sample_rate in memory
    # (5 bytes a sample: float32, then uint8 codes): an hour at 16 kHz is
    # about 300 MB; a DJ mix fits, a day-long field recording does not.
    max_track_seconds: float = 3600.0

    def __post_init__(self) -> None:
        _check_finite_and_bounded(self, "data")
        _require(_is_int(self.num_shards) and self.num_shards >= 1,
                 "data.num_shards", self.num_shards, "an integer >= 1")
        _require(_is_number(self.validation_fraction) and 0.0 <= self.validation_fraction < 1.0,
                 "data.validation_fraction", self.validation_fraction, "a number in [0, 1)")
        _require(_is_number(self.chunk_seconds) and self.chunk_seconds > 0,
                 "data.chunk_seconds", self.chunk_seconds, "a positive number")
        _require(_is_int(self.processes) and self.processes >= 0,
                 "data.processes", self.processes, "an integer >= 0")
        _require(_is_number(self.max_track_seconds) and self.max_track_seconds > 0,
                 "data.max_track_seconds", self.max_track_seconds, "a positive number")


@dataclass(frozen=True)
class ModelConfig:
    """The WaveNet architecture (van den Oord et al. 2016, section 2)."""

    # Dilations 1, 2, ..., 2**(layers_per_stack - 1), repeated `stacks` times.
    stacks: int = 2
    layers_per_stack: int = 10
    # Kernel 2 as in the paper; larger kernels are supported but unusual.
    kernel_size: int = 2
    residual_channels: int = 64
    # Channels of each half of the gate: the dilated conv emits 2 * gate_channels
    # (filter for tanh, gate for sigmoid).
    gate_channels: int = 64
    skip_channels: int = 256
    quantization_channels: int = 256
    # 0: unconditioned. >0: a label embedding is added inside every gate
    # (global conditioning, paper section 2.5). "auto": one class per label of
    # the data when it has two or more, else unconditioned; resolved against the
    # manifest by resolve_auto before a model is built.
    num_classes: int | str = 0
    # 0: no score. >0: local conditioning on a score (paper section 2.5; wavenet.data.notes):
    # at each sample, which notes sound and which began in the last 20 ms, embedded into this
    # many channels and added inside every gate through a 1x1 of its own per layer. "auto":
    # AUTO_SCORE_CHANNELS when a track of the data has a score (a MIDI file beside it), else 0;
    # resolved against the manifest by resolve_auto before a model is built.
    score_channels: int | str = 0
    # For a model that plays a score: each layer also hears the codes one period back (of
    # the most recently begun pitched note sounding at the predicted sample, and one sample
    # further back), embedded into score_channels and added to the score's vectors: the
    # long-term (pitch) predictor of speech codecs (Atal and Schroeder, CELP), the delay
    # line of Karplus and Strong's plucked string: copying it continues a note's waveform.
    # Off in every preset: measured with and without (docs/benchmarks.md, tenth sitting), it
    # has not yet made the demo's clips pass more checks.
    score_lag: bool = False

    def __post_init__(self) -> None:
        _check_finite_and_bounded(self, "model")
        for name in ("stacks", "layers_per_stack", "residual_channels", "gate_channels",
                     "skip_channels"):
            v = getattr(self, name)
            _require(_is_int(v) and v >= 1, f"model.{name}", v, "an integer >= 1")
        _require(_is_int(self.kernel_size) and self.kernel_size >= 2,
                 "model.kernel_size", self.kernel_size, "an integer >= 2")
        _require(_is_int(self.quantization_channels) and 2 <= self.quantization_channels <= 256,
                 "model.quantization_channels", self.quantization_channels,
                 "an integer in [2, 256]")
        _require((_is_int(self.num_classes) and self.num_classes >= 0)
                 or self.num_classes == AUTO_CLASSES,
                 "model.num_classes", self.num_classes, f"an integer >= 0 or {AUTO_CLASSES!r}")
        _require((_is_int(self.score_channels) and self.score_channels >= 0)
                 or self.score_channels == AUTO_CLASSES,
                 "model.score_channels", self.score_channels, f"an integer >= 0 or {AUTO_CLASSES!r}")
        _require(isinstance(self.score_lag, bool), "model.score_lag", self.score_lag, "true or false")

    @property
    def lagged(self) -> bool:
        """Whether each layer hears the codes a period back (``score_lag`` on a scored model)."""
        return self.score_lag and self.scored

    @property
    def scored(self) -> bool:
        """Whether a score (notes) conditions the model (False while ``score_channels`` is "auto")."""
        return _is_int(self.score_channels) and self.score_channels > 0

    @property
    def _score_width(self) -> int:
        return self.score_channels if self.scored else 0  # "auto": counted as none

    @property
    def dilations(self) -> tuple[int, ...]:
        return tuple(2**i for _ in range(self.stacks) for i in range(self.layers_per_stack))

    @property
    def num_layers(self) -> int:
        return self.stacks * self.layers_per_stack

    @property
    def receptive_field(self) -> int:
        """Number of input samples (the current one included) that one output sees."""
        return (self.kernel_size - 1) * sum(self.dilations) + 1

    @property
    def conditioned(self) -> bool:
        """Whether labels condition the model (False while ``num_classes`` is still "auto")."""
        return _is_int(self.num_classes) and self.num_classes > 0

    @property
    def num_params(self) -> int:
        """Weights of the model built from this config (an estimate within a few biases)."""
        r, g, s, q, k = (self.residual_channels, self.gate_channels, self.skip_channels,
                         self.quantization_channels, self.kernel_size)
        classes = self.num_classes if self.conditioned else 0  # "auto": counted as none
        d = self._score_width
        per_layer = k * r * 2 * g + 2 * g + g * r + r + g * s + s + classes * 2 * g + d * 2 * g
        lag = 2 * q * d if self.lagged else 0
        return q * r + self.num_layers * per_layer + s * s + s + s * q + q + 2 * SCORE_TOKENS * d + lag

    def _layer_macs(self, i: int) -> tuple[int, int]:
        """Multiply-adds of layer ``i`` per position: (dilated conv + residual 1x1, skip 1x1).

        The last layer has no residual 1x1 (nothing reads its residual output).
        """
        r, g, s, k = self.residual_channels, self.gate_channels, self.skip_channels, self.kernel_size
        return (k * r * 2 * g + self._score_width * 2 * g + (g * r if i < self.num_layers - 1 else 0),
                g * s)

    def _head_macs(self) -> int:
        s = self.skip_channels
        return s * s + s * self.quantization_channels

    @property
    def flops_per_sample(self) -> int:
        """Multiply-adds x 2 to produce one output sample's logits (inference)."""
        return 2 * (sum(sum(self._layer_macs(i)) for i in range(self.num_layers)) + self._head_macs())

    def teacher_forced_flops(self, window: int) -> int:
        """Multiply-adds x 2 of one forward pass over a crop that predicts ``window`` samples.

        As :meth:`wavenet.model.WaveNet.logits_from` runs it: each layer on the positions
        that the layers after it read (``window`` plus their receptive field), its skip
        output and the head on the ``window`` predicted ones only. Per position, each layer
        costs what one step of :attr:`flops_per_sample` does.
        """
        ahead = self.receptive_field - 1  # context that the layers from here on still read
        total = window * self._head_macs()
        for i, d in enumerate(self.dilations):
            ahead -= (self.kernel_size - 1) * d
            layer, skip = self._layer_macs(i)
            total += (window + ahead) * layer + window * skip
        return 2 * total


@dataclass(frozen=True)
class TrainConfig:
    """The training loop."""

    # Fixed whatever the number of workers: each worker gets batch / workers.
    global_batch_size: int = 8
    # Predicted samples per crop; crops hold receptive_field + window codes.
    window: int = 4096
    steps: int = 2000
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    # Cosine decay from learning_rate to learning_rate * min_lr_ratio.
    min_lr_ratio: float = 0.05
    gradient_clip_norm: float = 1.0
    # Exponential moving average of weights for generation; 0 disables it.
    ema_decay: float = 0.0
    # Injected noise (FFTNet, Jin et al., ICASSP 2018): Gaussian noise of this standard
    # deviation, in mu-law code steps, added to the codes the network reads while training
    # (rounded, kept in range); the targets stay clean, so the network learns to predict the
    # clean next sample from a past as noisy as its own samples are. 0 disables it.
    input_noise: float = 0.0
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    log_every: int = 50
    # Validation bits/sample every N steps (0: only at the end).
    validate_every: int = 500
    validation_batches: int = 8
    seed: int = 0
    # "auto": bfloat16 on GPU, float32 on CPU. Or "float32", "mixed_bfloat16", "mixed_float16".
    precision: str = "auto"
    # "auto": XLA on GPU, and on CPU too: measured 1.3-1.5x faster training
    # steps for the bench and demo models on one CPU core. Or "on"/"off".
    jit_compile: str = "auto"
    # How workers split the input. "file": each worker reads its own subset of
    # shard files (tf.distribute's FILE policy: no duplicate reads, needs
    # data.num_shards >= workers). "batch": every worker reads all shards in
    # the same order and keeps its slice of each global batch, so a run sees
    # the same batches whatever the number of workers (reproducible across
    # cluster sizes) at the price of each worker reading all the data.
    input_sharding: str = "file"
    # Local launcher: how often the whole worker set is restarted after a
    # retryable worker exit (138, 130, 137, 143), like a TFJob's backoffLimit.
    max_restarts: int = 3

    def __post_init__(self) -> None:
        _check_finite_and_bounded(self, "train")
        _require(_is_int(self.max_restarts) and 0 <= self.max_restarts <= 100,
                 "train.max_restarts", self.max_restarts, "an integer in [0, 100]")
        for name in ("global_batch_size", "window", "steps", "checkpoint_every",
                     "keep_checkpoints", "log_every"):
            v = getattr(self, name)
            _require(_is_int(v) and v >= 1, f"train.{name}", v, "an integer >= 1")
        for name in ("warmup_steps", "validate_every", "validation_batches", "seed"):
            v = getattr(self, name)
            _require(_is_int(v) and v >= 0, f"train.{name}", v, "an integer >= 0")
        _require(_is_number(self.learning_rate) and self.learning_rate > 0,
                 "train.learning_rate", self.learning_rate, "a positive number")
        _require(_is_number(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1,
                 "train.min_lr_ratio", self.min_lr_ratio, "a number in [0, 1]")
        _require(_is_number(self.gradient_clip_norm) and self.gradient_clip_norm >= 0,
                 "train.gradient_clip_norm", self.gradient_clip_norm, "a number >= 0 (0: off)")
        _require(_is_number(self.ema_decay) and 0 <= self.ema_decay < 1,
                 "train.ema_decay", self.ema_decay, "a number in [0, 1)")
        _require(_is_number(self.input_noise) and 0 <= self.input_noise <= 256,
                 "train.input_noise", self.input_noise, "a number in [0, 256] (code steps)")
        _require(self.precision in ("auto", "float32", "mixed_bfloat16", "mixed_float16"),
                 "train.precision", self.precision,
                 "one of 'auto', 'float32', 'mixed_bfloat16', 'mixed_float16'")
        if isinstance(self.jit_compile, bool):
            # YAML 1.1 reads unquoted on/off as booleans (also in --set train.jit_compile=on).
            object.__setattr__(self, "jit_compile", "on" if self.jit_compile else "off")
        _require(self.jit_compile in ("auto", "on", "off"),
                 "train.jit_compile", self.jit_compile, "one of 'auto', 'on', 'off'")
        _require(self.input_sharding in ("file", "batch"),
                 "train.input_sharding", self.input_sharding, "one of 'file', 'batch'")

    @property
    def samples_per_step(self) -> int:
        """Predicted samples per update, all workers together (global batch x window)."""
        return self.global_batch_size * self.window


@dataclass(frozen=True)
class GenerateConfig:
    """Sampling audio from a trained model."""

    num_clips: int = 4
    seconds: float = 4.0
    # Softmax temperature; 1.0 samples the model's distribution.
    temperature: float = 1.0
    # For a model that plays a score: lambda of the delay line that sustains the score's lone
    # pitched notes (wavenet.generation.sustain; docs/generation.md): where exactly one pitched
    # note and no percussion sounds, and a period of that note has sounded, each code is drawn
    # from (1 - lambda) * the network's distribution + lambda * a narrow one around the
    # waveform a period back. 0: plain sampling; ignored by a model without a score.
    sustain: float = 0.0
    # Seconds of validation audio fed in before sampling starts (0: start from silence).
    prime_seconds: float = 0.0
    seed: int = 0
    # Seconds of training audio per label (in windows as long as a clip, spread
    # over the label's tracks) that calibrate the sanity checks (wavenet.generation.quality).
    # 60 s: on a 31-track corpus it let 95% of held-out tracks' windows pass,
    # and costs about 3 s per label on one core; 8 windows at least.
    reference_seconds: float = 60.0
    # Precision of the fast generator's matrix weights: "float32", "bfloat16" or
    # "int8" (per output channel). Generation reads every weight once per sample,
    # so fewer bytes are faster. int8: within 0.001 bits/sample of the float32
    # model on trained demo and large models, and the fastest at batch 1 (6x
    # float32 for large), where generation is slowest; docs/generation.md.
    weights: str = "int8"
    # For a model that plays a score (model.score_channels > 0): a MIDI file (local or gs://)
    # every clip plays from its first note. Empty: each clip plays the score of a validation
    # example of its label (from its first sample; the data folder is then needed).
    score: str = ""

    def __post_init__(self) -> None:
        _check_finite_and_bounded(self, "generate")
        _require(isinstance(self.score, str), "generate.score", self.score,
                 "a MIDI file's path or gs:// URI (or empty)")
        _require(self.weights in ("float32", "bfloat16", "int8"), "generate.weights", self.weights,
                 "one of 'float32', 'bfloat16', 'int8'")
        _require(_is_number(self.reference_seconds) and self.reference_seconds > 0,
                 "generate.reference_seconds", self.reference_seconds, "a positive number")
        _require(_is_int(self.num_clips) and self.num_clips >= 1,
                 "generate.num_clips", self.num_clips, "an integer >= 1")
        _require(_is_number(self.seconds) and self.seconds > 0,
                 "generate.seconds", self.seconds, "a positive number")
        _require(_is_number(self.temperature) and self.temperature > 0,
                 "generate.temperature", self.temperature, "a positive number")
        _require(_is_number(self.sustain) and 0 <= self.sustain < 1,
                 "generate.sustain", self.sustain, "a number in [0, 1)")
        _require(_is_number(self.prime_seconds) and self.prime_seconds >= 0,
                 "generate.prime_seconds", self.prime_seconds, "a number >= 0")
        _require(_is_int(self.seed) and self.seed >= 0, "generate.seed", self.seed,
                 "an integer >= 0")


@dataclass(frozen=True)
class EvaluateConfig:
    """Held-out evaluation and gating against the champion."""

    registered_model_name: str = "wavenet"
    # A new model replaces the champion only if its validation bits/sample is
    # lower by at least this much.
    promotion_margin_bits: float = 0.01
    # Additive smoothing of the bigram baseline's counts.
    bigram_smoothing: float = 0.5
    # Predicted samples per evaluation crop (the receptive field is added in front).
    window: int = 16000
    # Additive smoothing of the unigram baseline's counts (same role as above:
    # a code never seen in training still gets a finite cost).
    unigram_smoothing: float = 0.5
    # Evaluation crops scored per forward pass; memory grows with batch x window.
    batch_size: int = 8

    def __post_init__(self) -> None:
        _check_finite_and_bounded(self, "evaluate")
        _require(_is_number(self.unigram_smoothing) and self.unigram_smoothing > 0,
                 "evaluate.unigram_smoothing", self.unigram_smoothing, "a positive number")
        _require(_is_int(self.batch_size) and self.batch_size >= 1, "evaluate.batch_size",
                 self.batch_size, "an integer >= 1")
        _require(isinstance(self.registered_model_name, str) and self.registered_model_name.strip() != "",
                 "evaluate.registered_model_name", self.registered_model_name, "a non-empty string")
        _require(_is_number(self.promotion_margin_bits) and self.promotion_margin_bits >= 0,
                 "evaluate.promotion_margin_bits", self.promotion_margin_bits, "a number >= 0")
        _require(_is_number(self.bigram_smoothing) and self.bigram_smoothing > 0,
                 "evaluate.bigram_smoothing", self.bigram_smoothing, "a positive number")
        _require(_is_int(self.window) and self.window >= 1, "evaluate.window", self.window,
                 "an integer >= 1")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything a run needs; saved with every model and logged to MLflow."""

    name: str = "wavenet"
    preset: str = "custom"
    audio: AudioConfig = field(default_factory=AudioConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def __post_init__(self) -> None:
        _require(isinstance(self.name, str) and self.name.strip() != "", "name", self.name,
                 "a non-empty string")
        if self.model.quantization_channels != self.audio.quantization_channels:
            raise ConfigError(
                "model.quantization_channels must equal audio.quantization_channels. Received: "
                f"model.quantization_channels={self.model.quantization_channels!r}, "
                f"audio.quantization_channels={self.audio.quantization_channels!r}")

    # -- derived ---------------------------------------------------------------
    @property
    def crop_length(self) -> int:
        """Codes per training crop: full context for every one of `window` predictions."""
        return self.model.receptive_field + self.train.window

    # -- (de)serialisation -----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExperimentConfig:
        return _from_dict(cls, d, "")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> ExperimentConfig:
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"config is not valid YAML: {yaml_error_line(e, '<config>')}") from None
        if d is None:
            d = {}
        if not isinstance(d, Mapping):
            raise ConfigError(f"config must be a mapping. Received: {type(d).__name__}")
        return cls.from_dict(d)

    def save(self, path: str | os.PathLike) -> None:
        storage.write_text_atomic(str(path), self.to_yaml())

    def flat(self) -> dict[str, Any]:
        """Flattened ``section.field -> value`` (MLflow params)."""
        return _flatten(self.to_dict())

    def with_overrides(self, overrides: Mapping[str, Any]) -> ExperimentConfig:
        """Return a copy with overrides: dotted keys (``{"model.stacks": 3}``) or nested
        sections (``{"model": {"stacks": 3}}``)."""
        d = self.to_dict()
        for key, value in _flatten(overrides).items():
            parts = key.split(".")
            node = d
            for p in parts[:-1]:
                if p not in node or not isinstance(node[p], dict):
                    raise ConfigError(f"unknown config section in override. Received: {key}")
                node = node[p]
            if parts[-1] not in node or isinstance(node[parts[-1]], dict):
                raise ConfigError(f"unknown config field in override. Received: {key}")
            node[parts[-1]] = value
        return ExperimentConfig.from_dict(d)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> ``{"section.field": value}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _from_dict(cls: type, d: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(d, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping. Received: {d!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown config field {prefix}{unknown[0]}. Known fields of "
            f"{prefix.rstrip('.') or 'config'}: {', '.join(known)}")
    kwargs: dict[str, Any] = {}
    for name, value in d.items():
        sub = _SECTIONS.get(name) if cls is ExperimentConfig else None
        if sub is not None:
            kwargs[name] = _from_dict(sub, value or {}, f"{prefix}{name}.")
        else:
            default = known[name].default
            # YAML reads 1e-3 as a string; accept numbers written that way.
            if isinstance(default, float) and isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    pass
            if isinstance(default, float) and _is_int(value):
                value = float(value)
            kwargs[name] = value
    return cls(**kwargs)


_SECTIONS: dict[str, type] = {
    "audio": AudioConfig,
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "generate": GenerateConfig,
    "evaluate": EvaluateConfig,
}


# -- presets -----------------------------------------------------------------

def tiny() -> ExperimentConfig:
    """Seconds-scale model for tests: receptive field 16."""
    return ExperimentConfig(
        preset="tiny",
        data=DataConfig(num_shards=2, chunk_seconds=2.0, validation_fraction=0.25),
        model=ModelConfig(stacks=1, layers_per_stack=4, residual_channels=8, gate_channels=8,
                          skip_channels=16),
        train=TrainConfig(global_batch_size=4, window=256, steps=30, learning_rate=3e-3,
                          warmup_steps=5, checkpoint_every=10, log_every=5, validate_every=10,
                          validation_batches=2),
        generate=GenerateConfig(num_clips=2, seconds=0.25),
        evaluate=EvaluateConfig(window=1024),
    )


def demo() -> ExperimentConfig:
    """The default `make run`: learns audible structure in minutes on 2 CPU cores."""
    return ExperimentConfig(
        preset="demo",
        # The recipe (issue 20; docs/benchmarks.md "Quality per compute" has the runs): at the
        # same 300 steps x 8 x 2048 samples, 8 kHz with 10 layers per stack (receptive field
        # 2,047 samples: 256 ms, against 32 ms for 16 kHz with 8 layers) and a peak learning
        # rate of 1e-2 (2e-3 before) passed 44% of the calibrated checks against 22%. The
        # demo's sounds sit below 4 kHz (fundamentals under 1 kHz); each step covers twice the
        # seconds of music, and the model hears whole notes' attacks instead of a few periods.
        audio=AudioConfig(sample_rate=8000),
        data=DataConfig(num_shards=4, chunk_seconds=10.0),
        # Conditioned on the data's labels (genres) when it has two or more: the
        # demo corpus's three genres share one model, and each clip is asked for
        # one of them (an unconditioned model mixes them into one sound).
        # And it plays the score of data that has one (model.score_channels: auto; the demo
        # corpus writes each track's notes beside it as MIDI): local conditioning (paper section
        # 2.5). At these 600 steps its clips passed 63% of the checks against 44% without
        # (drums 89% against 44%, strings 44% against 22%, organ 56% against 67%), for 39%
        # more training time (docs/benchmarks.md, ninth sitting). Data without scores (your
        # own recordings) trains exactly the model it did before.
        model=ModelConfig(stacks=2, layers_per_stack=10, residual_channels=32, gate_channels=32,
                          skip_channels=64, num_classes=AUTO_CLASSES, score_channels=AUTO_CLASSES),
        # lr 1e-2 against 2e-3 and 5e-3 at 300 steps: 3.98 bits/sample against 4.62 and 4.23
        # (bigram 5.85); 2e-2 at 1,000 steps was no better than 1e-2 (3.47 against 3.44).
        # 600 steps: the 10-minute budget of `make run` on the slower Zen 3 spent on training
        # (300 steps: 3.98 bits/sample; 600: 3.57-3.59, and `make run` took 4 min 8 s after
        # install on the AMD EPYC of docs/benchmarks.md, training 3 min 7 s since the valid
        # forward; 700 steps: 3.51 and no more checks passed; 1,000 steps: 3.44 and 56-67% of
        # the checks by seed, too long for the Zen 3). Kept at batch 8 x 2048 after measuring the
        # rest at the same 4.9 M samples (docs/benchmarks.md, third sitting): batch 4 reaches
        # better bits per second (3.49 at 1,200 steps in 276 s) but its drum clips turn to hiss
        # (spectral flatness 0.19-0.32 against at most 0.17); 9 layers per stack (128 ms) learn
        # faster and sound worse the same way; 64 channels cost 2.5x the time for the same bits;
        # 4096-sample windows (batch 4), batch 16 (300 steps) and a gradient clip of 5 score worse.
        # Injected noise of 1 code step (docs/training.md; docs/benchmarks.md, fourth sitting):
        # over six clips per label its clips passed 56% of the checks against 49% (0.5 steps:
        # 53%; 2 steps: 41%), drums 69% against 39%, organ 65% against 56% (its noise floor,
        # tonal flatness, 0.36-0.47 against 0.49-0.52), strings 33% against 54%; the price is
        # 0.17 bits/sample on clean validation audio (3.76 against 3.59).
        train=TrainConfig(global_batch_size=8, window=2048, steps=600, learning_rate=1e-2,
                          warmup_steps=30, checkpoint_every=100, log_every=20, validate_every=200,
                          validation_batches=4, input_noise=1.0),
        # The delay line that sustains the score's lone pitched notes (generate.sustain;
        # docs/benchmarks.md, eleventh sitting): over 8 clips, the drum clips passed every check
        # in 8 of 8 against 0 (the bass line's harmonics, which the network alone renders as
        # noise; tonal flatness 0.40-0.45 against 0.56-0.61). Organ and strings are chords and
        # overlapping notes, which it leaves to the network: their clips did not change.
        generate=GenerateConfig(num_clips=3, seconds=2.0, sustain=0.9),
        evaluate=EvaluateConfig(window=8192),
    )


def bench() -> ExperimentConfig:
    """The paper-sized benchmark model: 2 stacks x 10 layers (dilations 1..512)."""
    return ExperimentConfig(
        preset="bench",
        model=ModelConfig(stacks=2, layers_per_stack=10, residual_channels=64, gate_channels=64,
                          skip_channels=256),
        train=TrainConfig(global_batch_size=4, window=4096),
    )


def large() -> ExperimentConfig:
    """A GPU-sized model: 4 stacks x 10 layers, receptive field 4093 (256 ms)."""
    # What the demo recipe search (issue 20, docs/benchmarks.md) carries over to a GPU run,
    # which `make gpu-check` trains a few steps of: 16 kHz (a GPU affords the full band) with
    # the receptive field the demo showed to matter in seconds, 256 ms (demo: 2,047 samples
    # at 8 kHz; 128 ms sounded worse); conditioned on the data's labels as demo is; a batch
    # of many windows (at 8 kHz, 4 windows a step learnt more bits per second than 8 but made
    # hiss of the drums); windows twice the receptive field, so a third of each crop is
    # context; bfloat16 on the GPU ("auto": the same bits per step as float32 in the demo's
    # runs); an EMA whose horizon (10,000 steps) is small against the run (at 1,000 steps an
    # EMA of 0.99 did not help). The peak learning rate stays 1e-3: the demo's 1e-2 was
    # measured on a 32-channel model only, and no long GPU run has been measured.
    return ExperimentConfig(
        preset="large",
        data=DataConfig(num_shards=32),
        model=ModelConfig(stacks=4, layers_per_stack=10, residual_channels=128, gate_channels=128,
                          skip_channels=512, num_classes=AUTO_CLASSES),
        train=TrainConfig(global_batch_size=32, window=8000, steps=200_000, learning_rate=1e-3,
                          warmup_steps=1000, checkpoint_every=1000, log_every=100,
                          validate_every=2000, ema_decay=0.9999),
        generate=GenerateConfig(num_clips=8, seconds=10.0),
    )


PRESETS: dict[str, Callable[[], ExperimentConfig]] = {
    "tiny": tiny,
    "demo": demo,
    "bench": bench,
    "large": large,
}


def preset(name: str) -> ExperimentConfig:
    """Look up a named preset."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(
            f"unknown preset. Known presets: {', '.join(PRESETS)}. Received: preset={name!r}"
        ) from None


def load_config(path: str | os.PathLike) -> ExperimentConfig:
    """Load a YAML config file; a ``preset:`` key names the base it overrides."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
    try:
        d = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {yaml_error_line(e, str(p))}") from None
    if not isinstance(d, Mapping):
        raise ConfigError(f"config file {p} must hold a mapping. Received: {type(d).__name__}")
    # A saved config says preset: custom (and `wavenet config` prints the preset it
    # came from); any other name must be a known preset, never silently the defaults.
    name = d.get("preset", "custom")
    if name == "custom":
        base = ExperimentConfig()
    else:
        try:
            base = preset(name)
        except ConfigError as e:
            raise ConfigError(f"{p}: {e}") from None
    merged = _deep_merge(base.to_dict(), d)
    try:
        return ExperimentConfig.from_dict(merged)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def yaml_error_line(e: yaml.YAMLError, source: str) -> str:
    """One line for a YAML error: ``source:line:col: problem`` (PyYAML's marks are 0-based)."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or getattr(e, "context", None) or str(e)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    return " ".join(f"{where}: {problem}".split())


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``section.field=value`` (value read as YAML: numbers, bools, strings)."""
    if "=" not in text:
        raise ConfigError(f"override must look like section.field=value. Received: {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def overrides_from_yaml(text: str) -> dict[str, Any]:
    """Overrides written as YAML (a pipeline parameter): nested or dotted keys, no ``preset``.

    Returns:
        The mapping for :func:`resolve_config` (empty for blank text).
    """
    try:
        over = yaml.safe_load(text) if text and text.strip() else {}
    except yaml.YAMLError as e:
        raise ConfigError("config overrides are not valid YAML: "
                          f"{yaml_error_line(e, '<overrides>')}") from None
    if over is None:
        over = {}
    if not isinstance(over, Mapping):
        raise ConfigError(f"config overrides must be a YAML mapping. Received: {text!r}")
    if "preset" in over:
        raise ConfigError("config overrides must not set preset (use the preset parameter)")
    return dict(over)


def resolve_config(preset_name: str | None = None, config_file: str | None = None,
                   overrides: list[str] | Mapping[str, Any] | None = None, *,
                   base: ExperimentConfig | None = None) -> ExperimentConfig:
    """The config a command runs with: ``base``, a YAML file or a preset, then overrides.

    Args:
        preset_name: a named preset (default ``demo``).
        config_file: a YAML file (a ``preset:`` key names the base it overrides).
        overrides: ``["section.field=value", ...]``, or a mapping with dotted or nested keys.
        base: a whole config to start from (e.g. ``ExperimentConfig.from_yaml``).
    """
    if base is not None:
        cfg = base
    elif config_file:
        cfg = load_config(config_file)
    else:
        cfg = preset(preset_name or "demo")
    if overrides:
        if isinstance(overrides, Mapping):
            pairs = dict(overrides)
        else:
            pairs = dict(parse_override(o) for o in overrides)
        cfg = cfg.with_overrides(pairs)
    return cfg


def resolve_auto(cfg: ExperimentConfig, labels: Sequence[str], scored: bool = False) -> ExperimentConfig:
    """``model.num_classes: auto`` and ``model.score_channels: auto`` resolved against the data
    (other values kept).

    Global conditioning (paper section 2.5) needs at least two labels to tell
    apart: with two or more, one class per label; with one (or none), the model
    stays unconditioned (``num_classes: 0``), since a single label's embedding
    would only duplicate the gates' biases. Local conditioning on a score needs
    scores: :data:`AUTO_SCORE_CHANNELS` when a track of the data has one, else 0.

    Args:
        cfg: the config, possibly with ``"auto"`` values.
        labels: the manifest's labels (id order).
        scored: whether a track of the data has a score (``Manifest.scored``).

    Returns:
        ``cfg`` itself when nothing is to resolve, else a copy with integers.
    """
    m = cfg.model
    if AUTO_CLASSES not in (m.num_classes, m.score_channels):
        return cfg
    n = (len(labels) if len(labels) >= 2 else 0) if m.num_classes == AUTO_CLASSES else m.num_classes
    d = (AUTO_SCORE_CHANNELS if scored else 0) if m.score_channels == AUTO_CLASSES else m.score_channels
    return dataclasses.replace(cfg, model=dataclasses.replace(m, num_classes=n, score_channels=d))
