/* Shared by the sources of aura.server._native: the argument check, and what _request.c (request parsing and
 * request ids) and _decision_log.c (the decision log's column buffers) define. */
#ifndef AURA_NATIVE_H
#define AURA_NATIVE_H

#include <Python.h>

/* 0, or -1 with a TypeError when a METH_FASTCALL function got other than `expected` arguments. */
static inline int check_arg_count(const char *function, Py_ssize_t nargs, Py_ssize_t expected) {
    if (nargs == expected) return 0;
    PyErr_Format(PyExc_TypeError, "%s takes %zd arguments (%zd given)", function, expected, nargs);
    return -1;
}

extern const char parse_rank_request_doc[];
PyObject *parse_rank_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

extern const char encode_request_id_doc[];
PyObject *encode_request_id(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

/* DecisionColumns.append of `columns` (a DecisionColumns, else TypeError) with the method's 27 arguments. */
PyObject *decision_columns_append(PyObject *columns, PyObject *const *args, Py_ssize_t nargs);

/* Adds the DecisionColumns type (_decision_log.c) to the module; 0, or -1 with an error. */
int add_decision_columns(PyObject *module);

/* Adds the Rank API's limits (MAX_ID_LENGTH, ...) to the module as int constants; 0, or -1 with an error. */
int add_request_limits(PyObject *module);

#endif
