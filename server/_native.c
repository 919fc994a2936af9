/* The compiled parts of the Rank hot path: the slate draw and the encoding of the ranked items.
 *
 * draw_slate: Thompson draws, best-first order, diversity and exploration in one call per request, on
 * arrays prepared when a bundle is loaded (aura.server.serving), so the request path does no numpy
 * dispatch per step. Everything random comes from one xoshiro256** stream seeded by the decision's
 * logged seed, so a decision replays exactly from (seed, posterior state).
 * ranked_items and rank_response: the RankResponse in protobuf wire format, from the bytes prepared per
 * bundle by aura.server.wire (field numbers of proto/aura/v1/decision_service.proto and common.proto).
 * serve_slate: Rank from a memoized plan to the response bytes: the exploration budget, the seed, the draw, the
 * impressions (as add_at), the request id (as encode_request_id), the log record (as DecisionColumns.append) and
 * the items and response (as ranked_items and rank_response), on the same internals with the slate kept in C
 * arrays, so the interpreter runs none of the steps between them.
 * parse_rank_request and encode_request_id are in _request.c, resolve_segment and planned_slate in _resolve.c,
 * the ExplorationLedger and exploration_budget in _exploration.c, the DecisionColumns type in _decision_log.c.
 * Scratch memory is module-level and reused: callers hold the GIL for the whole call.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "_native.h"

typedef struct {
    uint64_t s[4];
} Rng;

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void rng_seed(Rng *rng, uint64_t seed) {
    for (int i = 0; i < 4; i++) rng->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static inline uint64_t next_u64(Rng *rng) {
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in [0, 1). */
static inline double next_double(Rng *rng) { return (double)(next_u64(rng) >> 11) * 0x1.0p-53; }

/* Uniform integer in [0, n), n > 0, without modulo bias (Lemire 2019). */
static uint64_t next_below(Rng *rng, uint64_t n) {
    __uint128_t product = (__uint128_t)next_u64(rng) * n;
    uint64_t low = (uint64_t)product;
    if (low < n) {
        uint64_t threshold = -n % n;
        while (low < threshold) {
            product = (__uint128_t)next_u64(rng) * n;
            low = (uint64_t)product;
        }
    }
    return (uint64_t)(product >> 64);
}

/* Standard normal by the ziggurat method (Marsaglia & Tsang 2000) with 256 layers and 53-bit abscissae:
 * one 64-bit draw and a table lookup for about 99% of values; the wedges and the tail take the rest. */
#define ZIGGURAT_LAYERS 256
#define ZIGGURAT_R 3.6541528853610088 /* where the tail starts */
#define ZIGGURAT_V 0.00492867323399   /* the area of each layer */
static uint64_t zig_k[ZIGGURAT_LAYERS];
static double zig_w[ZIGGURAT_LAYERS], zig_f[ZIGGURAT_LAYERS];

static void ziggurat_tables(void) {
    const double m = 0x1.0p53;
    double d = ZIGGURAT_R, t = d, q = ZIGGURAT_V / exp(-0.5 * d * d);
    zig_k[0] = (uint64_t)((d / q) * m);
    zig_k[1] = 0;
    zig_w[0] = q / m;
    zig_w[ZIGGURAT_LAYERS - 1] = d / m;
    zig_f[0] = 1.0;
    zig_f[ZIGGURAT_LAYERS - 1] = exp(-0.5 * d * d);
    for (int i = ZIGGURAT_LAYERS - 2; i >= 1; i--) {
        d = sqrt(-2.0 * log(ZIGGURAT_V / d + exp(-0.5 * d * d)));
        zig_k[i + 1] = (uint64_t)((d / t) * m);
        t = d;
        zig_f[i] = exp(-0.5 * d * d);
        zig_w[i] = d / m;
    }
}

static double next_normal(Rng *rng) {
    for (;;) {
        uint64_t bits = next_u64(rng);
        int layer = (int)(bits & 0xFF), negative = (int)(bits >> 8 & 1);
        uint64_t j = bits >> 11;
        double x = (double)j * zig_w[layer];
        if (j < zig_k[layer]) return negative ? -x : x;
        if (layer == 0) { /* the tail beyond R (Marsaglia 1964) */
            double y;
            do {
                x = -log(1.0 - next_double(rng)) / ZIGGURAT_R;
                y = -log(1.0 - next_double(rng));
            } while (y + y < x * x);
            return negative ? -(ZIGGURAT_R + x) : ZIGGURAT_R + x;
        }
        if (zig_f[layer] + next_double(rng) * (zig_f[layer - 1] - zig_f[layer]) < exp(-0.5 * x * x))
            return negative ? -x : x;
    }
}

/* Gamma(shape, 1) by Marsaglia & Tsang (2000) for shape >= 1, from d = shape - 1/3 and c = 1 / sqrt(9 d).
 *
 * Their squeeze, u < 1 - 0.0331 x^4, leaves about 8% of the draws to the exact test's two logarithms at any shape.
 * A second squeeze, tight for the large shapes of well-observed posteriors, takes nearly all of those: with
 * t = c x and m = min(1, 1 + t), Taylor's remainder gives log(1 + t) >= t - t^2/2 + t^3/3 - t^4 / (4 m^4), and
 * d c^2 = 1/9, so the exact test's right side, x^2/2 + d (1 - v + 3 log(1 + t)), is at least -3/4 d t^4 / m^4;
 * u < 1 + that bound implies log u < it (log u <= u - 1). The margin covers the rounding of the exact test, so
 * every draw accepts or rejects as the exact test alone would. */
static inline double gamma_from(Rng *rng, double d, double c) {
    for (;;) {
        double x, v;
        do {
            x = next_normal(rng);
            v = 1.0 + c * x;
        } while (v <= 0.0);
        v = v * v * v;
        double u = next_double(rng), xx = x * x;
        if (u < 1.0 - 0.0331 * xx * xx) return d * v;
        double t = c * x, m = t < 0.0 ? 1.0 + t : 1.0, scaled = t * t / (m * m);
        double bound = -0.75 * d * scaled * scaled - 1e-12 * (xx + d * (2.0 + v + 3.0 * fabs(t) / m));
        if (u < 1.0 + bound || log(u) < 0.5 * xx + d * (1.0 - v + log(v))) return d * v;
    }
}

/* Gamma(shape, 1); shapes below 1 through Gamma(shape + 1) * U^(1/shape). */
static double next_gamma(Rng *rng, double shape) {
    if (!(shape > 0.0)) return 0.0;
    double boost = 1.0;
    if (shape < 1.0) {
        boost = pow(1.0 - next_double(rng), 1.0 / shape);
        shape += 1.0;
    }
    double d = shape - 1.0 / 3.0;
    return boost * gamma_from(rng, d, 1.0 / sqrt(9.0 * d));
}

/* Beta(a, b) as Gamma(a) / (Gamma(a) + Gamma(b)); when both shapes are at least 1 (the common case) the
 * two square roots and divisions are computed together, so the CPU overlaps them. */
static inline double next_beta(Rng *rng, double a, double b) {
    double ga, gb;
    if (a >= 1.0 && b >= 1.0) {
        double da = a - 1.0 / 3.0, db = b - 1.0 / 3.0;
        double ca = 1.0 / sqrt(9.0 * da), cb = 1.0 / sqrt(9.0 * db);
        ga = gamma_from(rng, da, ca);
        gb = gamma_from(rng, db, cb);
    } else {
        ga = next_gamma(rng, a);
        gb = next_gamma(rng, b);
    }
    return ga + gb > 0.0 ? ga / (ga + gb) : 0.0;
}

/* Scratch reused across calls. */
static double *g_scores, *g_samples, *g_propensities;
static Py_ssize_t *g_order, *g_deferred, *g_slate;
static Py_ssize_t g_capacity;

static int reserve(Py_ssize_t n) {
    if (n <= g_capacity) return 0;
    Py_ssize_t capacity = n < 256 ? 256 : n * 2;
    double *scores = PyMem_Realloc(g_scores, capacity * sizeof(double));
    if (scores) g_scores = scores;
    double *samples = PyMem_Realloc(g_samples, capacity * sizeof(double));
    if (samples) g_samples = samples;
    double *propensities = PyMem_Realloc(g_propensities, capacity * sizeof(double));
    if (propensities) g_propensities = propensities;
    Py_ssize_t *order = PyMem_Realloc(g_order, capacity * sizeof(Py_ssize_t));
    if (order) g_order = order;
    Py_ssize_t *deferred = PyMem_Realloc(g_deferred, capacity * sizeof(Py_ssize_t));
    if (deferred) g_deferred = deferred;
    Py_ssize_t *slate = PyMem_Realloc(g_slate, capacity * sizeof(Py_ssize_t));
    if (slate) g_slate = slate;
    if (!scores || !samples || !propensities || !order || !deferred || !slate) {
        PyErr_NoMemory();
        return -1;
    }
    g_capacity = capacity;
    return 0;
}

/* Higher score first; equal scores by lower index, as a stable sort of the negated scores would. */
static inline int better(const double *scores, Py_ssize_t a, Py_ssize_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
}

/* Sift down in a heap whose root is its worst element. */
static void sift_down(const double *scores, Py_ssize_t *heap, Py_ssize_t size, Py_ssize_t at) {
    for (;;) {
        Py_ssize_t worst = at, left = 2 * at + 1, right = left + 1;
        if (left < size && better(scores, heap[worst], heap[left])) worst = left;
        if (right < size && better(scores, heap[worst], heap[right])) worst = right;
        if (worst == at) return;
        Py_ssize_t swap = heap[at];
        heap[at] = heap[worst];
        heap[worst] = swap;
        at = worst;
    }
}

/* The indices of the `count` best scores of `n`, best first, into `order`; returns how many (<= n). */
static Py_ssize_t best_first(const double *scores, Py_ssize_t n, Py_ssize_t count, Py_ssize_t *order) {
    if (count > n) count = n;
    Py_ssize_t size = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (size < count) {
            Py_ssize_t at = size++;
            order[at] = i;
            while (at > 0) { /* sift up: the worst rises to the root */
                Py_ssize_t parent = (at - 1) / 2;
                if (!better(scores, order[parent], order[at])) break;
                Py_ssize_t swap = order[at];
                order[at] = order[parent];
                order[parent] = swap;
                at = parent;
            }
        } else if (count > 0 && better(scores, i, order[0])) {
            order[0] = i;
            sift_down(scores, order, size, 0);
        }
    }
    for (Py_ssize_t end = size - 1; end > 0; end--) { /* heap sort: the worst goes last */
        Py_ssize_t worst = order[0];
        order[0] = order[end];
        order[end] = worst;
        sift_down(scores, order, end, 0);
    }
    return size;
}

typedef struct {
    Py_buffer view;
    int held;
} Buffer;

/* A C-contiguous view of 8-byte floats ('d') or 8-byte integers ('q'/'l'); `flags` may add PyBUF_WRITABLE. */
static int get_buffer(PyObject *obj, char kind, const char *name, int flags, Buffer *out) {
    if (PyObject_GetBuffer(obj, &out->view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | flags) < 0) return -1;
    out->held = 1;
    const char *format = out->view.format ? out->view.format : "B";
    if (*format == '<' || *format == '=' || *format == '@') format++;
    int ok = out->view.itemsize == 8 &&
             (kind == 'd' ? format[0] == 'd' : (format[0] == 'q' || format[0] == 'l')) && format[1] == '\0';
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "%s must be a contiguous %s array", name, kind == 'd' ? "float64" : "int64");
        return -1;
    }
    return 0;
}

static void release(Buffer *buffers, int count) {
    for (int i = 0; i < count; i++)
        if (buffers[i].held) PyBuffer_Release(&buffers[i].view);
}

/* [values[via[at[i]]] for i in range(count)] as a list of floats (via or at NULL: left out). */
static PyObject *gathered_list(const double *values, const int64_t *via, const Py_ssize_t *at, Py_ssize_t count) {
    PyObject *list = PyList_New(count);
    if (!list) return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t k = at ? at[i] : i;
        PyObject *value = PyFloat_FromDouble(values[via ? via[k] : k]);
        if (!value) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, value);
    }
    return list;
}

/* [values[at[i]] for i in range(count)] as a list of ints. */
static PyObject *gathered_ints(const int64_t *values, const Py_ssize_t *at, Py_ssize_t count) {
    PyObject *list = PyList_New(count);
    if (!list) return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *value = PyLong_FromLongLong(values[at[i]]);
        if (!value) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, value);
    }
    return list;
}

/* Whether content row `row` is within the minimum topic distance of one of `chosen` (CSR neighbours). */
static int too_similar(const int64_t *offsets, Py_ssize_t n_rows, const int64_t *neighbours, Py_ssize_t n_neighbours,
                       int64_t row, const int64_t *content_rows, const Py_ssize_t *chosen, Py_ssize_t n_chosen) {
    if (row < 0 || row >= n_rows) return 0;
    int64_t start = offsets[row], stop = offsets[row + 1];
    if (start < 0 || stop > n_neighbours) return 0;
    for (int64_t k = start; k < stop; k++)
        for (Py_ssize_t c = 0; c < n_chosen; c++)
            if (neighbours[k] == content_rows[chosen[c]]) return 1;
    return 0;
}

/* The exploration slot of a slate: a pool item may take it if it is not on the slate and, when the slot lies
 * within the first `diverse` slots, it keeps the diversity of those slots (cluster cap, similarity). */
typedef struct {
    const Py_ssize_t *slate;
    Py_ssize_t n_slate, slot, diverse, max_per_cluster;
    const int64_t *clusters, *content_rows, *offsets;
    Py_ssize_t n_rows;
    const int64_t *neighbours;
    Py_ssize_t n_neighbours;
} Slot;

#define EXPLORE_ATTEMPTS 64

static int may_explore(const Slot *slot, Py_ssize_t item) {
    for (Py_ssize_t s = 0; s < slot->n_slate; s++)
        if (slot->slate[s] == item) return 0;
    if (slot->diverse == 0) return 1;
    Py_ssize_t same_cluster = 0;
    for (Py_ssize_t s = 0; s < slot->diverse; s++)
        same_cluster += s != slot->slot && slot->clusters[slot->slate[s]] == slot->clusters[item];
    if (same_cluster >= slot->max_per_cluster) return 0;
    int64_t row = slot->content_rows[item];
    return !too_similar(slot->offsets, slot->n_rows, slot->neighbours, slot->n_neighbours, row, slot->content_rows,
                        slot->slate, slot->slot) &&
           !too_similar(slot->offsets, slot->n_rows, slot->neighbours, slot->n_neighbours, row, slot->content_rows,
                        slot->slate + slot->slot + 1, slot->diverse - slot->slot - 1);
}

PyDoc_STRVAR(draw_slate_doc,
"draw_slate(params, param_rows, freshness, propensity, clusters, content_rows, similar_offsets,\n"
"           similar_rows, variance_scale, seed, limit, top_n, max_per_cluster, scan_per_slot,\n"
"           exploration_rate, detail)\n"
"--\n\n"
"Draw one slate from an eligible pool of n items.\n\n"
"params: float64 posterior alphas then betas; param_rows: int64, the pool's alpha rows then beta rows\n"
"(2n); freshness, propensity (the batch's estimate that sampling shows the item, NaN if unknown),\n"
"clusters, content_rows: per pool item; similar_offsets/similar_rows: per content row, its too-similar\n"
"rows (CSR). Samples Beta(alpha/s, beta/s) per item (s = variance_scale), scores sample x freshness,\n"
"keeps the best limit + scan_per_slot * top_n in order, applies diversity to the first top_n slots\n"
"(at most max_per_cluster per cluster, no two too-similar items; skipped items move down), then with\n"
"probability exploration_rate gives one random slot to a uniform pick among the items left out; in the\n"
"first top_n slots only items that keep them diverse qualify, and without one there is no exploration.\n\n"
"Returns (content_rows, posterior_rows, scores, samples, alphas, betas, freshness, propensities,\n"
"explored_slot, demoted): per slot of the slate its content row, posterior row, score, Beta sample,\n"
"posterior alpha and beta, freshness and propensity; the explored slot or -1; and the content rows\n"
"that diversity pushed off the slate. Samples, alphas, betas, freshness and demoted are None unless\n"
"detail is true (they explain a decision; the request path leaves them out). A slot's propensity is its marginal probability of being shown:\n"
"the sampling estimate p (slate/n where unknown) mixed with the exploration budget r, which gives one\n"
"of the k slots to one of the n - k + 1 items sampling left out: p (1 - r/k) + r (1 - p) / (n - k + 1).");

/* A slate drawn by draw(): the pool indexes of its slots are g_slate[:count], their propensities
 * g_propensities[:count]; scores and samples are g_scores and g_samples by pool index. */
typedef struct {
    Py_ssize_t n, count, explored_slot;
    const double *params, *freshness;
    const int64_t *param_rows, *content_rows;
    const Py_ssize_t *demoted;
    Py_ssize_t n_demoted;
} Drawn;

enum { DRAW_BUFFERS = 8 };

/* The draw of draw_slate(*args) (its first 15 arguments) into the module's scratch arrays; `buffers` holds the
 * arrays' views until the caller releases them. 0, or -1 with an exception set. */
static int draw(PyObject *const *args, Buffer *buffers, Drawn *drawn) {
    static const char kinds[DRAW_BUFFERS] = {'d', 'q', 'd', 'd', 'q', 'q', 'q', 'q'};
    static const char *names[DRAW_BUFFERS] = {"params",   "param_rows",   "freshness",       "propensity",
                                              "clusters", "content_rows", "similar_offsets", "similar_rows"};
    for (int i = 0; i < DRAW_BUFFERS; i++)
        if (get_buffer(args[i], kinds[i], names[i], 0, &buffers[i]) < 0) return -1;

    double variance_scale = PyFloat_AsDouble(args[8]);
    uint64_t seed = PyLong_AsUnsignedLongLongMask(args[9]);
    Py_ssize_t limit = PyLong_AsSsize_t(args[10]), top_n = PyLong_AsSsize_t(args[11]);
    Py_ssize_t max_per_cluster = PyLong_AsSsize_t(args[12]), scan_per_slot = PyLong_AsSsize_t(args[13]);
    double exploration_rate = PyFloat_AsDouble(args[14]);
    if (PyErr_Occurred()) return -1;

    const double *params = buffers[0].view.buf, *freshness = buffers[2].view.buf;
    const double *propensity = buffers[3].view.buf;
    const int64_t *param_rows = buffers[1].view.buf, *clusters = buffers[4].view.buf;
    const int64_t *content_rows = buffers[5].view.buf, *offsets = buffers[6].view.buf;
    const int64_t *neighbours = buffers[7].view.buf;
    Py_ssize_t n_params = buffers[0].view.len / 8, n = buffers[2].view.len / 8;
    Py_ssize_t n_rows = buffers[6].view.len / 8 - 1, n_neighbours = buffers[7].view.len / 8;
    if (buffers[1].view.len / 8 != 2 * n || buffers[3].view.len / 8 != n || buffers[4].view.len / 8 != n ||
        buffers[5].view.len / 8 != n) {
        PyErr_SetString(PyExc_ValueError,
                        "param_rows must hold 2n rows and propensity, clusters and content_rows n values");
        return -1;
    }
    if (!(variance_scale > 0.0) || limit < 0 || top_n < 0 || top_n > limit || max_per_cluster < 1 ||
        scan_per_slot < 0) {
        PyErr_SetString(PyExc_ValueError, "invalid slate parameters");
        return -1;
    }
    for (Py_ssize_t i = 0; i < 2 * n; i++)
        if (param_rows[i] < 0 || param_rows[i] >= n_params) {
            PyErr_SetString(PyExc_IndexError, "param_rows out of range of params");
            return -1;
        }
    if (reserve(n) < 0) return -1;

    Rng rng;
    rng_seed(&rng, seed);
    double inverse_scale = 1.0 / variance_scale;
    for (Py_ssize_t i = 0; i < n; i++) {
        double alpha = params[param_rows[i]] * inverse_scale, beta = params[param_rows[n + i]] * inverse_scale;
        double sample = next_beta(&rng, alpha, beta);
        double score = sample * freshness[i];
        g_samples[i] = sample;
        g_scores[i] = score == score ? score : -HUGE_VAL;
    }
    if (limit > n) limit = n;
    /* Diversity over the score order: the first top_n slots take at most max_per_cluster items per
     * cluster and no two too-similar items; what is skipped moves below them. The scan may look at the
     * best limit + scan_per_slot * top_n items; it first orders only the best limit + top_n, and orders
     * the rest only when the scan runs past them (a prefix of the same order, so the slate is the same). */
    Py_ssize_t deepest = limit + scan_per_slot * top_n, depth = limit + top_n < deepest ? limit + top_n : deepest;
    Py_ssize_t n_slate, n_deferred, scanned, from_deferred, ordered;
    for (;;) {
        ordered = best_first(g_scores, n, depth, g_order);
        n_slate = n_deferred = scanned = from_deferred = 0;
        for (; scanned < ordered && n_slate < top_n; scanned++) {
            Py_ssize_t i = g_order[scanned], same_cluster = 0;
            for (Py_ssize_t c = 0; c < n_slate; c++) same_cluster += clusters[g_slate[c]] == clusters[i];
            if (same_cluster >= max_per_cluster || too_similar(offsets, n_rows, neighbours, n_neighbours,
                                                               content_rows[i], content_rows, g_slate, n_slate))
                g_deferred[n_deferred++] = i;
            else
                g_slate[n_slate++] = i;
        }
        int ran_out = n_slate < top_n && scanned == ordered;
        while (n_slate < limit && from_deferred < n_deferred) g_slate[n_slate++] = g_deferred[from_deferred++];
        while (n_slate < limit && scanned < ordered) g_slate[n_slate++] = g_order[scanned++];
        ran_out = ran_out || (n_slate < limit && scanned == ordered);
        if (!ran_out || depth >= deepest || ordered == n) break;
        depth = deepest;
    }

    Py_ssize_t explored_slot = -1;
    if (n > n_slate && n_slate > 0 && exploration_rate > 0.0 && next_double(&rng) < exploration_rate) {
        explored_slot = (Py_ssize_t)next_below(&rng, (uint64_t)n_slate);
        Slot slot = {g_slate, n_slate, explored_slot, explored_slot < top_n ? (top_n < n_slate ? top_n : n_slate) : 0,
                     max_per_cluster, clusters, content_rows, offsets, n_rows, neighbours, n_neighbours};
        Py_ssize_t pick = -1;
        /* Rejection first: the slate is a small part of the pool, and most items fit its diversity. */
        for (int attempt = 0; attempt < EXPLORE_ATTEMPTS && pick < 0; attempt++) {
            Py_ssize_t candidate = (Py_ssize_t)next_below(&rng, (uint64_t)n);
            if (may_explore(&slot, candidate)) pick = candidate;
        }
        if (pick < 0) { /* few items fit: choose uniformly among those that do, or do not explore */
            Py_ssize_t fitting = 0;
            for (Py_ssize_t i = 0; i < n; i++) fitting += may_explore(&slot, i);
            if (fitting > 0) {
                Py_ssize_t k = (Py_ssize_t)next_below(&rng, (uint64_t)fitting);
                for (pick = 0;; pick++)
                    if (may_explore(&slot, pick) && k-- == 0) break;
            }
        }
        if (pick >= 0)
            g_slate[explored_slot] = pick;
        else
            explored_slot = -1;
    }

    Py_ssize_t left_out = n - n_slate + 1 > 1 ? n - n_slate + 1 : 1;
    for (Py_ssize_t s = 0; s < n_slate; s++) {
        double sampled = propensity[g_slate[s]];
        sampled = isfinite(sampled) ? fmin(1.0, fmax(0.0, sampled)) : (double)n_slate / (double)n;
        g_propensities[s] = fmin(
            1.0, sampled * (1.0 - exploration_rate / (double)n_slate) + exploration_rate * (1.0 - sampled) / left_out);
    }

    *drawn = (Drawn){n, n_slate, explored_slot, params, freshness, param_rows, content_rows,
                     g_deferred + from_deferred, n_deferred - from_deferred};
    return 0;
}

/* draw_slate's result tuple for `drawn`, with the explaining lists when `detail`. */
static PyObject *drawn_tuple(const Drawn *drawn, int detail) {
    Py_ssize_t count = drawn->count;
    enum { N_LISTS = 9 };
    PyObject *lists[N_LISTS] = {
        gathered_ints(drawn->content_rows, g_slate, count),
        gathered_ints(drawn->param_rows, g_slate, count),
        gathered_list(g_scores, NULL, g_slate, count),
        gathered_list(g_propensities, NULL, NULL, count),
    };
    if (detail) {
        lists[4] = gathered_list(g_samples, NULL, g_slate, count);
        lists[5] = gathered_list(drawn->params, drawn->param_rows, g_slate, count);
        lists[6] = gathered_list(drawn->params, drawn->param_rows + drawn->n, g_slate, count);
        lists[7] = gathered_list(drawn->freshness, NULL, g_slate, count);
        lists[8] = gathered_ints(drawn->content_rows, drawn->demoted, drawn->n_demoted);
    } else {
        for (int i = 4; i < N_LISTS; i++) lists[i] = Py_NewRef(Py_None);
    }
    int built = 1;
    for (int i = 0; i < N_LISTS; i++) built = built && lists[i];
    if (built)
        return Py_BuildValue("(NNNNNNNNnN)", lists[0], lists[1], lists[2], lists[4], lists[5], lists[6], lists[7],
                             lists[3], drawn->explored_slot, lists[8]);
    for (int i = 0; i < N_LISTS; i++) Py_XDECREF(lists[i]);
    return NULL;
}

static PyObject *draw_slate(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (check_arg_count("draw_slate", nargs, 16) < 0) return NULL;
    int detail = PyObject_IsTrue(args[15]);
    if (detail < 0) return NULL;
    Buffer buffers[DRAW_BUFFERS] = {0};
    Drawn drawn;
    PyObject *result = draw(args, buffers, &drawn) < 0 ? NULL : drawn_tuple(&drawn, detail);
    release(buffers, DRAW_BUFFERS);
    return result;
}

/* ------------------------------------------------------------------------------------ add_at */

static const char add_at_doc[] =
    "add_at(values, rows, increments)\n--\n\n"
    "values[rows[k]] += increments[k] for each k < len(rows), in place: `values` a writable float64 array, `rows`\n"
    "a list of ints, `increments` a float64 array at least as long. Like numpy.add.at, without building arrays\n"
    "from the list.";

/* values[rows[k]] += increments[k] for k < count, after checking every row, so an error changes nothing. */
static int add_rows(const Buffer *values, const int64_t *rows, Py_ssize_t count, const Buffer *increments) {
    double *target = values->view.buf;
    const double *added = increments->view.buf;
    Py_ssize_t n_values = values->view.len / 8;
    if (count > increments->view.len / 8) {
        PyErr_SetString(PyExc_ValueError, "increments is shorter than rows");
        return -1;
    }
    for (Py_ssize_t k = 0; k < count; k++)
        if (rows[k] < 0 || rows[k] >= n_values) {
            PyErr_Format(PyExc_IndexError, "row %lld is out of range of values (%zd)", (long long)rows[k], n_values);
            return -1;
        }
    for (Py_ssize_t k = 0; k < count; k++) target[rows[k]] += added[k];
    return 0;
}

static PyObject *add_at(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (check_arg_count("add_at", nargs, 3) < 0) return NULL;
    if (!PyList_Check(args[1])) return PyErr_Format(PyExc_TypeError, "rows must be a list of ints");
    Py_ssize_t count = PyList_GET_SIZE(args[1]);
    int64_t *rows = PyMem_Malloc((size_t)(count ? count : 1) * sizeof(int64_t));
    if (!rows) return PyErr_NoMemory();
    Buffer buffers[2] = {0};
    PyObject *result = NULL;
    for (Py_ssize_t k = 0; k < count; k++) {
        rows[k] = PyLong_AsLongLong(PyList_GET_ITEM(args[1], k));
        if (rows[k] == -1 && PyErr_Occurred()) goto done;
    }
    if (get_buffer(args[0], 'd', "values", PyBUF_WRITABLE, &buffers[0]) < 0 ||
        get_buffer(args[2], 'd', "increments", 0, &buffers[1]) < 0 || add_rows(&buffers[0], rows, count, &buffers[1]) < 0)
        goto done;
    result = Py_NewRef(Py_None);
done:
    release(buffers, 2);
    PyMem_Free(rows);
    return result;
}

/* ------------------------------------------------------------------------------------ ranked items */

static inline size_t varint_size(uint64_t value) {
    size_t size = 1;
    while (value >= 0x80) {
        value >>= 7;
        size++;
    }
    return size;
}

static inline char *put_varint(char *out, uint64_t value) {
    while (value >= 0x80) {
        *out++ = (char)((value & 0x7F) | 0x80);
        value >>= 7;
    }
    *out++ = (char)value;
    return out;
}

static inline char *put_double(char *out, char tag, double value) {
    *out++ = tag;
    memcpy(out, &value, 8); /* protobuf doubles are little-endian, as is every platform we build for */
    return out + 8;
}

/* The size of one RankedItem's body: score, reason, position, propensity, explored flag and prepared tail. */
static inline size_t ranked_item_size(Py_ssize_t reason_size, Py_ssize_t slot, int explored, size_t tail_size) {
    return 9 + 1 + varint_size((uint64_t)reason_size) + (size_t)reason_size + 1 + varint_size((uint64_t)slot + 1) +
           9 + (explored ? 2 : 0) + tail_size;
}

PyDoc_STRVAR(ranked_items_doc,
"ranked_items(scores, propensities, explored_slot, rows, tails, reason_heads, reason_tail, explored_tail)\n"
"--\n\n"
"The RankResponse.items fields of a slate in protobuf wire format: per slot a RankedItem with its\n"
"score, reason, position (slot + 1), propensity and explored flag, followed by the prepared tail of its\n"
"content row (content_id and metadata, tails[row]: aura.server.wire.ResponseParts.item_tails). scores\n"
"and propensities are lists of floats and rows a list of content rows, all of one length. A slot's reason\n"
"is reason_heads[row] (a tuple of str per content row) followed by reason_tail, or by explored_tail in the\n"
"explored slot (-1 for none).");

/* The entry `row` of tuple `values` of `kind` (bytes or str), or NULL with an exception set. */
static PyObject *row_entry(PyObject *values, Py_ssize_t row, const char *name, int want_bytes) {
    if (row < 0 || row >= PyTuple_GET_SIZE(values)) {
        PyErr_Format(PyExc_IndexError, "a row of the slate has no prepared %s", name);
        return NULL;
    }
    PyObject *value = PyTuple_GET_ITEM(values, row);
    if (want_bytes ? !PyBytes_Check(value) : !PyUnicode_Check(value)) {
        PyErr_Format(PyExc_TypeError, "%s must be %s", name, want_bytes ? "bytes" : "str");
        return NULL;
    }
    return value;
}

typedef struct {
    const char *head, *tail, *item_tail;
    Py_ssize_t head_size, tail_size, item_tail_size;
} SlotParts;

/* The reason and item tail parts of one slot, or -1 with an exception set. */
static int slot_parts(int64_t row, PyObject *tails, PyObject *heads, PyObject *reason_tail, SlotParts *parts) {
    PyObject *item_tail = row_entry(tails, (Py_ssize_t)row, "tail", 1);
    PyObject *head = item_tail ? row_entry(heads, (Py_ssize_t)row, "reason head", 0) : NULL;
    if (!head) return -1;
    parts->item_tail = PyBytes_AS_STRING(item_tail);
    parts->item_tail_size = PyBytes_GET_SIZE(item_tail);
    parts->head = PyUnicode_AsUTF8AndSize(head, &parts->head_size);
    parts->tail = PyUnicode_AsUTF8AndSize(reason_tail, &parts->tail_size);
    return parts->head && parts->tail ? 0 : -1;
}

/* The items fields of `slate` (see ranked_items), or NULL with an exception set. */
static PyObject *items_of(const Slate *slate, PyObject *tails, PyObject *heads, PyObject *reason_tail,
                          PyObject *explored_tail) {
    if (!PyTuple_Check(tails) || !PyTuple_Check(heads) || !PyUnicode_Check(reason_tail) ||
        !PyUnicode_Check(explored_tail)) {
        PyErr_SetString(PyExc_TypeError, "tails and reason_heads must be tuples, the reason tails str");
        return NULL;
    }
    size_t total = 0;
    SlotParts parts;
    for (Py_ssize_t i = 0; i < slate->count; i++) {
        int explored = i == slate->explored_slot;
        if (slot_parts(slate->rows[i], tails, heads, explored ? explored_tail : reason_tail, &parts) < 0)
            return NULL;
        size_t body = ranked_item_size(parts.head_size + parts.tail_size, i, explored, (size_t)parts.item_tail_size);
        total += 1 + varint_size(body) + body;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (!result) return NULL;
    char *out = PyBytes_AS_STRING(result);
    for (Py_ssize_t i = 0; i < slate->count; i++) {
        int explored = i == slate->explored_slot;
        slot_parts(slate->rows[i], tails, heads, explored ? explored_tail : reason_tail, &parts); /* sized above */
        Py_ssize_t reason_size = parts.head_size + parts.tail_size;
        size_t body = ranked_item_size(reason_size, i, explored, (size_t)parts.item_tail_size);
        *out++ = 0x1a; /* RankResponse.items */
        out = put_varint(out, body);
        out = put_double(out, 0x11, slate->scores[i]); /* RankedItem.score */
        *out++ = 0x1a;                                  /* RankedItem.reason */
        out = put_varint(out, (uint64_t)reason_size);
        memcpy(out, parts.head, (size_t)parts.head_size);
        memcpy(out + parts.head_size, parts.tail, (size_t)parts.tail_size);
        out += reason_size;
        *out++ = 0x28; /* RankedItem.position */
        out = put_varint(out, (uint64_t)i + 1);
        out = put_double(out, 0x31, slate->propensities[i]); /* RankedItem.propensity */
        if (explored) {
            *out++ = 0x38; /* RankedItem.explored */
            *out++ = 0x01;
        }
        memcpy(out, parts.item_tail, (size_t)parts.item_tail_size);
        out += parts.item_tail_size;
    }
    return result;
}

int slate_of_lists(PyObject *rows, PyObject *scores, PyObject *propensities, Py_ssize_t explored_slot, Slate *slate,
                   void **block) {
    *block = NULL;
    if (!PyList_Check(rows) || !PyList_Check(scores) || !PyList_Check(propensities)) {
        PyErr_SetString(PyExc_TypeError, "rows, scores and propensities must be lists");
        return -1;
    }
    Py_ssize_t count = PyList_GET_SIZE(rows);
    if (PyList_GET_SIZE(scores) != count || PyList_GET_SIZE(propensities) != count) {
        PyErr_SetString(PyExc_ValueError, "rows, scores and propensities must have one length");
        return -1;
    }
    char *memory = PyMem_Malloc((size_t)(count ? count : 1) * (sizeof(int64_t) + 2 * sizeof(double)));
    if (!memory) {
        PyErr_NoMemory();
        return -1;
    }
    int64_t *row_values = (int64_t *)memory;
    double *score_values = (double *)(memory + count * sizeof(int64_t)), *propensity_values = score_values + count;
    for (Py_ssize_t i = 0; i < count; i++) {
        row_values[i] = PyLong_AsLongLong(PyList_GET_ITEM(rows, i));
        score_values[i] = PyFloat_AsDouble(PyList_GET_ITEM(scores, i));
        propensity_values[i] = PyFloat_AsDouble(PyList_GET_ITEM(propensities, i));
        if (PyErr_Occurred()) {
            PyMem_Free(memory);
            return -1;
        }
    }
    *slate = (Slate){count, explored_slot, row_values, score_values, propensity_values};
    *block = memory;
    return 0;
}

static PyObject *ranked_items(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (check_arg_count("ranked_items", nargs, 8) < 0) return NULL;
    Py_ssize_t explored_slot = PyLong_AsSsize_t(args[2]);
    if (explored_slot == -1 && PyErr_Occurred()) return NULL;
    Slate slate;
    void *block;
    if (slate_of_lists(args[3], args[0], args[1], explored_slot, &slate, &block) < 0) return NULL;
    PyObject *result = items_of(&slate, args[4], args[5], args[6], args[7]);
    PyMem_Free(block);
    return result;
}

/* A string's UTF-8 bytes, or NULL with an exception set. */
static const char *utf8(PyObject *value, const char *name, Py_ssize_t *size) {
    if (!PyUnicode_Check(value)) {
        PyErr_Format(PyExc_TypeError, "%s must be str", name);
        return NULL;
    }
    return PyUnicode_AsUTF8AndSize(value, size);
}

static inline size_t string_field_size(Py_ssize_t size) {
    return size ? 1 + varint_size((uint64_t)size) + (size_t)size : 0;
}

static inline char *put_string_field(char *out, char tag, const char *value, Py_ssize_t size) {
    if (!size) return out;
    *out++ = tag;
    out = put_varint(out, (uint64_t)size);
    memcpy(out, value, (size_t)size);
    return out + size;
}

PyDoc_STRVAR(rank_response_doc,
"rank_response(request_id, surface_fields, items, segment_id, confidence, intent, variant, holdout,\n"
"              seed, explanation)\n"
"--\n\n"
"A serialized RankResponse: request_id (str), the surface's prepared fields (bytes,\n"
"aura.server.wire.ResponseParts.surface_fields), the items fields (bytes, from ranked_items), the\n"
"segment (id, confidence rounded to 4 decimals, intent), the experiment (variant, holdout), the seed\n"
"(a 64-bit unsigned int) and a serialized Explanation (empty bytes for none). Fields equal to their\n"
"proto3 default are left out, except the segment and experiment messages, which are always present.");

static PyObject *rank_response(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (check_arg_count("rank_response", nargs, 10) < 0) return NULL;
    Py_ssize_t request_id_size, segment_id_size, intent_size, variant_size;
    const char *request_id = utf8(args[0], "request_id", &request_id_size);
    if (!request_id) return NULL;
    const char *segment_id = utf8(args[3], "segment_id", &segment_id_size);
    if (!segment_id) return NULL;
    const char *intent = utf8(args[5], "intent", &intent_size);
    if (!intent) return NULL;
    const char *variant = utf8(args[6], "variant", &variant_size);
    if (!variant) return NULL;
    if (!PyBytes_Check(args[1]) || !PyBytes_Check(args[2]) || !PyBytes_Check(args[9])) {
        PyErr_SetString(PyExc_TypeError, "surface_fields, items and explanation must be bytes");
        return NULL;
    }
    double confidence = nearbyint(PyFloat_AsDouble(args[4]) * 1e4) / 1e4;
    int holdout = PyObject_IsTrue(args[7]);
    uint64_t seed = PyLong_AsUnsignedLongLong(args[8]);
    if (PyErr_Occurred()) return NULL;

    Py_ssize_t surface_size = PyBytes_GET_SIZE(args[1]), items_size = PyBytes_GET_SIZE(args[2]);
    Py_ssize_t explanation_size = PyBytes_GET_SIZE(args[9]);
    size_t segment_size =
        string_field_size(segment_id_size) + (confidence != 0.0 ? 9 : 0) + string_field_size(intent_size);
    size_t experiment_size = string_field_size(variant_size) + (holdout ? 2 : 0);
    size_t total = string_field_size(request_id_size) + (size_t)surface_size + (size_t)items_size + 1 +
                   varint_size(segment_size) + segment_size + 1 + varint_size(experiment_size) + experiment_size +
                   (seed ? 1 + varint_size(seed) : 0) + string_field_size(explanation_size);
    PyObject *result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (!result) return NULL;
    char *out = PyBytes_AS_STRING(result);
    out = put_string_field(out, 0x0a, request_id, request_id_size); /* RankResponse.request_id */
    memcpy(out, PyBytes_AS_STRING(args[1]), (size_t)surface_size);
    out += surface_size;
    memcpy(out, PyBytes_AS_STRING(args[2]), (size_t)items_size);
    out += items_size;
    *out++ = 0x22; /* RankResponse.segment */
    out = put_varint(out, segment_size);
    out = put_string_field(out, 0x0a, segment_id, segment_id_size);
    if (confidence != 0.0) out = put_double(out, 0x11, confidence);
    out = put_string_field(out, 0x1a, intent, intent_size);
    *out++ = 0x2a; /* RankResponse.experiment */
    out = put_varint(out, experiment_size);
    out = put_string_field(out, 0x0a, variant, variant_size);
    if (holdout) {
        *out++ = 0x10;
        *out++ = 0x01;
    }
    if (seed) {
        *out++ = 0x48; /* RankResponse.seed */
        out = put_varint(out, seed);
    }
    put_string_field(out, 0x52, PyBytes_AS_STRING(args[9]), explanation_size); /* RankResponse.explanation */
    return result;
}

/* ------------------------------------------------------------------------------------ serve_slate */

/* The fields serve_slate reads, by position: aura.server.decision.SlatePlan, aura.server.servicer.SlateTables and
 * aura.server.decision.RankQuery (the first fields of each, in their order). */
enum {
    PLAN_PARAM_ROWS, PLAN_FRESHNESS, PLAN_PROPENSITY, PLAN_CLUSTERS, PLAN_CONTENT_ROWS, PLAN_TOP_N, PLAN_SURFACE_ID,
    PLAN_CELL_SEGMENT_ID, PLAN_SURFACE_INDEX, PLAN_SEGMENT_INDEX, PLAN_SEGMENT_ID, PLAN_INTENT, PLAN_HOLDOUT,
    PLAN_SEGMENT_SOURCE, PLAN_PERSONALIZED, PLAN_REASON_TAIL, PLAN_EXPLORED_REASON_TAIL, PLAN_FIELDS
};
enum {
    TABLE_PARAMS, TABLE_WEIGHTS, TABLE_SIMILAR_OFFSETS, TABLE_SIMILAR_ROWS, TABLE_VARIANCE_SCALE,
    TABLE_MAX_PER_CLUSTER, TABLE_SCAN_PER_SLOT, TABLE_MAC, TABLE_BUNDLE_TAG, TABLE_FINGERPRINTS, TABLE_ITEM_TAILS,
    TABLE_REASON_HEADS, TABLE_CONTENT_IDS, TABLE_SURFACE_FIELDS, TABLE_NODE_ID, TABLE_BUNDLE_VERSION,
    TABLE_POLICY_VERSION, TABLE_VARIANT, TABLE_HOLDOUT_VARIANT, TABLE_COLUMNS, TABLE_LEDGER, TABLE_FIELDS
};
enum {
    QUERY_SURFACE_ID, QUERY_LIMIT, QUERY_ANON_ID, QUERY_DEVICE, QUERY_REFERRER_CLASS, QUERY_PAGE_TYPE, QUERY_COUNTRY,
    QUERY_TIME_OF_DAY, QUERY_CAMPAIGN, QUERY_CONTEXT, QUERY_CONSENT, QUERY_CANDIDATES, QUERY_EXPLAIN, QUERY_SESSION_ID,
    QUERY_REFERRER_HOST, QUERY_REGION, QUERY_FIELDS
};

#define TABLE(field) PyTuple_GET_ITEM(tables, TABLE_##field)
#define PLAN(field) PyTuple_GET_ITEM(plan, PLAN_##field)
#define QUERY(field) PyTuple_GET_ITEM(query, QUERY_##field)

/* The bookkeeping and response of a drawn `slate` (its content rows, scores and propensities) whose items' betas
 * are params[beta_rows[slot]]: its impressions counted, its request id made, its record appended to the decision
 * log; returns the response bytes, or NULL with an exception set. */
static PyObject *served(PyObject *tables, PyObject *plan, PyObject *query, PyObject *const *args, const Slate *slate,
                        const int64_t *beta_rows, Py_ssize_t eligible) {
    PyObject *confidence = args[3], *seed = args[4], *decided_at_ms = args[6], *rate = args[7];
    int personalized = PyObject_IsTrue(PLAN(PERSONALIZED)), holdout = PyObject_IsTrue(PLAN(HOLDOUT));
    if (personalized < 0 || holdout < 0) return NULL;
    if (!PyDict_Check(TABLE(SURFACE_FIELDS))) {
        PyErr_SetString(PyExc_TypeError, "surface_fields must be a dict");
        return NULL;
    }

    Buffer buffers[2] = {0};
    int counted = get_buffer(TABLE(PARAMS), 'd', "params", PyBUF_WRITABLE, &buffers[0]) == 0 &&
                  get_buffer(TABLE(WEIGHTS), 'd', "examination_weights", 0, &buffers[1]) == 0 &&
                  add_rows(&buffers[0], beta_rows, slate->count, &buffers[1]) == 0;
    release(buffers, 2);
    if (!counted) return NULL;

    PyObject *header[5] = {decided_at_ms, args[5], TABLE(BUNDLE_TAG), PLAN(SURFACE_INDEX), PLAN(SEGMENT_INDEX)};
    PyObject *request_id = request_id_of(TABLE(MAC), header, TABLE(FINGERPRINTS), slate->rows, slate->count);
    PyObject *eligible_count = PyLong_FromSsize_t(eligible), *empty = PyUnicode_FromStringAndSize(NULL, 0);
    PyObject *items = NULL, *response = NULL;
    if (!request_id || !eligible_count || !empty) goto done;
    PyObject *record[23] = {
        request_id, decided_at_ms, TABLE(NODE_ID), TABLE(BUNDLE_VERSION), TABLE(POLICY_VERSION), PLAN(SURFACE_ID),
        PLAN(CELL_SEGMENT_ID), PLAN(SEGMENT_SOURCE), confidence, PLAN(HOLDOUT),
        personalized ? QUERY(ANON_ID) : empty, personalized ? QUERY(SESSION_ID) : empty, QUERY(DEVICE),
        QUERY(REFERRER_HOST), QUERY(PAGE_TYPE), QUERY(COUNTRY), QUERY(REGION), QUERY(CONSENT), QUERY(CONTEXT), seed,
        rate, eligible_count, TABLE(CONTENT_IDS),
    };
    PyObject *logged = decision_columns_append(TABLE(COLUMNS), record, slate);
    if (!logged) goto done;
    Py_DECREF(logged);

    items = items_of(slate, TABLE(ITEM_TAILS), TABLE(REASON_HEADS), PLAN(REASON_TAIL), PLAN(EXPLORED_REASON_TAIL));
    if (!items) goto done;
    PyObject *surface_fields = PyDict_GetItemWithError(TABLE(SURFACE_FIELDS), PLAN(SURFACE_ID));
    if (!surface_fields) {
        if (!PyErr_Occurred()) PyErr_Format(PyExc_KeyError, "surface %R has no prepared response fields", PLAN(SURFACE_ID));
        goto done;
    }
    PyObject *no_explanation = PyBytes_FromStringAndSize(NULL, 0);
    if (!no_explanation) goto done;
    PyObject *response_fields[10] = {request_id, surface_fields, items, PLAN(SEGMENT_ID), confidence, PLAN(INTENT),
                                     holdout ? TABLE(HOLDOUT_VARIANT) : TABLE(VARIANT), PLAN(HOLDOUT), seed,
                                     no_explanation};
    response = rank_response(NULL, response_fields, 10);
    Py_DECREF(no_explanation);
done:
    Py_XDECREF(request_id);
    Py_XDECREF(eligible_count);
    Py_XDECREF(empty);
    Py_XDECREF(items);
    return response;
}

PyDoc_STRVAR(serve_slate_doc,
"serve_slate(tables, plan, query, confidence, detail)\n"
"--\n\n"
"One Rank decision from its plan to its response, in one call: take the decision's exploration budget from\n"
"the tables' ExplorationLedger, draw a seed and a 48-bit nonce, draw the slate from the plan's pool with the\n"
"query's limit (as draw_slate), count whether it explored in the ledger and its impressions on the posteriors\n"
"(as add_at), make its request id (as encode_request_id), append its record to the decision log (as\n"
"DecisionColumns.append) and build the RankResponse bytes without an explanation (as ranked_items and\n"
"rank_response), with the decision's time from the wall clock. tables is an aura.server.servicer.SlateTables,\n"
"plan an aura.server.decision.SlatePlan and query a RankQuery, read by field position; confidence is the\n"
"visitor's segment confidence. Returns (response bytes, exploration budget, draw_slate's result when detail\n"
"is true, else None); the seed is in the response and the log.");

/* Seeds and nonces: one xoshiro256** stream per process, from the OS's entropy at first use and again in a
 * forked child, so no two processes ever share a stream. */
static Rng g_seeds;
static int g_seeded;

static void reseed_after_fork(void) { g_seeded = 0; }

static int next_seed(uint64_t *seed) {
    while (!g_seeded) {
        if (getrandom(g_seeds.s, sizeof g_seeds.s, 0) != (ssize_t)sizeof g_seeds.s) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        g_seeded = (g_seeds.s[0] | g_seeds.s[1] | g_seeds.s[2] | g_seeds.s[3]) != 0;
    }
    *seed = next_u64(&g_seeds);
    return 0;
}

static PyObject *serve_slate(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (check_arg_count("serve_slate", nargs, 5) < 0) return NULL;
    PyObject *tables = args[0], *plan = args[1], *query = args[2];
    if (!PyTuple_Check(tables) || PyTuple_GET_SIZE(tables) < TABLE_FIELDS || !PyTuple_Check(plan) ||
        PyTuple_GET_SIZE(plan) < PLAN_FIELDS || !PyTuple_Check(query) || PyTuple_GET_SIZE(query) < QUERY_FIELDS ||
        !is_exploration_ledger(TABLE(LEDGER)) || !PyUnicode_Check(QUERY(ANON_ID))) {
        PyErr_SetString(PyExc_TypeError, "tables, plan and query must be a SlateTables (with an ExplorationLedger), "
                                         "a SlatePlan and a RankQuery");
        return NULL;
    }
    int detail = PyObject_IsTrue(args[4]);
    Py_ssize_t eligible = PyObject_Length(PLAN(FRESHNESS));
    Py_ssize_t limit = PyLong_AsSsize_t(QUERY(LIMIT)), top_n = PyLong_AsSsize_t(PLAN(TOP_N));
    if (detail < 0 || eligible < 0 || PyErr_Occurred()) return NULL;
    if (limit > eligible) limit = eligible;
    if (top_n > limit) top_n = limit;
    double budget = ledger_budget(TABLE(LEDGER), QUERY(ANON_ID), monotonic_seconds());
    uint64_t seed, nonce;
    if (budget < 0.0 || next_seed(&seed) < 0 || next_seed(&nonce) < 0) return NULL;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    /* The decision's values, where `served` reads them: args[3] to args[7]. */
    PyObject *decided[8] = {
        tables, plan, query, args[3], PyLong_FromUnsignedLongLong(seed), PyLong_FromUnsignedLongLong(nonce >> 16),
        PyLong_FromLongLong((long long)now.tv_sec * 1000 + now.tv_nsec / 1000000), PyFloat_FromDouble(budget),
    };
    PyObject *limit_value = PyLong_FromSsize_t(limit), *top_n_value = PyLong_FromSsize_t(top_n);
    Buffer buffers[DRAW_BUFFERS] = {0};
    char *gathered = NULL;
    PyObject *response = NULL, *details = NULL, *result = NULL;
    if (!limit_value || !top_n_value || !decided[4] || !decided[5] || !decided[6] || !decided[7]) goto done;
    PyObject *draw_args[15] = {
        TABLE(PARAMS), PLAN(PARAM_ROWS), PLAN(FRESHNESS), PLAN(PROPENSITY), PLAN(CLUSTERS), PLAN(CONTENT_ROWS),
        TABLE(SIMILAR_OFFSETS), TABLE(SIMILAR_ROWS), TABLE(VARIANCE_SCALE), decided[4], limit_value, top_n_value,
        TABLE(MAX_PER_CLUSTER), TABLE(SCAN_PER_SLOT), decided[7],
    };
    Drawn drawn;
    if (draw(draw_args, buffers, &drawn) < 0) goto done;
    Py_ssize_t count = drawn.count;
    gathered = PyMem_Malloc((size_t)(count ? count : 1) * (2 * sizeof(int64_t) + 2 * sizeof(double)));
    if (!gathered) {
        PyErr_NoMemory();
        goto done;
    }
    int64_t *rows = (int64_t *)gathered, *beta_rows = rows + count;
    double *scores = (double *)(beta_rows + count), *propensities = scores + count;
    for (Py_ssize_t s = 0; s < count; s++) {
        Py_ssize_t item = g_slate[s];
        rows[s] = drawn.content_rows[item];
        beta_rows[s] = drawn.param_rows[drawn.n + item];
        scores[s] = g_scores[item];
        propensities[s] = g_propensities[s];
    }
    if (detail && !(details = drawn_tuple(&drawn, 1))) goto done;
    Slate slate = {count, drawn.explored_slot, rows, scores, propensities};
    response = served(tables, plan, query, decided, &slate, beta_rows, eligible);
    if (response && ledger_record(TABLE(LEDGER), QUERY(ANON_ID), drawn.explored_slot >= 0) == 0)
        result = Py_BuildValue("(OOO)", response, decided[7], details ? details : Py_None);
done:
    for (int i = 4; i < 8; i++) Py_XDECREF(decided[i]);
    release(buffers, DRAW_BUFFERS);
    PyMem_Free(gathered);
    Py_XDECREF(limit_value);
    Py_XDECREF(top_n_value);
    Py_XDECREF(response);
    Py_XDECREF(details);
    return result;
}

#undef TABLE
#undef PLAN
#undef QUERY

static PyMethodDef methods[] = {
    {"draw_slate", (PyCFunction)(void (*)(void))draw_slate, METH_FASTCALL, draw_slate_doc},
    {"ranked_items", (PyCFunction)(void (*)(void))ranked_items, METH_FASTCALL, ranked_items_doc},
    {"rank_response", (PyCFunction)(void (*)(void))rank_response, METH_FASTCALL, rank_response_doc},
    {"parse_rank_request", (PyCFunction)(void (*)(void))parse_rank_request, METH_FASTCALL, parse_rank_request_doc},
    {"encode_request_id", (PyCFunction)(void (*)(void))encode_request_id, METH_FASTCALL, encode_request_id_doc},
    {"add_at", (PyCFunction)(void (*)(void))add_at, METH_FASTCALL, add_at_doc},
    {"serve_slate", (PyCFunction)(void (*)(void))serve_slate, METH_FASTCALL, serve_slate_doc},
    {"resolve_segment", (PyCFunction)(void (*)(void))resolve_segment, METH_FASTCALL, resolve_segment_doc},
    {"planned_slate", (PyCFunction)(void (*)(void))planned_slate, METH_FASTCALL, planned_slate_doc},
    {"exploration_budget", (PyCFunction)(void (*)(void))exploration_budget, METH_FASTCALL, exploration_budget_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_native",
    .m_doc = "The compiled parts of the Rank hot path: serve_slate (one decision from its plan to its response), "
             "and its steps one by one: draw_slate, add_at (the online impression counts), encode_request_id, "
             "ranked_items and rank_response; parse_rank_request, resolve_segment and planned_slate (the plan memo's "
             "lookup), the ExplorationLedger and exploration_budget, the decision log's DecisionColumns, and the "
             "Rank API's limits (MAX_ID_LENGTH, ...).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    ziggurat_tables();
    if (pthread_atfork(NULL, NULL, reseed_after_fork) != 0) {
        PyErr_SetString(PyExc_OSError, "cannot register the seed stream's fork handler");
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_def);
    if (module && (add_request_limits(module) < 0 || add_decision_columns(module) < 0 ||
                   add_exploration_ledger(module) < 0 || add_resolve_constants() < 0))
        Py_CLEAR(module);
    return module;
}
