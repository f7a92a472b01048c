/* Selective scan on the CPU: forward and backward over one (batch, channel) row at a time, its (n,) state kept in
   registers. Compiled and loaded by lavila/utils/ckernel.py for lavila/models/ssm_cpu.py (symbols fwd_f32, bwd_f32,
   fwd_f64, bwd_f64, called through ctypes).

   The body after the #else is written once and compiled once per element type: the first pass defines T (float /
   double), SUF(name) (the symbol suffix) and EXPN (the exp on the state axis), then includes this file again
   (__FILE__: the path the builder compiles). */
#ifndef T

/* Vectorisable float helpers: a branch-free expf (Cephes polynomial, ~1 ulp; arguments clamped to [-87, 88], so
   underflow gives ~1e-38 instead of 0 and nothing overflows), log1p on [0, 1] through 2*atanh(y / (2 + y)) (no
   cancellation for tiny y), softplus = max(x, 0) + log1p(exp(-|x|)) and sigmoid. Double uses libm (tests only). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
static inline float vexpf(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float m = floorf(x * 1.44269504088896341f + 0.5f);
    const float r = x - m * 0.693359375f + m * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = ((int32_t)m + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}
static inline float vlog1p01f(float y) {  /* log(1 + y) for y in [0, 1] */
    const float s = y / (2.0f + y), s2 = s * s;
    float p = 1.0f / 15.0f;
    p = p * s2 + 1.0f / 13.0f;
    p = p * s2 + 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    return 2.0f * s * p;
}
static inline float softplus_f32(float x) { return (x > 0.0f ? x : 0.0f) + vlog1p01f(vexpf(-fabsf(x))); }
static inline float sigmoid_f32(float x) { return 1.0f / (1.0f + vexpf(-x)); }
static inline double softplus_f64(double x) { return x > 20.0 ? x : log1p(exp(x)); }
static inline double sigmoid_f64(double x) { return 1.0 / (1.0 + exp(-x)); }

#define SOFTPLUS SUF(softplus)
#define SIGMOID SUF(sigmoid)

#define T float
#define SUF(name) name##_f32
#define EXPN vexpf
#include __FILE__

#define T double
#define SUF(name) name##_f64
#define EXPN exp
#include __FILE__

#else  /* one element type: T, SUF and EXPN defined above */
/* Per-row prologue: dt[t] (softplus'd), du[t] = dt*u, and silu(z) / sigmoid(z) when z is given. */
static inline void SUF(row_prep)(const T* restrict u, const T* restrict delta, const T* restrict z, T bias,
                                int softplus, int64_t l, T* restrict dt, T* restrict du, T* restrict sz) {
    if (softplus) { for (int64_t t = 0; t < l; ++t) dt[t] = SOFTPLUS(delta[t] + bias); }
    else { for (int64_t t = 0; t < l; ++t) dt[t] = delta[t] + bias; }
    for (int64_t t = 0; t < l; ++t) du[t] = dt[t] * u[t];
    if (z) { for (int64_t t = 0; t < l; ++t) sz[t] = SIGMOID(z[t]); }
}

/* u, delta, z, out: (b, d, l); Bt, Ct: (b, l, n); A: (d, n); D, bias: (d,) or NULL. Rows d0..d1-1. */
int SUF(fwd)(const T* restrict u, const T* restrict delta, const T* restrict A, const T* restrict Bt,
            const T* restrict Ct, const T* restrict D, const T* restrict z, const T* restrict bias,
            int softplus, T* restrict out, int64_t b, int64_t d, int64_t n, int64_t l, int64_t d0, int64_t d1) {
    T* buf = (T*)malloc(sizeof(T) * (2 * n + 3 * l));
    if (!buf) return 1;
    T* restrict h = buf;
    T* restrict a = h + n;
    T* restrict dt = a + n;
    T* restrict du = dt + l;
    T* restrict sz = du + l;
    for (int64_t bi = 0; bi < b; ++bi) {
        for (int64_t di = d0; di < d1; ++di) {
            const int64_t row = (bi * d + di) * l;
            const T* restrict Ad = A + di * n;
            const T dd = D ? D[di] : (T)0;
            SUF(row_prep)(u + row, delta + row, z ? z + row : NULL, bias ? bias[di] : (T)0, softplus, l, dt, du, sz);
            for (int64_t k = 0; k < n; ++k) h[k] = 0;
            for (int64_t t = 0; t < l; ++t) {
                const T* restrict Bk = Bt + (bi * l + t) * n;
                const T* restrict Ck = Ct + (bi * l + t) * n;
                const T dtt = dt[t], dut = du[t];
                for (int64_t k = 0; k < n; ++k) a[k] = EXPN(dtt * Ad[k]);
                T y = 0;
                for (int64_t k = 0; k < n; ++k) {
                    h[k] = a[k] * h[k] + dut * Bk[k];
                    y += h[k] * Ck[k];
                }
                y += dd * u[row + t];
                if (z) y *= z[row + t] * sz[t];
                out[row + t] = y;
            }
        }
    }
    free(buf);
    return 0;
}

/* Gradients for rows d0..d1-1. gu, gdelta, gz: (b, d, l) written; gA: (d, n), gD, gbias: (d,) accumulated into
   for the rows; gB, gC: (b, l, n) per-thread partial sums accumulated into. The caller zeroes the accumulators. */
int SUF(bwd)(const T* restrict u, const T* restrict delta, const T* restrict A, const T* restrict Bt,
            const T* restrict Ct, const T* restrict D, const T* restrict z, const T* restrict bias,
            int softplus, const T* restrict gout, T* restrict gu, T* restrict gdelta, T* restrict gA,
            T* restrict gB, T* restrict gC, T* restrict gD, T* restrict gz, T* restrict gbias,
            int64_t b, int64_t d, int64_t n, int64_t l, int64_t d0, int64_t d1) {
    /* row scratch: states h_t and decays dA_t, (l, n) each; dt, du, sigmoid(z), y, softplus', (l,) each */
    T* buf = (T*)malloc(sizeof(T) * (2 * l * n + 5 * l + 2 * n));
    if (!buf) return 1;
    T* restrict hs = buf;
    T* restrict as = hs + l * n;
    T* restrict dt = as + l * n;
    T* restrict du = dt + l;
    T* restrict sz = du + l;
    T* restrict ys = sz + l;
    T* restrict sp = ys + l;
    T* restrict g = sp + l;
    T* restrict gAr = g + n;
    /* batch-major like the forward, so the (l, n) slices of B, C, gB, gC stay in cache across channels */
    for (int64_t bi = 0; bi < b; ++bi) {
        for (int64_t di = d0; di < d1; ++di) {
            for (int64_t k = 0; k < n; ++k) gAr[k] = 0;
            T gDr = 0, gbr = 0;
            const T* restrict Ad = A + di * n;
            const T dd = D ? D[di] : (T)0;
            const T bb = bias ? bias[di] : (T)0;
            const int64_t row = (bi * d + di) * l;
            SUF(row_prep)(u + row, delta + row, z ? z + row : NULL, bb, softplus, l, dt, du, sz);
            if (softplus) { for (int64_t t = 0; t < l; ++t) sp[t] = SIGMOID(delta[row + t] + bb); }
            /* forward recomputation, keeping h_t and dA_t */
            for (int64_t t = 0; t < l; ++t) {
                const T* restrict Bk = Bt + (bi * l + t) * n;
                const T* restrict Ck = Ct + (bi * l + t) * n;
                T* restrict at = as + t * n;
                T* restrict ht = hs + t * n;
                const T dtt = dt[t], dut = du[t];
                for (int64_t k = 0; k < n; ++k) at[k] = EXPN(dtt * Ad[k]);
                T y = 0;
                if (t) {
                    const T* restrict hp = hs + (t - 1) * n;
                    for (int64_t k = 0; k < n; ++k) { ht[k] = at[k] * hp[k] + dut * Bk[k]; y += ht[k] * Ck[k]; }
                } else {
                    for (int64_t k = 0; k < n; ++k) { ht[k] = dut * Bk[k]; y += ht[k] * Ck[k]; }
                }
                ys[t] = y + dd * u[row + t];
            }
            /* reverse pass: g is the adjoint of h_t */
            for (int64_t k = 0; k < n; ++k) g[k] = 0;
            for (int64_t t = l - 1; t >= 0; --t) {
                T gy = gout[row + t];
                if (z) {
                    const T zt = z[row + t], s = sz[t];
                    gz[row + t] = gy * ys[t] * s * ((T)1 + zt * ((T)1 - s));
                    gy *= zt * s;
                }
                const T ut = u[row + t];
                const T dtt = dt[t], dut = du[t];
                gDr += gy * ut;
                const T* restrict Bk = Bt + (bi * l + t) * n;
                const T* restrict Ck = Ct + (bi * l + t) * n;
                T* restrict gBk = gB + (bi * l + t) * n;
                T* restrict gCk = gC + (bi * l + t) * n;
                const T* restrict at = as + t * n;
                const T* restrict ht = hs + t * n;
                T sB = 0, sA = 0;
                for (int64_t k = 0; k < n; ++k) {
                    const T gk = g[k] + Ck[k] * gy;
                    gCk[k] += gy * ht[k];
                    sB += gk * Bk[k];
                    gBk[k] += gk * dut;
                    g[k] = gk;
                }
                if (t) {
                    const T* restrict hp = hs + (t - 1) * n;
                    for (int64_t k = 0; k < n; ++k) {
                        const T w = g[k] * hp[k] * at[k];
                        sA += w * Ad[k];
                        gAr[k] += w * dtt;
                        g[k] *= at[k];
                    }
                }
                T gdt = sB * ut + sA;
                if (softplus) gdt *= sp[t];
                gdelta[row + t] = gdt;
                gbr += gdt;
                gu[row + t] = dd * gy + sB * dtt;
            }
            for (int64_t k = 0; k < n; ++k) gA[di * n + k] += gAr[k];
            if (gD) gD[di] += gDr;
            if (gbias) gbias[di] += gbr;
        }
    }
    free(buf);
    return 0;
}
#undef T
#undef SUF
#undef EXPN
#endif
