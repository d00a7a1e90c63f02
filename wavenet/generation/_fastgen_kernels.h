/* Matrix kernels and the gate of the cached WaveNet generator, compiled once per
 * instruction set: _fastgen.c includes this file with FG_ISA (a name suffix)
 * and FG_AVX2 (0: portable C that any compiler vectorises for its baseline;
 * 1: AVX2 + FMA intrinsics, under a target pragma) defined.
 *
 * Every matrix W (K x N) is packed, in the order a kernel reads it, into
 * column blocks of 16 outputs; inside a block, row pairs (2p, 2p + 1):
 *   float32:  (pairs, 2 rows, 16 columns) float
 *   bfloat16: (pairs, 16 columns) uint32, row 2p in the low half, 2p + 1 in the high half
 *   int8:     (pairs, 16 columns, 2 rows) int8, one float scale per column
 * K is padded to Kp (even) and N to Np (a multiple of 16) with zero weights, so
 * kernels need no tails. Inputs x have at least Kp columns (the pad is zero).
 *
 * bfloat16 widens exactly to float32 (a 16-bit shift), and the products and
 * sums are float32. int8 multiplies the weights with the input rounded to
 * int16 (scale max|x| / 32767 per row) in exact integer arithmetic
 * (vpmaddwd: two products summed into int32), flushed to float every
 * FG_I8_FLUSH row pairs so that no int32 sum can overflow
 * (127 * 32767 * 2 * 128 < 2^31).
 */

#define FG_CAT2(a, b) a##_##b
#define FG_CAT(a, b) FG_CAT2(a, b)
#define FN(name) FG_CAT(name, FG_ISA)

#if FG_AVX2

static inline __m256 FN(bf16_lo)(__m256i u) { return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16)); }
static inline __m256 FN(bf16_hi)(__m256i u) {
    return _mm256_castsi256_ps(_mm256_and_si256(u, _mm256_set1_epi32((int)0xFFFF0000u)));
}
static inline __m256i FN(ld8)(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
static inline __m256i FN(i8x16)(const int8_t *p) {  /* 16 int8 -> 16 int16 */
    return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)p));
}
static inline void FN(add_out)(float *out, __m256 v) { _mm256_storeu_ps(out, _mm256_add_ps(_mm256_loadu_ps(out), v)); }

/* One stream (matrix-vector): the weights stream through once, so the speed is
 * set by bytes per weight; eight independent accumulators hide FMA latency. */
static void FN(mv_f32)(const fg_mat *m, const float *x, float *out) {
    const int64_t P = m->Kp / 2;
    for (int64_t j = 0; j < m->Np / 16; j++) {
        const float *w = (const float *)m->w + j * P * 32;
        __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
        int64_t p = 0;
        for (; p + 2 <= P; p += 2, w += 64) {
            __m256 a = _mm256_broadcast_ss(x + 2 * p), b = _mm256_broadcast_ss(x + 2 * p + 1);
            __m256 c = _mm256_broadcast_ss(x + 2 * p + 2), d = _mm256_broadcast_ss(x + 2 * p + 3);
            c0 = _mm256_fmadd_ps(a, _mm256_loadu_ps(w), c0);
            c1 = _mm256_fmadd_ps(a, _mm256_loadu_ps(w + 8), c1);
            c2 = _mm256_fmadd_ps(b, _mm256_loadu_ps(w + 16), c2);
            c3 = _mm256_fmadd_ps(b, _mm256_loadu_ps(w + 24), c3);
            c4 = _mm256_fmadd_ps(c, _mm256_loadu_ps(w + 32), c4);
            c5 = _mm256_fmadd_ps(c, _mm256_loadu_ps(w + 40), c5);
            c6 = _mm256_fmadd_ps(d, _mm256_loadu_ps(w + 48), c6);
            c7 = _mm256_fmadd_ps(d, _mm256_loadu_ps(w + 56), c7);
        }
        if (p < P) {
            __m256 a = _mm256_broadcast_ss(x + 2 * p), b = _mm256_broadcast_ss(x + 2 * p + 1);
            c0 = _mm256_fmadd_ps(a, _mm256_loadu_ps(w), c0);
            c1 = _mm256_fmadd_ps(a, _mm256_loadu_ps(w + 8), c1);
            c2 = _mm256_fmadd_ps(b, _mm256_loadu_ps(w + 16), c2);
            c3 = _mm256_fmadd_ps(b, _mm256_loadu_ps(w + 24), c3);
        }
        FN(add_out)(out + 16 * j, _mm256_add_ps(_mm256_add_ps(c0, c2), _mm256_add_ps(c4, c6)));
        FN(add_out)(out + 16 * j + 8, _mm256_add_ps(_mm256_add_ps(c1, c3), _mm256_add_ps(c5, c7)));
    }
}

static void FN(mv_bf16)(const fg_mat *m, const float *x, float *out) {
    const int64_t P = m->Kp / 2;
    for (int64_t j = 0; j < m->Np / 16; j++) {
        const uint32_t *w = (const uint32_t *)m->w + j * P * 16;
        __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
        int64_t p = 0;
        for (; p + 2 <= P; p += 2, w += 32) {
            __m256i u0 = FN(ld8)(w), u1 = FN(ld8)(w + 8), u2 = FN(ld8)(w + 16), u3 = FN(ld8)(w + 24);
            __m256 a = _mm256_broadcast_ss(x + 2 * p), b = _mm256_broadcast_ss(x + 2 * p + 1);
            __m256 c = _mm256_broadcast_ss(x + 2 * p + 2), d = _mm256_broadcast_ss(x + 2 * p + 3);
            c0 = _mm256_fmadd_ps(a, FN(bf16_lo)(u0), c0);
            c1 = _mm256_fmadd_ps(a, FN(bf16_lo)(u1), c1);
            c2 = _mm256_fmadd_ps(b, FN(bf16_hi)(u0), c2);
            c3 = _mm256_fmadd_ps(b, FN(bf16_hi)(u1), c3);
            c4 = _mm256_fmadd_ps(c, FN(bf16_lo)(u2), c4);
            c5 = _mm256_fmadd_ps(c, FN(bf16_lo)(u3), c5);
            c6 = _mm256_fmadd_ps(d, FN(bf16_hi)(u2), c6);
            c7 = _mm256_fmadd_ps(d, FN(bf16_hi)(u3), c7);
        }
        if (p < P) {
            __m256i u0 = FN(ld8)(w), u1 = FN(ld8)(w + 8);
            __m256 a = _mm256_broadcast_ss(x + 2 * p), b = _mm256_broadcast_ss(x + 2 * p + 1);
            c0 = _mm256_fmadd_ps(a, FN(bf16_lo)(u0), c0);
            c1 = _mm256_fmadd_ps(a, FN(bf16_lo)(u1), c1);
            c2 = _mm256_fmadd_ps(b, FN(bf16_hi)(u0), c2);
            c3 = _mm256_fmadd_ps(b, FN(bf16_hi)(u1), c3);
        }
        FN(add_out)(out + 16 * j, _mm256_add_ps(_mm256_add_ps(c0, c2), _mm256_add_ps(c4, c6)));
        FN(add_out)(out + 16 * j + 8, _mm256_add_ps(_mm256_add_ps(c1, c3), _mm256_add_ps(c5, c7)));
    }
}

/* The float tiles' shared steps: input pair p of each of MB rows times the four weight
 * vectors of that pair (the f32 and bf16 tiles differ only in how they load them), then the
 * 16 sums of each row added to its output. */
static inline __attribute__((always_inline)) void FN(fma_pair)(
        __m256 acc[4][2], const float *x, int64_t ldx, int64_t p, __m256 w00, __m256 w01,
        __m256 w10, __m256 w11, const int MB) {
    for (int r = 0; r < MB; r++) {
        __m256 a = _mm256_broadcast_ss(x + r * ldx + 2 * p);
        __m256 b = _mm256_broadcast_ss(x + r * ldx + 2 * p + 1);
        acc[r][0] = _mm256_fmadd_ps(a, w00, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(a, w01, acc[r][1]);
        acc[r][0] = _mm256_fmadd_ps(b, w10, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(b, w11, acc[r][1]);
    }
}

static inline __attribute__((always_inline)) void FN(flush_rows)(
        __m256 acc[4][2], float *out, int64_t ldo, int64_t j, const int MB) {
    for (int r = 0; r < MB; r++) {
        FN(add_out)(out + r * ldo + 16 * j, acc[r][0]);
        FN(add_out)(out + r * ldo + 16 * j + 8, acc[r][1]);
    }
}

/* Several streams at once: a tile of MB rows x 16 columns (column block j) stays
 * in registers (2 MB accumulators), so each weight loaded (and widened) serves MB
 * rows; the caller runs every tile of rows over one block before the next, so a
 * block's weights come from memory once per step and from L1 for the other tiles. */
static inline __attribute__((always_inline)) void FN(tile_f32)(
        const fg_mat *m, int64_t j, const float *x, int64_t ldx, float *out, int64_t ldo, const int MB) {
    const int64_t P = m->Kp / 2;
    {
        const float *w = (const float *)m->w + j * P * 32;
        __m256 acc[4][2];
        for (int r = 0; r < MB; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
        for (int64_t p = 0; p < P; p++, w += 32) {
            __m256 w00 = _mm256_loadu_ps(w), w01 = _mm256_loadu_ps(w + 8);
            __m256 w10 = _mm256_loadu_ps(w + 16), w11 = _mm256_loadu_ps(w + 24);
            FN(fma_pair)(acc, x, ldx, p, w00, w01, w10, w11, MB);
        }
        FN(flush_rows)(acc, out, ldo, j, MB);
    }
}

static inline __attribute__((always_inline)) void FN(tile_bf16)(
        const fg_mat *m, int64_t j, const float *x, int64_t ldx, float *out, int64_t ldo, const int MB) {
    const int64_t P = m->Kp / 2;
    {
        const uint32_t *w = (const uint32_t *)m->w + j * P * 16;
        __m256 acc[4][2];
        for (int r = 0; r < MB; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
        for (int64_t p = 0; p < P; p++, w += 16) {
            __m256i u0 = FN(ld8)(w), u1 = FN(ld8)(w + 8);
            __m256 w00 = FN(bf16_lo)(u0), w01 = FN(bf16_lo)(u1);
            __m256 w10 = FN(bf16_hi)(u0), w11 = FN(bf16_hi)(u1);
            FN(fma_pair)(acc, x, ldx, p, w00, w01, w10, w11, MB);
        }
        FN(flush_rows)(acc, out, ldo, j, MB);
    }
}

/* int8: rows of MB int16 inputs; int32 sums flushed to float every FG_I8_FLUSH pairs. */
static inline __attribute__((always_inline)) void FN(tile_i8)(
        const fg_mat *m, int64_t j, const int16_t *xq, int64_t ldx, const float *xs, float *out, int64_t ldo,
        const int MB) {
    const int64_t P = m->Kp / 2;
    {
        const int8_t *w = (const int8_t *)m->w + j * P * 32;
        __m256 f[4][2];
        for (int r = 0; r < MB; r++) f[r][0] = f[r][1] = _mm256_setzero_ps();
        for (int64_t p0 = 0; p0 < P; p0 += FG_I8_FLUSH) {
            const int64_t p1 = p0 + FG_I8_FLUSH < P ? p0 + FG_I8_FLUSH : P;
            __m256i acc[4][2];
            for (int r = 0; r < MB; r++) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
            for (int64_t p = p0; p < p1; p++, w += 32) {
                __m256i w0 = FN(i8x16)(w), w1 = FN(i8x16)(w + 16);
                for (int r = 0; r < MB; r++) {
                    int32_t pair;
                    memcpy(&pair, xq + r * ldx + 2 * p, sizeof pair);
                    __m256i xp = _mm256_set1_epi32(pair);
                    acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(w0, xp));
                    acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(w1, xp));
                }
            }
            for (int r = 0; r < MB; r++) {
                f[r][0] = _mm256_add_ps(f[r][0], _mm256_cvtepi32_ps(acc[r][0]));
                f[r][1] = _mm256_add_ps(f[r][1], _mm256_cvtepi32_ps(acc[r][1]));
            }
        }
        const __m256 s0 = _mm256_loadu_ps(m->scale + 16 * j), s1 = _mm256_loadu_ps(m->scale + 16 * j + 8);
        for (int r = 0; r < MB; r++) {
            const __m256 sx = _mm256_set1_ps(xs[r]);
            FN(add_out)(out + r * ldo + 16 * j, _mm256_mul_ps(f[r][0], _mm256_mul_ps(s0, sx)));
            FN(add_out)(out + r * ldo + 16 * j + 8, _mm256_mul_ps(f[r][1], _mm256_mul_ps(s1, sx)));
        }
    }
}

#else /* portable C: the same layouts and the same integer arithmetic for int8 */

static inline float FN(bf16_lo)(uint32_t u) { u <<= 16; float f; memcpy(&f, &u, 4); return f; }
static inline float FN(bf16_hi)(uint32_t u) { u &= 0xFFFF0000u; float f; memcpy(&f, &u, 4); return f; }

static void FN(rows_f32)(const fg_mat *m, const float *x, int64_t ldx, float *out, int64_t ldo, int nb) {
    const int64_t P = m->Kp / 2;
    for (int64_t j = 0; j < m->Np / 16; j++) { /* a block's weights stay in cache for every row */
        for (int r = 0; r < nb; r++) {
            const float *xr = x + r * ldx;
            const float *w = (const float *)m->w + j * P * 32;
            float acc[16] = {0};
            for (int64_t p = 0; p < P; p++, w += 32) {
                const float a = xr[2 * p], b = xr[2 * p + 1];
                for (int c = 0; c < 16; c++) acc[c] += a * w[c] + b * w[16 + c];
            }
            for (int c = 0; c < 16; c++) out[r * ldo + 16 * j + c] += acc[c];
        }
    }
}

static void FN(rows_bf16)(const fg_mat *m, const float *x, int64_t ldx, float *out, int64_t ldo, int nb) {
    const int64_t P = m->Kp / 2;
    for (int64_t j = 0; j < m->Np / 16; j++) {
        for (int r = 0; r < nb; r++) {
            const float *xr = x + r * ldx;
            const uint32_t *w = (const uint32_t *)m->w + j * P * 16;
            float acc[16] = {0};
            for (int64_t p = 0; p < P; p++, w += 16) {
                const float a = xr[2 * p], b = xr[2 * p + 1];
                for (int c = 0; c < 16; c++) acc[c] += a * FN(bf16_lo)(w[c]) + b * FN(bf16_hi)(w[c]);
            }
            for (int c = 0; c < 16; c++) out[r * ldo + 16 * j + c] += acc[c];
        }
    }
}

static void FN(rows_i8)(const fg_mat *m, const int16_t *xq, int64_t ldx, const float *xs, float *out,
                        int64_t ldo, int nb) {
    const int64_t P = m->Kp / 2;
    for (int64_t j = 0; j < m->Np / 16; j++) {
        for (int r = 0; r < nb; r++) {
            const int16_t *xr = xq + r * ldx;
            const int8_t *w = (const int8_t *)m->w + j * P * 32;
            float f[16] = {0};
            for (int64_t p0 = 0; p0 < P; p0 += FG_I8_FLUSH) {
                const int64_t p1 = p0 + FG_I8_FLUSH < P ? p0 + FG_I8_FLUSH : P;
                int32_t acc[16] = {0};
                for (int64_t p = p0; p < p1; p++, w += 32) {
                    const int32_t a = xr[2 * p], b = xr[2 * p + 1];
                    for (int c = 0; c < 16; c++) acc[c] += w[2 * c] * a + w[2 * c + 1] * b;
                }
                for (int c = 0; c < 16; c++) f[c] += (float)acc[c];
            }
            for (int c = 0; c < 16; c++) out[r * ldo + 16 * j + c] += f[c] * (m->scale[16 * j + c] * xs[r]);
        }
    }
}

#endif

/* int8 inputs: each row rounded to int16 with scale max|x| / 32767 (xs; 0 for a zero row).
 * Adding and subtracting 1.5 * 2^23 rounds to nearest even without a libm call;
 * the AVX2 lanes do the same operations as the scalar code. */
static void FN(quantize_rows)(const float *x, int64_t ldx, int nb, int64_t k, int16_t *xq, int64_t ldq,
                              float *xs) {
    for (int r = 0; r < nb; r++) {
        const float *xr = x + r * ldx;
        int16_t *qr = xq + r * ldq;
        float amax = 0.0f;
        int64_t c = 0;
#if FG_AVX2
        __m256 vmax = _mm256_setzero_ps();
        const __m256 sign = _mm256_set1_ps(-0.0f);
        for (; c + 8 <= k; c += 8) vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, _mm256_loadu_ps(xr + c)));
        float lanes[8];
        _mm256_storeu_ps(lanes, vmax);
        for (int i = 0; i < 8; i++) amax = lanes[i] > amax ? lanes[i] : amax;
#endif
        for (; c < k; c++) {
            const float a = fabsf(xr[c]);
            amax = a > amax ? a : amax;
        }
        const float inv = amax > 0.0f ? 32767.0f / amax : 0.0f;
        xs[r] = amax / 32767.0f;
        c = 0;
#if FG_AVX2
        const __m256 vinv = _mm256_set1_ps(inv), lo = _mm256_set1_ps(-32767.0f), hi = _mm256_set1_ps(32767.0f);
        const __m256 magic = _mm256_set1_ps(12582912.0f);
        for (; c + 16 <= k; c += 16) {
            __m256 a = _mm256_mul_ps(_mm256_loadu_ps(xr + c), vinv);
            __m256 b = _mm256_mul_ps(_mm256_loadu_ps(xr + c + 8), vinv);
            a = _mm256_sub_ps(_mm256_add_ps(_mm256_max_ps(_mm256_min_ps(a, hi), lo), magic), magic);
            b = _mm256_sub_ps(_mm256_add_ps(_mm256_max_ps(_mm256_min_ps(b, hi), lo), magic), magic);
            /* packs interleaves 128-bit lanes; the permute restores the order */
            __m256i p = _mm256_packs_epi32(_mm256_cvttps_epi32(a), _mm256_cvttps_epi32(b));
            _mm256_storeu_si256((__m256i *)(qr + c), _mm256_permute4x64_epi64(p, 0xD8));
        }
#endif
        for (; c < k; c++) {
            float v = xr[c] * inv;
            v = v < 32767.0f ? v : 32767.0f;
            v = v > -32767.0f ? v : -32767.0f;
            v = (v + 12582912.0f) - 12582912.0f;
            qr[c] = (int16_t)v;
        }
    }
}

/* out (nb, Np; row stride ldo) += x (nb, Kp; row stride ldx) @ W. */
static void FN(matmul)(const fg_mat *m, int prec, const float *x, int64_t ldx, float *out, int64_t ldo,
                       int nb, int16_t *xq, int64_t ldq, float *xs) {
    if (prec == FG_INT8) FN(quantize_rows)(x, ldx, nb, m->Kp, xq, ldq, xs);
#if FG_AVX2
    if (nb == 1) {
        if (prec == FG_FLOAT32) FN(mv_f32)(m, x, out);
        else if (prec == FG_BFLOAT16) FN(mv_bf16)(m, x, out);
        else for (int64_t j = 0; j < m->Np / 16; j++) FN(tile_i8)(m, j, xq, ldq, xs, out, ldo, 1);
        return;
    }
#define FG_TILE(MB)                                                                                     \
    do {                                                                                                \
        if (prec == FG_FLOAT32) FN(tile_f32)(m, j, x + r * ldx, ldx, out + r * ldo, ldo, MB);            \
        else if (prec == FG_BFLOAT16) FN(tile_bf16)(m, j, x + r * ldx, ldx, out + r * ldo, ldo, MB);     \
        else FN(tile_i8)(m, j, xq + r * ldq, ldq, xs + r, out + r * ldo, ldo, MB);                        \
    } while (0)
    for (int64_t j = 0; j < m->Np / 16; j++) {
        int r = 0;
        for (; r + 4 <= nb; r += 4) FG_TILE(4);
        switch (nb - r) {
        case 3: FG_TILE(3); break;
        case 2: FG_TILE(2); break;
        case 1: FG_TILE(1); break;
        default: break;
        }
    }
#undef FG_TILE
#else
    if (prec == FG_FLOAT32) FN(rows_f32)(m, x, ldx, out, ldo, nb);
    else if (prec == FG_BFLOAT16) FN(rows_bf16)(m, x, ldx, out, ldo, nb);
    else FN(rows_i8)(m, xq, ldq, xs, out, ldo, nb);
#endif
}

/* h = tanh(filter) * sigmoid(gate) for nb rows of z = [filter (G) | gate (G)].
 * tanh(f) = 1 - 2 / (exp(2f) + 1), sigmoid(v) = 1 / (1 + exp(-v)), with the
 * exponents clamped so that exp never overflows (tanh(10) and sigmoid(40) are 1
 * in float32). The AVX2 lanes do exactly the scalar operations (no fused
 * multiply-adds), so both builds give the same bits. */
#if FG_AVX2
static inline __m256 FN(exp8)(__m256 x) {
    const __m256 y = _mm256_mul_ps(x, _mm256_set1_ps(1.4426950408889634f));
    const __m256 n = _mm256_floor_ps(y);
    const __m256 f = _mm256_sub_ps(y, n);
    __m256 p = _mm256_set1_ps(0.00021877504767700738f);
    p = _mm256_add_ps(_mm256_set1_ps(0.0012387821479581086f), _mm256_mul_ps(f, p));
    p = _mm256_add_ps(_mm256_set1_ps(0.009684580452267774f), _mm256_mul_ps(f, p));
    p = _mm256_add_ps(_mm256_set1_ps(0.055480426325806506f), _mm256_mul_ps(f, p));
    p = _mm256_add_ps(_mm256_set1_ps(0.24023050204499088f), _mm256_mul_ps(f, p));
    p = _mm256_add_ps(_mm256_set1_ps(0.6931469286930299f), _mm256_mul_ps(f, p));
    p = _mm256_add_ps(_mm256_set1_ps(1.000000002586889f), _mm256_mul_ps(f, p));
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}
#endif

static void FN(gate)(const float *z, int64_t ldz, float *h, int64_t ldh, int nb, int64_t g) {
    for (int r = 0; r < nb; r++) {
        const float *zf = z + r * ldz, *zg = zf + g;
        float *hr = h + r * ldh;
        int64_t c = 0;
#if FG_AVX2
        const __m256 one = _mm256_set1_ps(1.0f), two = _mm256_set1_ps(2.0f);
        for (; c + 8 <= g; c += 8) {
            /* max(min(.)) as in the scalar code: a NaN would clamp to the lower bound */
            const __m256 f = _mm256_max_ps(_mm256_min_ps(_mm256_loadu_ps(zf + c), _mm256_set1_ps(10.0f)),
                                           _mm256_set1_ps(-10.0f));
            const __m256 v = _mm256_max_ps(_mm256_min_ps(_mm256_loadu_ps(zg + c), _mm256_set1_ps(40.0f)),
                                           _mm256_set1_ps(-40.0f));
            const __m256 t = _mm256_sub_ps(one, _mm256_div_ps(two, _mm256_add_ps(FN(exp8)(_mm256_mul_ps(two, f)), one)));
            const __m256 sv = _mm256_add_ps(one, FN(exp8)(_mm256_sub_ps(_mm256_setzero_ps(), v)));
            _mm256_storeu_ps(hr + c, _mm256_div_ps(t, sv));
        }
#endif
        for (; c < g; c++) {
            float f = zf[c], v = zg[c];
            f = f < 10.0f ? f : 10.0f;
            f = f > -10.0f ? f : -10.0f;
            v = v < 40.0f ? v : 40.0f;
            v = v > -40.0f ? v : -40.0f;
            hr[c] = (1.0f - 2.0f / (fg_exp(2.0f * f) + 1.0f)) / (1.0f + fg_exp(-v));
        }
    }
}

#undef FN
