/* The step kernel of wavenet.generation.fast.FastGenerator (cached WaveNet generation,
 * Paine et al. 2016, arXiv:1611.09482), as a CPython extension.
 *
 * Python (wavenet/generation/fast.py) packs the weights and lays out every buffer; this
 * file only runs steps over them: one call advances B streams by n steps, either
 * feeding given codes (priming, teacher forcing) or sampling each next code by
 * inverse CDF from one uniform number per stream and step.
 *
 * The matrix kernels come in two builds of one source (_fastgen_kernels.h): AVX2 +
 * FMA intrinsics, compiled for that target with a pragma whatever the build
 * machine's own CPU, and portable C. Which one runs is chosen when the module is
 * imported, from the CPU it runs on (__builtin_cpu_supports), so a wheel or image
 * built anywhere runs anywhere. No NumPy headers: arrays arrive through the
 * buffer protocol.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

/* FG_PORTABLE_ONLY builds only the portable kernels (what non-x86 machines get). */
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(FG_PORTABLE_ONLY)
#define FG_HAVE_AVX2_BUILD 1
#include <immintrin.h>
#else
#define FG_HAVE_AVX2_BUILD 0
#endif

enum { FG_FLOAT32 = 0, FG_BFLOAT16 = 1, FG_INT8 = 2 };
#define FG_I8_FLUSH 128

typedef struct {
    int64_t K, N, Kp, Np;
    const void *w;
    const float *scale; /* int8 only: Np per-column scales */
} fg_mat;

/* exp(x) for float32 |x| <= 80: 2^n * 2^f with n = floor(x / ln 2), f in [0, 1);
 * 2^f from a degree-6 polynomial (least-squares fit on Chebyshev nodes, relative
 * error 1e-7, float32's own precision), 2^n built in the exponent bits. Plain
 * arithmetic, so the compiler vectorises the gate loop. */
static inline float fg_exp(float x) {
    const float y = x * 1.4426950408889634f;
    const float n = floorf(y);
    const float f = y - n;
    const float p = 1.000000002586889f + f * (0.6931469286930299f + f * (0.24023050204499088f +
                    f * (0.055480426325806506f + f * (0.009684580452267774f +
                    f * (0.0012387821479581086f + f * 0.00021877504767700738f)))));
    const int32_t bits = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &bits, sizeof s);
    return p * s;
}

/* -- the two builds of the kernels ---------------------------------------------- */
#define FG_ISA generic
#define FG_AVX2 0
#include "_fastgen_kernels.h"
#undef FG_ISA
#undef FG_AVX2

#if FG_HAVE_AVX2_BUILD
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#define FG_ISA avx2
#define FG_AVX2 1
#include "_fastgen_kernels.h"
#undef FG_ISA
#undef FG_AVX2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

typedef void (*fg_matmul_fn)(const fg_mat *, int, const float *, int64_t, float *, int64_t, int,
                             int16_t *, int64_t, float *);
typedef void (*fg_gate_fn)(const float *, int64_t, float *, int64_t, int, int64_t);

typedef struct {
    const char *name;
    fg_matmul_fn matmul;
    fg_gate_fn gate;
} fg_isa;

static const fg_isa FG_GENERIC = {"generic", matmul_generic, gate_generic};
#if FG_HAVE_AVX2_BUILD
static const fg_isa FG_AVX2_ISA = {"avx2", matmul_avx2, gate_avx2};
#endif
static const fg_isa *fg_active = &FG_GENERIC;

#if FG_HAVE_AVX2_BUILD
static int fg_cpu_has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

/* -- the plan: dimensions, strides and offsets, one int64 array built in Python -- */
enum {
    H_MAGIC, H_PREC, H_B, H_R, H_G, H_S, H_Q, H_KS, H_L,
    H_LDR, H_LDIN, H_LDZ, H_LDH, H_LDS, H_LDQ, H_LDXQ, H_QTOTAL,
    H_P_EMB, H_P_BFG, H_P_BRES, H_P_BSKIP, H_P_BH, H_P_BO,
    H_S_QUEUE, H_S_X, H_S_XIN, H_S_Z, H_S_H, H_S_SKIP, H_S_HID, H_S_LOGITS, H_S_XS,
    H_COUNT
};
#define FG_MAGIC 0x46473031 /* "FG01" */
#define FG_MAT_FIELDS 6

typedef struct {
    int prec, B;
    int64_t R, G, S, Q, KS, L;
    int64_t ldr, ldin, ldz, ldh, lds, ldq, ldxq, qtotal;
    const int64_t *dil, *qoff;
    fg_mat *mats; /* 3 per layer (filter-gate, skip, residual) + 2 (head) */
    const float *emb, *bfg, *bres, *bskip, *bh, *bo;
    float *queue, *x, *xin, *z, *h, *skip, *hid, *logits, *xs;
    int16_t *xq;
} fg_plan;

static int64_t packed_bytes(int prec, int64_t kp, int64_t np) {
    return kp * np * (prec == FG_FLOAT32 ? 4 : prec == FG_BFLOAT16 ? 2 : 1);
}

#define CHECK(cond, ...) do { if (!(cond)) { PyErr_Format(PyExc_ValueError, __VA_ARGS__); return -1; } } while (0)

/* Checks every extent against its buffer, so a wrong plan is an error, never a crash. */
static int plan_parse(fg_plan *P, fg_mat *mats, const Py_buffer *plan, const Py_buffer *weights,
                      const Py_buffer *params, const Py_buffer *state, const Py_buffer *xq) {
    CHECK(plan->itemsize == 8 && plan->len / 8 >= H_COUNT, "plan: int64 array too short");
    const int64_t *h = (const int64_t *)plan->buf;
    const int64_t nplan = plan->len / 8;
    CHECK(h[H_MAGIC] == FG_MAGIC, "plan: wrong magic (built by another version?)");
    CHECK(h[H_PREC] >= 0 && h[H_PREC] <= 2, "plan: precision %lld", (long long)h[H_PREC]);
    P->prec = (int)h[H_PREC];
    CHECK(h[H_B] >= 1 && h[H_B] <= (1 << 24), "plan: batch %lld", (long long)h[H_B]);
    P->B = (int)h[H_B];
    P->R = h[H_R]; P->G = h[H_G]; P->S = h[H_S]; P->Q = h[H_Q]; P->KS = h[H_KS]; P->L = h[H_L];
    CHECK(P->R >= 1 && P->G >= 1 && P->S >= 1 && P->Q >= 2 && P->KS >= 2 && P->L >= 1, "plan: dimensions");
    P->ldr = h[H_LDR]; P->ldin = h[H_LDIN]; P->ldz = h[H_LDZ]; P->ldh = h[H_LDH];
    P->lds = h[H_LDS]; P->ldq = h[H_LDQ]; P->ldxq = h[H_LDXQ]; P->qtotal = h[H_QTOTAL];
    CHECK(P->ldr >= P->R && P->ldin >= P->KS * P->R && P->ldz >= 2 * P->G && P->ldh >= P->G &&
          P->lds >= P->S && P->ldq >= P->Q && P->qtotal >= 1, "plan: strides");
    const int64_t L = P->L, nm = 3 * L + 2;
    CHECK(nplan == H_COUNT + 2 * L + FG_MAT_FIELDS * nm, "plan: %lld entries for %lld layers",
          (long long)nplan, (long long)L);
    P->dil = h + H_COUNT;
    P->qoff = h + H_COUNT + L;
    for (int64_t l = 0; l < L; l++) {
        CHECK(P->dil[l] >= 1 && P->qoff[l] >= 0 && P->qoff[l] + (P->KS - 1) * P->dil[l] <= P->qtotal,
              "plan: queue of layer %lld", (long long)l);
    }
    const int64_t np = params->len / 4, ns = state->len / 4, nq = xq->len / 2;
    const float *pf = (const float *)params->buf;
    float *sf = (float *)state->buf;
    const int64_t B = P->B;
#define EXTENT(name, off, size, limit) \
    CHECK(h[off] >= 0 && (size) >= 0 && h[off] + (size) <= (limit), "plan: %s out of bounds", name)
    EXTENT("emb", H_P_EMB, P->Q * P->ldr, np);
    EXTENT("bfg", H_P_BFG, L * B * P->ldz, np);
    EXTENT("bres", H_P_BRES, L * P->ldr, np);
    EXTENT("bskip", H_P_BSKIP, P->lds, np);
    EXTENT("bh", H_P_BH, P->lds, np);
    EXTENT("bo", H_P_BO, P->ldq, np);
    EXTENT("queue", H_S_QUEUE, P->qtotal * B * P->ldr, ns);
    EXTENT("x", H_S_X, B * P->ldr, ns);
    EXTENT("xin", H_S_XIN, B * P->ldin, ns);
    EXTENT("z", H_S_Z, B * P->ldz, ns);
    EXTENT("h", H_S_H, B * P->ldh, ns);
    EXTENT("skip", H_S_SKIP, B * P->lds, ns);
    EXTENT("hid", H_S_HID, B * P->lds, ns);
    EXTENT("logits", H_S_LOGITS, B * P->ldq, ns);
    EXTENT("xs", H_S_XS, B, ns);
#undef EXTENT
    CHECK(B * P->ldxq <= nq, "plan: int16 scratch too small");
    P->emb = pf + h[H_P_EMB]; P->bfg = pf + h[H_P_BFG]; P->bres = pf + h[H_P_BRES];
    P->bskip = pf + h[H_P_BSKIP]; P->bh = pf + h[H_P_BH]; P->bo = pf + h[H_P_BO];
    P->queue = sf + h[H_S_QUEUE]; P->x = sf + h[H_S_X]; P->xin = sf + h[H_S_XIN]; P->z = sf + h[H_S_Z];
    P->h = sf + h[H_S_H]; P->skip = sf + h[H_S_SKIP]; P->hid = sf + h[H_S_HID];
    P->logits = sf + h[H_S_LOGITS]; P->xs = sf + h[H_S_XS];
    P->xq = (int16_t *)xq->buf;
    /* What each matrix reads (rows) and writes (columns), as input/output strides. */
    const int64_t *mf = h + H_COUNT + 2 * L;
    for (int64_t i = 0; i < nm; i++) {
        const int64_t *f = mf + FG_MAT_FIELDS * i;
        fg_mat *m = &mats[i];
        m->K = f[0]; m->N = f[1]; m->Kp = f[2]; m->Np = f[3];
        const int64_t kind = i < 3 * L ? i % 3 : 3 + (i - 3 * L);
        const int64_t in_ld[5] = {P->ldin, P->ldh, P->ldh, P->lds, P->lds};
        const int64_t out_ld[5] = {P->ldz, P->lds, P->ldr, P->lds, P->ldq};
        if (kind == 2 && i / 3 == L - 1 && m->K == 0) { m->w = NULL; m->scale = NULL; continue; }
        CHECK(m->K >= 1 && m->N >= 1 && m->Kp >= m->K && m->Kp % 2 == 0 && m->Np >= m->N && m->Np % 16 == 0,
              "plan: shape of matrix %lld", (long long)i);
        CHECK(m->Kp <= in_ld[kind] && m->Np <= out_ld[kind] && m->Kp <= P->ldxq,
              "plan: matrix %lld is wider than its buffers", (long long)i);
        const int64_t bytes = packed_bytes(P->prec, m->Kp, m->Np);
        CHECK(f[4] >= 0 && f[4] + bytes <= weights->len, "plan: weights of matrix %lld out of bounds", (long long)i);
        m->w = (const uint8_t *)weights->buf + f[4];
        if (P->prec == FG_INT8) {
            CHECK(f[5] >= 0 && f[5] + m->Np <= np, "plan: scales of matrix %lld out of bounds", (long long)i);
            m->scale = pf + f[5];
        } else {
            m->scale = NULL;
        }
    }
    P->mats = mats;
    return 0;
}

/* -- one step -------------------------------------------------------------------- */

static inline int64_t wrap(int64_t a, int64_t n) { a %= n; return a < 0 ? a + n : a; }

/* Advance every stream by one input code; if want_logits, fill P->logits (B, Q). */
static void fg_step(const fg_plan *P, const fg_isa *isa, const int32_t *codes, int64_t t, int want_logits) {
    const int B = P->B;
    const int64_t R = P->R, ks = P->KS, L = P->L;
    for (int b = 0; b < B; b++) {
        memcpy(P->x + b * P->ldr, P->emb + (int64_t)codes[b] * P->ldr, (size_t)P->ldr * sizeof(float));
        memcpy(P->skip + b * P->lds, P->bskip, (size_t)P->lds * sizeof(float));
    }
    for (int64_t l = 0; l < L; l++) {
        const int64_t d = P->dil[l], n = (ks - 1) * d;
        float *base = P->queue + P->qoff[l] * B * P->ldr;
        /* Tap j multiplies x[t - (ks - 1 - j) * d]; the oldest one sits in the slot
         * that the current input overwrites next. */
        for (int64_t j = 0; j < ks - 1; j++) {
            const float *row = base + wrap(t - (ks - 1 - j) * d, n) * B * P->ldr;
            for (int b = 0; b < B; b++)
                memcpy(P->xin + b * P->ldin + j * R, row + b * P->ldr, (size_t)R * sizeof(float));
        }
        float *row = base + wrap(t, n) * B * P->ldr;
        for (int b = 0; b < B; b++) {
            memcpy(P->xin + b * P->ldin + (ks - 1) * R, P->x + b * P->ldr, (size_t)R * sizeof(float));
            memcpy(row + b * P->ldr, P->x + b * P->ldr, (size_t)R * sizeof(float));
        }
        memcpy(P->z, P->bfg + l * B * P->ldz, (size_t)B * P->ldz * sizeof(float));
        const fg_mat *m = &P->mats[3 * l];
        isa->matmul(&m[0], P->prec, P->xin, P->ldin, P->z, P->ldz, B, P->xq, P->ldxq, P->xs);
        isa->gate(P->z, P->ldz, P->h, P->ldh, B, P->G);
        isa->matmul(&m[1], P->prec, P->h, P->ldh, P->skip, P->lds, B, P->xq, P->ldxq, P->xs);
        if (l + 1 < L) { /* the last layer's residual output feeds nothing */
            const float *br = P->bres + l * P->ldr;
            for (int b = 0; b < B; b++)
                for (int64_t c = 0; c < R; c++) P->x[b * P->ldr + c] += br[c];
            isa->matmul(&m[2], P->prec, P->h, P->ldh, P->x, P->ldr, B, P->xq, P->ldxq, P->xs);
        }
    }
    if (!want_logits) return;
    for (int b = 0; b < B; b++) {
        float *s = P->skip + b * P->lds;
        for (int64_t c = 0; c < P->S; c++) s[c] = s[c] > 0.0f ? s[c] : 0.0f;
        memcpy(P->hid + b * P->lds, P->bh, (size_t)P->lds * sizeof(float));
    }
    isa->matmul(&P->mats[3 * L], P->prec, P->skip, P->lds, P->hid, P->lds, B, P->xq, P->ldxq, P->xs);
    for (int b = 0; b < B; b++) {
        float *s = P->hid + b * P->lds;
        for (int64_t c = 0; c < P->S; c++) s[c] = s[c] > 0.0f ? s[c] : 0.0f;
        memcpy(P->logits + b * P->ldq, P->bo, (size_t)P->ldq * sizeof(float));
    }
    isa->matmul(&P->mats[3 * L + 1], P->prec, P->hid, P->lds, P->logits, P->ldq, B, P->xq, P->ldxq, P->xs);
}

/* Inverse-CDF sample of softmax(logits * inv_temp) with one uniform u in [0, 1),
 * in double precision; p scratch of q doubles. */
static int32_t fg_sample_row(const float *logits, int64_t q, double inv_temp, double u, double *p) {
    float m = logits[0];
    for (int64_t c = 1; c < q; c++) m = logits[c] > m ? logits[c] : m;
    double total = 0.0;
    for (int64_t c = 0; c < q; c++) {
        p[c] = exp(((double)logits[c] - (double)m) * inv_temp);
        total += p[c];
    }
    const double target = u * total;
    double acc = 0.0;
    int32_t last = 0;
    for (int64_t c = 0; c < q; c++) {
        if (p[c] > 0.0) last = (int32_t)c;
        acc += p[c];
        if (acc > target) return (int32_t)c;
    }
    return last; /* rounding left target above the sum: the last possible code */
}

/* -- Python interface -------------------------------------------------------------- */

static int get_buffer(PyObject *obj, Py_buffer *view, Py_ssize_t itemsize, int writable, const char *name) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0) {
        PyErr_Format(PyExc_ValueError, "%s must be a C-contiguous%s array", name, writable ? " writable" : "");
        return -1;
    }
    if (view->itemsize != itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: items of %zd bytes expected, got %zd", name, itemsize, view->itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static int check_codes(const int32_t *c, Py_ssize_t n, int64_t q) {
    for (Py_ssize_t i = 0; i < n; i++) {
        if (c[i] < 0 || c[i] >= q) {
            PyErr_Format(PyExc_ValueError, "code %d outside [0, %lld)", (int)c[i], (long long)q);
            return -1;
        }
    }
    return 0;
}

PyDoc_STRVAR(run_doc,
"run(plan, weights, params, state, xq, t0, codes, logits_out, uniforms, inv_temp, out, out_col0)\n\n"
"Advance every stream, from time t0. Feeding (uniforms None): codes (B, n) int32 are fed one step\n"
"at a time; logits_out (B, n, Q) float32 receives each step's logits, or is None (no head).\n"
"Sampling: codes (B,) int32 hold the current inputs and end as the last samples; uniforms (n, B)\n"
"float64; sample i of stream b goes to out[b, out_col0 + i] (out int32, C-contiguous).");

static PyObject *py_run(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o_plan, *o_w, *o_p, *o_s, *o_xq, *o_codes, *o_logits, *o_u, *o_out;
    long long t0, col0;
    double inv_temp;
    if (!PyArg_ParseTuple(args, "OOOOOLOOOdOL", &o_plan, &o_w, &o_p, &o_s, &o_xq, &t0, &o_codes, &o_logits,
                          &o_u, &inv_temp, &o_out, &col0))
        return NULL;
    Py_buffer plan = {0}, w = {0}, prm = {0}, st = {0}, xq = {0}, codes = {0}, lg = {0}, u = {0}, out = {0};
    PyObject *result = NULL;
    fg_mat *mats = NULL;
    double *scratch = NULL;
    if (get_buffer(o_plan, &plan, 8, 0, "plan") < 0) goto done;
    if (get_buffer(o_w, &w, 1, 0, "weights") < 0) goto done;
    if (get_buffer(o_p, &prm, 4, 0, "params") < 0) goto done;
    if (get_buffer(o_s, &st, 4, 1, "state") < 0) goto done;
    if (get_buffer(o_xq, &xq, 2, 1, "xq") < 0) goto done;
    const int sampling = o_u != Py_None; /* sampling updates codes in place */
    if (get_buffer(o_codes, &codes, 4, sampling, "codes") < 0) goto done;
    const int64_t nplan = plan.len / 8;
    const int64_t L = nplan > H_L ? ((const int64_t *)plan.buf)[H_L] : 0;
    if (L < 1 || L > (1 << 20)) { PyErr_SetString(PyExc_ValueError, "plan: layers"); goto done; }
    mats = PyMem_Calloc((size_t)(3 * L + 2), sizeof(fg_mat));
    if (!mats) { PyErr_NoMemory(); goto done; }
    fg_plan P;
    if (plan_parse(&P, mats, &plan, &w, &prm, &st, &xq) < 0) goto done;
    const int B = P.B;
    int64_t n;
    if (sampling) {
        if (get_buffer(o_u, &u, 8, 0, "uniforms") < 0 || get_buffer(o_out, &out, 4, 1, "out") < 0) goto done;
        n = (int64_t)(u.len / 8) / B;
        const int64_t width = (int64_t)(out.len / 4) / B;
        if (codes.len / 4 != B || (u.len / 8) % B || (out.len / 4) % B || col0 < 0 || col0 + n > width) {
            PyErr_SetString(PyExc_ValueError, "sampling: codes (B,), uniforms (n, B) and out (B, >= col0 + n) expected");
            goto done;
        }
        if (!(inv_temp > 0.0) || !isfinite(inv_temp)) {
            PyErr_SetString(PyExc_ValueError, "inv_temp must be positive and finite");
            goto done;
        }
        scratch = PyMem_Malloc((size_t)P.Q * sizeof(double));
        if (!scratch) { PyErr_NoMemory(); goto done; }
    } else {
        if ((codes.len / 4) % B) { PyErr_SetString(PyExc_ValueError, "feeding: codes (B, n) expected"); goto done; }
        n = (int64_t)(codes.len / 4) / B;
        if (o_logits != Py_None) {
            if (get_buffer(o_logits, &lg, 4, 1, "logits_out") < 0) goto done;
            if (lg.len / 4 != (Py_ssize_t)(B * n * P.Q)) {
                PyErr_SetString(PyExc_ValueError, "logits_out must be (B, n, Q) float32");
                goto done;
            }
        }
    }
    if (check_codes((const int32_t *)codes.buf, codes.len / 4, P.Q) < 0) goto done;
    const fg_isa *isa = fg_active;
    Py_BEGIN_ALLOW_THREADS
    int32_t *c = (int32_t *)codes.buf;
    if (sampling) {
        const double *uu = (const double *)u.buf;
        int32_t *o = (int32_t *)out.buf;
        const int64_t width = (int64_t)(out.len / 4) / B;
        for (int64_t i = 0; i < n; i++) {
            fg_step(&P, isa, c, t0 + i, 1);
            for (int b = 0; b < B; b++) {
                const int32_t s = fg_sample_row(P.logits + b * P.ldq, P.Q, inv_temp, uu[i * B + b], scratch);
                o[b * width + col0 + i] = s;
                c[b] = s;
            }
        }
    } else {
        int32_t *cur = PyMem_RawMalloc((size_t)B * sizeof(int32_t));
        float *lo = lg.buf ? (float *)lg.buf : NULL;
        if (cur) {
            for (int64_t i = 0; i < n; i++) {
                for (int b = 0; b < B; b++) cur[b] = c[b * n + i];
                fg_step(&P, isa, cur, t0 + i, lo != NULL);
                if (lo)
                    for (int b = 0; b < B; b++)
                        memcpy(lo + (b * n + i) * P.Q, P.logits + b * P.ldq, (size_t)P.Q * sizeof(float));
            }
            PyMem_RawFree(cur);
        } else {
            n = -1;
        }
    }
    Py_END_ALLOW_THREADS
    if (n < 0) { PyErr_NoMemory(); goto done; }
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(scratch);
    PyMem_Free(mats);
    Py_buffer *views[] = {&plan, &w, &prm, &st, &xq, &codes, &lg, &u, &out};
    for (size_t i = 0; i < sizeof views / sizeof *views; i++)
        if (views[i]->obj) PyBuffer_Release(views[i]);
    return result;
}

PyDoc_STRVAR(sample_doc,
"sample(logits, inv_temp, uniforms, out)\n\n"
"out[b] = inverse-CDF sample of softmax(logits[b] * inv_temp) with uniforms[b]: logits (B, Q)\n"
"float32, uniforms (B,) float64, out (B,) int32. The sampler of run(), for reference generators.");

static PyObject *py_sample(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o_l, *o_u, *o_out;
    double inv_temp;
    if (!PyArg_ParseTuple(args, "OdOO", &o_l, &inv_temp, &o_u, &o_out)) return NULL;
    Py_buffer l = {0}, u = {0}, out = {0};
    PyObject *result = NULL;
    double *scratch = NULL;
    if (get_buffer(o_l, &l, 4, 0, "logits") < 0 || get_buffer(o_u, &u, 8, 0, "uniforms") < 0 ||
        get_buffer(o_out, &out, 4, 1, "out") < 0)
        goto done;
    const Py_ssize_t B = u.len / 8;
    if (B < 1 || out.len / 4 != B || (l.len / 4) % B || !(inv_temp > 0.0) || !isfinite(inv_temp)) {
        PyErr_SetString(PyExc_ValueError, "sample: logits (B, Q), uniforms (B,), out (B,), inv_temp > 0");
        goto done;
    }
    const int64_t q = (int64_t)(l.len / 4) / B;
    scratch = PyMem_Malloc((size_t)q * sizeof(double));
    if (!scratch) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t b = 0; b < B; b++)
        ((int32_t *)out.buf)[b] = fg_sample_row((const float *)l.buf + b * q, q, inv_temp,
                                                ((const double *)u.buf)[b], scratch);
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(scratch);
    if (l.obj) PyBuffer_Release(&l);
    if (u.obj) PyBuffer_Release(&u);
    if (out.obj) PyBuffer_Release(&out);
    return result;
}

static PyObject *py_isa(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyUnicode_FromString(fg_active->name);
}

PyDoc_STRVAR(set_isa_doc,
"set_isa(name) -> previous name\n\n"
"Choose the kernels: 'avx2' (needs AVX2 and FMA on this CPU) or 'generic'. For tests.");

static PyObject *py_set_isa(PyObject *self, PyObject *arg) {
    (void)self;
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    PyObject *prev = PyUnicode_FromString(fg_active->name);
    if (!prev) return NULL;
    if (strcmp(name, "generic") == 0) {
        fg_active = &FG_GENERIC;
#if FG_HAVE_AVX2_BUILD
    } else if (strcmp(name, "avx2") == 0 && fg_cpu_has_avx2()) {
        fg_active = &FG_AVX2_ISA;
#endif
    } else {
        Py_DECREF(prev);
        PyErr_Format(PyExc_ValueError, "kernels '%s' are not available on this CPU", name);
        return NULL;
    }
    return prev;
}

static PyMethodDef methods[] = {
    {"run", py_run, METH_VARARGS, run_doc},
    {"sample", py_sample, METH_VARARGS, sample_doc},
    {"isa", py_isa, METH_NOARGS, "The kernels in use: 'avx2' or 'generic'."},
    {"set_isa", py_set_isa, METH_O, set_isa_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastgen", "Step kernel of the cached WaveNet generator (see wavenet.generation.fast).",
    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fastgen(void) {
#if FG_HAVE_AVX2_BUILD
    if (fg_cpu_has_avx2()) fg_active = &FG_AVX2_ISA;
#endif
    PyObject *m = PyModule_Create(&module);
    if (m && (PyModule_AddIntConstant(m, "MAGIC", FG_MAGIC) < 0 || PyModule_AddIntConstant(m, "HEADER", H_COUNT) < 0 ||
              PyModule_AddIntConstant(m, "MAT_FIELDS", FG_MAT_FIELDS) < 0 ||
              PyModule_AddIntConstant(m, "I8_FLUSH", FG_I8_FLUSH) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
