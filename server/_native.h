/* Shared by the sources of aura.server._native: the argument check, the Slate, and what _request.c (request parsing
 * and request ids), _resolve.c (segment resolution and plan lookup), _exploration.c (the exploration budget) and
 * _decision_log.c (the decision log's column buffers) define. */
#ifndef AURA_NATIVE_H
#define AURA_NATIVE_H

#include <Python.h>
#include <stdint.h>

/* 0, or -1 with a TypeError when a METH_FASTCALL function got other than `expected` arguments. */
static inline int check_arg_count(const char *function, Py_ssize_t nargs, Py_ssize_t expected) {
    if (nargs == expected) return 0;
    PyErr_Format(PyExc_TypeError, "%s takes %zd arguments (%zd given)", function, expected, nargs);
    return -1;
}

/* A slate, best first, as C arrays: per slot its content row, score and propensity; the explored slot or -1. */
typedef struct {
    Py_ssize_t count, explored_slot;
    const int64_t *rows;
    const double *scores, *propensities;
} Slate;

/* The Slate of Python lists `rows` (ints), `scores` and `propensities` (floats) of one length, in arrays of one
 * PyMem block (*block, which the caller frees with PyMem_Free); 0, or -1 with an exception set. */
int slate_of_lists(PyObject *rows, PyObject *scores, PyObject *propensities, Py_ssize_t explored_slot, Slate *slate,
                   void **block);

extern const char parse_rank_request_doc[];
PyObject *parse_rank_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

extern const char encode_request_id_doc[];
PyObject *encode_request_id(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

/* The request id text of a slate: `header` the five ints of encode_request_id after `mac` (decided_at_ms, nonce,
 * bundle_tag, surface_index, segment_index), `fingerprints[rows[i]]` each item's fingerprint. */
PyObject *request_id_of(PyObject *mac, PyObject *const *header, PyObject *fingerprints, const int64_t *rows,
                        Py_ssize_t count);

/* DecisionColumns.append of `columns` (a DecisionColumns, else TypeError): `fields` its first 23 arguments (up to
 * content_ids), the slate in place of the last four. */
PyObject *decision_columns_append(PyObject *columns, PyObject *const *fields, const Slate *slate);

extern const char resolve_segment_doc[];
PyObject *resolve_segment(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

extern const char planned_slate_doc[];
PyObject *planned_slate(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

/* Creates the interned strings _resolve.c compares and returns; 0, or -1 with an error. */
int add_resolve_constants(void);

/* The ExplorationLedger (_exploration.c): whether `object` is one; a decision's exploration budget for the visitor
 * `anon_id` (a str), counting the request at monotonic_seconds() `now` (-1 with an exception set on error); and
 * counting the decision, explored or not (0, or -1 with an exception set). */
int is_exploration_ledger(PyObject *object);
double monotonic_seconds(void);
double ledger_budget(PyObject *ledger, PyObject *anon_id, double now);
int ledger_record(PyObject *ledger, PyObject *anon_id, int explored);

extern const char exploration_budget_doc[];
PyObject *exploration_budget(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

/* Adds the ExplorationLedger type (_exploration.c) to the module; 0, or -1 with an error. */
int add_exploration_ledger(PyObject *module);

/* Adds the DecisionColumns type (_decision_log.c) to the module; 0, or -1 with an error. */
int add_decision_columns(PyObject *module);

/* Adds the Rank API's limits (MAX_ID_LENGTH, ...) to the module as int constants; 0, or -1 with an error. */
int add_request_limits(PyObject *module);

#endif
