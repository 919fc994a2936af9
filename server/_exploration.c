/* The exploration budget of a Rank decision, and the per-process state it depends on.
 *
 * exploration_budget: the policy's rule, the one implementation (aura.server.decision.exploration_budget
 * wraps it): the global budget, throttled when the process serves more than throttle_rps requests per second,
 * and 0 once the visitor's share of explored decisions reached the per-visitor cap.
 * ExplorationLedger: what the rule needs at run time, per process: each visitor's explored and total decisions
 * (least recently seen visitors forgotten past `capacity`) and the request rate over the last completed
 * one-second window. serve_slate asks it for a decision's budget and tells it whether the decision explored,
 * so Rank runs no Python for either. Callers hold the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <time.h>

#include "_native.h"

#define NO_SLOT ((Py_ssize_t)-1)

typedef struct {
    PyObject_HEAD
    double global_budget, per_user_cap, throttle_rps;
    Py_ssize_t capacity;
    PyObject *slots; /* dict: anon_id -> its slot (int) */
    /* Per slot: the visitor, its decisions and explored decisions, and its neighbours in recency order. */
    PyObject **visitors;
    int64_t *decisions, *explored;
    Py_ssize_t *newer, *older;
    Py_ssize_t used, allocated, newest, oldest;
    /* The rate meter: requests counted in the current whole second `window`, and the last completed one's. */
    int64_t window, count;
    double rate;
} ExplorationLedger;

static double rule(double global_budget, double per_user_cap, double throttle_rps, double share, double rps) {
    if (share >= per_user_cap) return 0.0;
    return rps > throttle_rps ? global_budget * (throttle_rps / rps) : global_budget;
}

double monotonic_seconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

/* The visitor's slot, or NO_SLOT (also for an error, with an exception set). */
static Py_ssize_t slot_of(ExplorationLedger *self, PyObject *anon_id) {
    PyObject *slot = PyDict_GetItemWithError(self->slots, anon_id);
    return slot ? PyLong_AsSsize_t(slot) : NO_SLOT;
}

/* The visitor's explored / total decisions into *share (0 for one not seen); 0, or -1 with an exception set. */
static int visitor_share(ExplorationLedger *self, PyObject *anon_id, double *share) {
    Py_ssize_t slot = slot_of(self, anon_id);
    if (slot == NO_SLOT) {
        *share = 0.0;
        return PyErr_Occurred() ? -1 : 0;
    }
    *share = (double)self->explored[slot] / (double)self->decisions[slot];
    return 0;
}

static void unlink_slot(ExplorationLedger *self, Py_ssize_t slot) {
    Py_ssize_t newer = self->newer[slot], older = self->older[slot];
    if (newer != NO_SLOT) self->older[newer] = older;
    else self->newest = older;
    if (older != NO_SLOT) self->newer[older] = newer;
    else self->oldest = newer;
}

static void link_newest(ExplorationLedger *self, Py_ssize_t slot) {
    self->newer[slot] = NO_SLOT;
    self->older[slot] = self->newest;
    if (self->newest != NO_SLOT) self->newer[self->newest] = slot;
    self->newest = slot;
    if (self->oldest == NO_SLOT) self->oldest = slot;
}

static int grow(ExplorationLedger *self) {
    Py_ssize_t allocated = self->allocated ? self->allocated * 2 : 1024;
    if (allocated > self->capacity) allocated = self->capacity;
    PyObject **visitors = PyMem_Realloc(self->visitors, (size_t)allocated * sizeof(PyObject *));
    if (visitors) self->visitors = visitors;
    int64_t *decisions = PyMem_Realloc(self->decisions, (size_t)allocated * sizeof(int64_t));
    if (decisions) self->decisions = decisions;
    int64_t *explored = PyMem_Realloc(self->explored, (size_t)allocated * sizeof(int64_t));
    if (explored) self->explored = explored;
    Py_ssize_t *newer = PyMem_Realloc(self->newer, (size_t)allocated * sizeof(Py_ssize_t));
    if (newer) self->newer = newer;
    Py_ssize_t *older = PyMem_Realloc(self->older, (size_t)allocated * sizeof(Py_ssize_t));
    if (older) self->older = older;
    if (!visitors || !decisions || !explored || !newer || !older) {
        PyErr_NoMemory();
        return -1;
    }
    self->allocated = allocated;
    return 0;
}

/* A slot for a visitor not seen yet: a free one, else the least recently seen visitor's; NO_SLOT on error. */
static Py_ssize_t new_slot(ExplorationLedger *self, PyObject *anon_id) {
    int fresh = self->used < self->capacity;
    if (fresh && self->used == self->allocated && grow(self) < 0) return NO_SLOT;
    Py_ssize_t slot = fresh ? self->used : self->oldest;
    PyObject *index = PyLong_FromSsize_t(slot);
    int stored = index ? PyDict_SetItem(self->slots, anon_id, index) : -1;
    Py_XDECREF(index);
    if (stored < 0) return NO_SLOT;
    if (fresh) {
        self->used++;
    } else {
        if (PyDict_DelItem(self->slots, self->visitors[slot]) < 0) return NO_SLOT;
        unlink_slot(self, slot);
        Py_DECREF(self->visitors[slot]);
    }
    self->visitors[slot] = Py_NewRef(anon_id);
    self->decisions[slot] = self->explored[slot] = 0;
    link_newest(self, slot);
    return slot;
}

double ledger_budget(PyObject *ledger, PyObject *anon_id, double now) {
    ExplorationLedger *self = (ExplorationLedger *)ledger;
    int64_t second = (int64_t)floor(now);
    if (second != self->window) {
        self->rate = second == self->window + 1 ? (double)self->count : 0.0;
        self->window = second;
        self->count = 0;
    }
    self->count++;
    double share = 0.0;
    if (PyUnicode_GET_LENGTH(anon_id) && visitor_share(self, anon_id, &share) < 0) return -1.0;
    return rule(self->global_budget, self->per_user_cap, self->throttle_rps, share, self->rate);
}

int ledger_record(PyObject *ledger, PyObject *anon_id, int explored) {
    ExplorationLedger *self = (ExplorationLedger *)ledger;
    if (!PyUnicode_GET_LENGTH(anon_id)) return 0;
    Py_ssize_t slot = slot_of(self, anon_id);
    if (slot == NO_SLOT) {
        if (PyErr_Occurred() || (slot = new_slot(self, anon_id)) == NO_SLOT) return -1;
    } else if (slot != self->newest) {
        unlink_slot(self, slot);
        link_newest(self, slot);
    }
    self->decisions[slot]++;
    self->explored[slot] += explored != 0;
    return 0;
}

static PyTypeObject ExplorationLedgerType;

int is_exploration_ledger(PyObject *object) { return PyObject_TypeCheck(object, &ExplorationLedgerType); }

static PyObject *ExplorationLedger_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"global_budget", "per_user_cap", "throttle_rps", "capacity", NULL};
    double global_budget, per_user_cap, throttle_rps;
    Py_ssize_t capacity = 100000;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "ddd|n:ExplorationLedger", keywords, &global_budget,
                                     &per_user_cap, &throttle_rps, &capacity))
        return NULL;
    if (!(global_budget >= 0.0 && global_budget <= 1.0 && per_user_cap >= 0.0 && per_user_cap <= 1.0 &&
          throttle_rps > 0.0) ||
        capacity < 1) {
        PyErr_SetString(PyExc_ValueError, "global_budget and per_user_cap must be in [0, 1], throttle_rps above 0 "
                                          "(inf: no throttle) and capacity at least 1");
        return NULL;
    }
    ExplorationLedger *self = (ExplorationLedger *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->global_budget = global_budget;
    self->per_user_cap = per_user_cap;
    self->throttle_rps = throttle_rps;
    self->capacity = capacity;
    self->newest = self->oldest = NO_SLOT;
    self->window = (int64_t)monotonic_seconds();
    if (!(self->slots = PyDict_New())) Py_CLEAR(self);
    return (PyObject *)self;
}

static void ExplorationLedger_dealloc(ExplorationLedger *self) {
    for (Py_ssize_t slot = 0; slot < self->used; slot++) Py_XDECREF(self->visitors[slot]);
    PyMem_Free(self->visitors);
    PyMem_Free(self->decisions);
    PyMem_Free(self->explored);
    PyMem_Free(self->newer);
    PyMem_Free(self->older);
    Py_XDECREF(self->slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int check_visitor(PyObject *anon_id) {
    if (PyUnicode_Check(anon_id)) return 0;
    PyErr_SetString(PyExc_TypeError, "anon_id must be a str");
    return -1;
}

PyDoc_STRVAR(share_doc, "share(anon_id)\n--\n\nThe visitor's explored / total decisions so far (0 for one not seen).");

static PyObject *ExplorationLedger_share(ExplorationLedger *self, PyObject *anon_id) {
    double share;
    if (check_visitor(anon_id) < 0 || visitor_share(self, anon_id, &share) < 0) return NULL;
    return PyFloat_FromDouble(share);
}

PyDoc_STRVAR(record_doc, "record(anon_id, explored)\n--\n\n"
                         "Count one decision for the visitor (none for \"\"), which becomes the most recently seen.");

static PyObject *ExplorationLedger_record(ExplorationLedger *self, PyObject *const *args, Py_ssize_t nargs) {
    if (check_arg_count("record", nargs, 2) < 0 || check_visitor(args[0]) < 0) return NULL;
    int explored = PyObject_IsTrue(args[1]);
    if (explored < 0 || ledger_record((PyObject *)self, args[0], explored) < 0) return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(budget_doc, "budget(anon_id, now)\n--\n\n"
                         "Count a request at monotonic time `now` (seconds; serve_slate reads the clock) and return\n"
                         "the exploration budget of its decision for the visitor.");

static PyObject *ExplorationLedger_budget(ExplorationLedger *self, PyObject *const *args, Py_ssize_t nargs) {
    if (check_arg_count("budget", nargs, 2) < 0 || check_visitor(args[0]) < 0) return NULL;
    double now = PyFloat_AsDouble(args[1]);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    double budget = ledger_budget((PyObject *)self, args[0], now);
    return budget < 0.0 ? NULL : PyFloat_FromDouble(budget);
}

static Py_ssize_t ExplorationLedger_len(ExplorationLedger *self) { return self->used; }

static PyMethodDef ExplorationLedger_methods[] = {
    {"share", (PyCFunction)ExplorationLedger_share, METH_O, share_doc},
    {"record", (PyCFunction)(void (*)(void))ExplorationLedger_record, METH_FASTCALL, record_doc},
    {"budget", (PyCFunction)(void (*)(void))ExplorationLedger_budget, METH_FASTCALL, budget_doc},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods ExplorationLedger_sequence = {.sq_length = (lenfunc)ExplorationLedger_len};

static PyTypeObject ExplorationLedgerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "aura.server._native.ExplorationLedger",
    .tp_doc = PyDoc_STR("ExplorationLedger(global_budget, per_user_cap, throttle_rps, capacity=100000)\n--\n\n"
                        "Per process: each visitor's explored and total decisions (the `capacity` most recently\n"
                        "seen visitors) and the request rate, for the exploration budget of each decision."),
    .tp_basicsize = sizeof(ExplorationLedger),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = ExplorationLedger_new,
    .tp_dealloc = (destructor)ExplorationLedger_dealloc,
    .tp_methods = ExplorationLedger_methods,
    .tp_as_sequence = &ExplorationLedger_sequence,
};

const char exploration_budget_doc[] =
    "exploration_budget(global_budget, per_user_cap, throttle_rps, share, requests_per_second)\n--\n\n"
    "The exploration budget of one decision: 0 when the visitor's share of explored decisions reached\n"
    "per_user_cap; else global_budget, scaled by throttle_rps / requests_per_second above throttle_rps.";

PyObject *exploration_budget(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (check_arg_count("exploration_budget", nargs, 5) < 0) return NULL;
    double values[5];
    for (int i = 0; i < 5; i++) values[i] = PyFloat_AsDouble(args[i]);
    if (PyErr_Occurred()) return NULL;
    return PyFloat_FromDouble(rule(values[0], values[1], values[2], values[3], values[4]));
}

int add_exploration_ledger(PyObject *module) {
    if (PyType_Ready(&ExplorationLedgerType) < 0) return -1;
    return PyModule_AddObjectRef(module, "ExplorationLedger", (PyObject *)&ExplorationLedgerType);
}
