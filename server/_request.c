/* The per-request glue of the Rank path, compiled: a RankRequest from its wire bytes to a validated
 * RankQuery, and a decision's request id. In the interpreter these cost more than the decision itself.
 *
 * parse_rank_request reads proto/aura/v1/decision_service.proto's RankRequest (and common.proto's
 * UserContext and Geo) with proto3 semantics: fields in any order, the last value of a repeated scalar
 * wins, repeated embedded messages merge, unknown fields are skipped, strings must be UTF-8. It applies
 * every validation rule of the Rank API and raises the caller's error types with the API's messages.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "_native.h"

#define MAX_ID_LENGTH 128
#define MAX_CANDIDATES 1000
#define MAX_CONSENT 32
#define MAX_CONSENT_LENGTH 64
#define MAX_CONTEXT_ENTRIES 32
#define MAX_CONTEXT_KEY 64
#define MAX_CONTEXT_VALUE 256
#define MAX_REFERRER 2048
#define MAX_PAGE_TYPE 64
#define MAX_REGION 64

int add_request_limits(PyObject *module) {
#define ADD(name) PyModule_AddIntConstant(module, #name, name) < 0
    if (ADD(MAX_ID_LENGTH) || ADD(MAX_CANDIDATES) || ADD(MAX_CONSENT) || ADD(MAX_CONSENT_LENGTH) ||
        ADD(MAX_CONTEXT_ENTRIES) || ADD(MAX_CONTEXT_KEY) || ADD(MAX_CONTEXT_VALUE) || ADD(MAX_REFERRER) ||
        ADD(MAX_PAGE_TYPE) || ADD(MAX_REGION))
        return -1;
    return 0;
#undef ADD
}

typedef struct {
    const char *data;
    Py_ssize_t size;
} Slice;

typedef struct {
    Slice anon_id, session_id, device, referrer, page_type, country, region;
} UserContext;

typedef struct {
    Slice surface_id;
    UserContext user;
    uint64_t limit;
    int explain;
    PyObject *consent;    /* list of str, at most MAX_CONSENT + 1 */
    PyObject *candidates; /* list of str, at most MAX_CANDIDATES + 1 */
    PyObject *context;    /* dict of str -> str */
    int consent_too_long;
    int bad_candidate;
    int bad_context_entry;
} Request;

enum { VARINT = 0, FIXED64 = 1, LENGTH_DELIMITED = 2, FIXED32 = 5 };

static int read_varint(const uint8_t **at, const uint8_t *end, uint64_t *value) {
    uint64_t result = 0;
    for (int shift = 0; shift < 64 && *at < end; shift += 7) {
        uint8_t byte = *(*at)++;
        result |= (uint64_t)(byte & 0x7F) << shift;
        if (!(byte & 0x80)) {
            *value = result;
            return 0;
        }
    }
    return -1;
}

/* The fields of one message, read in order. */
typedef struct {
    const uint8_t *at, *end;
    uint32_t number;
    int wire_type;
    Slice payload;   /* of a length-delimited field */
    uint64_t varint; /* of a varint field */
} Fields;

static Fields fields_of(Slice message) {
    Fields fields = {.at = (const uint8_t *)message.data, .end = (const uint8_t *)message.data + message.size};
    return fields;
}

/* 1 with the next field in `f` (the values of fixed-size fields skipped), 0 at the end of the message,
 * -1 when it is malformed. */
static int next_field(Fields *f) {
    uint64_t key, length;
    if (f->at >= f->end) return 0;
    if (read_varint(&f->at, f->end, &key) < 0 || (key >> 3) == 0 || (key >> 3) > 0x1FFFFFFF) return -1;
    f->number = (uint32_t)(key >> 3);
    f->wire_type = (int)(key & 7);
    switch (f->wire_type) {
        case VARINT:
            return read_varint(&f->at, f->end, &f->varint) < 0 ? -1 : 1;
        case FIXED64:
        case FIXED32: {
            Py_ssize_t size = f->wire_type == FIXED64 ? 8 : 4;
            if (f->end - f->at < size) return -1;
            f->at += size;
            return 1;
        }
        case LENGTH_DELIMITED:
            if (read_varint(&f->at, f->end, &length) < 0 || length > (uint64_t)(f->end - f->at)) return -1;
            f->payload.data = (const char *)f->at;
            f->payload.size = (Py_ssize_t)length;
            f->at += length;
            return 1;
        default: /* groups are not part of proto3 */
            return -1;
    }
}

static int parse_geo(Slice message, UserContext *user) {
    Fields f = fields_of(message);
    int more;
    while ((more = next_field(&f)) > 0) {
        if (f.wire_type != LENGTH_DELIMITED) continue;
        if (f.number == 1) user->country = f.payload;
        else if (f.number == 2) user->region = f.payload;
    }
    return more;
}

static PyObject *decoded(Slice slice) { return PyUnicode_DecodeUTF8(slice.data, slice.size, "strict"); }

static int parse_user_context(Slice message, Request *request) {
    UserContext *user = &request->user;
    Fields f = fields_of(message);
    int more;
    while ((more = next_field(&f)) > 0) {
        if (f.wire_type != LENGTH_DELIMITED) continue;
        switch (f.number) {
            case 1: user->anon_id = f.payload; break;
            case 2: user->session_id = f.payload; break;
            case 3: user->device = f.payload; break;
            case 4: user->referrer = f.payload; break;
            case 5: user->page_type = f.payload; break;
            case 6:
                if (PyList_GET_SIZE(request->consent) > MAX_CONSENT) break;
                PyObject *scope = decoded(f.payload);
                if (!scope) return -2;
                request->consent_too_long |= PyUnicode_GET_LENGTH(scope) > MAX_CONSENT_LENGTH;
                int failed = PyList_Append(request->consent, scope);
                Py_DECREF(scope);
                if (failed) return -2;
                break;
            case 7:
                if (parse_geo(f.payload, user) < 0) return -1;
                break;
        }
    }
    return more;
}

static int is_id_char(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || (c && strchr("._:@/+=-", c));
}

/* Whether a non-empty slice is a well-formed id: 1-128 of letters, digits and ._:@/+=- */
static int is_id(Slice value) {
    if (value.size < 1 || value.size > MAX_ID_LENGTH) return 0;
    for (Py_ssize_t i = 0; i < value.size; i++)
        if (!is_id_char((unsigned char)value.data[i])) return 0;
    return 1;
}

static int parse_context_entry(Slice message, Request *request) {
    Slice key = {"", 0}, value = {"", 0};
    Fields f = fields_of(message);
    int more;
    while ((more = next_field(&f)) > 0) {
        if (f.wire_type != LENGTH_DELIMITED) continue;
        if (f.number == 1) key = f.payload;
        else if (f.number == 2) value = f.payload;
    }
    if (more < 0) return -1;
    PyObject *key_str = decoded(key), *value_str = key_str ? decoded(value) : NULL;
    int failed = !value_str;
    if (!failed) {
        Py_ssize_t key_length = PyUnicode_GET_LENGTH(key_str);
        request->bad_context_entry |=
            key_length == 0 || key_length > MAX_CONTEXT_KEY || PyUnicode_GET_LENGTH(value_str) > MAX_CONTEXT_VALUE;
        /* Count entries past the cap without keeping them: the request is refused anyway. */
        if (PyDict_GET_SIZE(request->context) <= MAX_CONTEXT_ENTRIES)
            failed = PyDict_SetItem(request->context, key_str, value_str) < 0;
    }
    Py_XDECREF(key_str);
    Py_XDECREF(value_str);
    return failed ? -2 : 0;
}

/* 0, -1 when the bytes are not a RankRequest, -2 with a Python error set. */
static int parse_request(Slice message, Request *request) {
    Fields f = fields_of(message);
    int more;
    while ((more = next_field(&f)) > 0) {
        if (f.number == 4 && f.wire_type == VARINT) {
            request->limit = (uint32_t)f.varint; /* proto3 uint32: the value's low 32 bits */
            continue;
        }
        if (f.number == 6 && f.wire_type == VARINT) {
            request->explain = f.varint != 0;
            continue;
        }
        if (f.wire_type != LENGTH_DELIMITED) continue;
        int status = 0;
        switch (f.number) {
            case 1: request->surface_id = f.payload; break;
            case 2: status = parse_user_context(f.payload, request); break;
            case 3:
                if (PyList_GET_SIZE(request->candidates) > MAX_CANDIDATES) break;
                request->bad_candidate |= !is_id(f.payload);
                PyObject *candidate = decoded(f.payload);
                if (!candidate) return -2;
                status = PyList_Append(request->candidates, candidate) ? -2 : 0;
                Py_DECREF(candidate);
                break;
            case 5: status = parse_context_entry(f.payload, request); break;
        }
        if (status < 0) return status;
    }
    return more;
}

/* The caller's exception types: invalid requests, unknown surfaces. */
typedef struct {
    PyObject *invalid, *not_found;
} Errors;

static PyObject *refuse(PyObject *error, const char *format, ...) {
    va_list args;
    va_start(args, format);
    PyObject *message = PyUnicode_FromFormatV(format, args);
    va_end(args);
    if (message) {
        PyErr_SetObject(error, message);
        Py_DECREF(message);
    }
    return NULL;
}

static PyObject *lowered(PyObject *text) {
    return PyUnicode_GET_LENGTH(text) ? PyObject_CallMethod(text, "lower", NULL) : Py_NewRef(text);
}

static const char *const DEVICES[] = {"mobile", "desktop", "tablet"};
static const char *const TIMES_OF_DAY[] = {"morning", "afternoon", "evening", "night"};

static int one_of(PyObject *text, const char *const *names, int count) {
    for (int i = 0; i < count; i++)
        if (PyUnicode_CompareWithASCIIString(text, names[i]) == 0) return 1;
    return 0;
}

/* aura.context.time_of_day */
static const char *time_of_day(int hour) {
    if (hour >= 5 && hour < 12) return "morning";
    if (hour >= 12 && hour < 17) return "afternoon";
    if (hour >= 17 && hour < 22) return "evening";
    return "night";
}

static PyObject *unknown_surface(PyObject *surface_id, PyObject *surfaces, const Errors *errors) {
    PyObject *names = PySequence_List(surfaces), *separator = NULL, *joined = NULL;
    if (names && PyList_Sort(names) == 0 && (separator = PyUnicode_FromString(", ")))
        joined = PyUnicode_Join(separator, names);
    if (joined) refuse(errors->not_found, "unknown surface %R; configured surfaces: %U.", surface_id, joined);
    Py_XDECREF(names);
    Py_XDECREF(separator);
    Py_XDECREF(joined);
    return NULL;
}

/* The fields of the RankQuery in aura.server.decision.RankQuery's order, or NULL with an error set. */
static PyObject *query_fields(Request *request, PyObject *surfaces, PyObject *referrer_info, int hour,
                              const Errors *errors) {
    enum { SURFACE_ID, LIMIT, ANON_ID, DEVICE, REFERRER_CLASS, PAGE_TYPE, COUNTRY, TIME_OF_DAY, CAMPAIGN,
           CONTEXT, CONSENT, CANDIDATES, EXPLAIN, SESSION_ID, REFERRER_HOST, REGION, FIELD_COUNT };
    UserContext *user = &request->user;
    if (request->surface_id.size == 0) return refuse(errors->invalid, "surface_id is required.");
    PyObject *fields = PyTuple_New(FIELD_COUNT);
    if (!fields) return NULL;
#define SET(index, value)                        \
    do {                                         \
        PyObject *item_ = (value);               \
        if (!item_) goto fail;                   \
        PyTuple_SET_ITEM(fields, index, item_);  \
    } while (0)
#define FIELD(index) PyTuple_GET_ITEM(fields, index)
    SET(SURFACE_ID, decoded(request->surface_id));
    PyObject *surface = PyObject_GetItem(surfaces, FIELD(SURFACE_ID));
    if (!surface) {
        if (!PyErr_ExceptionMatches(PyExc_KeyError)) goto fail;
        PyErr_Clear();
        unknown_surface(FIELD(SURFACE_ID), surfaces, errors);
        goto fail;
    }
    PyObject *max_items = PyObject_GetAttrString(surface, "max_items");
    Py_DECREF(surface);
    if (!max_items) goto fail;
    uint64_t max = PyLong_AsUnsignedLongLong(max_items);
    Py_DECREF(max_items);
    if (PyErr_Occurred()) goto fail;
    uint64_t limit = request->limit ? request->limit : max;
    if (limit > max) {
        refuse(errors->invalid, "limit must be between 1 and %llu for surface %U, got %llu.", (unsigned long long)max,
               FIELD(SURFACE_ID), (unsigned long long)limit);
        goto fail;
    }
    SET(LIMIT, PyLong_FromUnsignedLongLong(limit));
    if (user->anon_id.size && !is_id(user->anon_id)) {
        refuse(errors->invalid, "user_ctx.anon_id must be 1-%d characters of letters, digits and ._:@/+=-.",
               MAX_ID_LENGTH);
        goto fail;
    }
    if (user->session_id.size && !is_id(user->session_id)) {
        refuse(errors->invalid, "user_ctx.session_id must be 1-%d characters of letters, digits and ._:@/+=-.",
               MAX_ID_LENGTH);
        goto fail;
    }
    SET(ANON_ID, decoded(user->anon_id));
    SET(SESSION_ID, decoded(user->session_id));
    PyObject *device = decoded(user->device);
    if (!device) goto fail;
    SET(DEVICE, lowered(device));
    if (PyUnicode_GET_LENGTH(FIELD(DEVICE)) && (!PyUnicode_IS_ASCII(device) || !one_of(FIELD(DEVICE), DEVICES, 3))) {
        refuse(errors->invalid, "user_ctx.device must be one of mobile, desktop, tablet, got %R.", device);
        Py_DECREF(device);
        goto fail;
    }
    Py_DECREF(device);
    Slice country = user->country;
    int country_ok = country.size == 0 || country.size == 2;
    for (Py_ssize_t i = 0; i < country.size && country_ok; i++) {
        char c = country.data[i];
        country_ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    }
    if (!country_ok) {
        PyObject *given = decoded(country);
        if (given) refuse(errors->invalid, "user_ctx.geo.country must be an ISO 3166-1 alpha-2 code, got %R.", given);
        Py_XDECREF(given);
        goto fail;
    }
    char upper[2] = {0, 0};
    for (Py_ssize_t i = 0; i < country.size; i++) upper[i] = (char)(country.data[i] & ~0x20);
    SET(COUNTRY, PyUnicode_FromStringAndSize(upper, country.size));
    PyObject *region = decoded(user->region);
    if (!region) goto fail;
    if (PyUnicode_GET_LENGTH(region) > MAX_REGION) {
        Py_DECREF(region);
        refuse(errors->invalid, "user_ctx.geo.region must be at most %d characters.", MAX_REGION);
        goto fail;
    }
    SET(REGION, region);
    PyObject *referrer = decoded(user->referrer);
    if (!referrer) goto fail;
    if (PyUnicode_GET_LENGTH(referrer) > MAX_REFERRER) {
        Py_DECREF(referrer);
        refuse(errors->invalid, "user_ctx.referrer must be at most %d characters.", MAX_REFERRER);
        goto fail;
    }
    PyObject *referrer_fields = PyObject_CallOneArg(referrer_info, referrer);
    Py_DECREF(referrer);
    if (!referrer_fields) goto fail;
    if (!PyTuple_Check(referrer_fields) || PyTuple_GET_SIZE(referrer_fields) != 2) {
        Py_DECREF(referrer_fields);
        PyErr_SetString(PyExc_TypeError, "referrer_info must return a (host, class) tuple");
        goto fail;
    }
    SET(REFERRER_HOST, Py_NewRef(PyTuple_GET_ITEM(referrer_fields, 0)));
    SET(REFERRER_CLASS, Py_NewRef(PyTuple_GET_ITEM(referrer_fields, 1)));
    Py_DECREF(referrer_fields);
    PyObject *page_type = decoded(user->page_type);
    if (!page_type) goto fail;
    if (PyUnicode_GET_LENGTH(page_type) > MAX_PAGE_TYPE) {
        Py_DECREF(page_type);
        refuse(errors->invalid, "user_ctx.page_type must be at most %d characters.", MAX_PAGE_TYPE);
        goto fail;
    }
    SET(PAGE_TYPE, lowered(page_type));
    Py_DECREF(page_type);
    if (PyList_GET_SIZE(request->consent) > MAX_CONSENT || request->consent_too_long) {
        refuse(errors->invalid, "user_ctx.consent must list at most %d scopes of at most %d characters.", MAX_CONSENT,
               MAX_CONSENT_LENGTH);
        goto fail;
    }
    SET(CONSENT, PyFrozenSet_New(request->consent));
    if (PyList_GET_SIZE(request->candidates) > MAX_CANDIDATES) {
        refuse(errors->invalid, "candidates must list at most %d content ids.", MAX_CANDIDATES);
        goto fail;
    }
    if (request->bad_candidate) {
        refuse(errors->invalid, "candidates[] must be 1-%d characters of letters, digits and ._:@/+=-.", MAX_ID_LENGTH);
        goto fail;
    }
    SET(CANDIDATES, PyList_AsTuple(request->candidates));
    if (PyDict_GET_SIZE(request->context) > MAX_CONTEXT_ENTRIES) {
        refuse(errors->invalid, "context must have at most %d entries.", MAX_CONTEXT_ENTRIES);
        goto fail;
    }
    if (request->bad_context_entry) {
        refuse(errors->invalid, "context keys must be 1-%d and values at most %d characters.", MAX_CONTEXT_KEY,
               MAX_CONTEXT_VALUE);
        goto fail;
    }
    PyObject *context = request->context;
    PyObject *given_time = PyDict_GetItemString(context, "time_of_day"); /* borrowed */
    if (given_time && PyUnicode_GET_LENGTH(given_time)) {
        SET(TIME_OF_DAY, lowered(given_time));
        if (!one_of(FIELD(TIME_OF_DAY), TIMES_OF_DAY, 4)) {
            refuse(errors->invalid, "context.time_of_day must be one of morning, afternoon, evening, night, got %R.",
                   FIELD(TIME_OF_DAY));
            goto fail;
        }
    } else {
        if (hour < 0) {
            time_t now = time(NULL);
            hour = (int)(now % 86400 / 3600);
        }
        SET(TIME_OF_DAY, PyUnicode_FromString(time_of_day(hour)));
    }
    PyObject *campaign = PyDict_GetItemString(context, "campaign"); /* borrowed */
    SET(CAMPAIGN, campaign ? Py_NewRef(campaign) : PyUnicode_New(0, 0));
    SET(CONTEXT, Py_NewRef(context));
    SET(EXPLAIN, PyBool_FromLong(request->explain));
    return fields;
fail:
    Py_DECREF(fields);
    return NULL;
#undef SET
#undef FIELD
}

const char parse_rank_request_doc[] =
    "parse_rank_request(query_type, invalid_error, not_found_error, referrer_info, surfaces, data, hour)\n--\n\n"
    "Validate the RankRequest `data` (wire bytes) against `surfaces` (surface id -> object with max_items) and\n"
    "return it as a `query_type` (aura.server.decision.RankQuery). `referrer_info(referrer)` returns the\n"
    "referrer's (host, class); `hour` is the UTC hour for the time of day, or -1 for now. A request that is\n"
    "not a RankRequest or breaks a rule raises `invalid_error`, an unknown surface `not_found_error`.";

PyObject *parse_rank_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (check_arg_count("parse_rank_request", nargs, 7) < 0) return NULL;
    PyObject *query_type = args[0], *surfaces = args[4], *data = args[5];
    if (!PyType_Check(query_type) || !PyType_IsSubtype((PyTypeObject *)query_type, &PyTuple_Type) ||
        !PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "query_type must be a tuple type and data bytes");
        return NULL;
    }
    long hour = PyLong_AsLong(args[6]);
    if (hour == -1 && PyErr_Occurred()) return NULL;
    const Errors *errors = &(Errors){.invalid = args[1], .not_found = args[2]};
    Request request = {.consent = PyList_New(0), .candidates = PyList_New(0), .context = PyDict_New()};
    PyObject *result = NULL;
    if (!request.consent || !request.candidates || !request.context) goto done;
    Slice message = {PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data)};
    int status = parse_request(message, &request);
    if (status == -2 && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
        refuse(errors->invalid, "the request is not a RankRequest: a string field is not valid UTF-8.");
        goto done;
    }
    if (status == -1) {
        refuse(errors->invalid, "the request is not a RankRequest: its protobuf encoding is malformed.");
        goto done;
    }
    if (status < 0) goto done;
    PyObject *fields = query_fields(&request, surfaces, args[3], (int)hour, errors);
    if (!fields) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            refuse(errors->invalid, "the request is not a RankRequest: a string field is not valid UTF-8.");
        }
        goto done;
    }
    PyObject *constructor_args = PyTuple_Pack(1, fields);
    Py_DECREF(fields);
    if (constructor_args) {
        result = PyTuple_Type.tp_new((PyTypeObject *)query_type, constructor_args, NULL);
        Py_DECREF(constructor_args);
    }
done:
    Py_XDECREF(request.consent);
    Py_XDECREF(request.candidates);
    Py_XDECREF(request.context);
    return result;
}

#define REQUEST_ID_VERSION 2
#define REQUEST_ID_HEADER 22 /* version 1, decided_at 6, nonce 6, bundle tag 4, surface 2, segment 2, count 1 */
#define REQUEST_ID_MAC 10
#define REQUEST_ID_MAX_ITEMS 255

static char *put_be(char *out, uint64_t value, int bytes) {
    for (int i = bytes - 1; i >= 0; i--) *out++ = (char)(value >> (8 * i));
    return out;
}

static const char BASE64URL[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* "req_" + unpadded base64url of `raw`. */
static PyObject *request_id_text(const unsigned char *raw, Py_ssize_t size) {
    Py_ssize_t length = 4 + (size * 4 + 2) / 3;
    PyObject *text = PyUnicode_New(length, 127);
    if (!text) return NULL;
    char *out = (char *)PyUnicode_1BYTE_DATA(text);
    memcpy(out, "req_", 4);
    out += 4;
    Py_ssize_t i = 0;
    for (; i + 3 <= size; i += 3) {
        uint32_t chunk = (uint32_t)raw[i] << 16 | (uint32_t)raw[i + 1] << 8 | raw[i + 2];
        for (int k = 3; k >= 0; k--) *out++ = BASE64URL[chunk >> (6 * k) & 63];
    }
    if (i < size) {
        uint32_t chunk = (uint32_t)raw[i] << 16 | (i + 1 < size ? (uint32_t)raw[i + 1] << 8 : 0);
        int symbols = (int)(size - i) + 1;
        for (int k = 3; k > 3 - symbols; k--) *out++ = BASE64URL[chunk >> (6 * k) & 63];
    }
    return text;
}

const char encode_request_id_doc[] =
    "encode_request_id(mac, decided_at_ms, nonce, bundle_tag, surface_index, segment_index, fingerprints, rows)\n"
    "--\n\n"
    "The request id of a decision (layout in aura.server.request_id): `nonce` is a 48-bit integer,\n"
    "`fingerprints[row]` the 32-bit fingerprint of each row in `rows` (the slate, best first), and\n"
    "`mac(body).digest()` the 10-byte keyed MAC of the body.";

PyObject *request_id_of(PyObject *mac, PyObject *const *header_fields, PyObject *fingerprints, const int64_t *rows,
                        Py_ssize_t count) {
    uint64_t header[5];
    static const uint64_t header_max[5] = {0xFFFFFFFFFFFFULL, 0xFFFFFFFFFFFFULL, 0xFFFFFFFFULL, 0xFFFF, 0xFFFF};
    for (int i = 0; i < 5; i++) {
        header[i] = PyLong_AsUnsignedLongLong(header_fields[i]);
        if (PyErr_Occurred()) return NULL;
        if (header[i] > header_max[i]) {
            PyErr_SetString(PyExc_OverflowError, "a request id header field is out of range");
            return NULL;
        }
    }
    if (count > REQUEST_ID_MAX_ITEMS) {
        PyErr_SetString(PyExc_ValueError, "a request id holds at most 255 items");
        return NULL;
    }
    unsigned char raw[REQUEST_ID_HEADER + 4 * REQUEST_ID_MAX_ITEMS + REQUEST_ID_MAC];
    char *out = (char *)raw;
    *out++ = REQUEST_ID_VERSION;
    for (int i = 0; i < 5; i++) out = put_be(out, header[i], i < 2 ? 6 : i == 2 ? 4 : 2);
    *out++ = (char)count;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (rows[i] < 0) {
            PyErr_SetString(PyExc_IndexError, "a row of the slate is negative");
            return NULL;
        }
        PyObject *fingerprint = PySequence_GetItem(fingerprints, (Py_ssize_t)rows[i]);
        if (!fingerprint) return NULL;
        unsigned long value = PyLong_AsUnsignedLong(fingerprint);
        Py_DECREF(fingerprint);
        if (PyErr_Occurred()) return NULL;
        if (value > 0xFFFFFFFFUL) {
            PyErr_SetString(PyExc_OverflowError, "an item fingerprint is not a 32-bit value");
            return NULL;
        }
        out = put_be(out, value, 4);
    }
    Py_ssize_t body_size = REQUEST_ID_HEADER + 4 * count;
    PyObject *body = PyBytes_FromStringAndSize((const char *)raw, body_size);
    if (!body) return NULL;
    PyObject *hash = PyObject_CallOneArg(mac, body);
    Py_DECREF(body);
    if (!hash) return NULL;
    PyObject *digest = PyObject_CallMethod(hash, "digest", NULL);
    Py_DECREF(hash);
    if (!digest) return NULL;
    PyObject *result = NULL;
    if (!PyBytes_Check(digest) || PyBytes_GET_SIZE(digest) != REQUEST_ID_MAC)
        PyErr_SetString(PyExc_ValueError, "mac(body).digest() must return 10 bytes");
    else {
        memcpy(raw + body_size, PyBytes_AS_STRING(digest), REQUEST_ID_MAC);
        result = request_id_text(raw, body_size + REQUEST_ID_MAC);
    }
    Py_DECREF(digest);
    return result;
}

PyObject *encode_request_id(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (check_arg_count("encode_request_id", nargs, 8) < 0) return NULL;
    PyObject *sequence = PySequence_Fast(args[7], "rows must be a sequence");
    if (!sequence) return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(sequence);
    int64_t rows[REQUEST_ID_MAX_ITEMS];
    PyObject *result = NULL;
    if (count > REQUEST_ID_MAX_ITEMS) {
        PyErr_SetString(PyExc_ValueError, "a request id holds at most 255 items");
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        rows[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(sequence, i));
        if (rows[i] == -1 && PyErr_Occurred()) goto done;
    }
    result = request_id_of(args[0], args + 1, args[6], rows, count);
done:
    Py_DECREF(sequence);
    return result;
}
