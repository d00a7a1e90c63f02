"""Fast cached WaveNet generation (Paine et al. 2016, "Fast Wavenet Generation Algorithm").

Sampling a WaveNet naively recomputes the whole receptive field for every new
sample. Paine et al. (arXiv:1611.09482) observe that each layer only needs, at
time t, its own input at times t - m * dilation (m = 0 .. kernel_size - 1):
keeping a queue of each layer's past inputs makes a new sample cost one time
step per layer, O(layers) instead of O(receptive field).

:class:`FastGenerator` copies a trained :class:`wavenet.model.WaveNet`'s
weights (the model's own ``.config`` sizes everything, so the two cannot
drift) into a Numba-compiled kernel: one call runs thousands of steps for a
batch of streams with no per-operation framework overhead. The queues are
ring buffers of ``(kernel_size - 1) * dilation`` past inputs per layer, zero at
the start, which is exactly the Keras model's causal zero padding.

Sampling is inverse-CDF on ``softmax(logits / temperature)`` with one uniform
number per stream and step from ``numpy.random.default_rng(seed)``, drawn in
step order, so the same seed gives the same audio, whatever the chunking.
:func:`naive_generate` (the full model on the last receptive field of codes,
every sample) uses the same uniforms and the same sampler, so for a seed both
produce the same codes up to float rounding at a CDF boundary.

When no prime is given, every stream starts from one code of silence (mu-law
of 0.0), which is fed but not returned.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numba import njit

from wavenet.errors import WavenetError

__all__ = ["FastGenerator", "GenerateArgumentError", "naive_generate", "silence_code"]


class GenerateArgumentError(WavenetError, ValueError):
    """A generation argument (labels, prime, batch, temperature) is unusable."""


# Steps per kernel call between progress callbacks: long enough that the call
# overhead vanishes, short enough for a responsive progress bar.
_CHUNK = 2048
_F32 = np.float32


def silence_code(quantization_channels: int) -> int:
    """The mu-law code of 0.0 (digital silence), the default first input."""
    mu = quantization_channels - 1
    return int(math.floor(mu / 2.0 + 0.5))


# -- compiled kernel -----------------------------------------------------------
# fastmath lets LLVM reassociate the sums into AVX-512 FMAs; the results differ
# from TensorFlow's order of summation only by float32 rounding (~1e-6).
# error_model="numpy" drops the zero-division checks that Python semantics
# would put in every division, which otherwise stop LLVM from vectorising.

# exp(x) = 2**n * 2**f with n = floor(x / ln 2) and f in [0, 1): 2**n from a table
# and 2**f from a degree-6 polynomial (our least-squares fit on Chebyshev nodes,
# relative error 1e-7, float32's own precision). Unlike a call to libm's expf,
# this is plain arithmetic and a gather, so LLVM vectorises the gate loop.
_POW2 = np.ldexp(np.float32(1.0), np.arange(-128, 128)).astype(np.float32)
_LOG2E = np.float32(1.4426950408889634)
_P0, _P1, _P2, _P3, _P4, _P5, _P6 = (np.float32(v) for v in (
    1.000000002586889, 0.6931469286930299, 0.24023050204499088, 0.055480426325806506,
    0.009684580452267774, 0.0012387821479581086, 0.00021877504767700738))


@njit(cache=True, fastmath=True, nogil=True, error_model="numpy", inline="always")
def _exp32(x):
    """exp(x) for float32 x in [-80, 80]."""
    y = x * _LOG2E
    n = np.floor(y)
    f = y - n
    p = _P0 + f * (_P1 + f * (_P2 + f * (_P3 + f * (_P4 + f * (_P5 + f * _P6)))))
    # Clamped index: even a NaN (whose int conversion is arbitrary) stays in the table.
    i = min(max(np.int32(n) + np.int32(128), np.int32(0)), np.int32(255))
    return p * _POW2[np.uint32(i)]


@njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def _matmul_acc(x, w, out):
    """out (B, N) += x (B, K) @ w (K, N), weight rows reused across the batch."""
    nb, nk = x.shape
    nn = w.shape[1]
    k4 = nk - nk % 8
    for i in range(0, k4, 8):
        w0 = w[i]
        w1 = w[i + 1]
        w2 = w[i + 2]
        w3 = w[i + 3]
        w4 = w[i + 4]
        w5 = w[i + 5]
        w6 = w[i + 6]
        w7 = w[i + 7]
        for b in range(nb):
            xb = x[b]
            a0 = xb[i]
            a1 = xb[i + 1]
            a2 = xb[i + 2]
            a3 = xb[i + 3]
            a4 = xb[i + 4]
            a5 = xb[i + 5]
            a6 = xb[i + 6]
            a7 = xb[i + 7]
            o = out[b]
            for c in range(nn):
                o[c] += ((a0 * w0[c] + a1 * w1[c]) + (a2 * w2[c] + a3 * w3[c])) + (
                    (a4 * w4[c] + a5 * w5[c]) + (a6 * w6[c] + a7 * w7[c]))
    for i in range(k4, nk):
        wi = w[i]
        for b in range(nb):
            a = x[b, i]
            o = out[b]
            for c in range(nn):
                o[c] += a * wi[c]


@njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def _step(codes, want_logits, t, params, state, logits):
    """Advance every stream by one input code (B,) and, if asked, fill logits (B, Q).

    params: (emb (Q,R), flat weights, woff (L+1, 3) offsets of each layer's
             filter-gate (kR,2G), skip (G,S) and residual (G,R) kernels in flat (the
             last layer is skip-only; last row: head_hidden (S,S) and head_logits
             (S,Q)), bfg (L,B,2G) bias plus label embedding, bres (L-1,R), bskip (S,)
             summed over layers, bh (S,), bo (Q,), dil (L,), qoff (L,))
    state:  (queue (sum_l (k-1)*d_l, B, R), x (B,R), xin (B,kR), z (B,2G), h (B,G),
             skip (B,S), hid (B,S))
    """
    emb, flat, woff, bfg, bres, bskip, bh, bo, dil, qoff = params
    queue, x, xin, z, h, skip, hid = state
    nb, nr = x.shape
    nl = dil.shape[0]
    kr = xin.shape[1]
    k = kr // nr
    ng = h.shape[1]
    ns = skip.shape[1]
    nq = logits.shape[1]
    for b in range(nb):
        x[b, :] = emb[codes[b]]
        skip[b, :] = bskip
    for layer in range(nl):
        d = dil[layer]
        n = (k - 1) * d
        base = qoff[layer]
        # Gather the taps: tap j multiplies x[t - (k - 1 - j) * d]; the oldest
        # one sits in the slot that the current input overwrites next.
        for j in range(k - 1):
            slot = (t - (k - 1 - j) * d) % n
            row = queue[base + slot]
            for b in range(nb):
                xin[b, j * nr:(j + 1) * nr] = row[b]
        slot = t % n
        row = queue[base + slot]
        for b in range(nb):
            xin[b, (k - 1) * nr:] = x[b]
            row[b, :] = x[b]
        for b in range(nb):
            z[b, :] = bfg[layer, b]
        o = woff[layer, 0]
        _matmul_acc(xin, flat[o:o + kr * 2 * ng].reshape((kr, 2 * ng)), z)
        for b in range(nb):
            zb = z[b]
            hb = h[b]
            for c in range(ng):
                # tanh(f) = 1 - 2 / (exp(2f) + 1), sigmoid(g) = 1 / (1 + exp(-g)),
                # with the exponents clamped so exp never overflows.
                f = min(max(zb[c], _F32(-10.0)), _F32(10.0))
                g = min(max(zb[ng + c], _F32(-40.0)), _F32(40.0))
                hb[c] = (_F32(1.0) - _F32(2.0) / (_exp32(_F32(2.0) * f) + _F32(1.0))) / (
                    _F32(1.0) + _exp32(-g))
        o = woff[layer, 1]
        _matmul_acc(h, flat[o:o + ng * ns].reshape((ng, ns)), skip)
        if layer < bres.shape[0]:  # a layer with a residual output (all but the skip-only last)
            for b in range(nb):
                x[b, :] += bres[layer]
            o = woff[layer, 2]
            _matmul_acc(h, flat[o:o + ng * nr].reshape((ng, nr)), x)
    if want_logits:
        for b in range(nb):
            for c in range(skip.shape[1]):
                skip[b, c] = max(skip[b, c], 0.0)
            hid[b, :] = bh
        o = woff[nl, 0]
        _matmul_acc(skip, flat[o:o + ns * ns].reshape((ns, ns)), hid)
        for b in range(nb):
            for c in range(hid.shape[1]):
                hid[b, c] = max(hid[b, c], 0.0)
            logits[b, :] = bo
        o = woff[nl, 1]
        _matmul_acc(hid, flat[o:o + ns * nq].reshape((ns, nq)), logits)


@njit(cache=True, fastmath=False, nogil=True)
def _sample_row(logits, inv_temp, u):
    """Inverse-CDF sample of softmax(logits * inv_temp) with one uniform u in [0, 1)."""
    q = logits.shape[0]
    m = logits[0]
    for c in range(1, q):
        m = max(m, logits[c])
    total = 0.0
    for c in range(q):
        total += math.exp((float(logits[c]) - float(m)) * inv_temp)
    target = u * total
    acc = 0.0
    last = 0
    for c in range(q):
        p = math.exp((float(logits[c]) - float(m)) * inv_temp)
        if p > 0.0:
            last = c
        acc += p
        if acc > target:
            return c
    return last  # rounding left target above the sum: take the last possible code


@njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def _feed(seq, t0, record, params, state, logits, out_logits):
    """Feed seq (B, T) step by step from time t0; if record, keep every step's logits."""
    # A contiguous copy of each column: _step then compiles once, for the same
    # argument types as in _sample_steps, and both paths run the same code.
    cur = np.empty(seq.shape[0], np.int32)
    for i in range(seq.shape[1]):
        cur[:] = seq[:, i]
        _step(cur, record, t0 + i, params, state, logits)
        if record:
            out_logits[:, i, :] = logits


@njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def _sample_steps(cur, t0, uniforms, inv_temp, params, state, logits, out):
    """From current inputs cur (B,) at time t0: step, sample, feed the sample back.

    uniforms (n, B) give out (B, n); cur is updated in place to the last sample.
    """
    nb = cur.shape[0]
    for i in range(uniforms.shape[0]):
        _step(cur, True, t0 + i, params, state, logits)
        for b in range(nb):
            c = _sample_row(logits[b], inv_temp, uniforms[i, b])
            out[b, i] = c
            cur[b] = c


def _aligned_empty(n: int) -> np.ndarray:
    """float32 (n,) starting on a 2 MiB boundary of an allocation of at least 4 MiB.

    NumPy asks Linux for transparent huge pages on allocations of 4 MiB and more;
    huge pages spare the TLB misses of streaming megabytes of weights per sample.
    """
    align = 2 << 20
    nbytes = max(n * 4 + align, 4 << 20)
    raw = np.empty(nbytes + align, np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start:start + n * 4].view(np.float32)


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


def _check_common(num_samples, temperature) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 0:
        raise GenerateArgumentError(f"num_samples must be an integer >= 0. Received: {num_samples!r}")
    if (isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating))
            or not math.isfinite(temperature) or temperature <= 0):
        raise GenerateArgumentError(f"temperature must be a positive finite number. Received: {temperature!r}")


# -- public API ----------------------------------------------------------------

class FastGenerator:
    """Cached O(layers)-per-sample generator for a trained WaveNet, ``batch_size`` streams at once.

    Args:
        model: a built :class:`wavenet.model.WaveNet`; its weights are copied, so
            later training of ``model`` does not change this generator.
        batch_size: number of streams generated together.

    Example:
        >>> gen = FastGenerator(model, batch_size=4)
        >>> codes = gen.generate(16000, labels=np.array([0, 1, 2, 3]), seed=0)  # (4, 16000) uint8
    """

    def __init__(self, model, batch_size: int):
        from wavenet.model import WaveNet

        if not isinstance(model, WaveNet):
            raise GenerateArgumentError(f"model must be a wavenet.model.WaveNet. Received: {type(model).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise GenerateArgumentError(f"batch_size must be an integer >= 1. Received: {batch_size!r}")
        if not model.built:
            model.build()
        c = model.config
        self.config = c
        self.batch_size = int(batch_size)
        f32 = np.float32

        def arr(v):
            return np.ascontiguousarray(np.asarray(v.numpy() if hasattr(v, "numpy") else v, dtype=f32))

        blocks = model.blocks
        k, r, g = c.kernel_size, c.residual_channels, c.gate_channels
        self._emb = arr(model.embedding.embeddings)
        for v in model.weights:
            if not np.all(np.isfinite(v.numpy())):
                raise GenerateArgumentError(f"model weight {v.path} has NaN or infinite values "
                                            "(did training diverge?). Received: a model with non-finite weights")
        # All matmul weights in one buffer, in the order a step reads them, so
        # one sample's 3.5 MB (bench preset) streams through the cache sequentially.
        rows = [[arr(bl.filter_gate_kernel).reshape(k * r, 2 * g), arr(bl.skip_kernel)]
                + ([] if bl.skip_only else [arr(bl.residual_kernel)]) for bl in blocks]
        rows.append([arr(model.head_hidden.kernel), arr(model.head_logits.kernel)])
        sizes = [m.size for row in rows for m in row]
        self._flat = _aligned_empty(int(sum(sizes)))
        self._woff = np.zeros((len(blocks) + 1, 3), np.int64)
        start = 0
        for i, row in enumerate(rows):
            for j, m in enumerate(row):
                self._flat[start:start + m.size] = m.ravel()
                self._woff[i, j] = start
                start += m.size
        self._bfg = np.stack([arr(bl.filter_gate_bias) for bl in blocks])  # (L, 2G)
        self._cond = (np.stack([arr(bl.condition_embedding) for bl in blocks])
                      if c.conditioned else None)  # (L, C, 2G)
        self._bres = np.asarray([arr(bl.residual_bias) for bl in blocks if not bl.skip_only],
                                np.float32).reshape(-1, r)  # (L-1, R)
        self._bskip = np.ascontiguousarray(np.sum([arr(bl.skip_bias) for bl in blocks], axis=0,
                                                  dtype=f32))
        self._bh = arr(model.head_hidden.bias)
        self._bo = arr(model.head_logits.bias)
        self._dil = np.asarray(c.dilations, dtype=np.int64)
        lens = (k - 1) * self._dil
        self._qoff = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        self._qtotal = int(lens.sum())

    # -- internals -------------------------------------------------------------
    def _fresh(self, labels: np.ndarray | None):
        """Kernel params and a zeroed state (empty queues = causal zero padding)."""
        c, nb = self.config, self.batch_size
        bfg = np.repeat(self._bfg[:, None, :], nb, axis=1)  # (L, B, 2G)
        if labels is not None:
            bfg = bfg + self._cond[:, labels, :]
        params = (self._emb, self._flat, self._woff, np.ascontiguousarray(bfg, dtype=np.float32),
                  self._bres, self._bskip, self._bh, self._bo, self._dil, self._qoff)
        r, g, s, k = c.residual_channels, c.gate_channels, c.skip_channels, c.kernel_size
        z32 = np.zeros
        state = (z32((self._qtotal, nb, r), np.float32), z32((nb, r), np.float32),
                 z32((nb, k * r), np.float32), z32((nb, 2 * g), np.float32),
                 z32((nb, g), np.float32), z32((nb, s), np.float32), z32((nb, s), np.float32))
        logits = np.zeros((nb, c.quantization_channels), np.float32)
        return params, state, logits

    # -- public ----------------------------------------------------------------
    def teacher_forced_logits(self, codes: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """Per-step logits when fed ``codes`` one step at a time through the cached kernel.

        Args:
            codes: (B, T) int codes, B = ``batch_size``.
            labels: (B,) int labels for a conditioned model, else None.

        Returns:
            (B, T, Q) float32; position t holds the distribution of code t+1, as
            the full model's forward pass on ``codes``.
        """
        c = self.config
        lab = _check_labels(c, labels, self.batch_size)
        seq = _check_codes("codes", codes, self.batch_size, c.quantization_channels)
        params, state, logits = self._fresh(lab)
        out = np.zeros((self.batch_size, seq.shape[1], c.quantization_channels), np.float32)
        _feed(seq, 0, True, params, state, logits, out)
        return out

    def generate(self, num_samples: int, *, prime: np.ndarray | None = None,
                 labels: np.ndarray | None = None, temperature: float = 1.0,
                 seed: int | None = None, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Sample ``num_samples`` new codes per stream.

        Args:
            num_samples: new codes per stream.
            prime: (B, P) int codes fed through first (not returned); None starts
                every stream from one code of silence.
            labels: (B,) int labels, required for (only for) a conditioned model.
            temperature: > 0; logits are divided by it before the softmax.
            seed: seeds ``numpy.random.default_rng``; None draws fresh entropy.
            progress: called with the number of samples done so far, every chunk.

        Returns:
            (B, num_samples) uint8 codes.
        """
        c, nb = self.config, self.batch_size
        _check_common(num_samples, temperature)
        lab = _check_labels(c, labels, nb)
        if prime is None:
            prime = np.full((nb, 1), silence_code(c.quantization_channels), np.int32)
        seq = _check_codes("prime", prime, nb, c.quantization_channels)
        rng = np.random.default_rng(seed)
        params, state, logits = self._fresh(lab)
        out = np.zeros((nb, num_samples), np.int32)
        empty = np.zeros((nb, 0, c.quantization_channels), np.float32)
        # All but the last prime code only fill the queues: no head, no sampling.
        _feed(seq[:, :-1], 0, False, params, state, logits, empty)
        cur = seq[:, -1].copy()
        t, done = seq.shape[1] - 1, 0
        while done < num_samples:
            n = min(_CHUNK, num_samples - done)
            uniforms = rng.random((n, nb))
            _sample_steps(cur, t, uniforms, 1.0 / float(temperature), params, state, logits,
                          out[:, done:done + n])
            t += n
            done += n
            if progress is not None:
                progress(done)
        return out.astype(np.uint8)


def naive_generate(model, num_samples: int, *, batch_size: int = 1, prime: np.ndarray | None = None,
                   labels: np.ndarray | None = None, temperature: float = 1.0,
                   seed: int | None = None) -> np.ndarray:
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
    if prime is None:
        prime = np.full((batch_size, 1), silence_code(c.quantization_channels), np.int32)
    seq = _check_codes("prime", prime, batch_size, c.quantization_channels)
    rng = np.random.default_rng(seed)
    rf = c.receptive_field
    inv_temp = 1.0 / float(temperature)
    out = np.zeros((batch_size, num_samples), np.int32)
    for i in range(num_samples):
        window = seq[:, -rf:]
        x = {"codes": window, "labels": lab} if c.conditioned else window
        logits = np.asarray(model(x, training=False)[:, -1, :], dtype=np.float32)
        u = rng.random((1, batch_size))[0]
        nxt = np.array([_sample_row(logits[b], inv_temp, u[b]) for b in range(batch_size)], np.int32)
        out[:, i] = nxt
        seq = np.concatenate([seq[:, -(rf - 1):] if rf > 1 else seq[:, :0], nxt[:, None]], axis=1)
    return out.astype(np.uint8)
