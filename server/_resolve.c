/* The front of a Rank decision: the visitor's segment, and the memoized slate plan of the request's kind.
 *
 * resolve_segment is the one implementation of segment resolution (aura.server.decision.resolve_segment wraps
 * it for decide()); planned_slate looks the request's plan up in the serving index's memo, so a request whose
 * kind was seen before reaches serve_slate without running Python. A miss returns None and Python builds the
 * plan (aura.server.decision.slate_plan), which stores it under the same key.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_native.h"

/* The fields of aura.server.decision.SegmentResolver, by position. */
enum {
    RESOLVER_ASSIGNMENTS, RESOLVER_COLD_STARTS, RESOLVER_MATCH_COLD_START, RESOLVER_CONTEXT_KEYS, RESOLVER_USE_RULES,
    RESOLVER_ASSIGNMENT_THRESHOLD, RESOLVER_HOLDOUT_BELOW, RESOLVER_CONSENT_GATE, RESOLVER_CONSENT_REQUIRED,
    RESOLVER_GLOBAL_SEGMENT, RESOLVER_FIELDS
};
/* The RankQuery fields read here. */
enum {
    QUERY_SURFACE_ID = 0, QUERY_ANON_ID = 2, QUERY_DEVICE = 3, QUERY_COUNTRY = 6, QUERY_CONTEXT = 9, QUERY_CONSENT = 10,
    QUERY_CANDIDATES = 11, QUERY_EXPLAIN = 12, QUERY_FIELDS = 16
};
/* The request values of a cold-start rule key, in the order of aura.bundle.format.COLD_START_KEYS (device,
 * referrer class, page type, country, time of day, campaign): RankQuery fields 3 to 8. */
#define COLD_START_FIRST 3
#define COLD_START_FIELDS 6
#define COLD_START_CACHE_SIZE 4096
#define HIGH_CONFIDENCE 0.8 /* aura.server.decision.HIGH_CONFIDENCE */

static PyObject *PERSONALIZATION, *ASSIGNMENT, *COLD_START, *POPULARITY, *NO_CONSENT, *EMPTY, *CONFIDENCE, *SEGMENT_ID;

/* A resolved segment: `segment_id` and `source` are borrowed. */
typedef struct {
    PyObject *segment_id, *source;
    double confidence;
    int holdout;
} Resolution;

/* mapping.get(key, "") for a dict or any mapping; a new reference, or NULL with an exception set. */
static PyObject *get_or_empty(PyObject *mapping, PyObject *key) {
    if (PyDict_Check(mapping)) {
        PyObject *value = PyDict_GetItemWithError(mapping, key);
        if (value) return Py_NewRef(value);
        return PyErr_Occurred() ? NULL : Py_NewRef(EMPTY);
    }
    PyObject *value = PyObject_GetItem(mapping, key);
    if (value || !PyErr_ExceptionMatches(PyExc_KeyError)) return value;
    PyErr_Clear();
    return Py_NewRef(EMPTY);
}

/* The cold-start match of the query, memoized: a borrowed (segment_id, confidence) tuple, Py_None, or NULL with an
 * exception set. */
static PyObject *cold_start(PyObject *resolver, PyObject *query) {
    PyObject *context_keys = PyTuple_GET_ITEM(resolver, RESOLVER_CONTEXT_KEYS);
    PyObject *memo = PyTuple_GET_ITEM(resolver, RESOLVER_COLD_STARTS);
    if (!PyTuple_Check(context_keys) || !PyDict_Check(memo)) {
        PyErr_SetString(PyExc_TypeError, "context_keys must be a tuple and cold_starts a dict");
        return NULL;
    }
    Py_ssize_t n_context = PyTuple_GET_SIZE(context_keys);
    PyObject *values = PyTuple_New(COLD_START_FIELDS + n_context);
    if (!values) return NULL;
    for (Py_ssize_t i = 0; i < COLD_START_FIELDS; i++)
        PyTuple_SET_ITEM(values, i, Py_NewRef(PyTuple_GET_ITEM(query, COLD_START_FIRST + i)));
    for (Py_ssize_t i = 0; i < n_context; i++) {
        PyObject *value = get_or_empty(PyTuple_GET_ITEM(query, QUERY_CONTEXT), PyTuple_GET_ITEM(context_keys, i));
        if (!value) {
            Py_DECREF(values);
            return NULL;
        }
        PyTuple_SET_ITEM(values, COLD_START_FIELDS + i, value);
    }
    PyObject *match = PyDict_GetItemWithError(memo, values);
    if (!match && !PyErr_Occurred()) {
        match = PyObject_CallOneArg(PyTuple_GET_ITEM(resolver, RESOLVER_MATCH_COLD_START), values);
        if (match) {
            if (PyDict_GET_SIZE(memo) >= COLD_START_CACHE_SIZE) PyDict_Clear(memo);
            int stored = PyDict_SetItem(memo, values, match);
            Py_DECREF(match); /* the memo holds it */
            if (stored < 0) match = NULL;
        }
    }
    Py_DECREF(values);
    return match;
}

/* Resolve the query's segment into `out`; 0, or -1 with an exception set (ConsentRequired among them). */
static int resolve(PyObject *resolver, PyObject *query, Resolution *out) {
    PyObject *global = PyTuple_GET_ITEM(resolver, RESOLVER_GLOBAL_SEGMENT);
    int consented = PySequence_Contains(PyTuple_GET_ITEM(query, QUERY_CONSENT), PERSONALIZATION);
    if (consented < 0) return -1;
    if (!consented) {
        int gate = PyObject_IsTrue(PyTuple_GET_ITEM(resolver, RESOLVER_CONSENT_GATE));
        if (gate < 0) return -1;
        if (gate) {
            PyErr_SetString(PyTuple_GET_ITEM(resolver, RESOLVER_CONSENT_REQUIRED),
                            "personalization consent is required: user_ctx.consent must include 'personalization'.");
            return -1;
        }
        *out = (Resolution){global, NO_CONSENT, 1.0, 0};
        return 0;
    }
    double threshold = PyFloat_AsDouble(PyTuple_GET_ITEM(resolver, RESOLVER_ASSIGNMENT_THRESHOLD));
    double holdout_below = PyFloat_AsDouble(PyTuple_GET_ITEM(resolver, RESOLVER_HOLDOUT_BELOW));
    int use_rules = PyObject_IsTrue(PyTuple_GET_ITEM(resolver, RESOLVER_USE_RULES));
    if (use_rules < 0 || PyErr_Occurred()) return -1;
    Resolution resolution = {global, POPULARITY, 1.0, 0};
    PyObject *anon_id = PyTuple_GET_ITEM(query, QUERY_ANON_ID);
    PyObject *assignment = NULL;
    int assigned = 0;
    if (PyUnicode_Check(anon_id) && PyUnicode_GET_LENGTH(anon_id) > 0) {
        assignment = PyDict_GetItemWithError(PyTuple_GET_ITEM(resolver, RESOLVER_ASSIGNMENTS), anon_id);
        if (!assignment && PyErr_Occurred()) return -1;
    }
    if (assignment) {
        PyObject *confidence = PyObject_GetAttr(assignment, CONFIDENCE);
        if (!confidence) return -1;
        double value = PyFloat_AsDouble(confidence);
        Py_DECREF(confidence);
        if (value == -1.0 && PyErr_Occurred()) return -1;
        if (value >= threshold) {
            PyObject *segment_id = PyObject_GetAttr(assignment, SEGMENT_ID);
            if (!segment_id) return -1;
            Py_DECREF(segment_id); /* the assignment, which the bundle holds, keeps it */
            resolution = (Resolution){segment_id, ASSIGNMENT, value, 0};
            assigned = 1;
        }
    }
    if (!assigned && use_rules) {
        PyObject *match = cold_start(resolver, query);
        if (!match) return -1;
        if (match != Py_None) {
            if (!PyTuple_Check(match) || PyTuple_GET_SIZE(match) != 2) {
                PyErr_SetString(PyExc_TypeError, "a cold-start match must be a (segment_id, confidence) tuple");
                return -1;
            }
            double value = PyFloat_AsDouble(PyTuple_GET_ITEM(match, 1));
            if (value == -1.0 && PyErr_Occurred()) return -1;
            resolution = (Resolution){PyTuple_GET_ITEM(match, 0), COLD_START, value, 0};
        }
    }
    if (resolution.confidence < holdout_below) resolution = (Resolution){global, resolution.source, 1.0, 1};
    *out = resolution;
    return 0;
}

static int check_arguments(const char *function, Py_ssize_t nargs, Py_ssize_t expected, PyObject *resolver,
                           PyObject *query) {
    if (check_arg_count(function, nargs, expected) < 0) return -1;
    if (!PyTuple_Check(resolver) || PyTuple_GET_SIZE(resolver) < RESOLVER_FIELDS || !PyTuple_Check(query) ||
        PyTuple_GET_SIZE(query) < QUERY_FIELDS) {
        PyErr_Format(PyExc_TypeError, "%s takes a SegmentResolver and a RankQuery", function);
        return -1;
    }
    return 0;
}

const char resolve_segment_doc[] =
    "resolve_segment(resolver, query)\n--\n\n"
    "The visitor's segment as (segment_id, confidence, source, holdout): without personalization consent the\n"
    "global segment (source no_consent), or ConsentRequired when the resolver's consent gate is on; else the\n"
    "precomputed assignment of the anon_id when its confidence reaches the threshold (assignment), else the\n"
    "cold-start rules of the request's context when the policy uses them (cold_start, memoized), else the global\n"
    "segment (popularity). A confidence below holdout_below holds the visitor out: the global segment at 1.0.\n"
    "resolver is an aura.server.decision.SegmentResolver, query a RankQuery.";

PyObject *resolve_segment(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (check_arguments("resolve_segment", nargs, 2, args[0], args[1]) < 0) return NULL;
    Resolution resolution;
    if (resolve(args[0], args[1], &resolution) < 0) return NULL;
    return Py_BuildValue("(OdOO)", resolution.segment_id, resolution.confidence, resolution.source,
                         resolution.holdout ? Py_True : Py_False);
}

const char planned_slate_doc[] =
    "planned_slate(resolver, plans, query)\n--\n\n"
    "(plan, confidence) when the memo `plans` (aura.server.serving.ServingIndex.plans) holds the slate plan of the\n"
    "query's kind, else None, also for queries that ask to explain or name candidates (their plans are not kept).\n"
    "The key is aura.server.decision.slate_plan's: surface, segment, source, holdout, confidence of at least 0.8,\n"
    "device, country and consent. Raises what resolve_segment raises.";

PyObject *planned_slate(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (check_arguments("planned_slate", nargs, 3, args[0], args[2]) < 0) return NULL;
    PyObject *plans = args[1], *query = args[2];
    if (!PyDict_Check(plans)) {
        PyErr_SetString(PyExc_TypeError, "plans must be a dict");
        return NULL;
    }
    int explain = PyObject_IsTrue(PyTuple_GET_ITEM(query, QUERY_EXPLAIN));
    Py_ssize_t candidates = PyObject_Length(PyTuple_GET_ITEM(query, QUERY_CANDIDATES));
    if (explain < 0 || candidates < 0) return NULL;
    if (explain || candidates) Py_RETURN_NONE;
    Resolution resolution;
    if (resolve(args[0], query, &resolution) < 0) return NULL;
    PyObject *key = PyTuple_Pack(8, PyTuple_GET_ITEM(query, QUERY_SURFACE_ID), resolution.segment_id,
                                 resolution.source, resolution.holdout ? Py_True : Py_False,
                                 resolution.confidence >= HIGH_CONFIDENCE ? Py_True : Py_False,
                                 PyTuple_GET_ITEM(query, QUERY_DEVICE), PyTuple_GET_ITEM(query, QUERY_COUNTRY),
                                 PyTuple_GET_ITEM(query, QUERY_CONSENT));
    if (!key) return NULL;
    PyObject *plan = PyDict_GetItemWithError(plans, key);
    Py_DECREF(key);
    if (!plan) {
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(Od)", plan, resolution.confidence);
}

int add_resolve_constants(void) {
    struct {
        PyObject **target;
        const char *text;
    } constants[] = {
        {&PERSONALIZATION, "personalization"}, {&ASSIGNMENT, "assignment"}, {&COLD_START, "cold_start"},
        {&POPULARITY, "popularity"},           {&NO_CONSENT, "no_consent"}, {&EMPTY, ""},
        {&CONFIDENCE, "confidence"},           {&SEGMENT_ID, "segment_id"},
    };
    for (size_t i = 0; i < sizeof constants / sizeof *constants; i++)
        if (!*constants[i].target && !(*constants[i].target = PyUnicode_InternFromString(constants[i].text)))
            return -1;
    return 0;
}
