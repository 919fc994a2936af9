/* DecisionColumns: the decision log's records, appended by Rank straight into Arrow-layout column buffers.
 *
 * Rank appends one decision per call; the log's writer thread takes every buffer at once and wraps them
 * as Arrow arrays without touching a record (aura.server.decision_log). Before, each record was a tuple of
 * Python objects that the writer converted field by field while holding the GIL the requests need.
 * The columns follow the `decisions` schema of aura.eventlog.SCHEMAS: strings as int32 offsets plus UTF-8
 * data, numbers as their little-endian values, booleans one byte each, lists as int32 offsets into their
 * child columns. Callers hold the GIL for every call, which is what makes append and take atomic.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_native.h"

typedef struct {
    char *data;
    size_t size, capacity;
} Buffer;

/* The buffers, in the order of BUFFER_NAMES. A string column is an offsets buffer then a data buffer. */
enum {
    EVENT_ID, EVENT_ID_DATA, TS, NODE_ID, NODE_ID_DATA, BUNDLE_VERSION, BUNDLE_VERSION_DATA,
    POLICY_VERSION, POLICY_VERSION_DATA, SURFACE_ID, SURFACE_ID_DATA, SEGMENT_ID, SEGMENT_ID_DATA,
    SEGMENT_SOURCE, SEGMENT_SOURCE_DATA, SEGMENT_CONFIDENCE, HOLDOUT, ANON_ID, ANON_ID_DATA, SESSION_ID,
    SESSION_ID_DATA, DEVICE, DEVICE_DATA, REFERRER_HOST, REFERRER_HOST_DATA, PAGE_TYPE, PAGE_TYPE_DATA,
    COUNTRY, COUNTRY_DATA, REGION, REGION_DATA, CONSENT, CONSENT_SCOPE, CONSENT_SCOPE_DATA, CONTEXT_JSON,
    CONTEXT_JSON_DATA, SEED, EXPLORATION_RATE, ELIGIBLE_COUNT, ITEMS, ITEM_CONTENT_ID, ITEM_CONTENT_ID_DATA,
    ITEM_POSITION, ITEM_SCORE, ITEM_PROPENSITY, ITEM_EXPLORED, N_BUFFERS
};

static const char *BUFFER_NAMES[N_BUFFERS] = {
    "event_id", "event_id.data", "ts", "node_id", "node_id.data", "bundle_version", "bundle_version.data",
    "policy_version", "policy_version.data", "surface_id", "surface_id.data", "segment_id", "segment_id.data",
    "segment_source", "segment_source.data", "segment_confidence", "holdout", "anon_id", "anon_id.data",
    "session_id", "session_id.data", "device", "device.data", "referrer_host", "referrer_host.data",
    "page_type", "page_type.data", "country", "country.data", "region", "region.data", "consent",
    "consent.scope", "consent.scope.data", "context_json", "context_json.data", "seed", "exploration_rate",
    "eligible_count", "items", "items.content_id", "items.content_id.data", "items.position", "items.score",
    "items.propensity", "items.explored",
};

/* Offsets buffers: they start with a 0, and each value appended to them ends an entry of their column. */
static const int OFFSET_BUFFERS[] = {
    EVENT_ID, NODE_ID, BUNDLE_VERSION, POLICY_VERSION, SURFACE_ID, SEGMENT_ID, SEGMENT_SOURCE, ANON_ID,
    SESSION_ID, DEVICE, REFERRER_HOST, PAGE_TYPE, COUNTRY, REGION, CONSENT, CONSENT_SCOPE, CONTEXT_JSON,
    ITEMS, ITEM_CONTENT_ID,
};

typedef struct {
    PyObject_HEAD
    Buffer buffers[N_BUFFERS];
    Py_ssize_t rows;
    Py_ssize_t batch_size;
    PyObject *on_full;
} DecisionColumns;

static int reserve(Buffer *buffer, size_t extra) {
    if (buffer->size + extra <= buffer->capacity) return 0;
    size_t capacity = buffer->capacity ? buffer->capacity : 256;
    while (capacity < buffer->size + extra) capacity *= 2;
    char *data = realloc(buffer->data, capacity);
    if (!data) {
        PyErr_NoMemory();
        return -1;
    }
    buffer->data = data;
    buffer->capacity = capacity;
    return 0;
}

static int put(Buffer *buffer, const void *value, size_t size) {
    if (reserve(buffer, size) < 0) return -1;
    memcpy(buffer->data + buffer->size, value, size);
    buffer->size += size;
    return 0;
}

/* Ends an entry of an offsets buffer at `end` (the size of its data, or of its child column). */
static int put_offset(Buffer *offsets, size_t end) {
    if (end > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "the decision log's buffered column passed 2 GiB");
        return -1;
    }
    int32_t value = (int32_t)end;
    return put(offsets, &value, sizeof value);
}

static Py_ssize_t entries(const Buffer *offsets) { return (Py_ssize_t)(offsets->size / sizeof(int32_t)) - 1; }

static int put_utf8(DecisionColumns *self, int column, const char *value, Py_ssize_t size) {
    Buffer *data = &self->buffers[column + 1];
    if (put(data, value, (size_t)size) < 0) return -1;
    return put_offset(&self->buffers[column], data->size);
}

static int put_str(DecisionColumns *self, int column, PyObject *value) {
    if (!PyUnicode_Check(value)) {
        PyErr_Format(PyExc_TypeError, "%s must be str", BUFFER_NAMES[column]);
        return -1;
    }
    Py_ssize_t size;
    const char *utf8 = PyUnicode_AsUTF8AndSize(value, &size);
    if (!utf8) return -1;
    return put_utf8(self, column, utf8, size);
}

static int put_double(DecisionColumns *self, int column, PyObject *value) {
    double number = PyFloat_AsDouble(value);
    if (number == -1.0 && PyErr_Occurred()) return -1;
    return put(&self->buffers[column], &number, sizeof number);
}

static int put_flag(DecisionColumns *self, int column, int flag) {
    uint8_t byte = (uint8_t)(flag != 0);
    return put(&self->buffers[column], &byte, 1);
}

/* The consent scopes, sorted as Python sorts str. */
static int put_consent(DecisionColumns *self, PyObject *consent) {
    PyObject *scopes = PySequence_List(consent);
    if (!scopes) return -1;
    int status = PyList_Sort(scopes);
    for (Py_ssize_t i = 0; status == 0 && i < PyList_GET_SIZE(scopes); i++)
        status = put_str(self, CONSENT_SCOPE, PyList_GET_ITEM(scopes, i));
    Py_DECREF(scopes);
    return status < 0 ? -1 : put_offset(&self->buffers[CONSENT], (size_t)entries(&self->buffers[CONSENT_SCOPE]));
}

/* A JSON string as orjson writes it: quotes, backslashes and control characters escaped, the rest as is. */
static int put_json_string(Buffer *out, PyObject *value) {
    if (!PyUnicode_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "context keys and values must be str");
        return -1;
    }
    Py_ssize_t size;
    const char *utf8 = PyUnicode_AsUTF8AndSize(value, &size);
    if (!utf8 || put(out, "\"", 1) < 0) return -1;
    static const char hex[] = "0123456789abcdef";
    for (Py_ssize_t i = 0; i < size; i++) {
        unsigned char c = (unsigned char)utf8[i];
        char escaped[6] = {'\\', 0};
        size_t length = 2;
        switch (c) {
        case '"': escaped[1] = '"'; break;
        case '\\': escaped[1] = '\\'; break;
        case '\n': escaped[1] = 'n'; break;
        case '\r': escaped[1] = 'r'; break;
        case '\t': escaped[1] = 't'; break;
        case '\b': escaped[1] = 'b'; break;
        case '\f': escaped[1] = 'f'; break;
        default:
            if (c >= 0x20) {
                length = 0;
            } else {
                memcpy(escaped + 1, "u00", 3);
                escaped[4] = hex[c >> 4];
                escaped[5] = hex[c & 15];
                length = 6;
            }
        }
        if (length ? put(out, escaped, length) < 0 : put(out, &utf8[i], 1) < 0) return -1;
    }
    return put(out, "\"", 1);
}

/* The context map as compact JSON in insertion order, or "" when it is empty. */
static int put_context(DecisionColumns *self, PyObject *context) {
    if (!PyDict_Check(context) && !PyObject_HasAttrString(context, "keys")) {
        PyErr_SetString(PyExc_TypeError, "context must be a mapping");
        return -1;
    }
    PyObject *map = PyDict_Check(context) ? Py_NewRef(context) : PyDict_New();
    if (!map) return -1;
    if (map != context && PyDict_Merge(map, context, 1) < 0) {
        Py_DECREF(map);
        return -1;
    }
    Buffer *data = &self->buffers[CONTEXT_JSON_DATA];
    PyObject *key, *value;
    Py_ssize_t position = 0;
    int status = 0;
    const char *separator = "{";
    while (status == 0 && PyDict_Next(map, &position, &key, &value)) {
        status = put(data, separator, 1);
        separator = ",";
        if (status == 0) status = put_json_string(data, key);
        if (status == 0) status = put(data, ":", 1);
        if (status == 0) status = put_json_string(data, value);
    }
    if (status == 0 && PyDict_GET_SIZE(map)) status = put(data, "}", 1);
    Py_DECREF(map);
    return status < 0 ? -1 : put_offset(&self->buffers[CONTEXT_JSON], data->size);
}

/* The slate, best first: content_ids[rows[slot]], slot + 1, its score, its propensity, slot == explored. */
static int put_items(DecisionColumns *self, PyObject *content_ids, const Slate *slate) {
    for (Py_ssize_t slot = 0; slot < slate->count; slot++) {
        int64_t row = slate->rows[slot];
        if (row < 0) {
            PyErr_SetString(PyExc_IndexError, "a content row of the slate is negative");
            return -1;
        }
        PyObject *content_id = PySequence_GetItem(content_ids, (Py_ssize_t)row);
        if (!content_id) return -1;
        int status = put_str(self, ITEM_CONTENT_ID, content_id);
        Py_DECREF(content_id);
        int32_t position = (int32_t)slot + 1;
        if (status < 0 || put(&self->buffers[ITEM_POSITION], &position, sizeof position) < 0 ||
            put(&self->buffers[ITEM_SCORE], &slate->scores[slot], sizeof(double)) < 0 ||
            put(&self->buffers[ITEM_PROPENSITY], &slate->propensities[slot], sizeof(double)) < 0 ||
            put_flag(self, ITEM_EXPLORED, slot == slate->explored_slot) < 0)
            return -1;
    }
    return put_offset(&self->buffers[ITEMS], (size_t)entries(&self->buffers[ITEM_CONTENT_ID]));
}

static int reset(DecisionColumns *self) {
    for (int i = 0; i < N_BUFFERS; i++) self->buffers[i].size = 0;
    for (size_t i = 0; i < sizeof OFFSET_BUFFERS / sizeof *OFFSET_BUFFERS; i++)
        if (put_offset(&self->buffers[OFFSET_BUFFERS[i]], 0) < 0) return -1;
    self->rows = 0;
    return 0;
}

static PyObject *DecisionColumns_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"batch_size", "on_full", NULL};
    Py_ssize_t batch_size;
    PyObject *on_full;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "nO:DecisionColumns", keywords, &batch_size, &on_full))
        return NULL;
    if (batch_size < 1 || !PyCallable_Check(on_full)) {
        PyErr_SetString(PyExc_ValueError, "batch_size must be at least 1 and on_full callable");
        return NULL;
    }
    DecisionColumns *self = (DecisionColumns *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->batch_size = batch_size;
    self->on_full = Py_NewRef(on_full);
    if (reset(self) < 0) Py_CLEAR(self);
    return (PyObject *)self;
}

static void DecisionColumns_dealloc(DecisionColumns *self) {
    for (int i = 0; i < N_BUFFERS; i++) free(self->buffers[i].data);
    Py_XDECREF(self->on_full);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(append_doc,
"append(event_id, ts_ms, node_id, bundle_version, policy_version, surface_id, segment_id, segment_source,\n"
"       segment_confidence, holdout, anon_id, session_id, device, referrer_host, page_type, country, region,\n"
"       consent, context, seed, exploration_rate, eligible_count, content_ids, rows, scores, propensities,\n"
"       explored_slot)\n"
"--\n\n"
"Append one decision: the fields of the decisions schema in its order, with consent as a set of str\n"
"(sorted here), context as a str -> str mapping (written as JSON here; \"\" when empty) and the slate as\n"
"content rows into the bundle's content_ids with their scores and propensities, best first, and the slot\n"
"exploration filled (-1 for none). Calls on_full() when the buffer reaches batch_size rows. A record that\n"
"fails leaves nothing behind.");

/* Appends one decision: `args` the first 23 arguments of append, the slate in C arrays. */
static PyObject *append_slate(DecisionColumns *self, PyObject *const *args, const Slate *slate) {
    size_t sizes[N_BUFFERS];
    for (int i = 0; i < N_BUFFERS; i++) sizes[i] = self->buffers[i].size;
    static const int STRINGS_FIRST[] = {NODE_ID, BUNDLE_VERSION, POLICY_VERSION, SURFACE_ID, SEGMENT_ID,
                                        SEGMENT_SOURCE};
    static const int STRINGS_SECOND[] = {ANON_ID, SESSION_ID, DEVICE, REFERRER_HOST, PAGE_TYPE, COUNTRY, REGION};
    int64_t ts = PyLong_AsLongLong(args[1]);
    uint64_t seed = PyLong_AsUnsignedLongLong(args[19]);
    long eligible = PyLong_AsLong(args[21]);
    int holdout = PyObject_IsTrue(args[9]);
    if (PyErr_Occurred()) return NULL;
    if (eligible < 0 || eligible > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "eligible_count does not fit the int32 column");
        return NULL;
    }
    int32_t eligible_count = (int32_t)eligible;
    int status = put_str(self, EVENT_ID, args[0]);
    if (status == 0) status = put(&self->buffers[TS], &ts, sizeof ts);
    for (size_t i = 0; status == 0 && i < sizeof STRINGS_FIRST / sizeof *STRINGS_FIRST; i++)
        status = put_str(self, STRINGS_FIRST[i], args[2 + i]);
    if (status == 0) status = put_double(self, SEGMENT_CONFIDENCE, args[8]);
    if (status == 0) status = put_flag(self, HOLDOUT, holdout);
    for (size_t i = 0; status == 0 && i < sizeof STRINGS_SECOND / sizeof *STRINGS_SECOND; i++)
        status = put_str(self, STRINGS_SECOND[i], args[10 + i]);
    if (status == 0) status = put_consent(self, args[17]);
    if (status == 0) status = put_context(self, args[18]);
    if (status == 0) status = put(&self->buffers[SEED], &seed, sizeof seed);
    if (status == 0) status = put_double(self, EXPLORATION_RATE, args[20]);
    if (status == 0) status = put(&self->buffers[ELIGIBLE_COUNT], &eligible_count, sizeof eligible_count);
    if (status == 0) status = put_items(self, args[22], slate);
    if (status < 0) {
        for (int i = 0; i < N_BUFFERS; i++) self->buffers[i].size = sizes[i];
        return NULL;
    }
    if (++self->rows == self->batch_size) {
        PyObject *result = PyObject_CallNoArgs(self->on_full);
        if (!result) return NULL;
        Py_DECREF(result);
    }
    Py_RETURN_NONE;
}

static PyObject *DecisionColumns_append(DecisionColumns *self, PyObject *const *args, Py_ssize_t nargs) {
    if (check_arg_count("append", nargs, 27) < 0) return NULL;
    Py_ssize_t explored_slot = PyLong_AsSsize_t(args[26]);
    if (explored_slot == -1 && PyErr_Occurred()) return NULL;
    Slate slate;
    void *block = NULL;
    if (slate_of_lists(args[23], args[24], args[25], explored_slot, &slate, &block) < 0) return NULL;
    PyObject *result = append_slate(self, args, &slate);
    PyMem_Free(block);
    return result;
}

PyDoc_STRVAR(take_doc,
"take()\n"
"--\n\n"
"Everything appended so far as (rows, {buffer name: bytes}), and an empty buffer from now on.");

static PyObject *DecisionColumns_take(DecisionColumns *self, PyObject *unused) {
    (void)unused;
    PyObject *buffers = PyDict_New();
    if (!buffers) return NULL;
    for (int i = 0; i < N_BUFFERS; i++) {
        PyObject *bytes = PyBytes_FromStringAndSize(self->buffers[i].data, (Py_ssize_t)self->buffers[i].size);
        if (!bytes || PyDict_SetItemString(buffers, BUFFER_NAMES[i], bytes) < 0) {
            Py_XDECREF(bytes);
            Py_DECREF(buffers);
            return NULL;
        }
        Py_DECREF(bytes);
    }
    PyObject *result = Py_BuildValue("(nN)", self->rows, buffers);
    if (result && reset(self) < 0) Py_CLEAR(result);
    return result;
}

static Py_ssize_t DecisionColumns_len(DecisionColumns *self) { return self->rows; }

static PyMethodDef DecisionColumns_methods[] = {
    {"append", (PyCFunction)(void (*)(void))DecisionColumns_append, METH_FASTCALL, append_doc},
    {"take", (PyCFunction)DecisionColumns_take, METH_NOARGS, take_doc},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods DecisionColumns_sequence = {.sq_length = (lenfunc)DecisionColumns_len};

static PyTypeObject DecisionColumnsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "aura.server._native.DecisionColumns",
    .tp_doc = PyDoc_STR("DecisionColumns(batch_size, on_full)\n--\n\n"
                        "Decisions buffered as Arrow-layout columns of the decisions schema (see append)."),
    .tp_basicsize = sizeof(DecisionColumns),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = DecisionColumns_new,
    .tp_dealloc = (destructor)DecisionColumns_dealloc,
    .tp_methods = DecisionColumns_methods,
    .tp_as_sequence = &DecisionColumns_sequence,
};

PyObject *decision_columns_append(PyObject *columns, PyObject *const *fields, const Slate *slate) {
    if (!PyObject_TypeCheck(columns, &DecisionColumnsType)) {
        PyErr_SetString(PyExc_TypeError, "columns must be a DecisionColumns");
        return NULL;
    }
    return append_slate((DecisionColumns *)columns, fields, slate);
}

int add_decision_columns(PyObject *module) {
    if (PyType_Ready(&DecisionColumnsType) < 0) return -1;
    return PyModule_AddObjectRef(module, "DecisionColumns", (PyObject *)&DecisionColumnsType);
}
