"""Fast cached WaveNet generation (Paine et al. 2016, "Fast Wavenet Generation Algorithm").

Sampling a WaveNet naively recomputes the whole receptive field for every new
sample. Paine et al. (arXiv:1611.09482) observe that each layer only needs, at
time t, its own input at times t - m * dilation (m = 0 .. kernel_size - 1):
keeping a queue of each layer's past inputs makes a new sample cost one time
step per layer, O(layers) instead of O(receptive field).

:class:`FastGenerator` copies a trained :class:`wavenet.model.WaveNet`'s
weights (the model's own ``.config`` sizes everything, so the two cannot
drift) into the layout of a compiled step kernel (``wavenet/generation/_fastgen.c``): one
call runs thousands of steps for a batch of streams with no per-operation
framework overhead. The queues are ring buffers of ``(kernel_size - 1) *
dilation`` past inputs per layer, zero at the start, which is exactly the Keras
model's causal zero padding.

**Weight precision** (``weights=``, ``generate.weights`` in the config). At
batch 1 every weight is read once per sample, so the speed is set by the bytes
of weights per sample and where they fit in the cache hierarchy:

* ``float32``: the trained weights as they are (4 bytes each).
* ``bfloat16``: each weight rounded to nearest-even bfloat16 (2 bytes); the
  kernel widens it exactly to float32, so products and sums stay float32.
* ``int8``: each matrix column (one output channel) scaled by ``max|w| / 127``
  and rounded to int8 (1 byte, plus one float scale per column); the input of
  each matrix product is rounded to int16 with its own scale ``max|x| /
  32767``, and the products are summed exactly in integers (AVX2 ``vpmaddwd``),
  then scaled back to float32.

Biases, the label embedding and the input embedding stay float32 in every
mode. :func:`effective_weights` gives the float32 values a precision computes
with (tests run the Keras model on them).

Sampling is inverse-CDF on ``softmax(logits / temperature)`` with one uniform
number per stream and step from ``numpy.random.default_rng(seed)``, drawn in
step order, so the same seed gives the same audio, whatever the chunking.
:func:`naive_generate` (the full model on the last receptive field of codes,
every sample) uses the same uniforms and the same sampler, so for a seed both
produce the same codes up to float rounding at a CDF boundary.

When no prime is given, every stream starts from one code of silence (mu-law
of 0.0), which is fed but not returned.

**A score** (``model.score_channels > 0``, :mod:`wavenet.data.notes`): the model
adds ``V_k y_t`` inside every layer's gate, ``y_t`` what the score says at sample t.
``y_t`` changes only where a note starts, ends its onset or ends, so the
generator cuts the samples there and, before each stretch, sets every stream's
gate biases (where the label's embedding already sits) to the bias plus ``V_k
y_t``: the kernel runs unchanged, a stretch at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from wavenet.config import SCORE_TOKENS
from wavenet.errors import WavenetError

__all__ = ["FastGenerator", "GenerateArgumentError", "WEIGHT_PRECISIONS", "effective_weights",
           "Streams", "kernel_isa", "naive_generate", "pack_matrix", "quantize_int8", "sample_rows",
           "silence_code", "to_bfloat16"]

WEIGHT_PRECISIONS = ("float32", "bfloat16", "int8")


class GenerateArgumentError(WavenetError, ValueError):
    """A generation argument (labels, prime, batch, temperature) is unusable."""


# Floating-point work per kernel call between progress callbacks: long enough
# that the call overhead vanishes, short enough (~0.1 s) for a responsive
# progress bar and Ctrl-C, whatever the model and batch.
_CHUNK_FLOPS = 2e9
_CHUNK_MIN, _CHUNK_MAX = 8, 4096


def silence_code(quantization_channels: int) -> int:
    """The mu-law code of 0.0 (digital silence), the default first input."""
    mu = quantization_channels - 1
    return int(math.floor(mu / 2.0 + 0.5))


def _kernel():
    """The compiled step kernel (built by ``pip install`` / ``make install``)."""
    try:
        from wavenet.generation import _fastgen
    except ImportError as e:
        raise WavenetError("the generation kernel wavenet.generation._fastgen is not built: run `make install` "
                           f"(it needs a C compiler and Python's headers). Received: {e}") from None
    return _fastgen


def kernel_isa() -> str:
    """Which build of the matrix kernels runs on this CPU: ``"avx2"`` (AVX2 + FMA) or ``"generic"``."""
    return _kernel().isa()


# -- weight precision: pure functions --------------------------------------------

def to_bfloat16(w: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) of float32 ``w``, rounded to nearest even.

    bfloat16 is the upper half of a float32 (8 exponent bits, 7 mantissa bits),
    so it widens back exactly: ``(bits.astype(uint32) << 16).view(float32)``.
    Finite inputs only (NaN payloads are not preserved).
    """
    u = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32)
    rounded = u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def quantize_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel: ``w[:, c] ~ q[:, c] * scale[c]``.

    Args:
        w: (K, N) float32, N output channels (columns).

    Returns:
        ``(q (K, N) int8 in [-127, 127], scale (N,) float32 = max_k |w[k, c]| / 127)``;
        an all-zero column gets scale 0 and zeros.
    """
    w = np.asarray(w, dtype=np.float32)
    scale = (np.abs(w).max(axis=0) / np.float32(127.0)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1.0))
    q = np.clip(np.rint(w / safe), -127, 127).astype(np.int8)
    return q, scale


def effective_weights(w: np.ndarray, precision: str) -> np.ndarray:
    """The float32 values a matrix ``w`` (K, N) is multiplied with at ``precision``."""
    w = np.asarray(w, dtype=np.float32)
    if precision == "float32":
        return w.copy()
    if precision == "bfloat16":
        return (to_bfloat16(w).astype(np.uint32) << np.uint32(16)).view(np.float32).reshape(w.shape)
    if precision == "int8":
        q, scale = quantize_int8(w)
        return q.astype(np.float32) * scale
    raise GenerateArgumentError(f"weights must be one of {', '.join(WEIGHT_PRECISIONS)}. "
                                f"Received: weights={precision!r}")


def _pad16(n: int) -> int:
    return -(-n // 16) * 16


def pack_matrix(w: np.ndarray, precision: str) -> tuple[np.ndarray, np.ndarray | None, int, int]:
    """Lay a matrix out in the order the kernel reads it.

    K (rows, inputs) is padded to Kp (even) and N (outputs) to Np (a multiple of
    16) with zeros. The matrix is cut into column blocks of 16 outputs, each
    holding its row pairs (2p, 2p + 1) one after another:

    * float32: (Np/16, Kp/2, 2, 16) float32;
    * bfloat16: (Np/16, Kp/2, 16) uint32, row 2p in the low 16 bits, 2p + 1 in the high;
    * int8: (Np/16, Kp/2, 16, 2) int8, the two rows of a column side by side
      (the operand order of ``vpmaddwd``), and scales (Np,) float32.

    Returns:
        ``(packed bytes (uint8), scales or None, Kp, Np)``.
    """
    k, n = w.shape
    kp, np_ = k + k % 2, _pad16(n)
    wp = np.zeros((kp, np_), np.float32)
    wp[:k, :n] = w
    blocks, pairs = np_ // 16, kp // 2
    scales = None
    if precision == "float32":
        packed = wp.reshape(pairs, 2, blocks, 16).transpose(2, 0, 1, 3)
    elif precision == "bfloat16":
        b = to_bfloat16(wp).astype(np.uint32)
        packed = (b[0::2] | (b[1::2] << np.uint32(16))).reshape(pairs, blocks, 16).transpose(1, 0, 2)
    elif precision == "int8":
        q, scales = quantize_int8(wp)
        packed = q.reshape(pairs, 2, blocks, 16).transpose(2, 0, 3, 1)
    else:
        raise GenerateArgumentError(f"weights must be one of {', '.join(WEIGHT_PRECISIONS)}. "
                                    f"Received: weights={precision!r}")
    return np.ascontiguousarray(packed).view(np.uint8).reshape(-1), scales, kp, np_


def _aligned_empty(nbytes: int) -> np.ndarray:
    """uint8 (nbytes,) starting on a 2 MiB boundary of an allocation of at least 4 MiB.

    NumPy asks Linux for transparent huge pages on allocations of 4 MiB and more;
    huge pages spare the TLB misses of streaming megabytes of weights per sample.
    """
    align = 2 << 20
    raw = np.empty(max(nbytes + align, 4 << 20) + align, np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start:start + nbytes]


# -- argument checks -----------------------------------------------------------

def _check_labels(config, labels, batch_size: int) -> np.ndarray | None:
    if not config.conditioned:
        if labels is not None:
            raise GenerateArgumentError("this model is not conditioned (model.num_classes=0): pass no labels. "
                               f"Received: labels with shape {np.shape(labels)}")
        return None
    if labels is None:
        raise GenerateArgumentError(f"this model is conditioned on {config.num_classes} classes: labels of "
                           f"shape ({batch_size},) are required. Received: labels=None")
    arr = np.asarray(labels)
    if arr.shape != (batch_size,) or not np.issubdtype(arr.dtype, np.integer):
        raise GenerateArgumentError(f"labels must be integers of shape ({batch_size},). "
                           f"Received: shape {arr.shape}, dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= config.num_classes):
        raise GenerateArgumentError(f"labels must lie in [0, {config.num_classes}). "
                           f"Received: min {arr.min()}, max {arr.max()}")
    return arr.astype(np.int64)


def _check_notes(config, notes, batch_size: int) -> np.ndarray | None:
    if not config.scored:
        if notes is not None:
            raise GenerateArgumentError("this model plays no score (model.score_channels=0): pass no notes. "
                                        f"Received: notes with shape {np.shape(notes)}")
        return None
    if notes is None:
        raise GenerateArgumentError(f"this model plays a score: notes of shape ({batch_size}, E, 3) are "
                                    "required (wavenet.data.notes.pack_scores). Received: notes=None")
    arr = np.asarray(notes)
    if arr.ndim != 3 or arr.shape[0] != batch_size or arr.shape[2] != 3 or not np.issubdtype(arr.dtype, np.integer):
        raise GenerateArgumentError(f"notes must be integers of shape ({batch_size}, E, 3). "
                                    f"Received: shape {arr.shape}, dtype {arr.dtype}")
    if arr.size and arr[..., 2].max() >= SCORE_TOKENS:
        raise GenerateArgumentError(f"note tokens must be below {SCORE_TOKENS}. Received: max {arr[..., 2].max()}")
    return arr.astype(np.int64)


def _check_codes(name: str, codes, batch_size: int, q: int) -> np.ndarray:
    arr = np.asarray(codes)
    if arr.ndim != 2 or arr.shape[0] != batch_size or arr.shape[1] < 1:
        raise GenerateArgumentError(f"{name} must be int codes of shape ({batch_size}, T) with T >= 1. "
                           f"Received: shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise GenerateArgumentError(f"{name} must be integer codes. Received: dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() >= q:
        raise GenerateArgumentError(f"{name} codes must lie in [0, {q}). "
                           f"Received: min {arr.min()}, max {arr.max()}")
    return np.ascontiguousarray(arr, dtype=np.int32)


def _check_common(num_samples, temperature, sustain=0.0) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 0:
        raise GenerateArgumentError(f"num_samples must be an integer >= 0. Received: {num_samples!r}")
    if (isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating))
            or not math.isfinite(temperature) or temperature <= 0):
        raise GenerateArgumentError(f"temperature must be a positive finite number. Received: {temperature!r}")
    if isinstance(sustain, bool) or not isinstance(sustain, (int, float, np.floating)) or not 0.0 <= sustain < 1.0:
        raise GenerateArgumentError(f"sustain must be a number in [0, 1). Received: {sustain!r}")


# -- the generator's buffers: weights, parameters and state, laid out for the kernel ---

def _check_generator_args(model, batch_size, weights: str) -> None:
    from wavenet.model import WaveNet

    if not isinstance(model, WaveNet):
        raise GenerateArgumentError(f"model must be a wavenet.model.WaveNet. Received: {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise GenerateArgumentError(f"batch_size must be an integer >= 1. Received: {batch_size!r}")
    if weights not in WEIGHT_PRECISIONS:
        raise GenerateArgumentError(f"weights must be one of {', '.join(WEIGHT_PRECISIONS)}. "
                                    f"Received: weights={weights!r}")


def _check_finite(model) -> None:
    for v in model.weights:
        if not np.all(np.isfinite(v.numpy())):
            raise GenerateArgumentError(f"model weight {v.path} has NaN or infinite values "
                                        "(did training diverge?). Received: a model with non-finite weights")


def _as_float32(v) -> np.ndarray:
    """A weight (a Keras variable or an array) as a float32 NumPy array."""
    return np.asarray(v.numpy() if hasattr(v, "numpy") else v, dtype=np.float32)


def _rows(a: np.ndarray, width: int) -> np.ndarray:
    """``a`` (n, m) as float32 rows of ``width`` (>= m), zero-padded."""
    out = np.zeros((a.shape[0], width), np.float32)
    out[:, :a.shape[1]] = a
    return out


def _strides(c) -> tuple[int, int, int, int, int, int]:
    """Row strides ``(ldr, ldin, ldz, ldh, lds, ldq)`` of the residual, block input
    (k * R), filter-gate, gate, skip and logits rows.

    Every width padded to 16 floats (with zeros), which also covers each matrix's
    padded inputs (Kp) and outputs (Np).
    """
    k, r, g, s, q = (c.kernel_size, c.residual_channels, c.gate_channels, c.skip_channels,
                     c.quantization_channels)
    return _pad16(r), _pad16(k * r), _pad16(2 * g), _pad16(g), _pad16(s), _pad16(q)


def _step_matrices(model) -> list[np.ndarray | None]:
    """The matrices in the order a step reads them, so one sample's weights stream
    through the cache sequentially. The last block is skip-only (its residual output
    would feed nothing): an empty placeholder (None) in the plan."""
    k, r, g = model.config.kernel_size, model.config.residual_channels, model.config.gate_channels
    mats: list[np.ndarray | None] = []
    for bl in model.blocks:
        mats += [_as_float32(bl.filter_gate_kernel).reshape(k * r, 2 * g), _as_float32(bl.skip_kernel),
                 None if bl.skip_only else _as_float32(bl.residual_kernel)]
    mats += [_as_float32(model.head_hidden.kernel), _as_float32(model.head_logits.kernel)]
    return mats


def _pack_weights(mats: list[np.ndarray | None], weights: str
                  ) -> tuple[np.ndarray, int, list[tuple[int, ...]], list[np.ndarray | None]]:
    """Every matrix packed (:func:`pack_matrix`) into one aligned buffer, each at a 64-byte offset.

    Returns:
        ``(buffer, weight bytes read per step, fields, scales)``: per matrix its plan
        fields ``(K, N, Kp, Np, offset, scale offset)`` (zeros for a placeholder; the
        scale offset -1 until :func:`_float_params` places int8 scales) and, per
        packed matrix, its int8 column scales (None otherwise).
    """
    packed, scales, fields, offset = [], [], [], 0
    for m in mats:
        if m is None:
            fields.append((0, 0, 0, 0, 0, -1))
            continue
        data, sc, kp, np_ = pack_matrix(m, weights)
        packed.append((offset, data))
        scales.append(sc)
        fields.append((m.shape[0], m.shape[1], kp, np_, offset, -1))
        offset += -(-data.size // 64) * 64
    wbuf = _aligned_empty(max(offset, 64))
    for off, data in packed:
        wbuf[off:off + data.size] = data
    weight_bytes = int(sum(d.size for _, d in packed) + sum(sc.size * 4 for sc in scales if sc is not None))
    return wbuf, weight_bytes, fields, scales


def _float_params(model, mats: list[np.ndarray | None], scales: list[np.ndarray | None],
                  fields: list[tuple[int, ...]], weights: str) -> tuple[np.ndarray, dict[str, int]]:
    """The read-only float parameters and each one's offset.

    The per-stream gate biases (bias + label embedding, at offset ``"bfg"``) are
    appended per call, as they depend on the labels. With int8 weights the
    per-column scales follow the base parameters; their offsets are written into
    ``fields`` (in place).
    """
    blocks, r = model.blocks, model.config.residual_channels
    ldr, _, _, _, lds, ldq = _strides(model.config)
    base = [("emb", _rows(_as_float32(model.embedding.embeddings), ldr)),
            # the skip-only last block has no residual bias: a zero row, never read
            ("bres", _rows(np.stack([_as_float32(bl.residual_bias) for bl in blocks if not bl.skip_only]
                                    + [np.zeros(r, np.float32)]), ldr)),
            ("bskip", _rows(np.sum([_as_float32(bl.skip_bias) for bl in blocks], axis=0,
                                   dtype=np.float32)[None], lds)),
            ("bh", _rows(_as_float32(model.head_hidden.bias)[None], lds)),
            ("bo", _rows(_as_float32(model.head_logits.bias)[None], ldq))]
    poff, pos = {}, 0
    for name, a in base:
        poff[name] = pos
        pos += a.size
    flat = [a.ravel() for _, a in base]
    if weights == "int8":  # per-column scales follow the base parameters
        packed_index = [i for i, m in enumerate(mats) if m is not None]
        for i, sc in zip(packed_index, scales):
            fields[i] = (*fields[i][:5], pos)
            flat.append(sc)
            pos += sc.size
    poff["bfg"] = pos
    return np.concatenate(flat).astype(np.float32), poff


def _queue_offsets(c) -> tuple[np.ndarray, np.ndarray, int]:
    """Each layer's dilation, the offset of its queue of past inputs, and all queues' length."""
    dil = np.asarray(c.dilations, dtype=np.int64)
    lens = (c.kernel_size - 1) * dil
    qoff = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    return dil, qoff, int(lens.sum())


def _state_layout(c, nb: int, qtotal: int) -> tuple[list[tuple[str, int]], dict[str, int], int]:
    """The per-stream state buffers: ``(sizes, offsets, total floats)``, each 16-aligned."""
    ldr, ldin, ldz, ldh, lds, ldq = _strides(c)
    sizes = [("queue", qtotal * nb * ldr), ("x", nb * ldr), ("xin", nb * ldin), ("z", nb * ldz),
             ("h", nb * ldh), ("skip", nb * lds), ("hid", nb * lds), ("logits", nb * ldq),
             ("xs", nb)]
    soff, pos = {}, 0
    for name, n in sizes:
        soff[name] = pos
        pos += -(-n // 16) * 16
    return sizes, soff, pos


# -- public API ----------------------------------------------------------------

class FastGenerator:
    """Cached O(layers)-per-sample generator for a trained WaveNet, ``batch_size`` streams at once.

    Args:
        model: a built :class:`wavenet.model.WaveNet`; its weights are copied, so
            later training of ``model`` does not change this generator.
        batch_size: number of streams generated together.
        weights: precision of the matrix weights: ``"float32"`` (default),
            ``"bfloat16"`` or ``"int8"`` (see the module docstring).

    Attributes:
        weight_bytes: bytes of matrix weights (and int8 scales) read per step,
            for the whole batch at once.

    Example:
        >>> gen = FastGenerator(model, batch_size=4, weights="int8")
        >>> codes = gen.generate(16000, labels=np.array([0, 1, 2, 3]), seed=0)  # (4, 16000) uint8
    """

    def __init__(self, model, batch_size: int, weights: str = "float32"):
        _check_generator_args(model, batch_size, weights)
        kernel = _kernel()
        if not model.built:
            model.build()
        c = model.config
        self.config = c
        self.batch_size = int(batch_size)
        self.weights = weights
        self._run = kernel.run
        _check_finite(model)
        nb = self.batch_size
        ldr, ldin, ldz, ldh, lds, ldq = _strides(c)
        mats = _step_matrices(model)
        self._wbuf, self.weight_bytes, fields, scales = _pack_weights(mats, weights)
        self._params_base, poff = _float_params(model, mats, scales, fields, weights)
        self._bfg = np.stack([_as_float32(bl.filter_gate_bias) for bl in model.blocks])  # (L, 2G)
        self._cond = (np.stack([_as_float32(bl.condition_embedding) for bl in model.blocks])
                      if c.conditioned else None)  # (L, C, 2G)
        if c.scored:  # local conditioning: the score's vectors and each layer's 1x1 of them
            self._score_embedding = _as_float32(model.score_embedding)  # (512, D)
            self._score_kernels = np.stack([_as_float32(bl.score_kernel) for bl in model.blocks])  # (L, D, 2G)
            self._onset = model.onset
            self._sample_rate = model.audio_config.sample_rate
        # One step's logits when generate samples outside the kernel (sustain).
        self._step_logits = np.zeros((nb, 1, c.quantization_channels), np.float32)
        self._lag = None
        if c.lagged:  # what each code a period (+ k) back adds to each layer's gates: (2, Q, L, 2G)
            self._lag = np.einsum("kqd,ldg->kqlg", _as_float32(model.lag_embedding), self._score_kernels)
        self._ldz = ldz

        dil, qoff, qtotal = _queue_offsets(c)
        sizes, soff, self._state_size = _state_layout(c, nb, qtotal)
        self._ldxq = _pad16(max(f[2] for f in fields))
        header = [kernel.MAGIC, WEIGHT_PRECISIONS.index(weights), nb, c.residual_channels,
                  c.gate_channels, c.skip_channels, c.quantization_channels, c.kernel_size,
                  c.num_layers, ldr, ldin, ldz, ldh, lds, ldq, self._ldxq, qtotal,
                  poff["emb"], poff["bfg"], poff["bres"], poff["bskip"], poff["bh"], poff["bo"],
                  *(soff[name] for name, _ in sizes)]
        assert len(header) == kernel.HEADER
        self._plan = np.array(header + dil.tolist() + qoff.tolist()
                              + [v for f in fields for v in f], np.int64)
        self._chunk = int(np.clip(_CHUNK_FLOPS / (c.flops_per_sample * nb), _CHUNK_MIN, _CHUNK_MAX))

    # -- internals -------------------------------------------------------------
    def _fresh(self, labels: np.ndarray | None):
        """Kernel buffers for a new set of streams: zeroed state (empty queues = causal zero padding)."""
        nb = self.batch_size
        bfg = np.repeat(self._bfg[:, None, :], nb, axis=1)  # (L, B, 2G)
        if labels is not None:
            bfg = bfg + self._cond[:, labels, :]
        padded = np.zeros((bfg.shape[0], nb, self._ldz), np.float32)
        padded[:, :, :bfg.shape[2]] = bfg
        params = np.concatenate([self._params_base, padded.ravel()])
        state = np.zeros(self._state_size, np.float32)
        xq = np.zeros(nb * self._ldxq, np.int16)
        return params, state, xq

    def _feed(self, buffers, seq: np.ndarray, t0: int, logits_out: np.ndarray | None) -> None:
        params, state, xq = buffers
        self._run(self._plan, self._wbuf, params, state, xq, t0, seq, logits_out, None, 1.0, None, 0)

    def _pieces(self, params: np.ndarray, notes: np.ndarray | None, first: int, count: int,
                codes_at: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
                ) -> Iterator[tuple[int, int]]:
        """Samples ``first .. first + count - 1`` as ``[a, b)`` pieces of at most a chunk.

        With a score, a piece never spans a change of what it says (a note's start, the end
        of its onset, its end), and before each piece is yielded the streams' gate biases in
        ``params`` are set to what the score says at its first sample: local conditioning,
        constant between changes, as per-stream biases that the kernel already reads.
        For a model with ``score_lag``, each sample where a pitched note sounds is a piece
        of its own, whose biases also hold the codes a period back
        (:func:`wavenet.model.lag_vectors`): ``codes_at(samples)`` gives the (B,) codes of
        the (B,) samples, and whether each is known (not before the stream's first code);
        a caller that generates has written a piece's codes before the next piece is made.
        """
        cuts = {first, first + count}
        period = None
        if notes is not None:
            live = notes[notes[..., 2] >= 0]
            cuts.update(int(p) for p in np.concatenate([live[:, 0], np.minimum(live[:, 0] + self._onset,
                                                                               live[:, 1]), live[:, 1]])
                        if first < p < first + count)
            if self._lag is not None:
                from wavenet.model import note_periods

                period = np.asarray(note_periods(notes, np.arange(first, first + count), self._sample_rate))
                lagged = first + np.flatnonzero(period.any(axis=0))
                cuts.update(int(p) for p in np.concatenate([lagged, lagged + 1]) if first < p < first + count)
        cuts = sorted(cuts)
        if notes is not None:
            from wavenet.model import score_vectors

            g2 = self._bfg.shape[1]
            view = params[self._params_base.size:].reshape(len(self._bfg), self.batch_size, self._ldz)
            base = view[:, :, :g2].copy()
            # What the score says at every stretch's first sample, in one call: (B, stretches, D).
            y = np.asarray(score_vectors(notes, np.array(cuts[:-1]), self._score_embedding, self._onset))
        for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
            if notes is not None:
                biases = base + np.einsum("bd,ldg->lbg", y[:, i], self._score_kernels)
                if period is not None and period[:, a - first].any():  # a piece of one sample
                    p = period[:, a - first]
                    for k in range(2):
                        code, known = codes_at(a - p - k)
                        heard = (p > 0) & (p + k <= self.config.receptive_field) & known
                        biases += (self._lag[k][code, :, :] * heard[:, None, None]).transpose(1, 0, 2)
                view[:, :, :g2] = biases
            for x in range(a, b, self._chunk):
                yield x, min(x + self._chunk, b)
        if notes is not None:  # the biases without a score again, for the next pieces
            view[:, :, :g2] = base

    # -- public ----------------------------------------------------------------
    def open_streams(self, labels: np.ndarray | None = None) -> Streams:
        """``batch_size`` fresh streams fed one code at a time by the caller (:class:`Streams`).

        For samplers and measurements that need each step's distribution before the
        next code is chosen (``devtools/prediction_spread.py``); :meth:`generate` runs
        the same kernel with its own sampler, chunk by chunk.
        """
        if self.config.scored:
            raise GenerateArgumentError("open_streams does not take a score: this model plays one "
                                        "(use generate or teacher_forced_logits with notes)")
        return Streams(self, _check_labels(self.config, labels, self.batch_size))

    def teacher_forced_logits(self, codes: np.ndarray, labels: np.ndarray | None = None,
                              notes: np.ndarray | None = None) -> np.ndarray:
        """Per-step logits when fed ``codes`` one step at a time through the cached kernel.

        Args:
            codes: (B, T) int codes, B = ``batch_size``.
            labels: (B,) int labels for a conditioned model, else None.
            notes: (B, E, 3) scores in the samples of ``codes`` for a model that plays one.

        Returns:
            (B, T, Q) float32; position t holds the distribution of code t+1, as
            the full model's forward pass on ``codes``.
        """
        c = self.config
        lab = _check_labels(c, labels, self.batch_size)
        score = _check_notes(c, notes, self.batch_size)
        seq = _check_codes("codes", codes, self.batch_size, c.quantization_channels)
        out = np.zeros((self.batch_size, seq.shape[1], c.quantization_channels), np.float32)
        buffers = self._fresh(lab)
        if score is None:
            self._feed(buffers, seq, 0, out)
            return out
        for a, b in self._pieces(buffers[0], score, 1, seq.shape[1], _timeline(seq)):  # code t: sample t
            logits = np.zeros((self.batch_size, b - a, c.quantization_channels), np.float32)
            self._feed(buffers, np.ascontiguousarray(seq[:, a - 1:b - 1]), a - 1, logits)
            out[:, a - 1:b - 1] = logits
        return out

    def bits_per_sample(self, crops: np.ndarray, labels: np.ndarray | None = None,
                        notes: np.ndarray | None = None) -> np.ndarray:
        """Teacher-forced negative log-likelihood of crops, in bits per predicted sample.

        The cached counterpart of :func:`wavenet.model.bits_per_sample`: a crop of
        ``receptive_field + W`` codes is fed step by step and the last W codes are
        scored, each with a full receptive field of context.

        Args:
            crops: (B, receptive_field + W) int codes, W >= 1.
            labels: (B,) int labels for a conditioned model, else None.
            notes: (B, E, 3) the crops' scores in their samples, for a model that plays one.

        Returns:
            (B,) float64 mean bits per predicted sample.
        """
        rf = self.config.receptive_field
        crops = _check_codes("crops", crops, self.batch_size, self.config.quantization_channels)
        if crops.shape[1] <= rf:
            raise GenerateArgumentError(f"crops must hold receptive_field + W codes with W >= 1 "
                                        f"(receptive_field={rf}). Received: shape {crops.shape}")
        logits = self.teacher_forced_logits(crops[:, :-1], labels, notes)[:, rf - 1:].astype(np.float64)
        targets = crops[:, rf:]
        m = logits.max(axis=-1, keepdims=True)
        log_z = m[..., 0] + np.log(np.exp(logits - m).sum(axis=-1))
        picked = np.take_along_axis(logits, targets[..., None].astype(np.int64), axis=-1)[..., 0]
        return (log_z - picked).mean(axis=-1) / math.log(2.0)

    def generate(self, num_samples: int, *, prime: np.ndarray | None = None,
                 labels: np.ndarray | None = None, temperature: float = 1.0,
                 seed: int | Sequence[int] | None = None,
                 progress: Callable[[int], None] | None = None,
                 notes: np.ndarray | None = None, sustain: float = 0.0) -> np.ndarray:
        """Sample ``num_samples`` new codes per stream.

        Args:
            num_samples: new codes per stream.
            prime: (B, P) int codes fed through first (not returned); None starts
                every stream from one code of silence.
            labels: (B,) int labels, required for (only for) a conditioned model.
            temperature: > 0; logits are divided by it before the softmax.
            seed: seeds ``numpy.random.default_rng``; None draws fresh entropy. A sequence
                of ``batch_size`` seeds gives each stream its own generator: stream b then
                samples what it would alone (batch 1) with ``seed=seed[b]``, so requests
                batched together (:mod:`wavenet.serving`) each get their own seed's audio.
            progress: called with the number of samples done so far, every chunk.
            notes: (B, E, 3) scores, required for (only for) a model that plays one
                (:func:`wavenet.data.notes.pack_scores`), in samples from the first new
                one (0); a note may start before it, in the prime.
            sustain: lambda in [0, 1) of the delay line that sustains the score's lone pitched
                notes (:mod:`wavenet.generation.sustain`; ``generate.sustain``): where it
                applies, each code is drawn from the network's distribution mixed with a
                narrow one around the waveform a period back. 0: plain sampling.

        Returns:
            (B, num_samples) uint8 codes.
        """
        c, nb = self.config, self.batch_size
        _check_common(num_samples, temperature, sustain)
        lab = _check_labels(c, labels, nb)
        score = _check_notes(c, notes, nb)
        if prime is None:
            prime = np.full((nb, 1), silence_code(c.quantization_channels), np.int32)
        seq = _check_codes("prime", prime, nb, c.quantization_channels)
        draw = _uniforms(seed, nb)
        buffers = self._fresh(lab)
        params, state, xq = buffers
        out = np.zeros((nb, num_samples), np.int32)
        # All but the last prime code only fill the queues: no head, no sampling. Prime code i
        # is sample i - P; fed, it predicts sample i - P + 1.
        p = seq.shape[1]
        codes_at = _timeline(seq, out)  # prime code i is sample i - p, out[:, j] sample j
        for a, b in self._pieces(params, score, 1 - p, p - 1, codes_at):
            self._feed(buffers, np.ascontiguousarray(seq[:, a + p - 1:b + p - 1]), a + p - 1, None)
        cur = seq[:, -1].copy()
        t = p - 1
        inv_temp = 1.0 / float(temperature)
        held = None if score is None or sustain == 0 else _Sustain(seq, num_samples, score,
                                                                  self._sample_rate, c.quantization_channels)
        for a, b in self._pieces(params, score, 0, num_samples, codes_at):
            for x, y, lone in ([(a, b, False)] if held is None else held.runs(a, b)):
                if not lone:
                    self._run(self._plan, self._wbuf, params, state, xq, t, cur, None, draw(y - x),
                              inv_temp, out, x)
                else:  # one sample: the network's logits, mixed with the delay line's, sampled here
                    self._feed(buffers, cur[:, None], t, self._step_logits)
                    cur[:] = sample_rows(held.logits(self._step_logits[:, 0], x, sustain), inv_temp,
                                         draw(1)[0])
                    out[:, x] = cur
                t += y - x
                if held is not None:
                    held.record(out, x, y)
            if progress is not None:
                progress(b)
        return out.astype(np.uint8)


class _Sustain:
    """What :meth:`FastGenerator.generate` needs for ``sustain``: where the delay line applies and
    the amplitudes generated so far (:mod:`wavenet.generation.sustain`)."""

    def __init__(self, prime: np.ndarray, num_samples: int, notes: np.ndarray, sample_rate: int,
                 quantization_channels: int):
        from wavenet.generation import sustain

        self._s = sustain
        self._p = prime.shape[1]
        self.levels = sustain.code_levels(quantization_channels)
        self.periods = sustain.sustain_periods(notes, 0, num_samples, sample_rate)  # (B, n)
        # The period (and one sample) must lie in what the streams hold: the prime and the clip.
        behind = np.arange(num_samples)[None, :] - np.floor(self.periods) - 1
        self.periods[behind < -self._p] = 0.0
        self.history = np.zeros((prime.shape[0], self._p + num_samples))  # column p + s: sample s
        self.history[:, :self._p] = self.levels[prime]

    def runs(self, a: int, b: int) -> Iterator[tuple[int, int, bool]]:
        """``[a, b)`` as ``(x, y, lone)``: stretches where no stream's delay line applies, and
        single samples where one does."""
        active = self.periods[:, a:b].any(axis=0)
        x = a
        while x < b:
            if active[x - a]:
                yield x, x + 1, True
                x += 1
            else:
                y = x + 1
                while y < b and not active[y - a]:
                    y += 1
                yield x, y, False
                x = y

    def logits(self, network: np.ndarray, sample: int, weight: float) -> np.ndarray:
        periods = self.periods[:, sample]
        centres = self._s.centre_codes(self.history, self._p + sample, periods, self.levels)
        return self._s.sustained_logits(network, centres, np.where(periods > 0, weight, 0.0))

    def record(self, out: np.ndarray, a: int, b: int) -> None:
        self.history[:, self._p + a:self._p + b] = self.levels[out[:, a:b]]


class Streams:
    """Streams of a :class:`FastGenerator` advanced one code per call (:meth:`FastGenerator.open_streams`).

    Example:
        >>> streams = gen.open_streams(labels)
        >>> logits = streams.step(np.full(gen.batch_size, silence_code(256)))  # (B, Q)
        >>> logits = streams.step(my_sampler(logits))
    """

    def __init__(self, generator: FastGenerator, labels: np.ndarray | None):
        self._gen = generator
        self._buffers = generator._fresh(labels)
        self._logits = np.zeros((generator.batch_size, 1, generator.config.quantization_channels),
                                np.float32)
        self.position = 0  # codes fed so far

    def step(self, codes) -> np.ndarray:
        """Feed one code per stream; returns (B, Q) float32 logits of each stream's next code."""
        arr, nb = np.asarray(codes), self._gen.batch_size
        if arr.shape != (nb,):
            raise GenerateArgumentError(f"step takes one code per stream, shape ({nb},). "
                                        f"Received: shape {arr.shape}")
        seq = _check_codes("codes", arr[:, None], nb, self._gen.config.quantization_channels)
        self._gen._feed(self._buffers, seq, self.position, self._logits)
        self.position += 1
        return self._logits[:, 0].copy()


def _timeline(before: np.ndarray, after: np.ndarray | None = None
              ) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``codes_at`` for :meth:`FastGenerator._pieces`: samples ``-P .. -1`` are ``before``'s
    P codes and samples ``0 ..`` are ``after``'s; with no ``after``, ``before``'s code i is
    sample i."""
    rows = np.arange(before.shape[0])
    shift = 0 if after is None else before.shape[1]

    def codes_at(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i = samples + shift
        past = before[rows, np.clip(i, 0, before.shape[1] - 1)]
        if after is not None:
            past = np.where(samples < 0, past, after[rows, np.clip(samples, 0, after.shape[1] - 1)])
        return past, i >= 0

    return codes_at


def _uniforms(seed: int | Sequence[int] | None, nb: int) -> Callable[[int], np.ndarray]:
    """``draw(n)``: the next (n, nb) uniforms, one column per stream, in step order.

    One seed: one generator for the batch, drawn row by row. One seed per stream: column b
    comes from its own generator, the same numbers a batch of one draws with that seed
    (``random((n, 1))`` consumes the generator in order, whatever the chunking).
    """
    if seed is None or isinstance(seed, (int, np.integer)):
        rng = np.random.default_rng(seed)
        return lambda n: rng.random((n, nb))
    seeds = list(seed)
    if len(seeds) != nb or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool)
                                   and s >= 0 for s in seeds):
        raise GenerateArgumentError(f"seed must be an integer, None, or {nb} integers >= 0 (one per "
                                    f"stream). Received: {seeds[:8]!r}")
    rngs = [np.random.default_rng(int(s)) for s in seeds]
    return lambda n: np.stack([r.random(n) for r in rngs], axis=1)


def sample_rows(logits: np.ndarray, inv_temp: float, uniforms: np.ndarray) -> np.ndarray:
    """The kernel's sampler (the one :meth:`FastGenerator.generate` uses) on (B, Q) logits
    at temperature ``1 / inv_temp`` with one uniform in [0, 1) per row: (B,) int32 codes.

    For callers of :meth:`FastGenerator.open_streams` that sample as ``generate`` does.
    """
    out = np.zeros(logits.shape[0], np.int32)
    _kernel().sample(np.ascontiguousarray(logits, dtype=np.float32), inv_temp,
                     np.ascontiguousarray(uniforms, dtype=np.float64), out)
    return out


def naive_generate(model, num_samples: int, *, batch_size: int = 1, prime: np.ndarray | None = None,
                   labels: np.ndarray | None = None, temperature: float = 1.0,
                   seed: int | None = None, notes: np.ndarray | None = None) -> np.ndarray:
    """Reference generator: the full Keras model on the last receptive field of codes, per sample.

    O(receptive field) work per sample; for tests and benchmarks only. Uses the
    same uniforms and sampler as :meth:`FastGenerator.generate`.

    Returns:
        (batch_size, num_samples) uint8 codes.
    """
    from wavenet.model import WaveNet

    if not isinstance(model, WaveNet):
        raise GenerateArgumentError(f"model must be a wavenet.model.WaveNet. Received: {type(model).__name__}")
    c = model.config
    _check_common(num_samples, temperature)
    lab = _check_labels(c, labels, batch_size)
    score = _check_notes(c, notes, batch_size)
    if prime is None:
        prime = np.full((batch_size, 1), silence_code(c.quantization_channels), np.int32)
    seq = _check_codes("prime", prime, batch_size, c.quantization_channels)
    rng = np.random.default_rng(seed)
    rf = c.receptive_field
    inv_temp = 1.0 / float(temperature)
    out = np.zeros((batch_size, num_samples), np.int32)
    for i in range(num_samples):
        window = seq[:, -rf:]
        x = {"codes": window, "labels": lab}
        if score is not None:  # the window's first code is sample i - len(window)
            x["notes"] = np.where(np.arange(3) < 2, score - (i - window.shape[1]), score)
        logits = np.asarray(model(x, training=False)[:, -1, :], dtype=np.float32)
        nxt = sample_rows(logits, inv_temp, rng.random((1, batch_size))[0])
        out[:, i] = nxt
        seq = np.concatenate([seq[:, -(rf - 1):] if rf > 1 else seq[:, :0], nxt[:, None]], axis=1)
    return out.astype(np.uint8)
