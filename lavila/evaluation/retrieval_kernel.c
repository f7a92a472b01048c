/* EK100 MIR metrics: exact AP and nDCG per query (the algorithm is described in
   lavila/evaluation/retrieval_kernel.py, which calls rows_f32 / cols_f32 / rows_f64 / cols_f64 through ctypes).
   Compiled and loaded by lavila/utils/ckernel.py with -DCOL_BLOCK, -DBUCKETS_PER_SPLITTER and -DLEVEL_TABLE (the
   Python module's constants).

   The body after the #else is written once and compiled once per similarity type: the first pass defines S (float /
   double) and SUF(name) (the symbol suffix), then includes this file again (__FILE__: the path the builder
   compiles). */
#ifndef S
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if !defined(COL_BLOCK) || !defined(BUCKETS_PER_SPLITTER) || !defined(LEVEL_TABLE)
#error "build with -DCOL_BLOCK=, -DBUCKETS_PER_SPLITTER=, -DLEVEL_TABLE= (lavila/evaluation/retrieval_kernel.py)"
#endif
#define PREFETCH_ROWS 16            /* text-to-video block reads: software prefetch distance */
#define HASH_BITS 9                 /* 512-slot open-addressing tables */
#define HASH_SLOTS (1 << HASH_BITS)
#define MAX_QUERY_LEVELS 128        /* more distinct relevancies in one query: the ideal DCG sorts them all */

static inline int bad_f32(float x) {  /* NaN or infinite */
    uint32_t b;
    memcpy(&b, &x, sizeof b);
    return (b & 0x7F800000u) == 0x7F800000u;
}
static inline int bad_f64(double x) {
    uint64_t b;
    memcpy(&b, &x, sizeof b);
    return (b & 0x7FF0000000000000ull) == 0x7FF0000000000000ull;
}
static inline int bad_relevancy(double v) { return !(v >= 0.0 && v <= DBL_MAX); }

static inline uint32_t hash_slot(double v) {  /* v != 0, so its bits are never 0 (the empty-slot marker) */
    uint64_t b;
    memcpy(&b, &v, sizeof b);
    return (uint32_t)((b * 0x9E3779B97F4A7C15ull) >> (64 - HASH_BITS));
}
static inline uint64_t bits_of(double v) {
    uint64_t b;
    memcpy(&b, &v, sizeof b);
    return b;
}

/* ---- ideal DCG: the query's non-zero relevancies in descending order ---- */

static int cmp_desc(const void* a, const void* b) {
    const double x = *(const double*)a, y = *(const double*)b;
    return (x < y) - (x > y);
}

typedef struct {  /* per-query level counts; only the used slots are cleared afterwards */
    uint64_t key[HASH_SLOTS];
    int64_t count[HASH_SLOTS];
    uint32_t used[HASH_SLOTS];
    int n_used;
} LevelCounts;

static double ideal_dcg(const double* vals, int64_t k, const double* disc, double* work, LevelCounts* lc) {
    int overflow = 0;
    for (int64_t t = 0; t < k && !overflow; ++t) {
        const uint64_t key = bits_of(vals[t]);
        uint32_t h = hash_slot(vals[t]);
        while (lc->key[h] && lc->key[h] != key) h = (h + 1) & (HASH_SLOTS - 1);
        if (!lc->key[h]) {
            if (lc->n_used == MAX_QUERY_LEVELS) { overflow = 1; break; }
            lc->key[h] = key;
            lc->count[h] = 0;
            lc->used[lc->n_used++] = h;
        }
        lc->count[h]++;
    }
    double level[MAX_QUERY_LEVELS];
    int64_t count[MAX_QUERY_LEVELS];
    const int nl = lc->n_used;
    for (int j = 0; j < nl; ++j) {
        const uint32_t h = lc->used[j];
        memcpy(&level[j], &lc->key[h], sizeof(double));
        count[j] = lc->count[h];
        lc->key[h] = 0;
    }
    lc->n_used = 0;
    double idcg = 0.0;
    if (overflow) {  /* many distinct levels: sort all the values */
        memcpy(work, vals, sizeof(double) * (size_t)k);
        qsort(work, (size_t)k, sizeof(double), cmp_desc);
        for (int64_t r = 0; r < k; ++r) idcg += work[r] * disc[r];
        return idcg;
    }
    for (int a = 1; a < nl; ++a) {  /* insertion sort, descending */
        const double lv = level[a];
        const int64_t c = count[a];
        int b = a;
        for (; b > 0 && level[b - 1] < lv; --b) { level[b] = level[b - 1]; count[b] = count[b - 1]; }
        level[b] = lv;
        count[b] = c;
    }
    int64_t r = 0;
    for (int j = 0; j < nl; ++j)
        for (int64_t c = 0; c < count[j]; ++c, ++r) idcg += level[j] * disc[r];
    return idcg;
}

/* ---- one-byte relevancy codes of a range of rows (read by the text-to-video pass) ---- */

typedef struct {
    uint64_t key[HASH_SLOTS];
    uint8_t code[HASH_SLOTS];
    double* levels;  /* LEVEL_TABLE values, levels[0] = 0 */
    int n_levels, full;
} CodeTable;

static int code_of(CodeTable* ct, double v) {  /* v != 0; -1 when the table is full */
    const uint64_t key = bits_of(v);
    uint32_t h = hash_slot(v);
    while (ct->key[h] && ct->key[h] != key) h = (h + 1) & (HASH_SLOTS - 1);
    if (ct->key[h]) return ct->code[h];
    if (ct->n_levels == LEVEL_TABLE - 1) { ct->full = 1; return -1; }
    ct->key[h] = key;
    ct->code[h] = (uint8_t)++ct->n_levels;
    ct->levels[ct->n_levels] = v;
    return ct->n_levels;
}

/* ---- per-call scratch for queries of up to n items ---- */

typedef struct {
    int32_t *bucket;       /* n: bucket of each item */
    uint32_t *cand;        /* n: items whose bucket holds a splitter */
    uint32_t *first;       /* nb + 2: splitters in the buckets before b */
    uint32_t *hist;        /* k + 1 */
    uint32_t *s_idx;       /* k + 1: splitters in rank order */
    double *s_val, *work;  /* k + 1 */
    void* s_x;             /* k + 1 */
    LevelCounts* lc;
} Scratch;

static void scratch_free(Scratch* w) {
    free(w->bucket); free(w->cand); free(w->first); free(w->hist); free(w->s_idx);
    free(w->s_val); free(w->work); free(w->s_x); free(w->lc);
}

static int scratch_alloc(Scratch* w, int64_t n, size_t item_size) {
    const size_t items = (size_t)n + 1, nb = (size_t)BUCKETS_PER_SPLITTER * (size_t)n + 2;
    w->bucket = (int32_t*)malloc(sizeof(int32_t) * items);
    w->cand = (uint32_t*)malloc(sizeof(uint32_t) * items);
    w->first = (uint32_t*)malloc(sizeof(uint32_t) * nb);
    w->hist = (uint32_t*)malloc(sizeof(uint32_t) * items);
    w->s_idx = (uint32_t*)malloc(sizeof(uint32_t) * items);
    w->s_val = (double*)malloc(sizeof(double) * items);
    w->work = (double*)malloc(sizeof(double) * items);
    w->s_x = malloc(item_size * items);
    w->lc = (LevelCounts*)calloc(1, sizeof(LevelCounts));
    return w->bucket && w->cand && w->first && w->hist && w->s_idx && w->s_val && w->work && w->s_x && w->lc;
}

#define BAD SUF(bad)

#define S float
#define SUF(name) name##_f32
#include __FILE__

#define S double
#define SUF(name) name##_f64
#include __FILE__

#else  /* one similarity type: S and SUF defined above */
/* Item i (similarity xi) comes after splitter (xs, is): higher similarity first, ties by lower item index. */
static inline int SUF(ahead)(S xs, int64_t is, S xi, int64_t i) { return (xs > xi) | ((xs == xi) & (is < i)); }

/* AP and nDCG of one query: x[0..n) its finite similarities in [lo, hi]; nz_idx / nz_val its k non-zero
   relevancies (the splitters) in item order. */
static void SUF(query)(const S* restrict x, int64_t n, S lo, S hi, const uint32_t* restrict nz_idx,
                      const double* restrict nz_val, int64_t k, const double* restrict disc, Scratch* w,
                      double* ap, double* nd) {
    if (k == 0) { *ap = NAN; *nd = NAN; return; }
    int32_t* restrict bucket = w->bucket;
    uint32_t* restrict cand = w->cand;
    uint32_t* restrict first = w->first;
    uint32_t* restrict hist = w->hist;
    uint32_t* restrict s_idx = w->s_idx;
    S* restrict s_x = (S*)w->s_x;
    double* restrict s_val = w->s_val;
    /* 1. equal-width buckets over [lo, hi], bucket 0 = highest (monotone in the similarity) */
    const int64_t nb = k < ((int64_t)1 << 26) ? BUCKETS_PER_SPLITTER * k : (int64_t)1 << 29;  /* int32 buckets */
    const double top = (double)hi, range = top - (double)lo;
    double scale = (range > 0.0 && range <= DBL_MAX) ? (double)nb / range : 0.0;
    scale = scale <= DBL_MAX ? scale : 0.0;  /* a subnormal range */
    const double last = (double)(nb - 1);
    if (scale > 0.0) {
        for (int64_t i = 0; i < n; ++i) {
            const double f = (top - (double)x[i]) * scale;
            bucket[i] = (int32_t)(f < last ? f : last);
        }
    } else {
        memset(bucket, 0, sizeof(int32_t) * (size_t)n);
    }
    /* 2. splitters into rank order: counting sort by bucket, then insertion sort within the buckets */
    memset(first, 0, sizeof(uint32_t) * (size_t)(nb + 2));
    for (int64_t t = 0; t < k; ++t) first[bucket[nz_idx[t]] + 2]++;
    for (int64_t b = 2; b <= nb + 1; ++b) first[b] += first[b - 1];
    for (int64_t t = 0; t < k; ++t) {  /* placing moves first[b + 1] to the start of bucket b + 1 */
        const uint32_t j = nz_idx[t];
        const uint32_t u = first[bucket[j] + 1]++;
        s_idx[u] = j;
        s_x[u] = x[j];
        s_val[u] = nz_val[t];
    }
    for (int64_t u = 1; u < k; ++u) {
        const S xv = s_x[u];
        const uint32_t iv = s_idx[u];
        const double vv = s_val[u];
        int64_t v = u;
        for (; v > 0 && SUF(ahead)(xv, iv, s_x[v - 1], s_idx[v - 1]); --v) {
            s_x[v] = s_x[v - 1];
            s_idx[v] = s_idx[v - 1];
            s_val[v] = s_val[v - 1];
        }
        s_x[v] = xv;
        s_idx[v] = iv;
        s_val[v] = vv;
    }
    s_x[k] = x[0];  /* sentinel: read below, never counted */
    s_idx[k] = 0;
    /* 3. every item: p = the splitters of earlier buckets, plus the one of its own bucket if that is ahead of it;
       hist[p] counts the items. Items in a bucket of two or more splitters are listed and counted again below. */
    memset(hist, 0, sizeof(uint32_t) * (size_t)(k + 1));
    int64_t n_cand = 0;
    for (int64_t i = 0; i < n; ++i) {
        const int32_t b = bucket[i];
        const uint32_t p = first[b], e = first[b + 1];
        hist[p + ((e > p) & SUF(ahead)(s_x[p], s_idx[p], x[i], i))]++;
        cand[n_cand] = (uint32_t)i;
        n_cand += e - p > 1;
    }
    for (int64_t c = 0; c < n_cand; ++c) {
        const uint32_t i = cand[c];
        const S xi = x[i];
        const uint32_t p = first[bucket[i]], e = first[bucket[i] + 1];
        uint32_t a = p, len = e - p;
        while (len > 0) {  /* binary search: the bucket's splitters are in rank order */
            const uint32_t half = len / 2;
            if (SUF(ahead)(s_x[a + half], s_idx[a + half], xi, i)) { a += half + 1; len -= half + 1; }
            else len = half;
        }
        hist[p + SUF(ahead)(s_x[p], s_idx[p], xi, i)]--;
        hist[a]++;
    }
    /* 4. splitter t comes after the items with p <= t other than itself: that count is its 0-based rank */
    double cum = 0.0, ap_sum = 0.0, dcg = 0.0;
    int64_t positives = 0, before = 0;
    for (int64_t t = 0; t < k; ++t) {
        before += hist[t];
        const int64_t r = before - 1;
        const double v = s_val[t];
        cum += v;  /* graded precision: partial relevancies count */
        if (v == 1.0) { ap_sum += cum / (double)(r + 1); ++positives; }
        if (r < k) dcg += v * disc[r];
    }
    *ap = positives ? ap_sum / (double)positives : NAN;
    *nd = dcg / ideal_dcg(nz_val, k, disc, w->work, w->lc);
}

/* Video-to-text: queries q0..q1-1 are rows of the (n, m) matrices. With `codes`, also writes the rows' one-byte
   relevancy codes, their table (`levels`, LEVEL_TABLE values) and row_level[q] = level_base (-1: row not coded,
   the table was full). Returns 0, 1 (similarity not finite), 2 (relevancy negative or not finite) or 3 (no
   memory). */
int SUF(rows)(const S* restrict sim, const double* restrict rel, int64_t n, int64_t m, int64_t q0, int64_t q1,
             const double* restrict disc, double* restrict ap, double* restrict nd, uint8_t* restrict codes,
             double* restrict levels, int32_t* restrict row_level, int32_t level_base) {
    (void)n;
    Scratch w;
    uint32_t* nz_idx = (uint32_t*)malloc(sizeof(uint32_t) * (size_t)m);
    double* nz_val = (double*)malloc(sizeof(double) * (size_t)m);
    CodeTable* ct = (CodeTable*)calloc(1, sizeof(CodeTable));
    int ret = (scratch_alloc(&w, m, sizeof(S)) && nz_idx && nz_val && ct) ? 0 : 3;
    if (!ret && codes) {
        ct->levels = levels;
        memset(levels, 0, sizeof(double) * LEVEL_TABLE);
    }
    for (int64_t q = q0; q < q1 && !ret; ++q) {
        const S* restrict s = sim + q * m;
        const double* restrict r = rel + q * m;
        int bad = 0, bad_rel = 0;
        S lo = s[0], hi = s[0];
        for (int64_t j = 0; j < m; ++j) {
            bad |= BAD(s[j]);
            lo = s[j] < lo ? s[j] : lo;
            hi = s[j] > hi ? s[j] : hi;
        }
        int64_t k = 0;
        for (int64_t j = 0; j < m; ++j) {
            const double v = r[j];
            bad_rel |= bad_relevancy(v);
            nz_idx[k] = (uint32_t)j;
            nz_val[k] = v;
            k += v != 0.0;
        }
        if (bad || bad_rel) { ret = bad ? 1 : 2; break; }
        SUF(query)(s, m, lo, hi, nz_idx, nz_val, k, disc, &w, ap + q, nd + q);
        if (codes) {
            uint8_t* restrict row = codes + q * m;
            memset(row, 0, (size_t)m);
            for (int64_t t = 0; t < k && !ct->full; ++t) {
                const int code = code_of(ct, nz_val[t]);
                row[nz_idx[t]] = (uint8_t)(code > 0 ? code : 0);
            }
            row_level[q] = ct->full ? -1 : level_base;
        }
    }
    scratch_free(&w);
    free(nz_idx); free(nz_val); free(ct);
    return ret;
}

/* Reads columns cb..cb+width-1 of rows 0..n-1 into per-column buffers: similarities xs[c * n + i], their range,
   and the non-zero relevancies (from the codes where row_level[i] >= 0, else from `rel`). Inlined with a constant
   width for full blocks, so the per-column state stays in registers. */
static inline __attribute__((always_inline)) int SUF(read_block)(
        const S* restrict sim, const double* restrict rel, int64_t n, int64_t m, int64_t cb, int width,
        const uint8_t* restrict codes, const double* restrict levels, const int32_t* restrict row_level,
        S* restrict xs, S* restrict lo, S* restrict hi, uint32_t* restrict nz_idx, double* restrict nz_val,
        int64_t* restrict k) {
    int bad = 0, bad_rel = 0;
    for (int c = 0; c < width; ++c) { lo[c] = hi[c] = sim[cb + c]; k[c] = 0; }
    for (int64_t i = 0; i < n; ++i) {
        const S* restrict s = sim + i * m + cb;
        if (i + PREFETCH_ROWS < n) {  /* rows are m elements apart: the hardware prefetchers do not follow */
            for (int o = 0; o < width; o += 64 / (int)sizeof(S)) __builtin_prefetch(s + PREFETCH_ROWS * m + o);
            if (codes) __builtin_prefetch(codes + (i + PREFETCH_ROWS) * m + cb);
        }
        for (int c = 0; c < width; ++c) {
            const S v = s[c];
            xs[c * n + i] = v;
            bad |= BAD(v);
            lo[c] = v < lo[c] ? v : lo[c];
            hi[c] = v > hi[c] ? v : hi[c];
        }
        if (codes && row_level[i] >= 0) {
            const uint8_t* restrict cr = codes + i * m + cb;
            const double* restrict lv = levels + row_level[i];
            uint64_t mask = 0;  /* COL_BLOCK <= 64 */
            for (int c = 0; c < width; ++c) mask |= (uint64_t)(cr[c] != 0) << c;
            while (mask) {  /* ~11 % of the entries on EK100 */
                const int c = __builtin_ctzll(mask);
                mask &= mask - 1;
                nz_idx[c * n + k[c]] = (uint32_t)i;
                nz_val[c * n + k[c]] = lv[cr[c]];
                k[c]++;
            }
        } else {
            const double* restrict r = rel + i * m + cb;
            for (int c = 0; c < width; ++c) {
                const double v = r[c];
                bad_rel |= bad_relevancy(v);
                nz_idx[c * n + k[c]] = (uint32_t)i;
                nz_val[c * n + k[c]] = v;
                k[c] += v != 0.0;
            }
        }
    }
    return bad ? 1 : (bad_rel ? 2 : 0);
}

/* Text-to-video: queries c0..c1-1 are columns of the (n, m) matrices, read COL_BLOCK at a time row by row. The
   relevancy comes from the codes of the rows pass where row_level[i] >= 0, else (or without codes) from `rel`. */
int SUF(cols)(const S* restrict sim, const double* restrict rel, int64_t n, int64_t m, int64_t c0, int64_t c1,
             const double* restrict disc, double* restrict ap, double* restrict nd, const uint8_t* restrict codes,
             const double* restrict levels, const int32_t* restrict row_level) {
    const size_t bn = (size_t)COL_BLOCK * (size_t)n;
    Scratch w;
    S* xs = (S*)malloc(sizeof(S) * bn);
    uint32_t* nz_idx = (uint32_t*)malloc(sizeof(uint32_t) * bn);
    double* nz_val = (double*)malloc(sizeof(double) * bn);
    int ret = (scratch_alloc(&w, n, sizeof(S)) && xs && nz_idx && nz_val) ? 0 : 3;
    for (int64_t cb = c0; cb < c1 && !ret; cb += COL_BLOCK) {
        const int width = (int)(c1 - cb < COL_BLOCK ? c1 - cb : COL_BLOCK);
        int64_t k[COL_BLOCK];
        S lo[COL_BLOCK], hi[COL_BLOCK];
        if (width == COL_BLOCK)
            ret = SUF(read_block)(sim, rel, n, m, cb, COL_BLOCK, codes, levels, row_level, xs, lo, hi, nz_idx, nz_val,
                                 k);
        else
            ret = SUF(read_block)(sim, rel, n, m, cb, width, codes, levels, row_level, xs, lo, hi, nz_idx, nz_val, k);
        for (int c = 0; c < width && !ret; ++c)
            SUF(query)(xs + c * n, n, lo[c], hi[c], nz_idx + c * n, nz_val + c * n, k[c], disc, &w, ap + cb + c,
                      nd + cb + c);
    }
    scratch_free(&w);
    free(xs); free(nz_idx); free(nz_val);
    return ret;
}
#undef S
#undef SUF
#endif
