/* The functions of aura.server._native defined outside _native.c (request parsing and request ids: _request.c). */
#ifndef AURA_NATIVE_H
#define AURA_NATIVE_H

#include <Python.h>

extern const char parse_rank_request_doc[];
PyObject *parse_rank_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

extern const char encode_request_id_doc[];
PyObject *encode_request_id(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

#endif
