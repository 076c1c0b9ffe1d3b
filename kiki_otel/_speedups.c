/* kiki_otel._speedups: the request path's hottest pieces, in C: the OTLP encoder's and
 * the access line's common case, the request histogram's aggregation
 * (``histogram_aggregate``), and after it the request span's objects made without their
 * constructors (``new_instance``, ``new_tuple``), the request headers' scan
 * (``scan_headers``), the response headers that carry the request's ids
 * (``request_ids``), a line's timestamp (``iso_timestamp``), an SDK span's encoding from
 * its fields (``sdk_span``), an export request's items framed (``frame_items``), the
 * request's ASGI send (``send_wrapper``), its access line with the line's record
 * (``access_line``), its duration's record (``histogram_record``), its end
 * (``request_end``) and a batch queue's item (``queue_item``): see each.
 *
 * ``encode_fields(tag, mapping, skip)`` writes the repeated ``KeyValue`` fields of a dict
 * (its items in order, the keys in ``skip`` left out) as ``_otlp_encode._fields`` does;
 * ``encode_span`` a span without trace state, events or links as ``_span_body`` does;
 * ``encode_log_event`` a log event's record as ``_emitted`` does; ``json_line`` the access
 * line's JSON as orjson writes it (``_access_log``). The same bytes, tested byte for byte
 * against them. Only the plain case is handled: exact str keys, values of
 * exactly str, bool, int (64-bit), float or None. Anything else (a str subclass, a
 * sequence, a lone surrogate, an int beyond 64 bits; for the JSON also a float with an
 * exponent, inf or nan) returns None and the Python encoder (or orjson) does it as before,
 * with its checks, reports and drops.
 *
 * Why C: in a request, the Python encoder was ~20 us of kiki's ~84 us, most of it L1 cache
 * misses of code that runs once per request (docs/performance.md, eleventh round); this is
 * a few KB of machine code. It runs no Python code while it reads a dict and never
 * releases the GIL, so the dict cannot change under it (the Python encoder copies it
 * first for that).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <math.h>
#ifndef _WIN32
#include <unistd.h>
#else
#include <process.h>
#define getpid _getpid
#endif

/* getattr(obj, name) without an AttributeError: 1 and a new reference in *value, 0 and
 * NULL if there is none, -1 with another error set. (The C API renamed it in 3.13.) */
static inline int
optional_attr(PyObject *obj, PyObject *name, PyObject **value)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyObject_GetOptionalAttr(obj, name, value);
#else
    return _PyObject_LookupAttr(obj, name, value);
#endif
}

typedef struct {
    char *data;
    Py_ssize_t size;
    Py_ssize_t capacity;
    char inline_data[1024];
} Buffer;

static int
buffer_reserve(Buffer *buf, Py_ssize_t more)
{
    if (buf->size + more <= buf->capacity) {
        return 0;
    }
    Py_ssize_t capacity = buf->capacity * 2;
    while (capacity < buf->size + more) {
        capacity *= 2;
    }
    char *data;
    if (buf->data == buf->inline_data) {
        data = PyMem_Malloc(capacity);
        if (data != NULL) {
            memcpy(data, buf->data, buf->size);
        }
    }
    else {
        data = PyMem_Realloc(buf->data, capacity);
    }
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    buf->data = data;
    buf->capacity = capacity;
    return 0;
}

static void
buffer_free(Buffer *buf)
{
    if (buf->data != buf->inline_data) {
        PyMem_Free(buf->data);
    }
}

static inline int
varint_size(uint64_t value)
{
    int size = 1;
    while (value > 127) {
        value >>= 7;
        size++;
    }
    return size;
}

static inline char *
put_varint(char *out, uint64_t value)
{
    while (value > 127) {
        *out++ = (char)((value & 0x7F) | 0x80);
        value >>= 7;
    }
    *out++ = (char)value;
    return out;
}

/* The UTF-8 of an exact str: 1 read; 0 not an exact str (a subclass may encode itself
 * otherwise), or a lone surrogate, invalid in UTF-8 and so in protobuf (the Python
 * encoder writes its escape); -1 another error, set. */
static int
read_utf8(PyObject *text, const char **data, Py_ssize_t *size)
{
    if (!PyUnicode_CheckExact(text)) {
        return 0;
    }
    if (PyUnicode_IS_COMPACT_ASCII(text)) { /* its UTF-8 is its data: what the call returns */
        *data = (const char *)PyUnicode_DATA(text);
        *size = PyUnicode_GET_LENGTH(text);
        return 1;
    }
    *data = PyUnicode_AsUTF8AndSize(text, size);
    if (*data != NULL) {
        return 1;
    }
    if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}

/* An exact int's value: 1 read; 0 beyond 64 bits (the Python side's to write); -1 error. */
static int
read_int64(PyObject *value, long long *number)
{
    int overflow = 0;
    *number = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow) {
        return 0;
    }
    if (*number == -1 && PyErr_Occurred()) {
        return -1;
    }
    return 1;
}

/* The AnyValue of one plain value: its kind, and what its body needs. */
enum { ANY_NONE, ANY_BOOL, ANY_STR, ANY_INT, ANY_DOUBLE };

typedef struct {
    int kind;
    const char *text; /* ANY_STR: UTF-8 */
    Py_ssize_t text_size;
    uint64_t number; /* ANY_BOOL, ANY_INT: the value (two's complement for ints) */
    double real;     /* ANY_DOUBLE */
    Py_ssize_t size; /* the AnyValue message's body size */
} Value;

/* 1: plain, filled in; 0: not plain (the Python encoder takes it); -1: error set. */
static int
read_value(PyObject *value, Value *out)
{
    PyTypeObject *type = Py_TYPE(value);
    if (value == Py_None) {
        out->kind = ANY_NONE;
        out->size = 0;
        return 1;
    }
    if (type == &PyBool_Type) {
        out->kind = ANY_BOOL;
        out->number = value == Py_True;
        out->size = 2;
        return 1;
    }
    if (type == &PyUnicode_Type) {
        int read = read_utf8(value, &out->text, &out->text_size);
        if (read <= 0) {
            return read;
        }
        out->kind = ANY_STR;
        out->size = 1 + varint_size((uint64_t)out->text_size) + out->text_size;
        return 1;
    }
    if (type == &PyLong_Type) {
        long long number;
        int read = read_int64(value, &number);
        if (read <= 0) {
            return read;
        }
        out->kind = ANY_INT;
        out->number = (uint64_t)number;
        out->size = 1 + varint_size(out->number);
        return 1;
    }
    if (type == &PyFloat_Type) {
        out->kind = ANY_DOUBLE;
        out->real = PyFloat_AS_DOUBLE(value);
        out->size = 9;
        return 1;
    }
    return 0;
}

static char *
put_value(char *out, const Value *value)
{
    switch (value->kind) {
    case ANY_BOOL:
        *out++ = 0x10;
        *out++ = (char)value->number;
        break;
    case ANY_STR:
        *out++ = 0x0A;
        out = put_varint(out, (uint64_t)value->text_size);
        memcpy(out, value->text, value->text_size);
        out += value->text_size;
        break;
    case ANY_INT:
        *out++ = 0x18;
        out = put_varint(out, value->number);
        break;
    case ANY_DOUBLE:
        *out++ = 0x21;
        PyFloat_Pack8(value->real, out, 1);
        out += 8;
        break;
    default: /* ANY_NONE: an empty AnyValue */
        break;
    }
    return out;
}

/* A field's tag and wire type, as bytes (b"\x4a", b"\xfa\x07"). */
typedef struct {
    const char *data;
    Py_ssize_t size;
} Tag;

/* 1: the field is written; 0: not plain; -1: error set. */
static int
put_field(Buffer *buf, Tag tag, PyObject *key, PyObject *value)
{
    Py_ssize_t key_size;
    const char *key_text;
    int read = read_utf8(key, &key_text, &key_size);
    if (read <= 0) {
        return read;
    }
    if (key_size == 0) {
        return 0; /* an empty key: the Python encoder's to write or refuse */
    }
    Value any;
    int plain = read_value(value, &any);
    if (plain <= 0) {
        return plain;
    }
    /* KeyValue: 1 key (string), 2 value (AnyValue, always present). */
    Py_ssize_t body = 1 + varint_size((uint64_t)key_size) + key_size;
    body += 1 + varint_size((uint64_t)any.size) + any.size;
    if (buffer_reserve(buf, tag.size + varint_size((uint64_t)body) + body) < 0) {
        return -1;
    }
    char *out = buf->data + buf->size;
    memcpy(out, tag.data, tag.size);
    out = put_varint(out + tag.size, (uint64_t)body);
    *out++ = 0x0A;
    out = put_varint(out, (uint64_t)key_size);
    memcpy(out, key_text, key_size);
    out += key_size;
    *out++ = 0x12;
    out = put_varint(out, (uint64_t)any.size);
    out = put_value(out, &any);
    buf->size = out - buf->data;
    return 1;
}

/* The fields of a dict's items but skip: 1 written; 0 an item is not plain; -1 error. */
static int
put_fields(Buffer *buf, Tag tag, PyObject *mapping, PyObject *skip)
{
    int check_skip = skip != NULL && PySet_GET_SIZE(skip) > 0;
    Py_ssize_t position = 0;
    PyObject *key, *value;
    while (PyDict_Next(mapping, &position, &key, &value)) {
        if (!PyUnicode_CheckExact(key)) {
            return 0; /* before the skip lookup: hashing another type could run Python */
        }
        if (check_skip) {
            int skipped = PySet_Contains(skip, key);
            if (skipped != 0) {
                if (skipped < 0) {
                    return -1;
                }
                continue;
            }
        }
        int written = put_field(buf, tag, key, value);
        if (written <= 0) {
            return written;
        }
    }
    return 1;
}

static PyObject *
finish(Buffer *buf, int written)
{
    PyObject *result = NULL;
    if (written > 0) {
        result = PyBytes_FromStringAndSize(buf->data, buf->size);
    }
    else if (written == 0) {
        result = Py_NewRef(Py_None);
    }
    buffer_free(buf);
    return result;
}

static int
check_nargs(const char *name, Py_ssize_t nargs, Py_ssize_t expected)
{
    if (nargs != expected) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, expected, nargs);
        return 0;
    }
    return 1;
}

#define BUFFER_INIT(name) \
    Buffer name = {.data = NULL, .size = 0, .capacity = sizeof(name.inline_data)}; \
    name.data = name.inline_data

static int
check_skip(PyObject *skip)
{
    if (!PyAnySet_Check(skip)) {
        PyErr_SetString(PyExc_TypeError, "skip must be a set or frozenset");
        return -1;
    }
    return 0;
}

/* A field's tag and wire type, as the bytes the Python encoder uses (b"\x4a"...). */
static int
read_tag(PyObject *tag, Tag *out)
{
    if (!PyBytes_CheckExact(tag) || PyBytes_GET_SIZE(tag) < 1 || PyBytes_GET_SIZE(tag) > 5) {
        PyErr_SetString(PyExc_TypeError, "tag must be bytes of 1 to 5 bytes (a varint)");
        return -1;
    }
    out->data = PyBytes_AS_STRING(tag);
    out->size = PyBytes_GET_SIZE(tag);
    return 0;
}

static PyObject *
encode_fields(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Tag tag;
    if (!check_nargs("encode_fields", nargs, 3) || read_tag(args[0], &tag) < 0
        || check_skip(args[2]) < 0) {
        return NULL;
    }
    if (!PyDict_CheckExact(args[1])) {
        Py_RETURN_NONE;
    }
    BUFFER_INIT(buf);
    return finish(&buf, put_fields(&buf, tag, args[1], args[2]));
}

/* The last trace id (16 bytes) and span id (8) read_id read, held, and their bytes: a
 * request reads its span's ids two to four times (its response headers, its access line's
 * record, its span), and CPython's int-to-bytes conversion is a generic loop (~300
 * instructions an id). An int is immutable: the same object, the same bytes. */
static PyObject *id_read[2];
static unsigned char id_read_bytes[2][16];

/* An unsigned id of size bytes (16: a trace id, 8: a span id) at out, big-endian: 1; 0 for
 * anything but an int in range (the Python encoder raises its OverflowError); -1 error. */
static int
read_id(PyObject *id, unsigned char *out, int size)
{
    if (!PyLong_CheckExact(id)) {
        return 0;
    }
    int slot = size == 16 ? 0 : size == 8 ? 1 : -1; /* -1: no id size, not kept */
    if (slot >= 0 && id == id_read[slot]) {
        memcpy(out, id_read_bytes[slot], size);
        return 1;
    }
#if PY_VERSION_HEX >= 0x030D0000
    Py_ssize_t needed = PyLong_AsNativeBytes(
        id, out, size,
        Py_ASNATIVEBYTES_BIG_ENDIAN | Py_ASNATIVEBYTES_UNSIGNED_BUFFER
            | Py_ASNATIVEBYTES_REJECT_NEGATIVE);
    if (needed < 0) {
        if (PyErr_ExceptionMatches(PyExc_ValueError)) {
            PyErr_Clear();
            return 0; /* negative */
        }
        return -1;
    }
    if (needed > size) {
        return 0; /* too big */
    }
#else
    if (_PyLong_AsByteArray((PyLongObject *)id, out, size, 0, 0) < 0) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            return 0;
        }
        return -1;
    }
#endif
    if (slot >= 0) {
        memcpy(id_read_bytes[slot], out, size);
        Py_INCREF(id);
        Py_XSETREF(id_read[slot], id); /* an int's deallocation runs no Python code */
    }
    return 1;
}

/* An id's field: head (its tag and length), then the id as read_id reads it. 1 / 0 / -1. */
static int
put_id(Buffer *buf, const char *head, PyObject *id, int size)
{
    if (buffer_reserve(buf, 2 + size) < 0) {
        return -1;
    }
    unsigned char *out = (unsigned char *)buf->data + buf->size;
    out[0] = (unsigned char)head[0];
    out[1] = (unsigned char)head[1];
    int read = read_id(id, out + 2, size);
    if (read > 0) {
        buf->size += 2 + size;
    }
    return read;
}

/* A field of a 64-bit time (tag, 8 bytes little-endian). 1 / 0 / -1. */
static int
put_fixed64(Buffer *buf, char tag, PyObject *value)
{
    if (!PyLong_CheckExact(value)) {
        return 0;
    }
    unsigned long long number = PyLong_AsUnsignedLongLong(value);
    if (number == (unsigned long long)-1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            return 0;
        }
        return -1;
    }
    if (buffer_reserve(buf, 9) < 0) {
        return -1;
    }
    char *out = buf->data + buf->size;
    *out++ = tag;
    for (int i = 0; i < 8; i++) {
        *out++ = (char)((number >> (8 * i)) & 0xFF);
    }
    buf->size += 9;
    return 1;
}

static int
put_bytes(Buffer *buf, const char *data, Py_ssize_t size)
{
    if (buffer_reserve(buf, size) < 0) {
        return -1;
    }
    memcpy(buf->data + buf->size, data, size);
    buf->size += size;
    return 1;
}

/* A length-delimited string field (tag, length, UTF-8). 1 / 0 / -1. */
static int
put_text(Buffer *buf, char tag, PyObject *text)
{
    Py_ssize_t size;
    const char *data;
    int read = read_utf8(text, &data, &size);
    if (read <= 0) {
        return read;
    }
    if (buffer_reserve(buf, 1 + varint_size((uint64_t)size) + size) < 0) {
        return -1;
    }
    char *out = buf->data + buf->size;
    *out++ = tag;
    out = put_varint(out, (uint64_t)size);
    memcpy(out, data, size);
    buf->size = out + size - buf->data;
    return 1;
}

static int
put_small(Buffer *buf, char tag, long value)
{
    if (buffer_reserve(buf, 11) < 0) {
        return -1;
    }
    char *out = buf->data + buf->size;
    *out++ = tag;
    out = put_varint(out, (uint64_t)value);
    buf->size = out - buf->data;
    return 1;
}

#define STEP(call) \
    do { \
        written = (call); \
        if (written <= 0) { \
            return finish(&buf, written); \
        } \
    } while (0)

/* A span without trace state, events, links or dropped counts (the caller checks), as
 * _otlp_encode._span_body writes it: 1 written, 0 not plain (nothing usable), -1 error.
 * parent: the parent's span id, or Py_None for a root span; kind: the proto enum value;
 * status: -1 for no status. */
static int
put_span(Buffer *buf, PyObject *trace_id, PyObject *span_id, PyObject *parent, int remote,
         PyObject *name, long kind, PyObject *start, PyObject *end, PyObject *attributes,
         long status, PyObject *description)
{
    int written;
#define PUT(call) \
    do { \
        written = (call); \
        if (written <= 0) { \
            return written; \
        } \
    } while (0)
    if (kind < 0 || kind > 127 || status < -1 || status > 127 || !PyDict_CheckExact(attributes)
        || !PyUnicode_CheckExact(name)) {
        return 0;
    }
    PUT(put_id(buf, "\x0a\x10", trace_id, 16));
    PUT(put_id(buf, "\x12\x08", span_id, 8));
    int has_parent = parent != Py_None;
    if (has_parent) {
        PUT(put_id(buf, "\x22\x08", parent, 8));
    }
    if (PyUnicode_GET_LENGTH(name) > 0) {
        PUT(put_text(buf, 0x2A, name));
    }
    PUT(put_small(buf, 0x30, kind));
    if (PyObject_IsTrue(start) > 0) {
        PUT(put_fixed64(buf, 0x39, start));
    }
    if (PyObject_IsTrue(end) > 0) {
        PUT(put_fixed64(buf, 0x41, end));
    }
    PUT(put_fields(buf, (Tag){"\x4a", 1}, attributes, NULL));
    if (status >= 0) {
        /* Status: 2 description, 3 code; present even when empty. */
        Py_ssize_t mark = buf->size;
        PUT(put_bytes(buf, "\x7a\x00", 2));
        if (description != Py_None && PyUnicode_CheckExact(description)
            && PyUnicode_GET_LENGTH(description) > 0) {
            PUT(put_text(buf, 0x12, description));
        }
        else if (description != Py_None && !PyUnicode_CheckExact(description)) {
            return 0;
        }
        if (status > 0) {
            PUT(put_small(buf, 0x18, status));
        }
        Py_ssize_t body = buf->size - mark - 2;
        if (body > 127) {
            return 0; /* a long description: the Python encoder frames it */
        }
        buf->data[mark + 1] = (char)body;
    }
    /* 16 flags (fixed32): HAS_IS_REMOTE, | IS_REMOTE for a remote parent. */
    return put_bytes(
        buf, has_parent && remote ? "\x85\x01\x00\x03\x00\x00" : "\x85\x01\x00\x01\x00\x00", 6);
#undef PUT
}

/* encode_span(trace_id, span_id, parent_span_id, parent_remote, name, kind, start, end,
 *             attributes, status_code, status_description) -> bytes | None
 *
 * put_span's bytes, None when a value is not plain. */
static PyObject *
encode_span(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_nargs("encode_span", nargs, 11)) {
        return NULL;
    }
    int remote = PyObject_IsTrue(args[3]);
    long kind = PyLong_AsLong(args[5]);
    long status = PyLong_AsLong(args[9]);
    if (remote < 0 || (kind == -1 && PyErr_Occurred()) || (status == -1 && PyErr_Occurred())) {
        return NULL;
    }
    BUFFER_INIT(buf);
    return finish(&buf, put_span(&buf, args[0], args[1], args[2], remote, args[4], kind, args[6],
                                 args[7], args[8], status, args[10]));
}

static PyObject *str_dict, *str_dropped, *str_dq, *str_status_code, *str_description;

/* The index of member in the tuple members (an enum's, in value order), or -1. */
static long
member_index(PyObject *members, PyObject *member)
{
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(members); i++) {
        if (PyTuple_GET_ITEM(members, i) == member) {
            return (long)i;
        }
    }
    return -1;
}

/* 1 when getattr(owner, name) is an exact int 0, 0 when it is anything else, -1 on error. */
static int
zero_field(PyObject *owner, PyObject *name)
{
    PyObject *value = PyObject_GetAttr(owner, name);
    if (value == NULL) {
        return -1;
    }
    int zero = PyLong_CheckExact(value) && PyObject_IsTrue(value) == 0;
    Py_DECREF(value);
    return zero;
}

/* 1 when list (an SDK BoundedList) is empty and dropped nothing, 0 if not, -1 on error. */
static int
empty_list(PyObject *list, PyObject *list_type)
{
    if ((PyObject *)Py_TYPE(list) != list_type) {
        return 0;
    }
    PyObject *items = PyObject_GetAttr(list, str_dq);
    if (items == NULL) {
        return -1;
    }
    Py_ssize_t size = PyObject_Size(items);
    Py_DECREF(items);
    if (size != 0) {
        return size < 0 ? -1 : 0;
    }
    return zero_field(list, str_dropped);
}

enum { T_CONTEXT, T_ATTRIBUTES, T_LIST, T_STATUS, T_DEFAULT_STATE, T_ENCODED, T_KINDS, T_CODES, T_COUNT };

/* sdk_span(context, parent, name, kind, start, end, attributes, events, links, status,
 *          resource, scope, types) -> Encoded | None
 *
 * _otlp_encode.encode_span of an SDK span, from its fields (``span._context``...: the
 * caller reads them, as attributes), for the plain case ``encode_span`` takes (no trace
 * state, events, links or dropped counts, plain values); None for any other span.
 * types: (SpanContext, BoundedAttributes, BoundedList, Status, DEFAULT_TRACE_STATE, Encoded,
 * the SpanKind members and the StatusCode members, each in value order). */
static PyObject *
sdk_span(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_nargs("sdk_span", nargs, 13)) {
        return NULL;
    }
    PyObject *types = args[12];
    if (!PyTuple_CheckExact(types) || PyTuple_GET_SIZE(types) != T_COUNT
        || !PyTuple_CheckExact(PyTuple_GET_ITEM(types, T_KINDS))
        || !PyTuple_CheckExact(PyTuple_GET_ITEM(types, T_CODES))
        || !PyType_Check(PyTuple_GET_ITEM(types, T_ENCODED))
        || !PyType_IsSubtype((PyTypeObject *)PyTuple_GET_ITEM(types, T_ENCODED), &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "sdk_span: types is not what _otlp_encode passes");
        return NULL;
    }
#define TYPE(index) PyTuple_GET_ITEM(types, index)
    PyObject *context = args[0], *parent = args[1], *attributes = args[6], *status = args[9];
    long kind = member_index(TYPE(T_KINDS), args[3]);
    if ((PyObject *)Py_TYPE(context) != TYPE(T_CONTEXT) || PyTuple_GET_SIZE(context) < 5
        || PyTuple_GET_ITEM(context, 4) != TYPE(T_DEFAULT_STATE) || kind < 0
        || (parent != Py_None
            && ((PyObject *)Py_TYPE(parent) != TYPE(T_CONTEXT) || PyTuple_GET_SIZE(parent) < 3))
        || (PyObject *)Py_TYPE(attributes) != TYPE(T_ATTRIBUTES)
        || (PyObject *)Py_TYPE(status) != TYPE(T_STATUS)) {
        Py_RETURN_NONE;
    }
    int remote = parent != Py_None ? PyObject_IsTrue(PyTuple_GET_ITEM(parent, 2)) : 0;
    int plain = remote < 0 ? -1 : zero_field(attributes, str_dropped);
    if (plain > 0) {
        plain = empty_list(args[7], TYPE(T_LIST));
    }
    if (plain > 0) {
        plain = empty_list(args[8], TYPE(T_LIST));
    }
    if (plain <= 0) {
        return plain < 0 ? NULL : Py_NewRef(Py_None);
    }
    PyObject *values = PyObject_GetAttr(attributes, str_dict);
    PyObject *code = values != NULL ? PyObject_GetAttr(status, str_status_code) : NULL;
    PyObject *description = code != NULL ? PyObject_GetAttr(status, str_description) : NULL;
    PyObject *result = NULL;
    if (description != NULL) {
        long status_code = member_index(TYPE(T_CODES), code);
        BUFFER_INIT(buf);
        int written = status_code < 0 ? 0
            : put_span(&buf, PyTuple_GET_ITEM(context, 0), PyTuple_GET_ITEM(context, 1),
                       parent != Py_None ? PyTuple_GET_ITEM(parent, 1) : Py_None, remote,
                       args[2], kind + 1, args[4], args[5], values, status_code, description);
        PyObject *payload = finish(&buf, written);
        if (payload != NULL && payload != Py_None) {
            PyTypeObject *cls = (PyTypeObject *)TYPE(T_ENCODED);
            result = cls->tp_alloc(cls, 3); /* Encoded(payload, resource, scope) */
            if (result != NULL) {
                PyTuple_SET_ITEM(result, 0, Py_NewRef(payload));
                PyTuple_SET_ITEM(result, 1, Py_NewRef(args[10]));
                PyTuple_SET_ITEM(result, 2, Py_NewRef(args[11]));
                if (!PyObject_GC_IsTracked(result)) {
                    PyObject_GC_Track(result);
                }
            }
            Py_DECREF(payload);
        }
        else {
            result = payload;
        }
    }
#undef TYPE
    Py_XDECREF(values);
    Py_XDECREF(code);
    Py_XDECREF(description);
    return result;
}

/* count pairs' fields (keys and values): 1 written; 0 one is not plain; -1 error. */
static int
put_pairs(Buffer *buf, Tag tag, PyObject *const *keys, PyObject *const *values,
          Py_ssize_t count)
{
    for (Py_ssize_t i = 0; i < count; i++) {
        int written = put_field(buf, tag, keys[i], values[i]);
        if (written <= 0) {
            return written;
        }
    }
    return 1;
}

/* A log record emitted now, as _otlp_encode._emitted writes it: the time, the cached head
 * (severity, its text, the body), the attributes, the span context's flags and ids, the
 * time again as the observed time. The attributes: event's plain fields but skip, or
 * (event NULL) the count pairs of keys and values. bytes, None when not plain, or NULL. */
static PyObject *
log_record(PyObject *timestamp, PyObject *head, PyObject *event, PyObject *skip,
           PyObject *const *keys, PyObject *const *values, Py_ssize_t count,
           PyObject *trace_id, PyObject *span_id, PyObject *trace_flags)
{
    if (!PyBytes_CheckExact(head) || (event != NULL && !PyDict_CheckExact(event))) {
        Py_RETURN_NONE;
    }
    long flags = PyLong_AsLong(trace_flags);
    if (flags == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (flags < 0 || flags > 255) {
        Py_RETURN_NONE;
    }
    int has_time = PyObject_IsTrue(timestamp), has_trace = PyObject_IsTrue(trace_id);
    int has_span = PyObject_IsTrue(span_id);
    if (has_time < 0 || has_trace < 0 || has_span < 0) {
        return NULL;
    }
    BUFFER_INIT(buf);
    int written;
    if (has_time) {
        STEP(put_fixed64(&buf, 0x09, timestamp));
    }
    STEP(put_bytes(&buf, PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head)));
    STEP(event != NULL ? put_fields(&buf, (Tag){"\x32", 1}, event, skip)
                       : put_pairs(&buf, (Tag){"\x32", 1}, keys, values, count));
    if (flags) {
        char field[5] = {0x45, (char)flags, 0, 0, 0};
        STEP(put_bytes(&buf, field, 5));
    }
    if (has_trace) {
        STEP(put_id(&buf, "\x4a\x10", trace_id, 16));
    }
    if (has_span) {
        STEP(put_id(&buf, "\x52\x08", span_id, 8));
    }
    if (has_time) {
        STEP(put_fixed64(&buf, 0x59, timestamp));
    }
    return finish(&buf, 1);
}

/* encode_log_event(timestamp, head, event, skip, trace_id, span_id, trace_flags)
 *     -> bytes | None
 *
 * ``log_record`` of a dict's fields but skip. */
static PyObject *
encode_log_event(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_nargs("encode_log_event", nargs, 7) || check_skip(args[3]) < 0) {
        return NULL;
    }
    if (!PyDict_CheckExact(args[2])) {
        Py_RETURN_NONE;
    }
    return log_record(args[0], args[1], args[2], args[3], NULL, NULL, 0, args[4], args[5],
                      args[6]);
}

/* ---------------------------------------------------------------- the JSON line */

/* True when one of the word's eight bytes needs an escape in a JSON string: a byte below
 * 0x20, '"' or '\\'. Each test sets a byte's high bit for such a byte (below 0x20; zero
 * after the xor) and a borrow can set another's only above such a byte: exact for a word. */
static inline int
json_word_escapes(uint64_t word)
{
    const uint64_t ones = 0x0101010101010101ULL;
    uint64_t quote = word ^ (ones * '"'), slash = word ^ (ones * '\\');
    return ((((word - ones * 0x20) & ~word) | ((quote - ones) & ~quote)
             | ((slash - ones) & ~slash))
            & (ones * 0x80))
           != 0;
}

/* ``text`` as a JSON string's content at ``out`` (room for 6 bytes a byte): returns the end.
 * Eight bytes at a time until a word needs an escape (the access line's strings rarely
 * do: a byte at a time was ~8 instructions a byte), then a byte at a time. */
static char *
put_json_escaped(char *out, const char *text, Py_ssize_t size)
{
    static const char hex[] = "0123456789abcdef";
    Py_ssize_t i = 0;
    for (; i + 8 <= size; i += 8, out += 8) {
        uint64_t word;
        memcpy(&word, text + i, 8);
        if (json_word_escapes(word)) {
            break;
        }
        memcpy(out, &word, 8);
    }
    for (; i < size; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *out++ = (char)c;
            continue;
        }
        *out++ = '\\';
        switch (c) {
        case '"': *out++ = '"'; break;
        case '\\': *out++ = '\\'; break;
        case '\b': *out++ = 'b'; break;
        case '\t': *out++ = 't'; break;
        case '\n': *out++ = 'n'; break;
        case '\f': *out++ = 'f'; break;
        case '\r': *out++ = 'r'; break;
        default:
            *out++ = 'u';
            *out++ = '0';
            *out++ = '0';
            *out++ = hex[c >> 4];
            *out++ = hex[c & 0xF];
        }
    }
    return out;
}

/* A JSON string as orjson writes it: '"', '\\' and the C0 controls escaped (\b \t \n \f
 * \r by name, the others as \u00xx in lowercase hex), everything else as its UTF-8. */
static int
put_json_string(Buffer *buf, const char *text, Py_ssize_t size)
{
    /* at most 6 bytes for each input byte, and the quotes */
    if (buffer_reserve(buf, 6 * size + 2) < 0) {
        return -1;
    }
    char *out = buf->data + buf->size;
    *out++ = '"';
    out = put_json_escaped(out, text, size);
    *out++ = '"';
    buf->size = out - buf->data;
    return 0;
}

/* An object's key: ``,"key":`` (no comma before the first), in one reservation. */
static int
put_json_key(Buffer *buf, const char *text, Py_ssize_t size, int first)
{
    if (buffer_reserve(buf, 6 * size + 4) < 0) {
        return -1;
    }
    char *out = buf->data + buf->size;
    if (!first) {
        *out++ = ',';
    }
    *out++ = '"';
    out = put_json_escaped(out, text, size);
    *out++ = '"';
    *out++ = ':';
    buf->size = out - buf->data;
    return 0;
}

/* A whole number of thousandths (the access line's duration in ms, to the us), written
 * without dtoa: for 1e-3 <= |x| < 1e11, if x is the double nearest n / 1000, Python's
 * repr of x is n / 1000's decimal text with its trailing zeros dropped. (Any other
 * decimal as short would differ from it by at least 1e-4 and could not round to x:
 * doubles below 1e11 are less than 2e-5 apart.) 1 written, 0 not such a number. */
static int
put_thousandths(Buffer *buf, double real)
{
    double magnitude = real < 0 ? -real : real;
    if (!(magnitude >= 1e-3 && magnitude < 1e11)) { /* nan fails both */
        return 0;
    }
    long long thousandths = (long long)(magnitude * 1000.0 + 0.5);
    if ((double)thousandths / 1000.0 != magnitude) { /* exact: n < 2**53 */
        return 0;
    }
    char text[32];
    char *end = text + sizeof(text), *start = end;
    int fraction = (int)(thousandths % 1000);
    int places = 3;
    while (places > 1 && fraction % 10 == 0) { /* "1.5", "2.0": one place at least */
        fraction /= 10;
        places--;
    }
    for (; places > 0; places--) {
        *--start = (char)('0' + fraction % 10);
        fraction /= 10;
    }
    *--start = '.';
    long long whole = thousandths / 1000;
    do {
        *--start = (char)('0' + whole % 10);
        whole /= 10;
    } while (whole);
    if (real < 0) {
        *--start = '-';
    }
    return put_bytes(buf, start, end - start) < 0 ? -1 : 1;
}

/* A float as orjson writes it, when that is Python's repr: the same shortest round-trip
 * digits, and both write them without an exponent for 1e-4 <= |x| < 1e16 (and zero).
 * 1 written; 0 another case (an exponent, inf, nan: orjson's own to write). */
static int
put_json_float(Buffer *buf, double real)
{
    int written = put_thousandths(buf, real);
    if (written != 0) {
        return written;
    }
    char *text = PyOS_double_to_string(real, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (text == NULL) {
        return -1;
    }
    int plain = strpbrk(text, "eEni") == NULL;
    int result = plain ? (put_bytes(buf, text, (Py_ssize_t)strlen(text)) < 0 ? -1 : 1) : 0;
    PyMem_Free(text);
    return result;
}

/* 1 written; 0 not plain; -1 error set. */
static int
put_json_value(Buffer *buf, PyObject *value)
{
    PyTypeObject *type = Py_TYPE(value);
    if (value == Py_None) {
        return put_bytes(buf, "null", 4) < 0 ? -1 : 1;
    }
    if (type == &PyBool_Type) {
        return (value == Py_True ? put_bytes(buf, "true", 4) : put_bytes(buf, "false", 5)) < 0
                   ? -1
                   : 1;
    }
    if (type == &PyUnicode_Type) {
        const char *text;
        Py_ssize_t size;
        int read = read_utf8(value, &text, &size);
        if (read <= 0) {
            return read;
        }
        return put_json_string(buf, text, size) < 0 ? -1 : 1;
    }
    if (type == &PyLong_Type) {
        long long number;
        int read = read_int64(value, &number);
        if (read <= 0) {
            return read;
        }
        /* the decimal digits, backwards from the end (no printf: a cold, large path) */
        char digits[24];
        char *end = digits + sizeof(digits), *start = end;
        unsigned long long magnitude =
            number < 0 ? 0ULL - (unsigned long long)number : (unsigned long long)number;
        do {
            *--start = (char)('0' + magnitude % 10);
            magnitude /= 10;
        } while (magnitude);
        if (number < 0) {
            *--start = '-';
        }
        return put_bytes(buf, start, end - start) < 0 ? -1 : 1;
    }
    if (type == &PyFloat_Type) {
        return put_json_float(buf, PyFloat_AS_DOUBLE(value));
    }
    return 0;
}

/* ``"key":value`` (a comma before it unless first): 1 written; 0 not plain; -1 error. */
static int
put_json_item(Buffer *buf, PyObject *key, PyObject *value, int first)
{
    const char *text;
    Py_ssize_t size;
    int read = read_utf8(key, &text, &size);
    if (read <= 0) {
        return read;
    }
    if (put_json_key(buf, text, size, first) < 0) {
        return -1;
    }
    return put_json_value(buf, value);
}

/* json_line(mapping): orjson.dumps(mapping) for a dict of plain items, else None. */
static PyObject *
json_line(PyObject *Py_UNUSED(module), PyObject *mapping)
{
    if (!PyDict_CheckExact(mapping)) {
        Py_RETURN_NONE;
    }
    BUFFER_INIT(buf);
    int written = put_bytes(&buf, "{", 1) < 0 ? -1 : 1;
    Py_ssize_t position = 0;
    PyObject *key, *value;
    while (written > 0 && PyDict_Next(mapping, &position, &key, &value)) {
        written = put_json_item(&buf, key, value, buf.size == 1);
    }
    if (written > 0 && put_bytes(&buf, "}", 1) < 0) {
        written = -1;
    }
    return finish(&buf, written);
}

/* ------------------------------------------------------------------ histogram aggregation
 *
 * ``histogram_aggregate(aggregation, value, reservoir, names, values)``: what
 * ``_fast_histogram.FastHistogram.record`` does for one SDK explicit-bucket aggregation,
 * ``aggregation.aggregate(measurement, False)`` and then, when ``reservoir`` is not None,
 * the exemplar stored in its bucket (``bucket.__dict__.update(zip(names, values))`` under
 * the reservoir's lock): the same fields written under the same locks, in the same order.
 * Returns True when done, False when it changed nothing and the Python path must run
 * (``value`` not an exact float, boundaries not exact floats, a field missing, counts of
 * another length). The fields are read and written in the instances' ``__dict__``: the
 * caller has checked the classes (the SDK's own, unpatched: no descriptors for them) and
 * probed that this writes what the SDK writes (``_fast_histogram._probe_native``).
 */

static PyObject *str_lock, *str_value, *str_sum, *str_min, *str_max, *str_record_min_max;
static PyObject *str_boundaries, *str_acquire, *str_release, *str_storage;

/* bisect_left(bounds, value) over a tuple or list of exact floats; -1 for anything else
 * (the aggregation holds a tuple, its reservoir the boundaries as given: often a list). */
static Py_ssize_t
bucket_index(PyObject *bounds, double value)
{
    if (bounds == NULL || (!PyTuple_CheckExact(bounds) && !PyList_CheckExact(bounds))) {
        return -1;
    }
    Py_ssize_t low = 0, high = PySequence_Fast_GET_SIZE(bounds);
    while (low < high) {
        Py_ssize_t middle = low + (high - low) / 2;
        PyObject *bound = PySequence_Fast_GET_ITEM(bounds, middle);
        if (!PyFloat_CheckExact(bound)) {
            return -1;
        }
        if (PyFloat_AS_DOUBLE(bound) < value) { /* bisect_left's "a[mid] < x" */
            low = middle + 1;
        }
        else {
            high = middle;
        }
    }
    return low;
}

static int
call_method(PyObject *target, PyObject *name)
{
    PyObject *result = PyObject_CallMethodNoArgs(target, name);
    Py_XDECREF(result);
    return result == NULL ? -1 : 0;
}

/* lock.release() after ``status`` (-1: an error is set and kept, as a with statement's
 * exit keeps it); the status, or -1 if releasing failed. */
static int
release(PyObject *lock, int status)
{
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    int released = call_method(lock, str_release);
    if (type != NULL) {
        if (released < 0) {
            PyErr_Clear();
        }
        PyErr_Restore(type, value, traceback);
        return -1;
    }
    return released < 0 ? -1 : status;
}

/* ``fields[name]`` (borrowed; NULL if missing, or on an error, set) for the dicts that
 * hold state which rarely changes (a module's, a provider's, a histogram's): ~35 lookups a
 * request. On CPython 3.11 a dict's ``ma_version_tag`` (PEP 509) is a global counter's
 * value taken at each change, never reused, so a dict whose tag equals the one a lookup
 * saw has not changed since and still holds the value found then: a small direct-mapped
 * table of such lookups answers them without the lookup. (3.12 deprecated the tag for
 * dict watchers; there every call looks up.) The GIL guards the table. */
#if PY_VERSION_HEX < 0x030C0000
#define DICT_SEEN 64
static struct {
    PyObject *dict, *name, *value; /* compared, never dereferenced unless the tag matches */
    uint64_t tag;
} dict_seen[DICT_SEEN];

static PyObject *
dict_item(PyObject *dict, PyObject *name)
{
    uintptr_t mix = ((uintptr_t)dict >> 4) ^ ((uintptr_t)name >> 4);
    size_t slot = (size_t)((mix ^ (mix >> 6)) % DICT_SEEN);
    uint64_t tag = ((PyDictObject *)dict)->ma_version_tag;
    if (dict_seen[slot].dict == dict && dict_seen[slot].name == name
        && dict_seen[slot].tag == tag) {
        return dict_seen[slot].value;
    }
    PyObject *value = PyDict_GetItemWithError(dict, name);
    if (value != NULL) { /* (a lookup does not change the tag) */
        dict_seen[slot].dict = dict;
        dict_seen[slot].name = name;
        dict_seen[slot].value = value;
        dict_seen[slot].tag = tag;
    }
    return value;
}
#else
static PyObject *
dict_item(PyObject *dict, PyObject *name)
{
    return PyDict_GetItemWithError(dict, name);
}
#endif

/* getattr(module, name) for a module object: from its __dict__ when it is exactly a module
 * and has name there (a module's attribute is its dict's entry: ModuleType has no data
 * descriptor of such a name), without the type's lookup; else getattr. */
static PyObject *
module_attr(PyObject *module, PyObject *name)
{
    if (PyModule_CheckExact(module)) {
        PyObject *value = dict_item(PyModule_GetDict(module), name);
        if (value != NULL) {
            return Py_NewRef(value);
        }
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    return PyObject_GetAttr(module, name);
}

/* getattr(owner, name), from fields (the __dict__ of held, ``_native.plain_fields``'s)
 * when owner is held and has it there: the same value, without the type's lookup. */
static PyObject *
held_attr(PyObject *owner, PyObject *held, PyObject *fields, PyObject *name)
{
    if (owner == held && fields != Py_None) {
        PyObject *value = dict_item(fields, name);
        if (value != NULL) {
            return Py_NewRef(value);
        }
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    return PyObject_GetAttr(owner, name);
}

/* Whether items[first], items[first + step], ... before last are each a held __dict__ (a
 * dict) or None; else a TypeError naming who. */
static int
held_fields_ok(const char *who, PyObject *const *items, Py_ssize_t first, Py_ssize_t last,
               Py_ssize_t step)
{
    for (Py_ssize_t i = first; i < last; i += step) {
        if (items[i] != Py_None && !PyDict_CheckExact(items[i])) {
            PyErr_Format(PyExc_TypeError, "%s: a held __dict__ is not a dict", who);
            return 0;
        }
    }
    return 1;
}

/* An instance's field (borrowed), NULL if missing (no error) or on error (set). */
static PyObject *
field(PyObject *fields, PyObject *name)
{
    return PyDict_GetItemWithError(fields, name);
}

static int plain_number(PyObject *value);
#define TAKE_LOCK 2

/* The aggregation's part, its lock held, or (unlocked) with no thread holding it: 1 done,
 * 0 nothing changed (a field missing or counts of another length), -1 error; unlocked,
 * TAKE_LOCK when the part could run Python code (see lock_free) and nothing changed. */
static int
aggregate_locked(PyObject *fields, PyObject *value, Py_ssize_t index, Py_ssize_t buckets,
                 int record_min_max, int unlocked)
{
    PyObject *counts = field(fields, str_value);
    PyObject *sum = counts != NULL ? field(fields, str_sum) : NULL;
    PyObject *low = sum != NULL ? field(fields, str_min) : NULL;
    PyObject *high = low != NULL ? field(fields, str_max) : NULL;
    if (high == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    if (counts != Py_None && (!PyList_CheckExact(counts) || PyList_GET_SIZE(counts) != buckets)) {
        return 0;
    }
    if (unlocked && (counts == Py_None || !plain_number(sum) || !plain_number(low)
                     || !plain_number(high))) {
        return TAKE_LOCK;
    }
    Py_INCREF(counts);
    Py_INCREF(sum);
    Py_INCREF(low);
    Py_INCREF(high);
    int status = -1;
    PyObject *new_sum = NULL, *count = NULL;
    if (counts == Py_None) { /* self._value = self._get_empty_bucket_counts() */
        Py_DECREF(counts);
        counts = PyList_New(buckets);
        if (counts == NULL) {
            goto done;
        }
        for (Py_ssize_t i = 0; i < buckets; i++) {
            PyList_SET_ITEM(counts, i, PyLong_FromLong(0)); /* a cached small int */
        }
        if (PyDict_SetItem(fields, str_value, counts) < 0) {
            goto done;
        }
    }
    new_sum = PyNumber_Add(sum, value);
    if (new_sum == NULL || PyDict_SetItem(fields, str_sum, new_sum) < 0) {
        goto done;
    }
    if (record_min_max) { /* min()/max() of two: the held one stays unless beyond */
        int below = PyObject_RichCompareBool(value, low, Py_LT);
        if (below < 0 || (below && PyDict_SetItem(fields, str_min, value) < 0)) {
            goto done;
        }
        int above = PyObject_RichCompareBool(value, high, Py_GT);
        if (above < 0 || (above && PyDict_SetItem(fields, str_max, value) < 0)) {
            goto done;
        }
    }
    PyObject *one = PyLong_FromLong(1);
    count = PyNumber_Add(PyList_GET_ITEM(counts, index), one);
    Py_DECREF(one);
    if (count == NULL) {
        goto done;
    }
    PyList_SetItem(counts, index, count); /* steals count; index < buckets */
    status = 1;
done:
    Py_XDECREF(new_sum);
    Py_XDECREF(counts);
    Py_DECREF(sum);
    Py_DECREF(low);
    Py_DECREF(high);
    return status;
}

/* The exemplar's part: values under names in bucket ``index``, under the reservoir's lock. */
static int
store_exemplar(PyObject *lock, PyObject *storage, Py_ssize_t index, PyObject *names,
               PyObject *values)
{
    if (call_method(lock, str_acquire) < 0) {
        return -1;
    }
    int status = -1;
    PyObject *key = PyLong_FromSsize_t(index);
    PyObject *bucket = key != NULL ? PyObject_GetItem(storage, key) : NULL;
    PyObject *fields = bucket != NULL ? PyObject_GenericGetDict(bucket, NULL) : NULL;
    if (fields != NULL && PyDict_Check(fields)) {
        status = 1;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++) {
            if (PyDict_SetItem(fields, PyTuple_GET_ITEM(names, i), PyTuple_GET_ITEM(values, i))
                < 0) {
                status = -1;
                break;
            }
        }
    }
    else if (fields != NULL) {
        PyErr_SetString(PyExc_TypeError, "an exemplar bucket's __dict__ is not a dict");
    }
    Py_XDECREF(fields);
    Py_XDECREF(bucket);
    Py_XDECREF(key);
    return release(lock, status);
}

/* The aggregation's lock need not be taken for its part when it is a ``_thread.lock`` that
 * no thread holds (``locked()`` false) and the part can run no Python code (so the GIL is
 * not let go of before it is done): counts already made (no list to make, which could
 * start the cyclic GC and its finalizers) and sum, min and max exact floats or ints (no
 * other type's addition or comparison; aggregate_locked checks these, unlocked). Then no thread is inside the aggregation's
 * ``with self._lock`` (a thread waiting in ``acquire`` may take the lock meanwhile, but
 * runs nothing under it before it has the GIL back, after the part), as if the part had
 * taken and let go of the lock first: without its ``acquire``'s argument parsing and
 * ``release``, ~850 instructions a record. Without a GIL (a free-threaded build) the lock
 * is always taken. 1: free; 0: take it; -1: an error, set. */
static PyTypeObject *lock_type; /* _thread.LockType */
static PyObject *str_locked;

static int
plain_number(PyObject *value)
{
    return value != NULL && (PyFloat_CheckExact(value) || PyLong_CheckExact(value));
}

static int
lock_free(PyObject *lock)
{
#ifdef Py_GIL_DISABLED
    return 0;
#else
    if (lock_type == NULL || !Py_IS_TYPE(lock, lock_type)) {
        return 0;
    }
    PyObject *held = PyObject_CallMethodNoArgs(lock, str_locked);
    if (held == NULL) {
        return -1;
    }
    Py_DECREF(held);
    return held == Py_False;
#endif
}

/* ``instance.__dict__`` (new reference), NULL with an error set. */
static PyObject *
fields_of(PyObject *instance)
{
    PyObject *fields = PyObject_GenericGetDict(instance, NULL);
    if (fields != NULL && !PyDict_Check(fields)) {
        Py_DECREF(fields);
        PyErr_SetString(PyExc_TypeError, "__dict__ is not a dict");
        return NULL;
    }
    return fields;
}

static PyObject *
histogram_aggregate(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_nargs("histogram_aggregate", nargs, 5)) {
        return NULL;
    }
    PyObject *aggregation = args[0], *value = args[1], *reservoir = args[2];
    PyObject *names = args[3], *values = args[4];
    if (reservoir != Py_None
        && (!PyTuple_CheckExact(names) || !PyTuple_CheckExact(values)
            || PyTuple_GET_SIZE(names) != PyTuple_GET_SIZE(values))) {
        PyErr_SetString(PyExc_TypeError, "names and values must be tuples of one size");
        return NULL;
    }
    if (!PyFloat_CheckExact(value)) {
        Py_RETURN_FALSE;
    }
    double real = PyFloat_AS_DOUBLE(value);
    PyObject *fields = fields_of(aggregation);
    PyObject *mine = reservoir != Py_None && fields != NULL ? fields_of(reservoir) : NULL;
    if (fields == NULL || (reservoir != Py_None && mine == NULL)) {
        Py_XDECREF(fields);
        return NULL;
    }
    PyObject *result = NULL;
    /* Everything checked before anything changes; borrowed from the two dicts, which only
     * this call's own writes (other keys) change while it holds them. */
    PyObject *bounds = field(fields, str_boundaries);
    PyObject *flag = field(fields, str_record_min_max);
    PyObject *lock = field(fields, str_lock);
    PyObject *exemplar_lock = mine != NULL ? field(mine, str_lock) : NULL;
    PyObject *storage = mine != NULL ? field(mine, str_storage) : NULL;
    Py_ssize_t index = bucket_index(bounds, real);
    Py_ssize_t exemplar_index = mine != NULL ? bucket_index(field(mine, str_boundaries), real) : 0;
    if (PyErr_Occurred()) {
        goto done;
    }
    if (index < 0 || exemplar_index < 0 || flag == NULL || !PyBool_Check(flag) || lock == NULL
        || (mine != NULL && (exemplar_lock == NULL || storage == NULL))) {
        result = Py_NewRef(Py_False);
        goto done;
    }
    Py_INCREF(bounds);
    Py_INCREF(lock);
    Py_XINCREF(exemplar_lock);
    Py_XINCREF(storage);
    Py_ssize_t buckets = PySequence_Fast_GET_SIZE(bounds) + 1;
    int status = lock_free(lock);
    if (status > 0) { /* (see lock_free) */
        status = aggregate_locked(fields, value, index, buckets, flag == Py_True, 1);
    }
    else if (status == 0) {
        status = TAKE_LOCK;
    }
    if (status == TAKE_LOCK && (status = call_method(lock, str_acquire)) == 0) {
        status = release(lock,
                         aggregate_locked(fields, value, index, buckets, flag == Py_True, 0));
    }
    if (status > 0 && mine != NULL) {
        status = store_exemplar(exemplar_lock, storage, exemplar_index, names, values);
    }
    Py_DECREF(bounds);
    Py_DECREF(lock);
    Py_XDECREF(exemplar_lock);
    Py_XDECREF(storage);
    if (status >= 0) {
        result = PyBool_FromLong(status);
    }
done:
    Py_DECREF(fields);
    Py_XDECREF(mine);
    return result;
}

/* ---- objects filled field by field: the request span's parts -------------------------
 *
 * ``_fast_span`` builds the SDK's span, its attributes and its span context without their
 * constructors (their arguments are re-checked per call there, fixed here): in Python
 * that is ``object.__new__(cls)``, then ``__dict__`` updates (the caller checks that the
 * class's own ``__new__``, if any, would have done no more). These are the same objects
 * in one call, with none of the code a request would run only for them (``__new__``'s
 * wrapper, the ``__dict__`` getter), and attributes set as ``setattr`` sets them, so an
 * instance keeps its class's shared-key layout. */

static PyObject *empty_tuple;

static PyObject *
new_instance(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs,
             PyObject *kwnames)
{
    if (!check_nargs("new_instance", nargs, 2)) {
        return NULL;
    }
    PyObject *cls = args[0], *template = args[1];
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "new_instance: cls must be a class");
        return NULL;
    }
    if (!PyDict_Check(template)) {
        PyErr_SetString(PyExc_TypeError, "new_instance: template must be a dict");
        return NULL;
    }
    PyObject *instance = PyBaseObject_Type.tp_new((PyTypeObject *)cls, empty_tuple, NULL);
    if (instance == NULL) {
        return NULL;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(template, &pos, &key, &value)) {
        /* held: a descriptor's __set__ is Python code, which could change the template */
        Py_INCREF(key);
        Py_INCREF(value);
        int status = PyObject_SetAttr(instance, key, value);
        Py_DECREF(key);
        Py_DECREF(value);
        if (status < 0) {
            goto error;
        }
    }
    Py_ssize_t fields = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < fields; i++) {
        if (PyObject_SetAttr(instance, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0) {
            goto error;
        }
    }
    return instance;
error:
    Py_DECREF(instance);
    return NULL;
}

static PyObject *
new_tuple(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || !PyType_Check(args[0]) || args[0] == (PyObject *)&PyTuple_Type
        || !PyType_IsSubtype((PyTypeObject *)args[0], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "new_tuple: the first argument must be a tuple subclass");
        return NULL;
    }
    PyTypeObject *cls = (PyTypeObject *)args[0];
    /* What tuple.__new__(cls, items) makes (tuple_subtype_new), without the items' tuple. */
    PyObject *made = cls->tp_alloc(cls, nargs - 1);
    if (made == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 1; i < nargs; i++) {
        PyTuple_SET_ITEM(made, i - 1, Py_NewRef(args[i]));
    }
    if (!PyObject_GC_IsTracked(made)) {
        PyObject_GC_Track(made);
    }
    return made;
}

/* ---- the request's headers -------------------------------------------------------------
 *
 * ``_http_server._scan_headers`` in C: one pass over the ASGI scope's headers that decodes
 * only those the propagators and the span read, with their names already made (and hashed)
 * once, not per request. */

/* ``(name, value)`` of one ASGI header as exact bytes (borrowed), or 0. */
static int
header_pair(PyObject *item, PyObject **name, PyObject **value)
{
    if (PyTuple_CheckExact(item) && PyTuple_GET_SIZE(item) == 2) {
        *name = PyTuple_GET_ITEM(item, 0);
        *value = PyTuple_GET_ITEM(item, 1);
    }
    else if (PyList_CheckExact(item) && PyList_GET_SIZE(item) == 2) {
        *name = PyList_GET_ITEM(item, 0);
        *value = PyList_GET_ITEM(item, 1);
    }
    else {
        return 0;
    }
    return PyBytes_CheckExact(*name) && PyBytes_CheckExact(*value);
}

/* carrier[name] = the value decoded, joined to an earlier one as "first,second". */
static int
set_header(PyObject *carrier, PyObject *name, PyObject *raw_value)
{
    PyObject *text = PyUnicode_DecodeLatin1(PyBytes_AS_STRING(raw_value),
                                            PyBytes_GET_SIZE(raw_value), NULL);
    if (text == NULL) {
        return -1;
    }
    PyObject *seen = PyDict_GetItemWithError(carrier, name); /* borrowed */
    if (seen != NULL) {
        Py_SETREF(text, PyUnicode_FromFormat("%U,%U", seen, text));
    }
    int status = text != NULL && !PyErr_Occurred() ? PyDict_SetItem(carrier, name, text) : -1;
    Py_XDECREF(text);
    return status;
}

/* One header into the carrier, or the client's ids: 0 done, -1 error. */
static int
scan_header(PyObject *carrier, PyObject **client_ids, long *traceparents, PyObject *raw_name,
            PyObject *raw_value, PyObject *id_header, PyObject *wanted)
{
    Py_ssize_t size = PyBytes_GET_SIZE(raw_name);
    if (size == PyBytes_GET_SIZE(id_header)
        && memcmp(PyBytes_AS_STRING(raw_name), PyBytes_AS_STRING(id_header), (size_t)size) == 0) {
        if (*client_ids == NULL && (*client_ids = PyList_New(0)) == NULL) {
            return -1;
        }
        return PyList_Append(*client_ids, raw_value);
    }
    PyObject *name;
    if (wanted != Py_None) {
        name = PyDict_GetItemWithError(wanted, raw_name); /* borrowed */
        if (name == NULL) {
            return PyErr_Occurred() ? -1 : 0; /* not wanted */
        }
        Py_INCREF(name);
    }
    else if ((name = PyUnicode_DecodeLatin1(PyBytes_AS_STRING(raw_name), size, NULL)) == NULL) {
        return -1;
    }
    if (size == 11 && memcmp(PyBytes_AS_STRING(raw_name), "traceparent", 11) == 0) {
        ++*traceparents;
    }
    int status = set_header(carrier, name, raw_value);
    Py_DECREF(name);
    return status;
}

static PyObject *
scan_headers(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_nargs("scan_headers", nargs, 3)) {
        return NULL;
    }
    PyObject *headers = args[0], *id_header = args[1], *wanted = args[2];
    if (!PyBytes_CheckExact(id_header) || (wanted != Py_None && !PyDict_CheckExact(wanted))) {
        PyErr_SetString(PyExc_TypeError, "scan_headers: id_header must be bytes, wanted a dict");
        return NULL;
    }
    if (!PyList_CheckExact(headers) && !PyTuple_CheckExact(headers)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(headers);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *name, *value;
        if (!header_pair(PySequence_Fast_ITEMS(headers)[i], &name, &value)) {
            Py_RETURN_NONE; /* not plain: the Python loop reads them */
        }
    }
    PyObject *carrier = PyDict_New(), *client_ids = NULL;
    long traceparents = 0;
    if (carrier == NULL) {
        return NULL;
    }
    /* Only C code runs below, but an allocation may run the garbage collector, and a
     * finalizer is Python code: the list is read afresh and each pair held while used. */
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(headers); i++) {
        PyObject *raw_name, *raw_value;
        if (!header_pair(PySequence_Fast_ITEMS(headers)[i], &raw_name, &raw_value)) {
            PyErr_SetString(PyExc_RuntimeError, "scan_headers: headers changed while read");
            goto error;
        }
        Py_INCREF(raw_name);
        Py_INCREF(raw_value);
        int status = scan_header(carrier, &client_ids, &traceparents, raw_name, raw_value,
                                 id_header, wanted);
        Py_DECREF(raw_name);
        Py_DECREF(raw_value);
        if (status < 0) {
            goto error;
        }
    }
    PyObject *result = PyTuple_New(3), *number = PyLong_FromLong(traceparents);
    if (result == NULL || number == NULL) {
        Py_XDECREF(result);
        Py_XDECREF(number);
        goto error;
    }
    PyTuple_SET_ITEM(result, 0, carrier);
    PyTuple_SET_ITEM(result, 1, number);
    PyTuple_SET_ITEM(result, 2, client_ids != NULL ? client_ids : Py_NewRef(Py_None));
    return result;
error:
    Py_DECREF(carrier);
    Py_XDECREF(client_ids);
    return NULL;
}

/* ---- the request's ids in its response headers -------------------------------------------
 *
 * ``request_ids(trace_id, span_id, flags, which)``: ``_http_server._request_ids_py``, the
 * request span's ids in lowercase hex and the response headers that carry them (``which``:
 * the id header's name, whether traceresponse and Server-Timing are on), in one call where
 * Python made them in six calls and ~75 bytecodes.
 */

static PyObject *bytes_traceresponse, *bytes_server_timing;

/* size bytes as 2 * size lowercase hex digits at out */
static void
put_hex(char *out, const unsigned char *bytes, int size)
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < size; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 0xF];
    }
}

/* A (name, value) header of bytes, the value ``prefix`` + traceparent + ``suffix``. */
static PyObject *
traceparent_header(PyObject *name, const char *prefix, const char *traceparent,
                   const char *suffix)
{
    size_t head = strlen(prefix), tail = strlen(suffix);
    PyObject *value = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(head + 55 + tail));
    if (value == NULL) {
        return NULL;
    }
    char *out = PyBytes_AS_STRING(value);
    memcpy(out, prefix, head);
    memcpy(out + head, traceparent, 55);
    memcpy(out + head + 55, suffix, tail);
    PyObject *pair = PyTuple_Pack(2, name, value);
    Py_DECREF(value);
    return pair;
}

static PyObject *
request_ids(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_nargs("request_ids", nargs, 4)) {
        return NULL;
    }
    PyObject *which = args[3];
    if (!PyTuple_CheckExact(which) || PyTuple_GET_SIZE(which) != 3
        || !PyBytes_CheckExact(PyTuple_GET_ITEM(which, 0))) {
        PyErr_SetString(PyExc_TypeError, "which must be a tuple (id_header: bytes, bool, bool)");
        return NULL;
    }
    PyObject *id_header = PyTuple_GET_ITEM(which, 0);
    int traceresponse = PyObject_IsTrue(PyTuple_GET_ITEM(which, 1));
    int server_timing = PyObject_IsTrue(PyTuple_GET_ITEM(which, 2));
    long flags = PyLong_AsLong(args[2]); /* the trace flags (a bool is 0 or 1) */
    if (traceresponse < 0 || server_timing < 0 || (flags == -1 && PyErr_Occurred())) {
        return NULL;
    }
    unsigned char flag_byte = (unsigned char)(flags & 0xff);
    unsigned char trace_bytes[16], span_bytes[8];
    int read = read_id(args[0], trace_bytes, 16);
    if (read > 0) {
        read = read_id(args[1], span_bytes, 8);
    }
    if (read <= 0) {
        if (read < 0) {
            return NULL;
        }
        Py_RETURN_NONE; /* not ids in range: the Python twin's to format, or to raise */
    }
    /* "00-" trace "-" span "-" flags: the traceparent, whose parts are the hex ids */
    char traceparent[56];
    memcpy(traceparent, "00-", 3);
    put_hex(traceparent + 3, trace_bytes, 16);
    traceparent[35] = '-';
    put_hex(traceparent + 36, span_bytes, 8);
    traceparent[52] = '-';
    put_hex(traceparent + 53, &flag_byte, 1); /* sampled, and Level 2's random-id bit */
    PyObject *trace_hex = PyUnicode_New(32, 127), *span_hex = PyUnicode_New(16, 127);
    PyObject *trace_value = PyBytes_FromStringAndSize(traceparent + 3, 32);
    PyObject *headers = PyList_New(0), *ids = NULL, *pair = NULL, *result = NULL;
    if (trace_hex == NULL || span_hex == NULL || trace_value == NULL || headers == NULL) {
        goto done;
    }
    memcpy(PyUnicode_1BYTE_DATA(trace_hex), traceparent + 3, 32);
    memcpy(PyUnicode_1BYTE_DATA(span_hex), traceparent + 36, 16);
    pair = PyTuple_Pack(2, id_header, trace_value);
    if (pair == NULL || PyList_Append(headers, pair) < 0) {
        goto done;
    }
    if (traceresponse) {
        Py_SETREF(pair, traceparent_header(bytes_traceresponse, "", traceparent, ""));
        if (pair == NULL || PyList_Append(headers, pair) < 0) {
            goto done;
        }
    }
    if (server_timing) {
        Py_SETREF(pair,
                  traceparent_header(bytes_server_timing, "traceparent;desc=\"", traceparent,
                                     "\""));
        if (pair == NULL || PyList_Append(headers, pair) < 0) {
            goto done;
        }
    }
    ids = PyTuple_Pack(2, trace_hex, span_hex);
    if (ids != NULL) {
        result = PyTuple_Pack(2, ids, headers);
    }
done:
    Py_XDECREF(trace_hex);
    Py_XDECREF(span_hex);
    Py_XDECREF(trace_value);
    Py_XDECREF(headers);
    Py_XDECREF(ids);
    Py_XDECREF(pair);
    return result;
}

/* ---- an export request's items -------------------------------------------------------
 *
 * ``_otlp_encode._encode_each`` for a batch of ``Encoded`` items (what the direct paths
 * queue): each payload framed as a ``tag`` field and joined, in one allocation, with no
 * Python code per item. Nothing runs in between its two passes that could change the list. */

static PyObject *
frame_items(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_nargs("frame_items", nargs, 3)) {
        return NULL;
    }
    PyObject *items = args[0], *encoded = args[2];
    Tag tag;
    if (read_tag(args[1], &tag) < 0) {
        return NULL;
    }
    if (!PyType_Check(encoded) || !PyType_IsSubtype((PyTypeObject *)encoded, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "frame_items: encoded must be a tuple subclass");
        return NULL;
    }
    if (!PyList_CheckExact(items) && !PyTuple_CheckExact(items)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(items), total = 0;
    PyObject **item = PySequence_Fast_ITEMS(items);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *payload;
        if ((PyObject *)Py_TYPE(item[i]) != encoded || PyTuple_GET_SIZE(item[i]) < 1
            || !PyBytes_CheckExact(payload = PyTuple_GET_ITEM(item[i], 0))) {
            Py_RETURN_NONE; /* not an Encoded item: the Python loop encodes it */
        }
        Py_ssize_t size = PyBytes_GET_SIZE(payload);
        total += tag.size + varint_size((uint64_t)size) + size;
    }
    PyObject *framed = PyBytes_FromStringAndSize(NULL, total);
    if (framed == NULL) {
        return NULL;
    }
    char *out = PyBytes_AS_STRING(framed);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *payload = PyTuple_GET_ITEM(item[i], 0);
        Py_ssize_t size = PyBytes_GET_SIZE(payload);
        memcpy(out, tag.data, tag.size);
        out = put_varint(out + tag.size, (uint64_t)size);
        memcpy(out, PyBytes_AS_STRING(payload), size);
        out += size;
    }
    return framed;
}

/* ---- a log line's timestamp ------------------------------------------------------------
 *
 * ``_logging.iso_timestamp`` in C: ``datetime.fromtimestamp(s, UTC).isoformat()`` with the
 * microseconds floor-rounded from a ``time.time_ns()`` reading, and ``Z``; the date and
 * time formatted once per second. Read and written under the GIL, with no Python code run
 * in between. */

static long long stamp_second = -1;
static char stamp_prefix[20];

static PyObject *
iso_timestamp(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_nargs("iso_timestamp", nargs, 2)) {
        return NULL;
    }
    int overflow = 0;
    long long nanos = PyLong_Check(args[0]) ? PyLong_AsLongLongAndOverflow(args[0], &overflow) : -1;
    if (nanos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (overflow || nanos < 0) { /* before 1970 or past 2262: the Python twin's */
        return PyObject_CallOneArg(args[1], args[0]);
    }
    long long seconds = nanos / 1000000000;
    if (seconds != stamp_second) {
        time_t when = (time_t)seconds;
        struct tm parts;
#ifdef _WIN32
        int failed = gmtime_s(&parts, &when) != 0;
#else
        int failed = gmtime_r(&when, &parts) == NULL;
#endif
        if (failed || parts.tm_year + 1900 > 9999) {
            return PyObject_CallOneArg(args[1], args[0]);
        }
        snprintf(stamp_prefix, sizeof(stamp_prefix), "%04d-%02d-%02dT%02d:%02d:%02d",
                 parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday, parts.tm_hour,
                 parts.tm_min, parts.tm_sec);
        stamp_second = seconds;
    }
    long micros = (long)(nanos % 1000000000 / 1000);
    PyObject *text = PyUnicode_New(micros ? 27 : 20, 127);
    if (text == NULL) {
        return NULL;
    }
    char *out = (char *)PyUnicode_1BYTE_DATA(text);
    memcpy(out, stamp_prefix, 19);
    if (micros) {
        out[19] = '.';
        for (int i = 25; i > 19; i--) {
            out[i] = (char)('0' + micros % 10);
            micros /= 10;
        }
        out[26] = 'Z';
    }
    else {
        out[19] = 'Z';
    }
    return text;
}

/* ---- the request's ASGI send ---------------------------------------------------------
 *
 * ``send_wrapper(send, headers, id_header, outer, slow, var)``: what
 * ``_http_server._SendWrapper`` is, in C: the ``send`` the app gets, which adds the
 * request's id ``headers`` to the response start (the app's own id header dropped: ours
 * wins) and keeps the request's state (``status``, ``started``, ``sent``, ``sent_ns``) for
 * the middleware's end. A response start and a message that does not end the response go
 * straight to the server's ``send``: its awaitable is returned as is, with no coroutine of
 * ours around it. The message that ends the response is sent in the ``outer`` context (the
 * API's context variable ``var`` set to it) and timed, by a ``LastSend`` awaitable (below).
 * Any message not in the plain shape (not a dict, no str type, headers other than a list
 * or tuple of pairs with a bytes name), and the last one when ``var`` is None, are
 * ``slow(wrapper, message)``: ``_http_server._send``, the Python twin's own ``__call__``,
 * so both behave the same. */

/* Traverse, clear and dealloc of a GC type whose object fields ``FIELDS(X)`` lists (the
 * request's send, its last message and the C twins below): the list is written once. */
#define FIELD_VISIT(field) Py_VISIT(self->field);
#define FIELD_CLEAR(field) Py_CLEAR(self->field);
#define GC_FIELDS(prefix, Type, FIELDS)                                                     \
    static int prefix##_traverse(PyObject *op, visitproc visit, void *arg)                  \
    {                                                                                       \
        Type *self = (Type *)op;                                                            \
        FIELDS(FIELD_VISIT)                                                                 \
        return 0;                                                                           \
    }                                                                                       \
    static int prefix##_clear(PyObject *op)                                                 \
    {                                                                                       \
        Type *self = (Type *)op;                                                            \
        FIELDS(FIELD_CLEAR)                                                                 \
        return 0;                                                                           \
    }                                                                                       \
    static void prefix##_dealloc(PyObject *op)                                              \
    {                                                                                       \
        PyObject_GC_UnTrack(op);                                                            \
        prefix##_clear(op);                                                                 \
        Py_TYPE(op)->tp_free(op);                                                           \
    }

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *send, *headers, *id_header, *outer, *slow, *var;
    PyObject *status, *sent, *sent_ns;
    char started;
} SendWrapper;

static PyObject *str_type, *str_status, *str_headers, *str_more_body;
static PyObject *str_response_start, *str_response_body, *str_response_pathsend;

/* 1 if s is the str (interned or not) `known`, 0 if not, -1 on error */
static int
same_str(PyObject *s, PyObject *known)
{
    if (s == known) {
        return 1;
    }
    return PyUnicode_Compare(s, known) == 0 ? 1 : (PyErr_Occurred() ? -1 : 0);
}

/* 1 if the bytes name is id_header (bytes, lowercase) once lowercased (ASCII, as
 * bytes.lower()), 0 if not */
static int
is_id_header(PyObject *name, PyObject *id_header)
{
    Py_ssize_t size = PyBytes_GET_SIZE(name);
    if (size != PyBytes_GET_SIZE(id_header)) {
        return 0;
    }
    const char *a = PyBytes_AS_STRING(name), *b = PyBytes_AS_STRING(id_header);
    for (Py_ssize_t i = 0; i < size; i++) {
        char c = a[i];
        if (c >= 'A' && c <= 'Z') {
            c = (char)(c + ('a' - 'A'));
        }
        if (c != b[i]) {
            return 0;
        }
    }
    return 1;
}

/* 1 if the app's header name is one of ours that replaces it: the id header, and
 * ``traceresponse`` when we send one (a response has one); ``Server-Timing`` entries add up */
static int
replaced_by_ours(SendWrapper *self, PyObject *name)
{
    if (is_id_header(name, self->id_header)) {
        return 1;
    }
    Py_ssize_t ours = PyList_GET_SIZE(self->headers);
    for (Py_ssize_t j = 0; j < ours; j++) {
        PyObject *mine = PyList_GET_ITEM(self->headers, j);
        if (PyTuple_CheckExact(mine) && PyTuple_GET_SIZE(mine) == 2
            && PyBytes_CheckExact(PyTuple_GET_ITEM(mine, 0))
            && is_id_header(PyTuple_GET_ITEM(mine, 0), bytes_traceresponse)
            && is_id_header(name, bytes_traceresponse)) {
            return 1;
        }
    }
    return 0;
}

/* The response start's new headers: the app's but those ours replace, then ours. NULL
 * without an error when they are not in the plain shape (the slow path's). */
static PyObject *
start_headers(SendWrapper *self, PyObject *given)
{
    Py_ssize_t size = 0;
    if (given != NULL && !PyList_CheckExact(given) && !PyTuple_CheckExact(given)) {
        return NULL;
    }
    if (given != NULL) {
        size = PySequence_Fast_GET_SIZE(given);
    }
    PyObject **items = given != NULL ? PySequence_Fast_ITEMS(given) : NULL;
    for (Py_ssize_t i = 0; i < size; i++) {
        PyObject *item = items[i];
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2
            || !PyBytes_CheckExact(PyTuple_GET_ITEM(item, 0))) {
            return NULL;
        }
    }
    Py_ssize_t ours = PyList_GET_SIZE(self->headers);
    PyObject *result = PyList_New(0);
    if (result == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < size + ours; i++) {
        PyObject *item = i < size ? items[i] : PyList_GET_ITEM(self->headers, i - size);
        if (i < size && replaced_by_ours(self, PyTuple_GET_ITEM(item, 0))) {
            continue;
        }
        if (PyList_Append(result, item) < 0) {
            Py_DECREF(result);
            return NULL;
        }
    }
    return result;
}

static PyObject *
send_slow(SendWrapper *self, PyObject *message)
{
    PyObject *args[2] = {(PyObject *)self, message};
    return PyObject_Vectorcall(self->slow, args, 2, NULL);
}

/* The response's last message, sent as ``_http_server._send`` sends it: the server's send
 * called and run in the ``outer`` context (the API's context variable set to it around
 * each step, as the coroutine's ``current_set(outer)`` ... ``reset`` around its await), and
 * timed when it returns (``sent``, ``sent_ns``), without a coroutine of ours: an awaitable
 * that steps the server's own. */

typedef struct {
    PyObject_HEAD
    SendWrapper *wrapper;
    PyObject *message; /* until the first step calls send with it */
    PyObject *inner;   /* the iterator of the awaitable send returned */
    char done;
} LastSend;

static PyObject *time_perf_counter, *time_time_ns;

/* The iterator `await awaitable` steps, as the interpreter gets it. */
static PyObject *
awaitable_iter(PyObject *awaitable)
{
    if (PyCoro_CheckExact(awaitable)) {
        return Py_NewRef(awaitable);
    }
    PyAsyncMethods *methods = Py_TYPE(awaitable)->tp_as_async;
    if (methods == NULL || methods->am_await == NULL) {
        PyErr_Format(PyExc_TypeError, "object %.100s can't be used in 'await' expression",
                     Py_TYPE(awaitable)->tp_name);
        return NULL;
    }
    PyObject *iter = methods->am_await(awaitable);
    if (iter != NULL && !PyIter_Check(iter)) {
        PyErr_Format(PyExc_TypeError, "__await__() returned non-iterator of type '%.100s'",
                     Py_TYPE(iter)->tp_name);
        Py_CLEAR(iter);
    }
    return iter;
}

/* The value of the StopIteration being raised (None if none), which is cleared; NULL with
 * the error kept for any other exception. */
static PyObject *
stop_value(void)
{
    if (!PyErr_ExceptionMatches(PyExc_StopIteration)) {
        return NULL;
    }
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    PyObject *result = value != NULL ? PyObject_GetAttrString(value, "value") : Py_NewRef(Py_None);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    return result;
}

static PyObject *str_throw;

/* throw()'s arguments, (type[, value[, traceback]]) or (exception,), as the exception */
static PyObject *
thrown_exception(PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_Format(PyExc_TypeError, "throw expected at most 3 arguments, got %zd", nargs);
        return NULL;
    }
    PyObject *kind = args[0], *value = nargs > 1 ? args[1] : Py_None;
    PyObject *traceback = nargs > 2 ? args[2] : Py_None;
    if (traceback != Py_None && !PyTraceBack_Check(traceback)) {
        PyErr_SetString(PyExc_TypeError, "throw() third argument must be a traceback object");
        return NULL;
    }
    PyObject *error;
    if (PyExceptionInstance_Check(kind)) {
        if (value != Py_None) {
            PyErr_SetString(PyExc_TypeError, "instance exception may not have a separate value");
            return NULL;
        }
        error = Py_NewRef(kind);
    }
    else if (PyExceptionClass_Check(kind)) {
        PyObject *type, *traceback_now;
        PyErr_SetObject(kind, value != Py_None ? value : NULL);
        PyErr_Fetch(&type, &error, &traceback_now);
        PyErr_NormalizeException(&type, &error, &traceback_now);
        Py_XDECREF(type);
        Py_XDECREF(traceback_now);
        if (error == NULL) {
            return NULL;
        }
    }
    else {
        PyErr_Format(PyExc_TypeError,
                     "exceptions must be classes or instances deriving from BaseException, "
                     "not %.100s",
                     Py_TYPE(kind)->tp_name);
        return NULL;
    }
    if (traceback != Py_None && PyException_SetTraceback(error, traceback) < 0) {
        Py_DECREF(error);
        return NULL;
    }
    return error;
}

/* thrown raised by iter's throw() (or, if it has none, as if raised by it) */
static PySendResult
throw_into(PyObject *iter, PyObject *thrown, PyObject **result)
{
    PyObject *method;
    int found = optional_attr(iter, str_throw, &method);
    if (found <= 0) {
        if (found == 0) {
            PyErr_SetObject((PyObject *)Py_TYPE(thrown), thrown);
        }
        return PYGEN_ERROR;
    }
    *result = PyObject_CallOneArg(method, thrown);
    Py_DECREF(method);
    if (*result != NULL) {
        return PYGEN_NEXT;
    }
    return (*result = stop_value()) != NULL ? PYGEN_RETURN : PYGEN_ERROR;
}

/* One step of the server's send in the outer context: send arg in, or thrown (an exception,
 * not NULL) thrown in. */
static PySendResult
last_step(LastSend *self, PyObject *arg, PyObject *thrown, PyObject **result)
{
    *result = NULL;
    if (self->done) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited send");
        return PYGEN_ERROR;
    }
    SendWrapper *wrapper = self->wrapper;
    PyObject *token = PyContextVar_Set(wrapper->var, wrapper->outer);
    if (token == NULL) {
        return PYGEN_ERROR;
    }
    PySendResult status = PYGEN_ERROR;
    if (self->inner == NULL && thrown != NULL) { /* thrown in before it started: raised */
        PyErr_SetObject((PyObject *)Py_TYPE(thrown), thrown);
        goto reset;
    }
    if (self->inner == NULL) {
        PyObject *message = self->message;
        self->message = NULL;
        PyObject *awaitable = PyObject_Vectorcall(wrapper->send, &message, 1, NULL);
        Py_DECREF(message);
        if (awaitable == NULL) {
            goto reset;
        }
        self->inner = awaitable_iter(awaitable);
        Py_DECREF(awaitable);
        if (self->inner == NULL) {
            goto reset;
        }
    }
    status = thrown == NULL ? PyIter_Send(self->inner, arg, result)
                            : throw_into(self->inner, thrown, result);
reset:;
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback); /* the step's error, kept across the reset */
    if (PyContextVar_Reset(wrapper->var, token) < 0) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    PyErr_Restore(type, value, traceback);
    Py_DECREF(token);
    if (status == PYGEN_NEXT) {
        return status;
    }
    self->done = 1;
    Py_CLEAR(self->inner);
    if (status == PYGEN_RETURN) {
        PyObject *sent = PyObject_CallNoArgs(time_perf_counter);
        PyObject *sent_ns = sent != NULL ? PyObject_CallNoArgs(time_time_ns) : NULL;
        if (sent_ns == NULL) {
            Py_XDECREF(sent);
            Py_CLEAR(*result);
            return PYGEN_ERROR;
        }
        Py_SETREF(wrapper->sent, sent);
        Py_SETREF(wrapper->sent_ns, sent_ns);
    }
    return status;
}

/* The result of a step as a call returns it: the value yielded, or NULL with StopIteration
 * (its value, if not None) or the error. */
static PyObject *
last_returned(PySendResult status, PyObject *result, int raise_stop)
{
    if (status == PYGEN_NEXT) {
        return result;
    }
    if (status == PYGEN_RETURN) {
        if (result != Py_None || raise_stop) {
            PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, result);
            if (stop != NULL) {
                PyErr_SetObject(PyExc_StopIteration, stop);
                Py_DECREF(stop);
            }
        }
        Py_DECREF(result);
    }
    return NULL;
}

/* An awaitable's protocol over its ``prefix##_step(self, arg, thrown, &result)``: am_send
 * (3.11's SEND), and iternext, send and throw as a coroutine's answer (3.12's SEND, and a
 * coroutine awaiting it delegating throw). */
#define AWAITABLE_STEPS(prefix, Type)                                                       \
    static PySendResult prefix##_am_send(PyObject *op, PyObject *arg, PyObject **result)    \
    {                                                                                       \
        return prefix##_step((Type *)op, arg, NULL, result);                                \
    }                                                                                       \
    static PyObject *prefix##_iternext(PyObject *op)                                        \
    {                                                                                       \
        PyObject *result;                                                                   \
        PySendResult status = prefix##_step((Type *)op, Py_None, NULL, &result);            \
        return last_returned(status, result, 0);                                            \
    }                                                                                       \
    static PyObject *prefix##_send(PyObject *op, PyObject *arg)                             \
    {                                                                                       \
        PyObject *result;                                                                   \
        PySendResult status = prefix##_step((Type *)op, arg, NULL, &result);                \
        return last_returned(status, result, 1);                                            \
    }                                                                                       \
    static PyObject *prefix##_throw(PyObject *op, PyObject *const *args, Py_ssize_t nargs)  \
    {                                                                                       \
        PyObject *thrown = thrown_exception(args, nargs);                                   \
        if (thrown == NULL) {                                                               \
            return NULL;                                                                    \
        }                                                                                   \
        PyObject *result;                                                                   \
        PySendResult status = prefix##_step((Type *)op, NULL, thrown, &result);             \
        Py_DECREF(thrown);                                                                  \
        return last_returned(status, result, 1);                                            \
    }

AWAITABLE_STEPS(last, LastSend)

static PyObject *
last_close(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    LastSend *self = (LastSend *)op;
    self->done = 1;
    Py_CLEAR(self->message);
    PyObject *inner = self->inner;
    self->inner = NULL;
    if (inner != NULL) {
        PyObject *method = PyObject_GetAttrString(inner, "close");
        PyObject *closed = NULL;
        if (method != NULL) {
            closed = PyObject_CallNoArgs(method);
            Py_DECREF(method);
        }
        else if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
            closed = Py_NewRef(Py_None);
        }
        Py_DECREF(inner);
        if (closed == NULL) {
            return NULL;
        }
        Py_DECREF(closed);
    }
    Py_RETURN_NONE;
}

static PyObject *
last_await(PyObject *op)
{
    return Py_NewRef(op);
}

#define LAST_SEND_FIELDS(X) X(wrapper) X(message) X(inner)

GC_FIELDS(last, LastSend, LAST_SEND_FIELDS)

/* An awaitable type of ours, awaited once and its own iterator, as a coroutine is:
 * ``prefix``'s am_send, iternext, send, throw and close step it (3.11's SEND calls am_send,
 * 3.12's iternext or send; a coroutine awaiting it delegates throw and close), and its
 * traverse, clear and dealloc keep it. */
#define AWAITABLE_TYPE(prefix, Type, type_object, doc, finalize)                            \
    static PyAsyncMethods prefix##_async = {                                                \
        .am_await = last_await,                                                             \
        .am_send = prefix##_am_send,                                                        \
    };                                                                                      \
    static PyMethodDef prefix##_methods[] = {                                               \
        {"send", (PyCFunction)prefix##_send, METH_O, NULL},                                 \
        {"throw", (PyCFunction)(void (*)(void))prefix##_throw, METH_FASTCALL, NULL},        \
        {"close", (PyCFunction)prefix##_close, METH_NOARGS, NULL},                          \
        {NULL, NULL, 0, NULL},                                                              \
    };                                                                                      \
    static PyTypeObject type_object = {                                                     \
        PyVarObject_HEAD_INIT(NULL, 0)                                                      \
        .tp_name = "kiki_otel._speedups." #Type,                                            \
        .tp_basicsize = sizeof(Type),                                                       \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,                                \
        .tp_doc = doc,                                                                      \
        .tp_as_async = &prefix##_async,                                                     \
        .tp_iter = last_await,                                                              \
        .tp_iternext = prefix##_iternext,                                                   \
        .tp_methods = prefix##_methods,                                                     \
        .tp_traverse = prefix##_traverse,                                                   \
        .tp_clear = prefix##_clear,                                                         \
        .tp_dealloc = prefix##_dealloc,                                                     \
        .tp_finalize = finalize,                                                            \
    };

AWAITABLE_TYPE(last, LastSend, LastSendType,
               "The response's last message being sent: awaited once.", NULL)

static PyObject *
last_send_new(SendWrapper *wrapper, PyObject *message)
{
    LastSend *self = PyObject_GC_New(LastSend, &LastSendType);
    if (self == NULL) {
        return NULL;
    }
    self->wrapper = (SendWrapper *)Py_NewRef(wrapper);
    self->message = Py_NewRef(message);
    self->inner = NULL;
    self->done = 0;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static PyObject *
send_wrapper_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    SendWrapper *self = (SendWrapper *)op;
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "send() takes one argument, the message");
        return NULL;
    }
    PyObject *message = args[0];
    if (!PyDict_CheckExact(message)) {
        return send_slow(self, message);
    }
    PyObject *type = PyDict_GetItemWithError(message, str_type); /* borrowed */
    if (type == NULL || !PyUnicode_CheckExact(type)) {
        return PyErr_Occurred() ? NULL : send_slow(self, message);
    }
    int start = same_str(type, str_response_start);
    if (start < 0) {
        return NULL;
    }
    if (start) {
        PyObject *status = PyDict_GetItemWithError(message, str_status);
        PyObject *given = status != NULL ? PyDict_GetItemWithError(message, str_headers) : NULL;
        if (status == NULL || PyErr_Occurred()) {
            return PyErr_Occurred() ? NULL : send_slow(self, message);
        }
        PyObject *headers = start_headers(self, given);
        if (headers == NULL) {
            return PyErr_Occurred() ? NULL : send_slow(self, message);
        }
        Py_INCREF(status); /* held: freeing the old headers may run code that edits the dict */
        int set = PyDict_SetItem(message, str_headers, headers);
        Py_DECREF(headers);
        if (set < 0) {
            Py_DECREF(status);
            return NULL;
        }
        Py_SETREF(self->status, status);
        self->started = 1;
    }
    else {
        int last = same_str(type, str_response_body);
        if (last == 0) {
            last = same_str(type, str_response_pathsend);
        }
        if (last < 0) {
            return NULL;
        }
        if (last) {
            PyObject *more = PyDict_GetItemWithError(message, str_more_body);
            int more_body = more != NULL ? PyObject_IsTrue(more) : 0;
            if (more_body < 0 || (more == NULL && PyErr_Occurred())) {
                return NULL;
            }
            if (!more_body) { /* the last one: timed, in the outer context */
                return self->var != NULL ? last_send_new(self, message)
                                         : send_slow(self, message);
            }
        }
    }
    return PyObject_Vectorcall(self->send, &message, 1, NULL);
}

#define SEND_WRAPPER_FIELDS(X)                                                             \
    X(send) X(headers) X(id_header) X(outer) X(slow) X(var) X(status) X(sent) X(sent_ns)

GC_FIELDS(send_wrapper, SendWrapper, SEND_WRAPPER_FIELDS)

static PyMemberDef send_wrapper_members[] = {
    {"send", T_OBJECT, offsetof(SendWrapper, send), READONLY, "the server's send"},
    {"headers", T_OBJECT, offsetof(SendWrapper, headers), READONLY,
     "the response headers that carry the request's ids"},
    {"id_header", T_OBJECT, offsetof(SendWrapper, id_header), READONLY,
     "the id header's name, lowercase bytes"},
    {"outer", T_OBJECT, offsetof(SendWrapper, outer), READONLY,
     "the context the response's last message is sent in"},
    {"status", T_OBJECT, offsetof(SendWrapper, status), 0, "the response's status, 0 before"},
    {"started", T_BOOL, offsetof(SendWrapper, started), 0, "the response has started"},
    {"sent", T_OBJECT, offsetof(SendWrapper, sent), 0,
     "perf_counter() when the last message was sent, 0.0 before"},
    {"sent_ns", T_OBJECT, offsetof(SendWrapper, sent_ns), 0,
     "time_ns() when the last message was sent, 0 before"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject SendWrapperType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kiki_otel._speedups.SendWrapper",
    .tp_basicsize = sizeof(SendWrapper),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "A request's ASGI send, made by send_wrapper().",
    .tp_vectorcall_offset = offsetof(SendWrapper, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_traverse = send_wrapper_traverse,
    .tp_clear = send_wrapper_clear,
    .tp_dealloc = send_wrapper_dealloc,
    .tp_members = send_wrapper_members,
};

static PyObject *zero_float, *zero_int;

static PyObject *
send_wrapper(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_nargs("send_wrapper", nargs, 6)) {
        return NULL;
    }
    if (!PyList_CheckExact(args[1]) || !PyBytes_CheckExact(args[2])
        || (args[5] != Py_None && !PyContextVar_CheckExact(args[5]))) {
        PyErr_SetString(PyExc_TypeError,
                        "send_wrapper: headers must be a list, id_header bytes, var a ContextVar "
                        "or None");
        return NULL;
    }
    SendWrapper *self = PyObject_GC_New(SendWrapper, &SendWrapperType);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = send_wrapper_call;
    self->send = Py_NewRef(args[0]);
    self->headers = Py_NewRef(args[1]);
    self->id_header = Py_NewRef(args[2]);
    self->outer = Py_NewRef(args[3]);
    self->slow = Py_NewRef(args[4]);
    self->var = args[5] != Py_None ? Py_NewRef(args[5]) : NULL;
    self->status = Py_NewRef(zero_int);
    self->sent = Py_NewRef(zero_float);
    self->sent_ns = Py_NewRef(zero_int);
    self->started = 0;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

/* ------------------------------------------------------------------ C twins of Python code
 *
 * ``access_line``, ``histogram_record`` and ``request_end`` each make a callable object
 * holding a Python callable, its ``twin`` (what it calls for anything but its common case),
 * and a few more objects. ``TWIN_TYPE`` defines such a type from the list of its object
 * fields (``FIELDS(X)``): ``GC_FIELDS``' functions, the ``twin`` member and the type
 * object, called through the ``vectorcall`` each instance holds. */

#define TWIN_TYPE(prefix, Type, type_object, FIELDS, doc)                                   \
    GC_FIELDS(prefix, Type, FIELDS)                                                         \
    static PyMemberDef prefix##_members[] = {                                               \
        {"twin", T_OBJECT, offsetof(Type, twin), READONLY,                                  \
         "what it calls for anything but the common case"},                                 \
        {NULL, 0, 0, 0, NULL},                                                              \
    };                                                                                      \
    static PyTypeObject type_object = {                                                     \
        PyVarObject_HEAD_INIT(NULL, 0)                                                      \
        .tp_name = "kiki_otel._speedups." #Type,                                            \
        .tp_basicsize = sizeof(Type),                                                       \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,   \
        .tp_doc = doc,                                                                      \
        .tp_vectorcall_offset = offsetof(Type, vectorcall),                                 \
        .tp_call = PyVectorcall_Call,                                                       \
        .tp_traverse = prefix##_traverse,                                                   \
        .tp_clear = prefix##_clear,                                                         \
        .tp_dealloc = prefix##_dealloc,                                                     \
        .tp_members = prefix##_members,                                                     \
    };

/* A new object of a twin type whose object fields, ``twin`` to ``last``, are declared in its
 * constructor's argument order: each holds its argument. ``count`` must be their number. */
static PyObject *
twin_new(PyTypeObject *type, size_t call_at, vectorcallfunc call, size_t first, size_t last,
         PyObject *const *args, Py_ssize_t count)
{
    if ((Py_ssize_t)((last - first) / sizeof(PyObject *)) + 1 != count) {
        PyErr_Format(PyExc_SystemError, "%s: %zd arguments for its fields", type->tp_name, count);
        return NULL;
    }
    PyObject *self = PyType_GenericAlloc(type, 0); /* zeroed, and tracked */
    if (self == NULL) {
        return NULL;
    }
    *(vectorcallfunc *)((char *)self + call_at) = call;
    PyObject **fields = (PyObject **)((char *)self + first);
    for (Py_ssize_t i = 0; i < count; i++) {
        fields[i] = Py_NewRef(args[i]);
    }
    return self;
}

#define TWIN_NEW(Type, type_object, call, last, args, count)                                  \
    twin_new(&type_object, offsetof(Type, vectorcall), call, offsetof(Type, twin),            \
             offsetof(Type, last), args, count)

/* ------------------------------------------------------------------ a batch queue's item
 *
 * ``queue_item(batch, item)``: ``_otlp_http.enqueue``'s common case (the item fits, the
 * process is the queue's), reading and calling what it reads and calls, in its order.
 * True when done (queued, or dropped after shutdown as ``enqueue`` drops it); False when
 * nothing changed and ``enqueue`` must run (a fork the SDK has not seen, a full queue). */

static PyObject *str_shutdown, *str_pid, *str_queue, *str_max_queue_size, *str_appendleft;
static PyObject *str_max_export_batch_size, *str_worker_awaken, *str_is_set, *str_set;

/* size >= getattr(target, name) (through target's fields, see held_attr): 1 or 0, -1 on
 * an error */
static int
reaches(PyObject *target, PyObject *fields, PyObject *name, Py_ssize_t size)
{
    PyObject *limit = held_attr(target, target, fields, name);
    PyObject *have = limit != NULL ? PyLong_FromSsize_t(size) : NULL;
    int at = have != NULL ? PyObject_RichCompareBool(have, limit, Py_GE) : -1;
    Py_XDECREF(limit);
    Py_XDECREF(have);
    return at;
}

/* queue_item's work, reading the batch's attributes through fields (its __dict__ held by
 * the caller, ``_native.plain_fields``'s) or None. */
static PyObject *
queue_into(PyObject *batch, PyObject *fields, PyObject *item)
{
    PyObject *shutdown = held_attr(batch, batch, fields, str_shutdown);
    int closed = shutdown != NULL ? PyObject_IsTrue(shutdown) : -1;
    Py_XDECREF(shutdown);
    if (closed != 0) {
        return closed < 0 ? NULL : Py_NewRef(Py_True);
    }
    PyObject *pid = held_attr(batch, batch, fields, str_pid);
    if (pid == NULL) {
        return NULL;
    }
    long owner = PyLong_Check(pid) ? PyLong_AsLong(pid) : -1;
    Py_DECREF(pid);
    if (owner == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (owner != (long)getpid()) {
        Py_RETURN_FALSE;
    }
    PyObject *queue = held_attr(batch, batch, fields, str_queue);
    if (queue == NULL) {
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t size = PyObject_Length(queue);
    int full = size >= 0 ? reaches(batch, fields, str_max_queue_size, size) : -1;
    if (full != 0) {
        result = full < 0 ? NULL : Py_NewRef(Py_False);
        goto done;
    }
    PyObject *added = PyObject_CallMethodOneArg(queue, str_appendleft, item);
    if (added == NULL) {
        goto done;
    }
    Py_DECREF(added);
    size = PyObject_Length(queue);
    int wake = size >= 0 ? reaches(batch, fields, str_max_export_batch_size, size) : -1;
    if (wake > 0) {
        PyObject *awaken = held_attr(batch, batch, fields, str_worker_awaken);
        PyObject *set = awaken != NULL ? PyObject_CallMethodNoArgs(awaken, str_is_set) : NULL;
        int is_set = set != NULL ? PyObject_IsTrue(set) : -1;
        Py_XDECREF(set);
        if (is_set == 0) {
            set = PyObject_CallMethodNoArgs(awaken, str_set);
            is_set = set != NULL ? 1 : -1;
            Py_XDECREF(set);
        }
        Py_XDECREF(awaken);
        wake = is_set < 0 ? -1 : 1;
    }
    result = wake < 0 ? NULL : Py_NewRef(Py_True);
done:
    Py_DECREF(queue);
    return result;
}

static PyObject *
queue_item(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_nargs("queue_item", nargs, 2)) {
        return NULL;
    }
    return queue_into(args[0], Py_None, args[1]);
}

/* ------------------------------------------------------------------ a log record's queueing
 *
 * ``logs_queue(twin, multi, processors, logger, limit, metrics, batch, encoded, enqueue,
 * multi_fields, logger_fields, batch_fields)`` makes ``DirectLogs.queue``:
 * ``DirectLogs.emit_encoded`` (its twin) as one C call, and ``DirectLogs.usable``'s check
 * for the C access line (``logs_usable``), each reading what the methods read per call
 * (the processors, the logger's config, its resource and scope, the batch's state), from
 * the __dict__s of multi, logger and batch where those are plain (``held_attr``), and
 * holding what they hold. */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *twin, *multi, *processors, *logger, *limit, *metrics, *batch, *encoded;
    PyObject *enqueue;
    /* the __dict__s of multi, logger and batch, or None each (_native.plain_fields) */
    PyObject *multi_fields, *logger_fields, *batch_fields;
} LogsQueue;

static PyObject *str_log_processors, *str_logger_config, *str_emit_log, *str_log_resource;
static PyObject *str_queue_method;
static PyObject *str_is_enabled, *str_scope_field; /* (defined with the histogram and span end) */

/* ``DirectLogs.usable(count)``: 1, 0, or -1 on error */
static int
logs_usable(LogsQueue *self, Py_ssize_t count)
{
    PyObject *now = held_attr(self->multi, self->multi, self->multi_fields, str_log_processors);
    int usable = now != NULL ? now == self->processors : -1;
    Py_XDECREF(now);
    if (usable > 0) {
        PyObject *config = held_attr(self->logger, self->logger, self->logger_fields,
                                     str_logger_config);
        PyObject *enabled = config != NULL ? PyObject_GetAttr(config, str_is_enabled) : NULL;
        Py_XDECREF(config);
        usable = enabled != NULL ? PyObject_IsTrue(enabled) : -1;
        Py_XDECREF(enabled);
    }
    if (usable > 0 && self->limit != Py_None) {
        PyObject *number = PyLong_FromSsize_t(count);
        usable = number != NULL ? PyObject_RichCompareBool(number, self->limit, Py_LE) : -1;
        Py_XDECREF(number);
    }
    return usable;
}

static PyObject *
logs_queue_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    LogsQueue *self = (LogsQueue *)op;
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        return PyObject_Vectorcall(self->twin, args, nargsf, kwnames);
    }
    if (self->metrics != Py_None) {
        PyObject *counted = PyObject_CallMethodNoArgs(self->metrics, str_emit_log);
        if (counted == NULL) {
            return NULL;
        }
        Py_DECREF(counted);
    }
    PyObject *logger = self->logger, *fields = self->logger_fields;
    PyObject *resource = held_attr(logger, logger, fields, str_log_resource);
    PyObject *scope = resource != NULL ? held_attr(logger, logger, fields, str_scope_field) : NULL;
    PyObject *item = NULL, *queued = NULL;
    if (scope != NULL) {
        PyObject *item_args[4] = {self->encoded, args[0], resource, scope};
        item = new_tuple(NULL, item_args, 4); /* Encoded(payload, resource, scope) */
    }
    if (item != NULL) {
        PyObject *queue_args[2] = {self->batch, item};
        queued = queue_into(self->batch, self->batch_fields, item);
        if (queued == Py_False) {
            Py_SETREF(queued, PyObject_Vectorcall(self->enqueue, queue_args, 2, NULL));
        }
    }
    Py_XDECREF(resource);
    Py_XDECREF(scope);
    Py_XDECREF(item);
    if (queued == NULL) {
        return NULL;
    }
    Py_DECREF(queued);
    Py_RETURN_NONE;
}

#define LOGS_QUEUE_FIELDS(X)                                                               \
    X(twin) X(multi) X(processors) X(logger) X(limit) X(metrics) X(batch) X(encoded)        \
    X(enqueue) X(multi_fields) X(logger_fields) X(batch_fields)

TWIN_TYPE(logs_queue, LogsQueue, LogsQueueType, LOGS_QUEUE_FIELDS,
          "A log record's queueing, made by logs_queue().")

static PyObject *
logs_queue(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_nargs("logs_queue", nargs, 12)) {
        return NULL;
    }
    if (!PyType_Check(args[7]) || !PyType_IsSubtype((PyTypeObject *)args[7], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "logs_queue: encoded must be a tuple class");
        return NULL;
    }
    if (!held_fields_ok("logs_queue", args, 9, 12, 1)) {
        return NULL;
    }
    return TWIN_NEW(LogsQueue, LogsQueueType, logs_queue_call, batch_fields, args, 12);
}

/* ------------------------------------------------------------------ the access line
 *
 * ``access_line(...)`` makes the callable the middleware logs a request with:
 * ``_access_log.DirectAccessLog.__call__`` (its twin, and what it calls for anything but
 * the common case) in one C call. The common case: kiki's chain still installed (the live
 * processor list equal to the installed one) and the context the caller made current
 * still current (``current``: the middleware's context and its span's ids, see
 * ``_http_server.ServerTelemetry._start_span``); then the event dict is built key for key
 * in the twin's order, the Python processors that matter are called as the twin calls
 * them (the context variables' merge, the output's ``write``), the OTel emitter's
 * ``emit_current`` runs here for its common case (``access_emit``), and the line's JSON is
 * ``json_line``'s (else the renderer's ``dumps``). What it saves is the frames of the twin
 * and of ``emit_current``, and their lookups: ~270 bytecodes a request. */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *twin;      /* DirectAccessLog.__call__, bound */
    PyObject *live;      /* the processor list structlog holds */
    PyObject *installed; /* what it held when kiki's chain was installed */
    PyObject *merge;     /* structlog's merge_contextvars */
    PyObject *var;       /* the API's current-context variable */
    PyObject *client_var; /* the client's own request id */
    PyObject *service;
    PyObject *structure; /* structure_exception */
    PyObject *emit;      /* the emitter's bound emit_current, or NULL */
    PyObject *loggers;   /* its common case (see access_emit), or NULL: its loggers, */
    PyObject *local;     /* its thread-local state, */
    PyObject *idle;      /* the state of a thread not emitting, */
    PyObject *skip;      /* the event's fields that are no attributes of the record */
    char trace_based;    /* only records of sampled traces */
    PyObject *heads;     /* (info head, error head) of the emitter's records */
    PyObject *name;      /* the access logger's name */
    PyObject *dumps, *dumps_default, *write, *stamp_fallback;
    char levels[2];      /* info, error enabled */
    char pairs;          /* the merge is merge_contextvars: the line without a dict (below) */
    unsigned attributes; /* which of the line's keys (ACCESS_KEYS) its record has */
} AccessLine;

/* The line's keys in the order the event dict has them without context variables. */
enum {
    KEY_METHOD, KEY_PATH, KEY_ROUTE, KEY_STATUS, KEY_DURATION, KEY_EVENT, KEY_LOGGER,
    KEY_LEVEL, KEY_TIMESTAMP, KEY_TRACE_ID, KEY_REQUEST_ID, KEY_SPAN_ID, KEY_CLIENT_ID,
    KEY_SERVICE, ACCESS_KEYS
};

/* The line's fields in order, and those its record has as attributes (the keys not in
 * the emitter's skip), each a borrowed key and value: the event dict's items without it. */
typedef struct {
    PyObject *keys[ACCESS_KEYS], *values[ACCESS_KEYS];
    unsigned char index[ACCESS_KEYS]; /* each key's in access_keys */
    Py_ssize_t count;
    PyObject *attribute_keys[ACCESS_KEYS], *attribute_values[ACCESS_KEYS];
    Py_ssize_t attributes;
} Pairs;

/* ------------------------------------------------------------------ context variables
 *
 * ``merge_contextvars(logger, method_name, event_dict)``: structlog's processor of that
 * name (``structlog.contextvars.merge_contextvars``) in C, as it does it: every variable
 * of a copy of the current context whose name has structlog's prefix (``structlog_``) and
 * whose value is not ``Ellipsis`` (unbound) goes into the event under its name past the
 * prefix, unless the event has that key already (``setdefault``); the event is returned.
 * The access line runs it on every request (~2.6k instructions as a Python call), where
 * structlog's prefix is this one (``_access_log``); tested against structlog's own. */

static PyObject *str_name, *str_structlog_prefix, *str_setdefault;

/* event.setdefault(name[len(prefix):], value): 0, or -1 with an error set */
static int
merge_one(PyObject *event, PyObject *name, PyObject *value)
{
    PyObject *key = PyUnicode_Substring(name, PyUnicode_GET_LENGTH(str_structlog_prefix),
                                        PyUnicode_GET_LENGTH(name));
    if (key == NULL) {
        return -1;
    }
    PyObject *kept;
    if (PyDict_CheckExact(event)) {
        kept = Py_XNewRef(PyDict_SetDefault(event, key, value));
    }
    else { /* a MutableMapping of the user's */
        kept = PyObject_CallMethodObjArgs(event, str_setdefault, key, value, NULL);
    }
    Py_DECREF(key);
    Py_XDECREF(kept);
    return kept != NULL ? 0 : -1;
}

/* The merge into event (a dict or mapping): 0, or -1 with an error set. With event NULL,
 * nothing merged: 1 when a variable would be (the first one found), else 0. */
static int
structlog_merge(PyObject *event)
{
    PyObject *context = PyContext_CopyCurrent();
    PyObject *variables = context != NULL ? PyObject_GetIter(context) : NULL;
    if (variables == NULL) {
        Py_XDECREF(context);
        return -1;
    }
    int status = 0;
    PyObject *variable;
    while (status == 0 && (variable = PyIter_Next(variables)) != NULL) {
        PyObject *name = PyObject_GetAttr(variable, str_name); /* a ContextVar's: a str */
        int mine = name == NULL ? -1
                   : PyUnicode_Check(name)
                       ? (int)PyUnicode_Tailmatch(name, str_structlog_prefix, 0, PY_SSIZE_T_MAX, -1)
                       : 0;
        if (mine > 0) {
            PyObject *value = PyObject_GetItem(context, variable);
            if (value == NULL) {
                status = -1;
            }
            else if (value != Py_Ellipsis) {
                status = event != NULL ? merge_one(event, name, value) : 1;
            }
            Py_XDECREF(value);
        }
        else if (mine < 0) {
            status = -1;
        }
        Py_XDECREF(name);
        Py_DECREF(variable);
    }
    Py_DECREF(variables);
    Py_DECREF(context);
    return status < 0 || PyErr_Occurred() ? -1 : status;
}

static PyObject *
merge_contextvars(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_nargs("merge_contextvars", nargs, 3)) {
        return NULL;
    }
    return structlog_merge(args[2]) < 0 ? NULL : Py_NewRef(args[2]);
}

static PyObject *str_method, *str_path, *str_route, *str_duration_ms, *str_event, *str_logger;
static PyObject *str_level, *str_timestamp, *str_trace_id, *str_request_id, *str_span_id;
static PyObject *str_client_request_id, *str_service, *str_exc_info, *str_info, *str_error;
static PyObject *str_access_event, *str_time_ns, *str_state, *str_usable;
static PyObject *int_500, *time_module;

/* The line's event dict, sized for its common case's keys (the call's eight, the
 * timestamp, three ids, a client's id, service): filled without growing twice on the way,
 * each growth a new table and every key inserted again. The same dict either way; past
 * the CPythons it is built and tested on (3.11-3.13: the sizing call is private API
 * there), it is made as ``{}`` makes it. */
static PyObject *
new_event(void)
{
#if PY_VERSION_HEX < 0x030E0000
    return _PyDict_NewPresized(16);
#else
    return PyDict_New();
#endif
}

static PyObject **const access_keys[ACCESS_KEYS] = {
    &str_method, &str_path, &str_route, &str_status, &str_duration_ms, &str_event,
    &str_logger, &str_level, &str_timestamp, &str_trace_id, &str_request_id, &str_span_id,
    &str_client_request_id, &str_service};

/* Each key's JSON, ``"key":``, made once (access_keys_init): the keys are plain ASCII. */
#define ACCESS_KEY_JSON 24
static char access_key_json[ACCESS_KEYS][ACCESS_KEY_JSON];
static unsigned char access_key_json_size[ACCESS_KEYS];

static int
access_keys_init(void)
{
    for (int key = 0; key < ACCESS_KEYS; key++) {
        Py_ssize_t size;
        const char *text = PyUnicode_AsUTF8AndSize(*access_keys[key], &size);
        if (text == NULL) {
            return -1;
        }
        if (size + 3 > ACCESS_KEY_JSON || memchr(text, '"', (size_t)size) != NULL
            || memchr(text, '\\', (size_t)size) != NULL) {
            PyErr_SetString(PyExc_SystemError, "_speedups: an access line key to escape");
            return -1;
        }
        char *out = access_key_json[key];
        out[0] = '"';
        memcpy(out + 1, text, (size_t)size);
        out[size + 1] = '"';
        out[size + 2] = ':';
        access_key_json_size[key] = (unsigned char)(size + 3);
    }
    return 0;
}

static void
pairs_add(Pairs *pairs, unsigned attributes, int key, PyObject *value)
{
    pairs->index[pairs->count] = (unsigned char)key;
    pairs->keys[pairs->count] = *access_keys[key];
    pairs->values[pairs->count++] = value;
    if (attributes & (1u << key)) {
        pairs->attribute_keys[pairs->attributes] = *access_keys[key];
        pairs->attribute_values[pairs->attributes++] = value;
    }
}

/* json_line of the pairs' dict, their keys' JSON made once: bytes, None, or NULL. */
static PyObject *
pairs_json(const Pairs *pairs)
{
    BUFFER_INIT(buf);
    int written = put_bytes(&buf, "{", 1) < 0 ? -1 : 1;
    for (Py_ssize_t i = 0; written > 0 && i < pairs->count; i++) {
        int key = pairs->index[i];
        Py_ssize_t size = access_key_json_size[key];
        if (buffer_reserve(&buf, size + 1) < 0) {
            written = -1;
            break;
        }
        if (i > 0) {
            buf.data[buf.size++] = ',';
        }
        memcpy(buf.data + buf.size, access_key_json[key], (size_t)size);
        buf.size += size;
        written = put_json_value(&buf, pairs->values[i]);
    }
    if (written > 0 && put_bytes(&buf, "}", 1) < 0) {
        written = -1;
    }
    return finish(&buf, written);
}

/* The event dict of the pairs: a new reference, or NULL with an error set. */
static PyObject *
pairs_event(const Pairs *pairs)
{
    PyObject *event = new_event();
    for (Py_ssize_t i = 0; event != NULL && i < pairs->count; i++) {
        if (PyDict_SetItem(event, pairs->keys[i], pairs->values[i]) < 0) {
            Py_CLEAR(event);
        }
    }
    return event;
}

/* ``_logging.OTelEmitter.emit_current``'s common case for the line's record: the access
 * logger's direct path known, this thread not emitting already, the record usable
 * (``direct.usable``, in C through ``direct.queue``) and its fields plain
 * (``encode_log_event``); then it is queued by ``direct.queue`` (``emit_encoded``, in C:
 * ``logs_queue``). 1: done (or dropped by the trace-based filter, as the method drops it);
 * 0: the method's to do (it checks the same again); -1: an error, set. */
static int
access_emit(AccessLine *self, PyObject *event, const Pairs *pairs, PyObject *current,
            PyObject *now, PyObject *head)
{
    Py_ssize_t count = event != NULL ? PyDict_GET_SIZE(event) : pairs->count;
    PyObject *entry = PyDict_GetItemWithError(self->loggers, self->name); /* borrowed */
    if (entry == NULL || !PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 2
        || PyTuple_GET_ITEM(entry, 1) == Py_None) {
        return PyErr_Occurred() ? -1 : 0;
    }
    PyObject *state = PyObject_GetAttr(self->local, str_state);
    if (state == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return -1;
        }
        PyErr_Clear(); /* this thread's first record: the method sets its state */
        return 0;
    }
    Py_DECREF(state); /* only compared */
    if (state != self->idle) {
        return 0;
    }
    PyObject *flags = PyTuple_GET_ITEM(current, 3);
    long bits = PyLong_Check(flags) ? PyLong_AsLong(flags) : -1;
    if (bits < 0 || bits > 255) {
        return PyErr_Occurred() ? -1 : 0;
    }
    if (self->trace_based && !(bits & 1)) {
        return 1; /* a record of an unsampled trace: not exported */
    }
    PyObject *direct = Py_NewRef(PyTuple_GET_ITEM(entry, 1)); /* held: calls run Python */
    PyObject *queue = PyObject_GetAttr(direct, str_queue_method);
    if (queue == NULL) {
        Py_DECREF(direct);
        return -1;
    }
    int done;
    if (Py_IS_TYPE(queue, &LogsQueueType)) {
        done = logs_usable((LogsQueue *)queue, count);
    }
    else {
        PyObject *size = PyLong_FromSsize_t(count);
        PyObject *usable = size != NULL ? PyObject_CallMethodOneArg(direct, str_usable, size)
                                        : NULL;
        Py_XDECREF(size);
        done = usable != NULL ? PyObject_IsTrue(usable) : -1;
        Py_XDECREF(usable);
    }
    if (done > 0) {
        PyObject *payload = log_record(now, head, event, self->skip,
                                       pairs != NULL ? pairs->attribute_keys : NULL,
                                       pairs != NULL ? pairs->attribute_values : NULL,
                                       pairs != NULL ? pairs->attributes : 0,
                                       PyTuple_GET_ITEM(current, 1), PyTuple_GET_ITEM(current, 2),
                                       flags);
        if (payload == NULL && PyErr_ExceptionMatches(PyExc_Exception)) {
            PyErr_Clear(); /* the method's Python encoder reports it */
            done = 0;
        }
        else if (payload == NULL) {
            done = -1;
        }
        else if (payload == Py_None) {
            done = 0;
        }
        else { /* direct.queue(payload): emit_encoded, in C when built */
            PyObject *queued = PyObject_CallOneArg(queue, payload);
            done = queued != NULL ? 1 : -1;
            Py_XDECREF(queued);
        }
        Py_XDECREF(payload);
    }
    Py_DECREF(queue);
    Py_DECREF(direct);
    return done;
}

/* The line's end, the dict path's and access_pairs': the record (access_emit, else the
 * emitter's method, given the event dict, made from the pairs if there is none yet; as the
 * method, an error is dropped: telemetry must never break logging), the JSON (of the dict
 * if one was made, else of the pairs; the renderer's dumps for anything not plain), and
 * the write. event (borrowed) or pairs: one of them is NULL. */
static PyObject *
access_finish(AccessLine *self, int failed, PyObject *current, PyObject *now, PyObject *event,
              const Pairs *pairs)
{
    PyObject *level = failed ? str_error : str_info, *line = NULL, *result = NULL;
    Py_XINCREF(event);
    if (self->emit != NULL) {
        PyObject *head = PyTuple_GET_ITEM(self->heads, failed);
        int emitted =
            self->loggers != NULL ? access_emit(self, event, pairs, current, now, head) : 0;
        if (emitted == 0) {
            if (event == NULL && (event = pairs_event(pairs)) == NULL) {
                goto done;
            }
            PyObject *emit_args[6] = {level, event, PyTuple_GET_ITEM(current, 4), self->name,
                                      now, head};
            PyObject *called = PyObject_Vectorcall(self->emit, emit_args, 6, NULL);
            emitted = called != NULL ? 1 : -1;
            Py_XDECREF(called);
        }
        if (emitted < 0) {
            if (!PyErr_ExceptionMatches(PyExc_Exception)) {
                goto done;
            }
            PyErr_Clear();
        }
    }
    line = event != NULL ? json_line(NULL, event) : pairs_json(pairs);
    if (line == Py_None) {
        if (event == NULL && (event = pairs_event(pairs)) == NULL) {
            goto done;
        }
        PyObject *dumps_args[2] = {event, self->dumps_default};
        Py_SETREF(line, PyObject_Vectorcall(self->dumps, dumps_args, 2, NULL));
    }
    if (line != NULL) {
        result = PyObject_Vectorcall(self->write, &line, 1, NULL);
    }
done:
    Py_XDECREF(event);
    Py_XDECREF(line);
    return result;
}

/* The line when no context variable of structlog's is bound and the merge is
 * merge_contextvars: it would add nothing, so the event dict's items are known, in order,
 * and the record and the JSON are written from them (``Pairs``); the dict is made only for
 * a call that takes one (the emitter's method, the renderer's dumps), and then the rest
 * reads that dict, as the dict path does. What is called, read and written is the dict
 * path's, in its order: the same line and record (tested against the twin). */
static PyObject *
access_pairs(AccessLine *self, PyObject *const *args, PyObject *current, int failed)
{
    PyObject *level = failed ? str_error : str_info;
    PyObject *ids = PyTuple_GET_ITEM(current, 5);
    PyObject *now = NULL, *stamp = NULL, *client = NULL, *result = NULL;
    unsigned attributes = self->attributes;
    Pairs pairs = {.count = 0, .attributes = 0};
    for (int key = KEY_METHOD; key <= KEY_DURATION; key++) { /* the call's, in its order */
        pairs_add(&pairs, attributes, key, args[key]);
    }
    pairs_add(&pairs, attributes, KEY_EVENT, str_access_event);
    pairs_add(&pairs, attributes, KEY_LOGGER, self->name);
    pairs_add(&pairs, attributes, KEY_LEVEL, level);
    PyObject *clock = module_attr(time_module, str_time_ns);
    now = clock != NULL ? PyObject_CallNoArgs(clock) : NULL;
    Py_XDECREF(clock);
    PyObject *stamp_args[2] = {now, self->stamp_fallback};
    stamp = now != NULL ? iso_timestamp(NULL, stamp_args, 2) : NULL;
    if (stamp == NULL) {
        goto done;
    }
    pairs_add(&pairs, attributes, KEY_TIMESTAMP, stamp);
    if (ids != Py_None) {
        if (!PyTuple_CheckExact(ids) || PyTuple_GET_SIZE(ids) != 2) {
            PyErr_SetString(PyExc_TypeError, "access_line: the ids must be a pair");
            goto done;
        }
        pairs_add(&pairs, attributes, KEY_TRACE_ID, PyTuple_GET_ITEM(ids, 0));
        pairs_add(&pairs, attributes, KEY_REQUEST_ID, PyTuple_GET_ITEM(ids, 0));
        pairs_add(&pairs, attributes, KEY_SPAN_ID, PyTuple_GET_ITEM(ids, 1));
    }
    if (PyContextVar_Get(self->client_var, Py_None, &client) < 0) {
        goto done;
    }
    if (client != Py_None) {
        pairs_add(&pairs, attributes, KEY_CLIENT_ID, client);
    }
    pairs_add(&pairs, attributes, KEY_SERVICE, self->service);
    result = access_finish(self, failed, current, now, NULL, &pairs);
done:
    Py_XDECREF(now);
    Py_XDECREF(stamp);
    Py_XDECREF(client);
    return result;
}

static PyObject *
access_line_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    AccessLine *self = (AccessLine *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 6 || kwnames != NULL) {
        return PyObject_Vectorcall(self->twin, args, nargsf, kwnames);
    }
    PyObject *current = args[5];
    if (!PyTuple_CheckExact(current) || PyTuple_GET_SIZE(current) != 6) {
        return PyObject_Vectorcall(self->twin, args, nargsf, NULL);
    }
    int changed = PyObject_RichCompareBool(self->live, self->installed, Py_NE);
    if (changed != 0) {
        return changed < 0 ? NULL : PyObject_Vectorcall(self->twin, args, nargsf, NULL);
    }
    PyObject *context;
    if (PyContextVar_Get(self->var, NULL, &context) < 0) {
        return NULL;
    }
    Py_XDECREF(context); /* only compared: the caller's tuple holds the one it made */
    if (context != PyTuple_GET_ITEM(current, 0)) {
        return PyObject_Vectorcall(self->twin, args, nargsf, NULL);
    }
    int failed = PyObject_RichCompareBool(args[3], int_500, Py_GE);
    if (failed < 0) {
        return NULL;
    }
    if (!self->levels[failed]) {
        Py_RETURN_NONE;
    }
    if (self->pairs) {
        int bound = structlog_merge(NULL);
        if (bound <= 0) {
            return bound < 0 ? NULL : access_pairs(self, args, current, failed);
        }
    }
    PyObject *level = failed ? str_error : str_info;
    PyObject *ids = PyTuple_GET_ITEM(current, 5);
    PyObject *event = new_event(), *now = NULL, *stamp = NULL, *client = NULL, *result = NULL;
    if (event == NULL || PyDict_SetItem(event, str_method, args[0]) < 0
        || PyDict_SetItem(event, str_path, args[1]) < 0
        || PyDict_SetItem(event, str_route, args[2]) < 0
        || PyDict_SetItem(event, str_status, args[3]) < 0
        || PyDict_SetItem(event, str_duration_ms, args[4]) < 0
        || PyDict_SetItem(event, str_event, str_access_event) < 0
        || PyDict_SetItem(event, str_logger, self->name) < 0
        || PyDict_SetItem(event, str_level, level) < 0) {
        goto done;
    }
    /* the line's timestamp and its record's; looked up as the twin does (a test's clock) */
    PyObject *clock = module_attr(time_module, str_time_ns);
    now = clock != NULL ? PyObject_CallNoArgs(clock) : NULL;
    Py_XDECREF(clock);
    PyObject *stamp_args[2] = {now, self->stamp_fallback};
    stamp = now != NULL ? iso_timestamp(NULL, stamp_args, 2) : NULL;
    if (stamp == NULL || PyDict_SetItem(event, str_timestamp, stamp) < 0) {
        goto done;
    }
    PyObject *merge_args[3] = {Py_None, level, event};
    PyObject *merged = PyObject_Vectorcall(self->merge, merge_args, 3, NULL);
    if (merged == NULL) {
        goto done;
    }
    Py_DECREF(merged);
    if (ids != Py_None) {
        if (!PyTuple_CheckExact(ids) || PyTuple_GET_SIZE(ids) != 2) {
            PyErr_SetString(PyExc_TypeError, "access_line: the ids must be a pair");
            goto done;
        }
        PyObject *trace_hex = PyTuple_GET_ITEM(ids, 0);
        if (PyDict_SetItem(event, str_trace_id, trace_hex) < 0
            || PyDict_SetItem(event, str_request_id, trace_hex) < 0
            || PyDict_SetItem(event, str_span_id, PyTuple_GET_ITEM(ids, 1)) < 0) {
            goto done;
        }
    }
    if (PyContextVar_Get(self->client_var, Py_None, &client) < 0) {
        goto done;
    }
    if (client != Py_None) {
        PyObject *kept = PyDict_SetDefault(event, str_client_request_id, client);
        if (kept == NULL) {
            goto done;
        }
    }
    int has = PyDict_Contains(event, str_service);
    if (has < 0 || (!has && PyDict_SetItem(event, str_service, self->service) < 0)) {
        goto done;
    }
    has = PyDict_Contains(event, str_exc_info); /* only a context variable can bring it */
    if (has < 0) {
        goto done;
    }
    if (has) {
        PyObject *structured = PyObject_Vectorcall(self->structure, merge_args, 3, NULL);
        if (structured == NULL) {
            goto done;
        }
        Py_DECREF(structured);
    }
    result = access_finish(self, failed, current, now, event, NULL);
done:
    Py_XDECREF(event);
    Py_XDECREF(now);
    Py_XDECREF(stamp);
    Py_XDECREF(client);
    return result;
}

#define ACCESS_LINE_FIELDS(X)                                                              \
    X(twin) X(live) X(installed) X(merge) X(var) X(client_var) X(service) X(structure)   \
    X(emit) X(loggers) X(local) X(idle) X(skip) X(heads) X(name) X(dumps) X(dumps_default) \
    X(write) X(stamp_fallback)

TWIN_TYPE(access_line, AccessLine, AccessLineType, ACCESS_LINE_FIELDS,
          "A request's access line, made by access_line().")

static PyObject *
access_line(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_nargs("access_line", nargs, 17)) {
        return NULL;
    }
    /* twin, live, installed, levels, merge, var, client_var, service, structure, emit,
     * heads, name, dumps, dumps_default, write, stamp_fallback, emit_fast: None or
     * (loggers, local, idle, trace_based, skip) */
    PyObject *fast = args[16];
    if (fast != Py_None
        && (!PyTuple_CheckExact(fast) || PyTuple_GET_SIZE(fast) != 5
            || !PyDict_CheckExact(PyTuple_GET_ITEM(fast, 0)) || args[9] == Py_None)) {
        PyErr_SetString(PyExc_TypeError,
                        "access_line: emit_fast must be None or (loggers dict, local, idle, "
                        "trace_based, skip), with emit");
        return NULL;
    }
    int trace_based = fast != Py_None ? PyObject_IsTrue(PyTuple_GET_ITEM(fast, 3)) : 0;
    if (trace_based < 0) {
        return NULL;
    }
    PyObject *levels = args[3], *heads = args[10];
    if (!PyList_CheckExact(args[1]) || !PyList_CheckExact(args[2]) || !PyTuple_CheckExact(levels)
        || PyTuple_GET_SIZE(levels) != 2 || !PyContextVar_CheckExact(args[5])
        || !PyContextVar_CheckExact(args[6]) || !PyTuple_CheckExact(heads)
        || PyTuple_GET_SIZE(heads) != 2) {
        PyErr_SetString(PyExc_TypeError,
                        "access_line: live and installed must be lists, levels and heads "
                        "pairs, var and client_var ContextVars");
        return NULL;
    }
    int info = PyObject_IsTrue(PyTuple_GET_ITEM(levels, 0));
    int error = PyObject_IsTrue(PyTuple_GET_ITEM(levels, 1));
    if (info < 0 || error < 0) {
        return NULL;
    }
    /* Without a dict (access_pairs) when the merge is this module's, and the record's
     * attributes are the keys not in a skip that cannot change (a frozenset), if any. */
    PyObject *merge = args[4], *skip = fast != Py_None ? PyTuple_GET_ITEM(fast, 4) : NULL;
    if (skip != NULL && check_skip(skip) < 0) {
        return NULL;
    }
    int pairs = PyCFunction_Check(merge)
                && PyCFunction_GET_FUNCTION(merge) == (PyCFunction)(void (*)(void))merge_contextvars
                && (skip == NULL || PyFrozenSet_CheckExact(skip));
    unsigned attributes = 0;
    for (int key = 0; pairs && skip != NULL && key < ACCESS_KEYS; key++) {
        int skipped = PySet_Contains(skip, *access_keys[key]);
        if (skipped < 0) {
            return NULL;
        }
        attributes |= skipped ? 0u : 1u << key;
    }
    AccessLine *self = PyObject_GC_New(AccessLine, &AccessLineType);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = access_line_call;
    self->twin = Py_NewRef(args[0]);
    self->live = Py_NewRef(args[1]);
    self->installed = Py_NewRef(args[2]);
    self->merge = Py_NewRef(args[4]);
    self->var = Py_NewRef(args[5]);
    self->client_var = Py_NewRef(args[6]);
    self->service = Py_NewRef(args[7]);
    self->structure = Py_NewRef(args[8]);
    self->emit = args[9] != Py_None ? Py_NewRef(args[9]) : NULL;
    self->loggers = fast != Py_None ? Py_NewRef(PyTuple_GET_ITEM(fast, 0)) : NULL;
    self->local = fast != Py_None ? Py_NewRef(PyTuple_GET_ITEM(fast, 1)) : NULL;
    self->idle = fast != Py_None ? Py_NewRef(PyTuple_GET_ITEM(fast, 2)) : NULL;
    self->skip = fast != Py_None ? Py_NewRef(PyTuple_GET_ITEM(fast, 4)) : NULL;
    self->trace_based = (char)trace_based;
    self->heads = Py_NewRef(heads);
    self->name = Py_NewRef(args[11]);
    self->dumps = Py_NewRef(args[12]);
    self->dumps_default = Py_NewRef(args[13]);
    self->write = Py_NewRef(args[14]);
    self->stamp_fallback = Py_NewRef(args[15]);
    self->levels[0] = (char)info;
    self->levels[1] = (char)error;
    self->pairs = (char)pairs;
    self->attributes = attributes;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

/* ------------------------------------------------------------------ the request histogram
 *
 * ``histogram_record(fast, var, fields, held)`` makes the callable the middleware records a
 * request's duration with: ``_fast_histogram.FastHistogram.record(value, attributes,
 * current)`` (its twin, and what it calls for anything but the common case) in one C
 * call. The common case: the attribute set's aggregations known and still the readers'
 * (``fast``'s state, read per call), the meter enabled, the SDK's trace-based exemplar
 * filter, the caller's context still current, and every aggregation with the C aggregate
 * (with its reservoir when the trace is sampled); then each aggregation takes the value as
 * the twin's loop gives it, with the exemplar from the caller's ids. An aggregate that
 * hands back after another took the value leaves the rest to ``fast._aggregate_each``.
 * The attributes it reads per call are read from the __dict__s in ``held`` where they are
 * plain (``held_attr``). */

#define RECORD_MEMO 8

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *fast;   /* the FastHistogram */
    PyObject *twin;   /* its bound record */
    PyObject *var;    /* the API's current-context variable */
    PyObject *fields; /* an exemplar bucket's fields, in the order offered */
    PyObject *memo;   /* a list of RECORD_MEMO cache keys found before, or None each */
    /* what attributes are read through (``FastHistogram._held``): fast's __dict__, then
     * (object, its __dict__ or None) for the histogram, the consumer, its SDK config */
    PyObject *fast_fields, *histogram, *histogram_fields, *consumer, *consumer_fields;
    PyObject *sdk_config, *sdk_config_fields;
    /* the histogram's meter config, a proxy whose is_enabled property only reads its
     * _config's (FastHistogram._held checks its code), and the proxy's __dict__; or None */
    PyObject *proxy, *proxy_fields;
    Py_hash_t memo_hash[RECORD_MEMO]; /* their hashes */
} HistogramRecord;

static PyObject *str_consumer, *str_cache, *str_histogram, *str_meter_config, *str_is_enabled;
static PyObject *str_reader_storages, *str_storages, *str_sdk_config, *str_exemplar_filter;
static PyObject *str_trace_based, *str_aggregate_each, *str_config_field;

/* The cache's key for attributes is ``tuple(attributes.items())``: a tuple of fresh pairs
 * to make, hash and compare item by item with the key the cache holds, ~2.5k instructions
 * a request. A request's attribute set is one of the few seen before, so a small memo
 * keeps the keys found (and their hashes) by a mix of their items' hashes: attributes
 * whose items equal a memo key's, in order, have that key (the cache keeps only sets of
 * str and int items, whose equal ones hash alike and are equal in a key), and the cache
 * is asked with it. */

/* The memo slot of attributes with str names and str or int values (exact types: the only
 * sets the cache keeps): 0..RECORD_MEMO-1; -1 for other attributes; -2 on an error (set). */
static Py_ssize_t
memo_slot(PyObject *attributes)
{
    Py_uhash_t mix = (Py_uhash_t)PyDict_GET_SIZE(attributes);
    Py_ssize_t position = 0;
    PyObject *name, *value;
    while (PyDict_Next(attributes, &position, &name, &value)) {
        if (!PyUnicode_CheckExact(name)
            || !(PyUnicode_CheckExact(value) || PyLong_CheckExact(value))) {
            return -1;
        }
        Py_hash_t hash = PyObject_Hash(value); /* a str's is kept in it */
        if (hash == -1) {
            return -2;
        }
        mix = mix * 1000003U ^ (Py_uhash_t)hash;
    }
    return (Py_ssize_t)(mix % RECORD_MEMO);
}

/* Whether attributes' items equal the pairs of key, in order (both of memo_slot's kinds):
 * 1, 0, or -1 on an error. */
static int
memo_same(PyObject *key, PyObject *attributes)
{
    if (!PyTuple_CheckExact(key) || PyTuple_GET_SIZE(key) != PyDict_GET_SIZE(attributes)) {
        return 0;
    }
    Py_ssize_t position = 0, index = 0;
    PyObject *name, *value;
    while (PyDict_Next(attributes, &position, &name, &value)) {
        PyObject *pair = PyTuple_GET_ITEM(key, index++);
        PyObject *known[2] = {PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1)};
        PyObject *given[2] = {name, value};
        for (int i = 0; i < 2; i++) {
            if (known[i] == given[i]) {
                continue;
            }
            if (Py_TYPE(known[i]) != Py_TYPE(given[i])) {
                return 0;
            }
            int equal = PyObject_RichCompareBool(known[i], given[i], Py_EQ); /* str, int */
            if (equal <= 0) {
                return equal;
            }
        }
    }
    return 1;
}

/* The cache's entry for attributes (borrowed), through the memo: NULL if none (or on an
 * error, set). */
static PyObject *
cached_aggregations(HistogramRecord *self, PyObject *cache, PyObject *attributes)
{
    Py_ssize_t slot = memo_slot(attributes);
    if (slot < 0) { /* -1: a set the cache does not keep (FastHistogram's _plain) */
        return NULL;
    }
    if (self->memo != NULL) { /* (a list of RECORD_MEMO, the constructor's; NULL: cleared) */
        PyObject *known = PyList_GET_ITEM(self->memo, slot);
        int same = known != Py_None ? memo_same(known, attributes) : 0;
        if (same < 0) {
            return NULL;
        }
        if (same) {
#if PY_VERSION_HEX < 0x030E0000
            return _PyDict_GetItem_KnownHash(cache, known, self->memo_hash[slot]);
#else
            return PyDict_GetItemWithError(cache, known);
#endif
        }
    }
    PyObject *key = PyTuple_New(PyDict_GET_SIZE(attributes)); /* tuple(attributes.items()) */
    if (key == NULL) {
        return NULL;
    }
    Py_ssize_t position = 0, index = 0;
    PyObject *name, *value;
    while (PyDict_Next(attributes, &position, &name, &value)) {
        PyObject *item = PyTuple_Pack(2, name, value);
        if (item == NULL) {
            Py_DECREF(key);
            return NULL;
        }
        PyTuple_SET_ITEM(key, index++, item);
    }
    PyObject *found = PyDict_GetItemWithError(cache, key);
    if (found != NULL && self->memo != NULL) { /* remembered, with the hash the lookup took */
        Py_hash_t hash = PyObject_Hash(key);
        /* The cache's entry taken back with this very key: the memo's lookups then find
         * their key by identity, not by comparing a tuple of pairs pair by pair (~1.1k
         * instructions a request). The same key and value: nothing a reader sees. */
        Py_INCREF(found);
        int kept = hash != -1 && PyDict_DelItem(cache, key) == 0
                   && PyDict_SetItem(cache, key, found) == 0;
        Py_DECREF(found); /* (the cache's again) */
        if (!kept) {
            found = NULL;
        }
        else {
            self->memo_hash[slot] = hash;
            PyList_SetItem(self->memo, slot, Py_NewRef(key)); /* steals; the old one goes */
        }
    }
    Py_DECREF(key);
    return found;
}

/* The aggregations of attributes' set when the common case holds: a new reference; NULL
 * with no error set when it does not; NULL with an error set on an error. */
static PyObject *
record_aggregations(HistogramRecord *self, PyObject *attributes, PyObject *current,
                    PyObject **context)
{
    PyObject *fast = self->fast, *result = NULL;
    PyObject *consumer = held_attr(fast, fast, self->fast_fields, str_consumer), *cache = NULL;
    PyObject *histogram = NULL;
    PyObject *config = NULL, *storages = NULL, *mine = NULL, *sdk_config = NULL;
    PyObject *filter = NULL, *trace_based = NULL;
    if (consumer == NULL || consumer == Py_None || !PyDict_CheckExact(attributes)) {
        goto done;
    }
    cache = held_attr(fast, fast, self->fast_fields, str_cache);
    if (cache == NULL || !PyDict_CheckExact(cache)) {
        goto done;
    }
    PyObject *found = cached_aggregations(self, cache, attributes);
    if (found == NULL || !PyList_CheckExact(found)) {
        goto done;
    }
    Py_INCREF(found);
    histogram = held_attr(fast, fast, self->fast_fields, str_histogram);
    config = histogram != NULL ? held_attr(histogram, self->histogram, self->histogram_fields,
                                           str_meter_config)
                               : NULL;
    if (config == NULL) {
        goto fail;
    }
    if (config != Py_None) {
        PyObject *inner = config == self->proxy && self->proxy_fields != Py_None
                              ? PyDict_GetItemWithError(self->proxy_fields, str_config_field)
                              : NULL; /* borrowed */
        if (inner == NULL && PyErr_Occurred()) {
            goto fail;
        }
        PyObject *enabled = PyObject_GetAttr(inner != NULL ? inner : config, str_is_enabled);
        int on = enabled != NULL ? PyObject_IsTrue(enabled) : -1;
        Py_XDECREF(enabled);
        if (on <= 0) {
            goto fail;
        }
    }
    storages = held_attr(consumer, self->consumer, self->consumer_fields, str_reader_storages);
    mine = storages != NULL ? held_attr(fast, fast, self->fast_fields, str_storages) : NULL;
    if (mine == NULL || storages != mine) {
        goto fail;
    }
    sdk_config = held_attr(consumer, self->consumer, self->consumer_fields, str_sdk_config);
    filter = sdk_config != NULL ? held_attr(sdk_config, self->sdk_config,
                                            self->sdk_config_fields, str_exemplar_filter)
                                : NULL;
    trace_based = filter != NULL ? held_attr(fast, fast, self->fast_fields, str_trace_based)
                                 : NULL;
    if (trace_based == NULL || (PyObject *)Py_TYPE(filter) != trace_based) {
        goto fail;
    }
    if (PyContextVar_Get(self->var, NULL, context) < 0) {
        goto fail;
    }
    if (*context == NULL || *context != PyTuple_GET_ITEM(current, 0)) {
        Py_CLEAR(*context);
        goto fail;
    }
    result = found;
    goto done;
fail:
    Py_DECREF(found);
done:
    Py_XDECREF(consumer);
    Py_XDECREF(cache);
    Py_XDECREF(histogram);
    Py_XDECREF(config);
    Py_XDECREF(storages);
    Py_XDECREF(mine);
    Py_XDECREF(sdk_config);
    Py_XDECREF(filter);
    Py_XDECREF(trace_based);
    return result;
}

static PyObject *
histogram_record_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    HistogramRecord *self = (HistogramRecord *)op;
    PyObject *current = PyVectorcall_NARGS(nargsf) == 3 ? args[2] : NULL;
    if (kwnames != NULL || current == NULL || !PyTuple_CheckExact(current)
        || PyTuple_GET_SIZE(current) < 4 || !PyLong_Check(PyTuple_GET_ITEM(current, 3))) {
        return PyObject_Vectorcall(self->twin, args, nargsf, kwnames);
    }
    PyObject *value = args[0], *attributes = args[1], *context = NULL;
    PyObject *aggregations = record_aggregations(self, attributes, current, &context);
    if (aggregations == NULL) {
        return PyErr_Occurred() ? NULL : PyObject_Vectorcall(self->twin, args, nargsf, NULL);
    }
    long flags = PyLong_AsLong(PyTuple_GET_ITEM(current, 3));
    int sample = flags != -1 && (flags & 1);
    PyObject *result = NULL, *now = NULL, *offered = NULL;
    if (flags == -1 && PyErr_Occurred()) {
        goto done;
    }
    Py_ssize_t count = PyList_GET_SIZE(aggregations);
    for (Py_ssize_t i = 0; i < count; i++) { /* each with the C aggregate (and reservoir) */
        PyObject *each = PyList_GET_ITEM(aggregations, i);
        if (!PyTuple_CheckExact(each) || PyTuple_GET_SIZE(each) != 3
            || PyTuple_GET_ITEM(each, 2) == Py_None
            || (sample && PyTuple_GET_ITEM(each, 1) == Py_None)) {
            result = PyObject_Vectorcall(self->twin, args, nargsf, NULL);
            goto done;
        }
    }
    if (sample) { /* what a bucket's offer() stores: the caller's ids */
        PyObject *clock = module_attr(time_module, str_time_ns);
        now = clock != NULL ? PyObject_CallNoArgs(clock) : NULL;
        Py_XDECREF(clock);
        PyObject *trace_id = PyTuple_GET_ITEM(current, 1), *span_id = PyTuple_GET_ITEM(current, 2);
        offered = now != NULL ? PyTuple_Pack(6, value, now, attributes, span_id, trace_id, Py_True)
                              : NULL;
        if (offered == NULL) {
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *each = PyList_GET_ITEM(aggregations, i);
        PyObject *call[5] = {PyTuple_GET_ITEM(each, 0), value, Py_None, Py_None, Py_None};
        if (sample) {
            call[2] = PyTuple_GET_ITEM(each, 1);
            call[3] = self->fields;
            call[4] = offered;
        }
        PyObject *took = PyObject_Vectorcall(PyTuple_GET_ITEM(each, 2), call, 5, NULL);
        int done = took != NULL ? PyObject_IsTrue(took) : -1;
        Py_XDECREF(took);
        if (done < 0) {
            goto done;
        }
        if (!done && i == 0) { /* nothing changed yet: all of it the twin's */
            result = PyObject_Vectorcall(self->twin, args, nargsf, NULL);
            goto done;
        }
        if (!done) { /* the rest the Python loop's, from this one on */
            if (now == NULL) {
                PyObject *clock = module_attr(time_module, str_time_ns);
                now = clock != NULL ? PyObject_CallNoArgs(clock) : NULL;
                Py_XDECREF(clock);
                if (now == NULL) {
                    goto done;
                }
            }
            PyObject *start = PyLong_FromSsize_t(i);
            if (start == NULL) {
                goto done;
            }
            PyObject *rest[9] = {self->fast, aggregations, start, value, now, context, attributes,
                                 sample ? Py_True : Py_False, offered != NULL ? offered : Py_None};
            result = PyObject_VectorcallMethod(str_aggregate_each, rest,
                                               9 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            Py_DECREF(start);
            goto done;
        }
    }
    result = Py_NewRef(Py_None);
done:
    Py_DECREF(aggregations);
    Py_XDECREF(context);
    Py_XDECREF(now);
    Py_XDECREF(offered);
    return result;
}

#define HISTOGRAM_RECORD_FIELDS(X)                                                         \
    X(twin) X(fast) X(var) X(fields) X(memo) X(fast_fields) X(histogram) X(histogram_fields) \
    X(consumer) X(consumer_fields) X(sdk_config) X(sdk_config_fields) X(proxy) X(proxy_fields)

TWIN_TYPE(histogram_record, HistogramRecord, HistogramRecordType, HISTOGRAM_RECORD_FIELDS,
          "A histogram's record, made by histogram_record().")

static PyObject *
histogram_record(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_nargs("histogram_record", nargs, 4)) {
        return NULL;
    }
    PyObject *held = args[3];
    if (!PyContextVar_CheckExact(args[1]) || !PyTuple_CheckExact(args[2])
        || !PyTuple_CheckExact(held) || PyTuple_GET_SIZE(held) != 9
        || !PyDict_CheckExact(PyTuple_GET_ITEM(held, 0))) {
        PyErr_SetString(PyExc_TypeError,
                        "histogram_record: var must be a ContextVar, fields a tuple, held "
                        "(fast's __dict__, then object and __dict__ or None, four times)");
        return NULL;
    }
    if (!held_fields_ok("histogram_record", &PyTuple_GET_ITEM(held, 0), 2, 9, 2)) {
        return NULL;
    }
    PyObject *twin = PyObject_GetAttrString(args[0], "record");
    if (twin == NULL) {
        return NULL;
    }
    HistogramRecord *self = PyObject_GC_New(HistogramRecord, &HistogramRecordType);
    if (self == NULL) {
        Py_DECREF(twin);
        return NULL;
    }
    self->vectorcall = histogram_record_call;
    self->fast = Py_NewRef(args[0]);
    self->twin = twin;
    self->var = Py_NewRef(args[1]);
    self->fields = Py_NewRef(args[2]);
    PyObject **slots[9] = {&self->fast_fields, &self->histogram, &self->histogram_fields,
                           &self->consumer, &self->consumer_fields, &self->sdk_config,
                           &self->sdk_config_fields, &self->proxy, &self->proxy_fields};
    for (Py_ssize_t i = 0; i < 9; i++) {
        *slots[i] = Py_NewRef(PyTuple_GET_ITEM(held, i));
    }
    self->memo = PyList_New(RECORD_MEMO);
    if (self->memo == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < RECORD_MEMO; i++) {
        PyList_SET_ITEM(self->memo, i, Py_NewRef(Py_None));
        self->memo_hash[i] = -1;
    }
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

/* ------------------------------------------------------------------ the request's end
 *
 * ``request_end(twin, record, direct_finish, access, non_recording, no_attributes,
 * route_of)`` makes what the middleware finishes a request with:
 * ``_http_server.ServerTelemetry._finish(scope, span, current, state, error, start,
 * active_attrs)`` (``twin``, also what it calls for anything but the common case) in one
 * C call. The common case: no error, a status below 500 (or none), the request histogram's
 * fast record (``record``), and for a span that records (not ``non_recording``) the direct
 * span path's ``finish`` (``direct_finish``). Then the duration, the route, the metric's
 * and the span's attributes and name are worked out as the twin does, and the histogram,
 * the span and the access line (``access``, or NULL) each go out even when another one
 * raises, the first failure raised after all three, as in the twin. */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *twin, *record, *direct_finish, *access, *non_recording, *no_attributes;
    PyObject *route_of;
} RequestEnd;

static PyObject *str_route_key, *str_root_path, *str_app_root_path, *str_http_version;
static PyObject *str_default_version, *str_network_version, *str_http_route, *str_status_attr;
static PyObject *str_method_attr, *str_other, *str_http_word, *str_perf_counter, *str_round;
static PyObject *float_1e6, *float_1e3, *str_sent, *str_sent_ns;

/* ``_http_server._route_of(scope)`` (a new reference, or None): its common case here (no
 * mount below the server's root path), the rest by the function itself. */
static PyObject *
end_route(RequestEnd *self, PyObject *scope)
{
    PyObject *route = PyDict_GetItemWithError(scope, str_route_key); /* borrowed */
    if (route == NULL && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *path = NULL; /* getattr(route, "path", None) */
    if (route != NULL && optional_attr(route, str_path, &path) < 0) {
        return NULL;
    }
    if (path == NULL || path == Py_None) {
        Py_XDECREF(path);
        Py_RETURN_NONE;
    }
    PyObject *root = PyDict_GetItemWithError(scope, str_root_path);
    PyObject *app_root = root != NULL ? PyDict_GetItemWithError(scope, str_app_root_path) : NULL;
    if (PyErr_Occurred()) {
        Py_DECREF(path);
        return NULL;
    }
    int plain = root == NULL || (PyUnicode_CheckExact(root) && PyUnicode_GET_LENGTH(root) == 0
                                 && (app_root == NULL || app_root == root));
    if (!plain) { /* a root path: the function's */
        Py_DECREF(path);
        return PyObject_CallOneArg(self->route_of, scope);
    }
    PyObject *text = PyObject_Str(path);
    Py_DECREF(path);
    return text;
}

/* The error set, taken (cleared) as the exception object an ``except`` clause would see,
 * its traceback on it: a new reference (NULL only if none was set). */
static PyObject *
fetch_error(void)
{
    PyObject *type, *error, *traceback;
    PyErr_Fetch(&type, &error, &traceback);
    PyErr_NormalizeException(&type, &error, &traceback);
    if (traceback != NULL && error != NULL) {
        PyException_SetTraceback(error, traceback);
    }
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    return error;
}

/* A failure of one of the three outputs: kept (the first) if it is an Exception, else 0
 * for the caller to return it now. */
static int
end_keep(PyObject **failure)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return 0;
    }
    PyObject *error = fetch_error();
    if (*failure == NULL) {
        *failure = error;
    }
    else {
        Py_XDECREF(error);
    }
    return 1;
}

/* Raise a failure end_keep kept (the reference is taken). */
static void
end_raise(PyObject *failure)
{
    PyErr_Restore(Py_NewRef(Py_TYPE(failure)), failure, PyException_GetTraceback(failure));
}

static PyObject *
request_end_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    RequestEnd *self = (RequestEnd *)op;
    if (PyVectorcall_NARGS(nargsf) != 7 || kwnames != NULL) {
        return PyObject_Vectorcall(self->twin, args, nargsf, kwnames);
    }
    PyObject *scope = args[0], *span = args[1], *current = args[2], *state = args[3];
    PyObject *start = args[5], *active = args[6];
    int live = (PyObject *)Py_TYPE(span) != self->non_recording;
    if (args[4] != Py_None || !PyDict_CheckExact(scope) || !PyDict_CheckExact(active)
        || (live && self->direct_finish == NULL)) {
        return PyObject_Vectorcall(self->twin, args, nargsf, NULL);
    }
    PyObject *sent = NULL, *status = NULL, *sent_ns = NULL, *duration = NULL, *route = NULL;
    PyObject *metric = NULL, *span_attrs = NULL, *name = NULL, *failure = NULL;
    PyObject *result = NULL;
    if (Py_IS_TYPE(state, &SendWrapperType)) {
        SendWrapper *wrapper = (SendWrapper *)state;
        sent = Py_NewRef(wrapper->sent);
        status = Py_NewRef(wrapper->status);
    }
    else {
        sent = PyObject_GetAttr(state, str_sent);
        status = sent != NULL ? PyObject_GetAttr(state, str_status) : NULL;
        if (status == NULL) {
            goto done;
        }
    }
    int truth = PyObject_IsTrue(status);
    if (truth < 0) {
        goto done;
    }
    if (!truth) {
        Py_SETREF(status, Py_NewRef(zero_int));
    }
    int failed = PyObject_RichCompareBool(status, int_500, Py_GE);
    if (failed != 0) { /* an error status: the twin's */
        result = failed < 0 ? NULL : PyObject_Vectorcall(self->twin, args, nargsf, NULL);
        goto done;
    }
    truth = PyObject_IsTrue(sent);
    if (truth < 0) {
        goto done;
    }
    if (!truth) {
        PyObject *clock = module_attr(time_module, str_perf_counter);
        Py_SETREF(sent, clock != NULL ? PyObject_CallNoArgs(clock) : NULL);
        Py_XDECREF(clock);
        if (sent == NULL) {
            goto done;
        }
    }
    duration = PyNumber_Subtract(sent, start);
    route = duration != NULL ? end_route(self, scope) : NULL;
    metric = route != NULL ? PyDict_Copy(active) : NULL;
    if (metric == NULL) {
        goto done;
    }
    PyObject *version = PyDict_GetItemWithError(scope, str_http_version);
    if ((version == NULL && PyErr_Occurred())
        || PyDict_SetItem(metric, str_network_version, version != NULL ? version
                                                                        : str_default_version) < 0
        || (route != Py_None && PyDict_SetItem(metric, str_http_route, route) < 0)) {
        goto done;
    }
    int has_status = PyObject_IsTrue(status);
    if (has_status < 0 || (has_status && PyDict_SetItem(metric, str_status_attr, status) < 0)) {
        goto done;
    }
    if (live && (route != Py_None || has_status)) {
        span_attrs = PyDict_New();
        if (span_attrs == NULL) {
            goto done;
        }
        if (route != Py_None) {
            PyObject *method = PyDict_GetItemWithError(active, str_method_attr);
            if (method == NULL) {
                if (!PyErr_Occurred()) {
                    PyErr_SetObject(PyExc_KeyError, str_method_attr);
                }
                goto done;
            }
            int other = PyUnicode_Check(method) ? same_str(method, str_other) : 0;
            if (other < 0 || PyDict_SetItem(span_attrs, str_http_route, route) < 0) {
                goto done;
            }
            name = PyUnicode_FromFormat("%S %S", other ? str_http_word : method, route);
            if (name == NULL) {
                goto done;
            }
        }
        if (has_status && PyDict_SetItem(span_attrs, str_status_attr, status) < 0) {
            goto done;
        }
    }
    PyObject *record_args[3] = {duration, metric, current};
    PyObject *called = PyObject_Vectorcall(self->record, record_args, 3, NULL);
    if (called == NULL && !end_keep(&failure)) {
        goto done;
    }
    Py_XDECREF(called);
    if (live) {
        if (Py_IS_TYPE(state, &SendWrapperType)) {
            sent_ns = Py_NewRef(((SendWrapper *)state)->sent_ns);
        }
        else if ((sent_ns = PyObject_GetAttr(state, str_sent_ns)) == NULL) {
            if (!end_keep(&failure)) {
                goto done;
            }
        }
        truth = sent_ns != NULL ? PyObject_IsTrue(sent_ns) : 0;
        if (truth < 0 && !end_keep(&failure)) {
            goto done;
        }
        if (sent_ns != NULL && truth >= 0) {
            PyObject *finish_args[4] = {span, span_attrs != NULL ? span_attrs : self->no_attributes,
                                        name != NULL ? name : Py_None, truth ? sent_ns : Py_None};
            called = PyObject_Vectorcall(self->direct_finish, finish_args, 4, NULL);
            if (called == NULL && !end_keep(&failure)) {
                goto done;
            }
            Py_XDECREF(called);
        }
    }
    if (self->access != NULL) {
        /* round(duration * 1e6) / 1e3: half-even to the microsecond, as the twin's */
        PyObject *micros = PyNumber_Multiply(duration, float_1e6), *millis = NULL;
        if (micros != NULL && PyFloat_CheckExact(micros) && isfinite(PyFloat_AS_DOUBLE(micros))) {
            double x = PyFloat_AS_DOUBLE(micros), whole = round(x); /* float.__round__ */
            if (fabs(x - whole) == 0.5) {
                whole = 2.0 * round(x / 2.0);
            }
            millis = PyFloat_FromDouble(whole / 1e3); /* an int below 2**53: exact as double */
        }
        else if (micros != NULL) {
            PyObject *whole = PyObject_CallMethodNoArgs(micros, str_round);
            millis = whole != NULL ? PyNumber_TrueDivide(whole, float_1e3) : NULL;
            Py_XDECREF(whole);
        }
        Py_XDECREF(micros);
        PyObject *method = NULL, *path = NULL;
        if (millis != NULL) {
            method = PyDict_GetItemWithError(scope, str_method);
            path = method != NULL || !PyErr_Occurred() ? PyDict_GetItemWithError(scope, str_path)
                                                       : NULL;
            if (path == NULL && !PyErr_Occurred()) {
                PyErr_SetObject(PyExc_KeyError, str_path);
            }
        }
        if (path != NULL) {
            PyObject *line_args[6] = {method != NULL ? method : Py_None, path, route, status,
                                      millis, current};
            called = PyObject_Vectorcall(self->access, line_args, 6, NULL);
            Py_XDECREF(called);
        }
        Py_XDECREF(millis);
        if (PyErr_Occurred() && !end_keep(&failure)) {
            goto done;
        }
    }
    if (failure != NULL) {
        end_raise(failure);
        failure = NULL;
    }
    else {
        result = Py_NewRef(Py_None);
    }
done:
    Py_XDECREF(sent);
    Py_XDECREF(status);
    Py_XDECREF(sent_ns);
    Py_XDECREF(duration);
    Py_XDECREF(route);
    Py_XDECREF(metric);
    Py_XDECREF(span_attrs);
    Py_XDECREF(name);
    Py_XDECREF(failure);
    return result;
}

#define REQUEST_END_FIELDS(X)                                                              \
    X(twin) X(record) X(direct_finish) X(access) X(non_recording) X(no_attributes) X(route_of)

TWIN_TYPE(request_end, RequestEnd, RequestEndType, REQUEST_END_FIELDS,
          "A request's end, made by request_end().")

static PyObject *
request_end(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_nargs("request_end", nargs, 7)) {
        return NULL;
    }
    if (!PyType_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError, "request_end: non_recording must be a class");
        return NULL;
    }
    RequestEnd *self = (RequestEnd *)TWIN_NEW(RequestEnd, RequestEndType, request_end_call,
                                              route_of, args, 7);
    if (self != NULL) { /* None: no direct finish, no access line */
        Py_SETREF(self->direct_finish, args[2] != Py_None ? Py_NewRef(args[2]) : NULL);
        Py_SETREF(self->access, args[3] != Py_None ? Py_NewRef(args[3]) : NULL);
    }
    return (PyObject *)self;
}

/* ------------------------------------------------------------------ a line to stdout
 *
 * ``output_write(twin, output, sys, lock)`` makes ``_logging._Output.write``: for a line of
 * bytes and a ``sys.stdout`` with a binary ``buffer``, the twin's calls in its order under
 * its lock (the text layer flushed first, the line and a newline written to the buffer,
 * the buffer flushed) and its handling of a failed write (``_lost``, for an OSError or a
 * ValueError). Anything else is the twin's. */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *twin, *output, *sys, *lock;
    PyObject *binary; /* the last binary buffer seen (held), or NULL */
    int fd;           /* its raw FileIO's descriptor, or -1: not written directly */
} OutputWrite;

static PyObject *str_stdout, *str_buffer, *str_flush, *str_write, *str_lost, *str_failing;
static PyObject *str_raw, *str_fileno, *str_write_through, *str_closed;
static PyTypeObject *text_io_type, *buffered_writer_type, *file_io_type; /* io's */

/* The descriptor a line can be written to directly when the text layer (exactly
 * io.TextIOWrapper) has been flushed: that of a binary layer that is exactly an
 * io.BufferedWriter over exactly an io.FileIO (sys.stdout as Python opens it), whose
 * buffer the text layer's flush has emptied, or exactly an io.FileIO (as Python opens it
 * unbuffered: ``-u``, PYTHONUNBUFFERED=1, as container images often set); else -1. Found
 * once per binary layer: a buffer's raw stream is read-only and a FileIO's descriptor
 * fixed. -2 on an error (set). */
static int
output_fd(OutputWrite *self, PyObject *stream, PyObject *binary)
{
#ifdef _WIN32
    return -1;
#else
    int unbuffered = Py_IS_TYPE(binary, file_io_type);
    if (!Py_IS_TYPE(stream, text_io_type)
        || !(unbuffered || Py_IS_TYPE(binary, buffered_writer_type))) {
        return -1;
    }
    if (binary == self->binary) {
        return self->fd;
    }
    PyObject *raw = unbuffered ? Py_NewRef(binary) : PyObject_GetAttr(binary, str_raw);
    if (raw == NULL) {
        return -2;
    }
    long fd = -1;
    if (Py_IS_TYPE(raw, file_io_type)) {
        PyObject *number = PyObject_CallMethodNoArgs(raw, str_fileno);
        fd = number != NULL ? PyLong_AsLong(number) : -1;
        Py_XDECREF(number);
        if (PyErr_Occurred()) {
            Py_DECREF(raw);
            return -2;
        }
    }
    Py_DECREF(raw);
    Py_XSETREF(self->binary, Py_NewRef(binary));
    self->fd = fd >= 0 && fd <= INT_MAX ? (int)fd : -1;
    return self->fd;
#endif
}

/* 1 when the text layer's flush would do nothing: a write-through io.TextIOWrapper (each
 * write hands its text to the binary layer before it returns) over an open io.FileIO
 * (which holds nothing: Python's stdout unbuffered, PYTHONUNBUFFERED=1 or -u); 0 when it
 * must run; -1 on an error (set). A closed one's flush raises, as before. */
static int
text_flushed(PyObject *stream, PyObject *binary)
{
    if (!Py_IS_TYPE(stream, text_io_type) || !Py_IS_TYPE(binary, file_io_type)) {
        return 0;
    }
    PyObject *through = PyObject_GetAttr(stream, str_write_through);
    if (through == NULL) {
        return -1;
    }
    Py_DECREF(through); /* only compared */
    if (through != Py_True) {
        return 0;
    }
    PyObject *closed = PyObject_GetAttr(binary, str_closed);
    if (closed == NULL) {
        return -1;
    }
    Py_DECREF(closed);
    return closed == Py_False;
}

#ifndef _WIN32
#include <sys/uio.h>
#include <errno.h>

/* The line and a newline written to fd as FileIO writes (the GIL released; EINTR retried
 * after the signal handlers ran; a short write continued): 0, or -1 with an error set. On
 * EAGAIN (a non-blocking descriptor) what is left goes to the binary layer's write and
 * flush: a buffer keeps what fits and raises BlockingIOError, as it would have; a FileIO
 * writes what it can, as it would have. */
static int
write_line(int fd, PyObject *binary, const char *data, Py_ssize_t size)
{
    struct iovec parts[2] = {{(void *)data, (size_t)size}, {(void *)"\n", 1}};
    struct iovec *part = parts;
    int count = 2;
    while (count > 0) {
        ssize_t wrote;
        int error;
        Py_BEGIN_ALLOW_THREADS
        wrote = writev(fd, part, count);
        error = errno;
        Py_END_ALLOW_THREADS
        if (wrote < 0) {
            if (error == EINTR) {
                if (PyErr_CheckSignals() < 0) {
                    return -1;
                }
                continue;
            }
            if (error != EAGAIN && error != EWOULDBLOCK) {
                errno = error;
                PyErr_SetFromErrno(PyExc_OSError);
                return -1;
            }
            Py_ssize_t left = 0;
            for (int i = 0; i < count; i++) {
                left += (Py_ssize_t)part[i].iov_len;
            }
            PyObject *rest = PyBytes_FromStringAndSize(NULL, left);
            char *at = rest != NULL ? PyBytes_AS_STRING(rest) : NULL;
            for (int i = 0; at != NULL && i < count; at += part[i++].iov_len) {
                memcpy(at, part[i].iov_base, part[i].iov_len);
            }
            PyObject *called = rest != NULL ? PyObject_CallMethodOneArg(binary, str_write, rest)
                                            : NULL;
            Py_XDECREF(rest);
            Py_XDECREF(called);
            called = called != NULL ? PyObject_CallMethodNoArgs(binary, str_flush) : NULL;
            Py_XDECREF(called);
            return called != NULL ? 0 : -1;
        }
        while (count > 0 && (size_t)wrote >= part->iov_len) {
            wrote -= (ssize_t)part->iov_len;
            part++;
            count--;
        }
        if (count > 0) {
            part->iov_base = (char *)part->iov_base + wrote;
            part->iov_len -= (size_t)wrote;
        }
    }
    return 0;
}
#endif

static PyObject *
output_write_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    OutputWrite *self = (OutputWrite *)op;
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL || !PyBytes_CheckExact(args[0])) {
        return PyObject_Vectorcall(self->twin, args, nargsf, kwnames);
    }
    PyObject *stream = module_attr(self->sys, str_stdout), *binary = NULL;
    if (stream != NULL && optional_attr(stream, str_buffer, &binary) < 0) {
        Py_CLEAR(stream);
    }
    if (stream == NULL) {
        return NULL;
    }
    if (binary == NULL || binary == Py_None) { /* a text-only stdout: the twin's */
        Py_DECREF(stream);
        Py_XDECREF(binary);
        return PyObject_Vectorcall(self->twin, args, nargsf, NULL);
    }
    PyObject *result = NULL;
    if (call_method(self->lock, str_acquire) < 0) {
        goto done;
    }
    /* the text layer flushed first; then the line, directly or by the buffer's calls */
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    int written = text_flushed(stream, binary);
    if (written == 0) {
        PyObject *called = PyObject_CallMethodNoArgs(stream, str_flush);
        written = called != NULL ? 0 : -1;
        Py_XDECREF(called);
    }
    else if (written > 0) {
        written = 0;
    }
    int fd = written == 0 ? output_fd(self, stream, binary) : -1;
    if (fd == -2) {
        written = -1;
    }
#ifndef _WIN32
    else if (fd >= 0) {
        written = write_line(fd, binary, PyBytes_AS_STRING(args[0]), size);
    }
#endif
    else if (written == 0) {
        PyObject *line = PyBytes_FromStringAndSize(NULL, size + 1); /* line + b"\n" */
        if (line != NULL) {
            memcpy(PyBytes_AS_STRING(line), PyBytes_AS_STRING(args[0]), (size_t)size);
            PyBytes_AS_STRING(line)[size] = '\n';
        }
        PyObject *called =
            line != NULL ? PyObject_CallMethodOneArg(binary, str_write, line) : NULL;
        Py_XDECREF(line);
        Py_XDECREF(called);
        called = called != NULL ? PyObject_CallMethodNoArgs(binary, str_flush) : NULL;
        written = called != NULL ? 0 : -1;
        Py_XDECREF(called);
    }
    int status;
    if (written == 0) {
        status = PyObject_SetAttr(self->output, str_failing, Py_False);
    }
    else if (PyErr_ExceptionMatches(PyExc_OSError) || PyErr_ExceptionMatches(PyExc_ValueError)) {
        PyObject *error = fetch_error();
        PyObject *lost = error != NULL ? PyObject_CallMethodOneArg(self->output, str_lost, error)
                                       : NULL;
        status = lost != NULL ? 0 : -1;
        Py_XDECREF(lost);
        Py_XDECREF(error);
    }
    else {
        status = -1;
    }
    if (release(self->lock, status) == 0) {
        result = Py_NewRef(Py_None);
    }
done:
    Py_DECREF(stream);
    Py_DECREF(binary);
    return result;
}

#define OUTPUT_WRITE_FIELDS(X) X(twin) X(output) X(sys) X(lock) X(binary)

TWIN_TYPE(output_write, OutputWrite, OutputWriteType, OUTPUT_WRITE_FIELDS,
          "A log line's write to stdout, made by output_write().")

static PyObject *
output_write(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_nargs("output_write", nargs, 4)) {
        return NULL;
    }
    OutputWrite *self =
        (OutputWrite *)TWIN_NEW(OutputWrite, OutputWriteType, output_write_call, lock, args, 4);
    if (self != NULL) {
        self->fd = -1;
    }
    return (PyObject *)self;
}

/* ------------------------------------------------------------------ a request's dispatch
 *
 * ``request_dispatch(...)`` makes ``ServerTelemetry``'s ``_dispatch`` (what the layer
 * outside calls, see ``_asgi.direct_call``): for a scope dict whose type is a str, the same
 * reads and writes of the scope as the twin, in its order, and the same call, the app's
 * (a request not traced) or ``_traced``'s. */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *twin, *app, *traced, *excluded, *below_root, *fastapi_key, *traced_key;
} RequestDispatch;

static PyObject *str_http_type, *str_websocket;

static PyObject *
request_dispatch_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    RequestDispatch *self = (RequestDispatch *)op;
    if (PyVectorcall_NARGS(nargsf) != 3 || kwnames != NULL || !PyDict_CheckExact(args[0])) {
        return PyObject_Vectorcall(self->twin, args, nargsf, kwnames);
    }
    PyObject *scope = args[0];
    PyObject *kind = PyDict_GetItemWithError(scope, str_type);
    if (kind == NULL || !PyUnicode_CheckExact(kind)) {
        return PyErr_Occurred() ? NULL : PyObject_Vectorcall(self->twin, args, nargsf, NULL);
    }
    int http = same_str(kind, str_http_type);
    int socket = http == 0 ? same_str(kind, str_websocket) : 0;
    if (http < 0 || socket < 0) {
        return NULL;
    }
    /* FastAPI's own nested-app guard: no native telemetry below us */
    if (http || socket) {
        int known = PyDict_Contains(scope, self->fastapi_key);
        if (known < 0 || (!known && PyDict_SetItem(scope, self->fastapi_key, Py_None) < 0)) {
            return NULL;
        }
    }
    int traced = http ? PyDict_Contains(scope, self->traced_key) : 1;
    if (traced < 0) {
        return NULL;
    }
    if (traced) {
        return PyObject_Vectorcall(self->app, args, 3, NULL);
    }
    if (PyDict_SetItem(scope, self->traced_key, Py_True) < 0) {
        return NULL;
    }
    PyObject *path = PyDict_GetItemWithError(scope, str_path);
    if (path == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetObject(PyExc_KeyError, str_path);
        }
        return NULL;
    }
    int excluded = PySet_Contains(self->excluded, path);
    if (excluded == 0) {
        PyObject *root = PyDict_GetItemWithError(scope, str_root_path);
        excluded = root != NULL ? PyObject_IsTrue(root) : (PyErr_Occurred() ? -1 : 0);
        if (excluded > 0) { /* below a root path: the twin's check */
            PyObject *below = PyObject_CallOneArg(self->below_root, scope);
            excluded = below != NULL ? PyObject_IsTrue(below) : -1;
            Py_XDECREF(below);
        }
    }
    if (excluded < 0) {
        return NULL;
    }
    return PyObject_Vectorcall(excluded ? self->app : self->traced, args, 3, NULL);
}

#define REQUEST_DISPATCH_FIELDS(X)                                                         \
    X(twin) X(app) X(traced) X(excluded) X(below_root) X(fastapi_key) X(traced_key)

TWIN_TYPE(request_dispatch, RequestDispatch, RequestDispatchType, REQUEST_DISPATCH_FIELDS,
          "A request's dispatch, made by request_dispatch().")

static PyObject *
request_dispatch(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_nargs("request_dispatch", nargs, 7)) {
        return NULL;
    }
    if (!PyAnySet_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "request_dispatch: excluded must be a set");
        return NULL;
    }
    return TWIN_NEW(RequestDispatch, RequestDispatchType, request_dispatch_call, traced_key, args,
                    7);
}

/* ------------------------------------------------------------------ a traced request
 *
 * ``request_traced(twin, owner, fields, raised)`` makes what ``ServerTelemetry`` calls for
 * a request it traces in place of ``_traced`` (its ``twin``, called for anything but three
 * positional arguments): an awaitable per request instead of a coroutine. Awaited, it does
 * what the twin does, in its order: ``owner._begin_request(scope, send)``, whose nine
 * items (``begun``) it keeps; steps the awaitable of ``owner._app(scope, receive,
 * begun[0])``; when that returns, ``owner._close_request(...)`` with no error and returns
 * None. An error the app raises (or that is thrown into it, or that closing it brings)
 * goes to ``raised(scope, begun, error)``, the ``_raised`` coroutine, stepped in its turn:
 * it answers 500 if nothing was sent, closes the request and raises the error. The three
 * attributes are read from the owner's ``__dict__`` (``fields``; None: getattr) when a
 * step needs them, as the twin reads them. Closed or collected while the app waits, the
 * app's awaitable is closed and the request closed with the error, as a coroutine's
 * ``close()`` does. */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *twin, *owner, *fields, *raised;
} RequestTraced;

enum { TRACED_NEW, TRACED_APP, TRACED_RAISED, TRACED_DONE };

typedef struct {
    PyObject_HEAD
    RequestTraced *maker;
    PyObject *scope, *receive, *send; /* receive and send until it begins */
    PyObject *begun;                  /* _begin_request's nine items, once begun */
    PyObject *inner;                  /* the app's iterator, then _raised's */
    char state;
} TracedRun;

static PyObject *str_begin_request, *str_close_request, *str_app_field, *str_close;

/* getattr(maker.owner, name), through the owner's fields (new reference) */
static PyObject *
traced_attr(RequestTraced *maker, PyObject *name)
{
    return held_attr(maker->owner, maker->owner, maker->fields, name);
}

/* The request closed with error (None: none), as the twin's ``_close_request`` call. */
static int
traced_closed(TracedRun *self, PyObject *error)
{
    PyObject *close = traced_attr(self->maker, str_close_request);
    if (close == NULL) {
        return -1;
    }
    /* begun: state, span, span_context, current, token, client_token, active_attrs,
     * active_key, start; the close takes scope, span, current, state, error, start,
     * active_attrs, active_key, client_token, token */
    PyObject **b = &PyTuple_GET_ITEM(self->begun, 0);
    PyObject *args[10] = {self->scope, b[1], b[3], b[0], error, b[8], b[6], b[7], b[5], b[4]};
    PyObject *done = PyObject_Vectorcall(close, args, 10, NULL);
    Py_DECREF(close);
    Py_XDECREF(done);
    return done != NULL ? 0 : -1;
}

/* The error being raised handed to ``raised``, whose coroutine becomes the inner one: 0,
 * or -1 (done, its own error set). */
static int
traced_failed(TracedRun *self)
{
    PyObject *type, *error, *traceback;
    PyErr_Fetch(&type, &error, &traceback);
    PyErr_NormalizeException(&type, &error, &traceback);
    if (traceback != NULL && error != NULL) {
        PyException_SetTraceback(error, traceback);
    }
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    Py_CLEAR(self->inner);
    PyObject *args[3] = {self->scope, self->begun, error};
    PyObject *tail = error != NULL ? PyObject_Vectorcall(self->maker->raised, args, 3, NULL) : NULL;
    Py_XDECREF(error);
    self->inner = tail != NULL ? awaitable_iter(tail) : NULL;
    Py_XDECREF(tail);
    if (self->inner == NULL) {
        self->state = TRACED_DONE;
        return -1;
    }
    self->state = TRACED_RAISED;
    return 0;
}

/* The request begun and the app's awaitable made: 0, or -1 (the error set; state TRACED_NEW
 * if begin failed, TRACED_APP with no inner if the app did). */
static int
traced_begin(TracedRun *self)
{
    PyObject *begin = traced_attr(self->maker, str_begin_request);
    PyObject *args[3] = {self->scope, self->send, NULL};
    PyObject *begun = begin != NULL ? PyObject_Vectorcall(begin, args, 2, NULL) : NULL;
    Py_XDECREF(begin);
    if (begun == NULL) {
        return -1;
    }
    if (!PyTuple_CheckExact(begun) || PyTuple_GET_SIZE(begun) != 9) {
        Py_DECREF(begun);
        PyErr_SetString(PyExc_TypeError, "request_traced: the request's begin must give 9 items");
        return -1;
    }
    self->begun = begun;
    self->state = TRACED_APP;
    Py_CLEAR(self->send);
    PyObject *app = traced_attr(self->maker, str_app_field);
    args[1] = self->receive;
    args[2] = PyTuple_GET_ITEM(begun, 0);
    PyObject *awaitable = app != NULL ? PyObject_Vectorcall(app, args, 3, NULL) : NULL;
    Py_XDECREF(app);
    Py_CLEAR(self->receive);
    self->inner = awaitable != NULL ? awaitable_iter(awaitable) : NULL;
    Py_XDECREF(awaitable);
    return self->inner != NULL ? 0 : -1;
}

/* A step: arg sent in, or thrown (an exception, not NULL) thrown in. */
static PySendResult
traced_step(TracedRun *self, PyObject *arg, PyObject *thrown, PyObject **result)
{
    *result = NULL;
    PySendResult status;
    switch (self->state) {
    case TRACED_NEW:
        if (thrown != NULL || arg != Py_None) { /* a coroutine's errors before it runs */
            if (thrown != NULL) {
                self->state = TRACED_DONE;
                PyErr_SetObject((PyObject *)Py_TYPE(thrown), thrown);
            }
            else {
                PyErr_SetString(PyExc_TypeError,
                                "can't send non-None value to a just-started coroutine");
            }
            return PYGEN_ERROR;
        }
        if (traced_begin(self) < 0) {
            if (self->state == TRACED_NEW) { /* the begin's error: raised, nothing to close */
                self->state = TRACED_DONE;
                return PYGEN_ERROR;
            }
            if (traced_failed(self) < 0) {
                return PYGEN_ERROR;
            }
            goto raised;
        }
        /* fall through: the app's first step */
    case TRACED_APP:
        status = thrown == NULL ? PyIter_Send(self->inner, arg, result)
                                : throw_into(self->inner, thrown, result);
        if (status == PYGEN_NEXT) {
            return status;
        }
        if (status == PYGEN_RETURN) {
            Py_CLEAR(*result); /* (the twin returns None, whatever the app's returned) */
            self->state = TRACED_DONE;
            Py_CLEAR(self->inner);
            if (traced_closed(self, Py_None) < 0) {
                return PYGEN_ERROR;
            }
            *result = Py_NewRef(Py_None);
            return PYGEN_RETURN;
        }
        if (traced_failed(self) < 0) {
            return PYGEN_ERROR;
        }
    raised:
        arg = Py_None;
        thrown = NULL;
        /* fall through: _raised's first step */
    case TRACED_RAISED:
        status = thrown == NULL ? PyIter_Send(self->inner, arg, result)
                                : throw_into(self->inner, thrown, result);
        if (status != PYGEN_NEXT) {
            self->state = TRACED_DONE;
            Py_CLEAR(self->inner);
        }
        return status;
    default:
        if (thrown != NULL) {
            PyErr_SetObject((PyObject *)Py_TYPE(thrown), thrown);
        }
        else {
            PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
        }
        return PYGEN_ERROR;
    }
}

AWAITABLE_STEPS(traced, TracedRun)

/* iter.close() if it has one: 0, or -1 (its error set) */
static int
close_iter(PyObject *iter)
{
    PyObject *method;
    int found = optional_attr(iter, str_close, &method);
    if (found <= 0) {
        return found;
    }
    PyObject *closed = PyObject_CallNoArgs(method);
    Py_DECREF(method);
    Py_XDECREF(closed);
    return closed != NULL ? 0 : -1;
}

/* As a coroutine's close(): the app's awaitable closed, then GeneratorExit (or what closing
 * it raised) raised where the twin waits for it, so _raised runs. */
static PyObject *
traced_close(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    TracedRun *self = (TracedRun *)op;
    if (self->state == TRACED_RAISED) {
        self->state = TRACED_DONE;
        int closed = close_iter(self->inner);
        Py_CLEAR(self->inner);
        return closed == 0 ? Py_NewRef(Py_None) : NULL;
    }
    if (self->state != TRACED_APP) {
        self->state = TRACED_DONE;
        Py_RETURN_NONE;
    }
    if (close_iter(self->inner) == 0) {
        PyErr_SetNone(PyExc_GeneratorExit);
    }
    if (traced_failed(self) < 0) {
        return NULL;
    }
    PyObject *result;
    PySendResult status = PyIter_Send(self->inner, Py_None, &result);
    self->state = TRACED_DONE;
    Py_CLEAR(self->inner);
    if (status == PYGEN_NEXT) {
        Py_DECREF(result);
        PyErr_SetString(PyExc_RuntimeError, "coroutine ignored GeneratorExit");
        return NULL;
    }
    if (status == PYGEN_RETURN || PyErr_ExceptionMatches(PyExc_GeneratorExit)) {
        Py_XDECREF(result);
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return NULL;
}

static void
traced_finalize(PyObject *op)
{
    TracedRun *self = (TracedRun *)op;
    if (self->state != TRACED_APP && self->state != TRACED_RAISED) {
        return;
    }
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyObject *closed = traced_close(op, NULL);
    if (closed == NULL) {
        PyErr_WriteUnraisable(op);
    }
    Py_XDECREF(closed);
    PyErr_Restore(type, value, traceback);
}

#define TRACED_RUN_FIELDS(X) X(maker) X(scope) X(receive) X(send) X(begun) X(inner)

static int
traced_traverse(PyObject *op, visitproc visit, void *arg)
{
    TracedRun *self = (TracedRun *)op;
    TRACED_RUN_FIELDS(FIELD_VISIT)
    return 0;
}

static int
traced_clear(PyObject *op)
{
    TracedRun *self = (TracedRun *)op;
    TRACED_RUN_FIELDS(FIELD_CLEAR)
    return 0;
}

static void
traced_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    if (PyObject_CallFinalizerFromDealloc(op) < 0) {
        return; /* resurrected */
    }
    traced_clear(op);
    Py_TYPE(op)->tp_free(op);
}

AWAITABLE_TYPE(traced, TracedRun, TracedRunType,
               "A traced request being run: awaited once, as _run's coroutine.", traced_finalize)

static PyObject *
request_traced_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    RequestTraced *maker = (RequestTraced *)op;
    if (PyVectorcall_NARGS(nargsf) != 3 || kwnames != NULL) {
        return PyObject_Vectorcall(maker->twin, args, nargsf, kwnames);
    }
    TracedRun *self = PyObject_GC_New(TracedRun, &TracedRunType);
    if (self == NULL) {
        return NULL;
    }
    self->maker = (RequestTraced *)Py_NewRef(maker);
    self->scope = Py_NewRef(args[0]);
    self->receive = Py_NewRef(args[1]);
    self->send = Py_NewRef(args[2]);
    self->begun = NULL;
    self->inner = NULL;
    self->state = TRACED_NEW;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

#define REQUEST_TRACED_FIELDS(X) X(twin) X(owner) X(fields) X(raised)

TWIN_TYPE(request_traced, RequestTraced, RequestTracedType, REQUEST_TRACED_FIELDS,
          "A traced request's awaitable maker, made by request_traced().")

static PyObject *
request_traced(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_nargs("request_traced", nargs, 4)
        || !held_fields_ok("request_traced", args, 2, 3, 1)) {
        return NULL;
    }
    return TWIN_NEW(RequestTraced, RequestTracedType, request_traced_call, raised, args, 4);
}

/* ------------------------------------------------------------------ an outer layer's dispatch
 *
 * ``layer_dispatch(twin, app, key, taken, blank, fields, ready)`` makes what an outer kiki
 * layer (``_lifespan.LifespanHooks``, ``_health_asgi.HealthEndpoints``) runs an event
 * with: its ``_dispatch`` (``twin``) for the events it answers itself, and ``app(scope,
 * receive, send)``, the coroutine of the app inside, for the others, with no Python frame
 * of its own. An event goes to the app when ``scope[key]`` is a str not in ``taken``,
 * ``scope[blank]`` (if ``blank`` is not None) is missing or an empty str, and
 * ``fields[ready]`` (if ``fields`` is not None: the layer's ``__dict__``) is True; anything
 * else is the twin's, which decides it again as its Python does. */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *twin, *app, *key, *taken, *blank, *fields, *ready;
} LayerDispatch;

/* 1: the app's, 0: the twin's, -1: an error (set). */
static int
layer_passes(LayerDispatch *self, PyObject *scope)
{
    PyObject *value = PyDict_GetItemWithError(scope, self->key);
    if (value == NULL || !PyUnicode_CheckExact(value)) {
        return PyErr_Occurred() ? -1 : 0;
    }
    int taken = PyDict_Contains(self->taken, value);
    if (taken != 0) {
        return taken < 0 ? -1 : 0;
    }
    if (self->blank != Py_None) {
        PyObject *blank = PyDict_GetItemWithError(scope, self->blank);
        if (blank != NULL && (!PyUnicode_CheckExact(blank) || PyUnicode_GET_LENGTH(blank) > 0)) {
            return 0;
        }
        if (blank == NULL && PyErr_Occurred()) {
            return -1;
        }
    }
    if (self->fields != Py_None) {
        PyObject *ready = PyDict_GetItemWithError(self->fields, self->ready);
        if (ready != Py_True) {
            return PyErr_Occurred() ? -1 : 0;
        }
    }
    return 1;
}

static PyObject *
layer_dispatch_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    LayerDispatch *self = (LayerDispatch *)op;
    if (PyVectorcall_NARGS(nargsf) != 3 || kwnames != NULL || !PyDict_CheckExact(args[0])) {
        return PyObject_Vectorcall(self->twin, args, nargsf, kwnames);
    }
    int passes = layer_passes(self, args[0]);
    if (passes < 0) {
        return NULL;
    }
    return PyObject_Vectorcall(passes ? self->app : self->twin, args, 3, NULL);
}

#define LAYER_DISPATCH_FIELDS(X) X(twin) X(app) X(key) X(taken) X(blank) X(fields) X(ready)

TWIN_TYPE(layer_dispatch, LayerDispatch, LayerDispatchType, LAYER_DISPATCH_FIELDS,
          "An outer layer's dispatch, made by layer_dispatch().")

static PyObject *
layer_dispatch(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_nargs("layer_dispatch", nargs, 7)) {
        return NULL;
    }
    if (!PyUnicode_CheckExact(args[2]) || !PyDict_CheckExact(args[3])
        || (args[4] != Py_None && !PyUnicode_CheckExact(args[4]))
        || (args[5] != Py_None && (!PyDict_CheckExact(args[5]) || !PyUnicode_CheckExact(args[6])))) {
        PyErr_SetString(PyExc_TypeError,
                        "layer_dispatch: key must be a str, taken a dict, blank None or a str, "
                        "fields None or a dict with ready a str");
        return NULL;
    }
    return TWIN_NEW(LayerDispatch, LayerDispatchType, layer_dispatch_call, ready, args, 7);
}

/* ------------------------------------------------------------------ a request span's start
 *
 * ``span_open(...)`` makes ``DirectSpans.open``: ``DirectSpans.start_open``'s common case
 * (the sampler set up with the tracer and deciding this kind of parent inline, the SDK's
 * random ids, a parent of an exact ``SpanContext``, if any), reading and drawing what it
 * reads and draws, in its order. What it does not take is decided before the first id is
 * drawn and goes to the twin; a recording span is made by ``DirectSpans._recording``. */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *twin, *tracer, *sampler, *fixed, *drop, *sample, *flags, *random_ids, *random;
    PyObject *span_key, *span_readers, *span_context_class, *trace_flags_class;
    PyObject *default_state, *no_metrics, *no_metrics_end, *non_recording, *new_attributes;
    PyObject *empty_attributes, *new_list, *list_fields, *empty_events, *empty_links;
    PyObject *span_class, *template, *threading, *multi, *processors, *limits;
    /* the __dict__s of tracer, random, multi and limits, or None each (held_attr) */
    PyObject *tracer_fields, *random_fields, *multi_fields, *limits_fields;
    PyObject *non_recording_init; /* see non_recording_span */
} SpanOpen;

static PyObject *str_sampler, *str_id_generator, *str_getrandbits, *str_tracer_metrics;
static PyObject *str_start_span, *str_span_processors, *str_tracer_config;
static PyObject *str_max_span_attributes, *int_128, *int_64, *int_one, *str_lock_class;
static PyObject *str_resource, *str_copy, *kw_attributes, *kw_list, *kw_span, *str_init;
static PyObject *str_context_field; /* (defined with the span's end) */

/* ``DirectSpans._recording``'s span for a decision taken inline (no sampler attributes):
 * its BoundedAttributes around the caller's dict, its event and link lists, each with a
 * new lock, and the span, made as the twin makes them, in its order. A new reference. */
static PyObject *
open_recording(SpanOpen *self, PyObject *name, PyObject *parent, PyObject *span_context,
               PyObject *sampler, PyObject *attributes, PyObject *end)
{
    PyObject *lock_class = NULL, *maxlen = NULL, *locks[4] = {NULL, NULL, NULL, NULL};
    PyObject *bounded = NULL, *resource = NULL, *queues[2] = {NULL, NULL};
    PyObject *lists[2] = {NULL, NULL}, *now = NULL, *span = NULL;
    maxlen = PyObject_GetAttr(self->limits, str_max_span_attributes);
    lock_class = maxlen != NULL ? PyObject_GetAttr(self->threading, str_lock_class) : NULL;
    locks[0] = lock_class != NULL ? PyObject_CallNoArgs(lock_class) : NULL;
    if (locks[0] == NULL) {
        goto done;
    }
    PyObject *bounded_args[5] = {self->new_attributes, self->empty_attributes, attributes,
                                 maxlen, locks[0]};
    bounded = new_instance(NULL, bounded_args, 2, kw_attributes);
    resource = bounded != NULL ? PyObject_GetAttr(self->tracer, str_resource) : NULL;
    if (resource == NULL) {
        goto done;
    }
    PyObject *empty[2] = {self->empty_events, self->empty_links};
    for (int i = 0; i < 2; i++) {
        queues[i] = PyObject_CallMethodNoArgs(empty[i], str_copy);
        locks[i + 1] = queues[i] != NULL ? PyObject_CallNoArgs(lock_class) : NULL;
        if (locks[i + 1] == NULL) {
            goto done;
        }
        PyObject *list_args[4] = {self->new_list, self->list_fields, queues[i], locks[i + 1]};
        if ((lists[i] = new_instance(NULL, list_args, 2, kw_list)) == NULL) {
            goto done;
        }
    }
    locks[3] = PyObject_CallNoArgs(lock_class);
    PyObject *clock = locks[3] != NULL ? module_attr(time_module, str_time_ns) : NULL;
    now = clock != NULL ? PyObject_CallNoArgs(clock) : NULL;
    Py_XDECREF(clock);
    if (now != NULL) {
        PyObject *span_args[13] = {self->span_class, self->template, name, span_context,
                                   parent, resource, sampler, bounded, lists[0], lists[1],
                                   locks[3], end, now};
        span = new_instance(NULL, span_args, 2, kw_span);
    }
done:
    Py_XDECREF(lock_class);
    Py_XDECREF(maxlen);
    for (int i = 0; i < 4; i++) {
        Py_XDECREF(locks[i]);
    }
    Py_XDECREF(bounded);
    Py_XDECREF(resource);
    for (int i = 0; i < 2; i++) {
        Py_XDECREF(queues[i]);
        Py_XDECREF(lists[i]);
    }
    Py_XDECREF(now);
    return span;
}

/* ``DirectSpans.usable(count)``: 1 while the span can be direct (the same processors, the
 * tracer on, room for ``count`` attributes), 0 if not, -1 on error */
static int
span_usable(SpanOpen *self, PyObject *count)
{
    PyObject *limit = held_attr(self->limits, self->limits, self->limits_fields,
                                str_max_span_attributes);
    PyObject *now = limit != NULL ? held_attr(self->multi, self->multi, self->multi_fields,
                                              str_span_processors)
                                  : NULL;
    int usable = now != NULL ? now == self->processors : -1;
    Py_XDECREF(now);
    if (usable > 0) {
        PyObject *config = held_attr(self->tracer, self->tracer, self->tracer_fields,
                                     str_tracer_config);
        PyObject *enabled = config != NULL ? PyObject_GetAttr(config, str_is_enabled) : NULL;
        Py_XDECREF(config);
        usable = enabled != NULL ? PyObject_IsTrue(enabled) : -1;
        Py_XDECREF(enabled);
    }
    if (usable > 0 && limit != Py_None) {
        usable = PyObject_RichCompareBool(count, limit, Py_LE);
    }
    Py_XDECREF(limit);
    return usable;
}

/* ``random.getrandbits(bits)`` until it is not 0, as the SDK's id generator draws: a new
 * reference, NULL on error */
static PyObject *
draw_id(PyObject *draw, PyObject *bits)
{
    for (;;) {
        PyObject *id = PyObject_CallOneArg(draw, bits);
        if (id == NULL) {
            return NULL;
        }
        int nonzero = PyObject_IsTrue(id);
        if (nonzero != 0) {
            if (nonzero < 0) {
                Py_CLEAR(id);
            }
            return id;
        }
        Py_DECREF(id);
    }
}

/* ``NonRecordingSpan(span_context)``: made as its ``__init__`` makes it (``object.__new__``,
 * then ``_context`` set), without the call into a Python frame, while the class's
 * ``__new__`` is object's and its ``__init__`` the one held (``non_recording_init``: the
 * API's, held while it compiles to exactly that, ``_fast_span``); else called. */
static PyObject *
non_recording_span(SpanOpen *self, PyObject *span_context)
{
    PyTypeObject *type = (PyTypeObject *)self->non_recording;
    if (self->non_recording_init == Py_None || type->tp_new != PyBaseObject_Type.tp_new
        || _PyType_Lookup(type, str_init) != self->non_recording_init) {
        return PyObject_CallOneArg(self->non_recording, span_context);
    }
    PyObject *span = PyBaseObject_Type.tp_new(type, empty_tuple, NULL);
    if (span != NULL && PyObject_SetAttr(span, str_context_field, span_context) < 0) {
        Py_CLEAR(span);
    }
    return span;
}

static PyObject *
span_open_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    SpanOpen *self = (SpanOpen *)op;
    if (PyVectorcall_NARGS(nargsf) != 3 || kwnames != NULL || !PyDict_Check(args[1])) {
        return PyObject_Vectorcall(self->twin, args, nargsf, kwnames);
    }
    PyObject *context = args[1];
    PyObject *sampler = NULL, *parent = NULL, *generator = NULL, *draw = NULL;
    PyObject *trace_id = NULL, *span_id = NULL, *span_context = NULL, *metrics = NULL;
    PyObject *end = NULL, *result = NULL;
    sampler = held_attr(self->tracer, self->tracer, self->tracer_fields, str_sampler);
    if (sampler == NULL) {
        goto done;
    }
    if (sampler != self->sampler) {
        goto twin;
    }
    /* the parent: the context's span's span context, if valid */
    PyObject *current = PyDict_GetItemWithError(context, self->span_key);
    if (current == NULL && PyErr_Occurred()) {
        goto done;
    }
    if (current != NULL && current != Py_None) {
        PyObject *read = PyDict_GetItemWithError(self->span_readers, (PyObject *)Py_TYPE(current));
        if (read == NULL) {
            if (PyErr_Occurred()) {
                goto done;
            }
            goto twin; /* not a span type seen before */
        }
        Py_INCREF(current);
        parent = PyObject_CallOneArg(read, current);
        Py_DECREF(current);
        if (parent == NULL) {
            goto done;
        }
        if (parent == Py_None) {
            Py_CLEAR(parent);
        }
    }
    int remote = 0, sampled = 0, random_id = 1;
    if (parent != NULL) {
        if ((PyObject *)Py_TYPE(parent) != self->span_context_class
            || PyTuple_GET_SIZE(parent) < 6) {
            goto twin;
        }
        int valid = PyObject_IsTrue(PyTuple_GET_ITEM(parent, 5));
        if (valid < 0) {
            goto done;
        }
        if (!valid) {
            Py_CLEAR(parent);
        }
    }
    generator = held_attr(self->tracer, self->tracer, self->tracer_fields, str_id_generator);
    if (generator == NULL) {
        goto done;
    }
    if (self->random_ids == NULL || (PyObject *)Py_TYPE(generator) != self->random_ids) {
        goto twin;
    }
    Py_ssize_t kind = 0; /* _PARENT_KINDS' order: None, (T, T), (T, F), (F, T), (F, F) */
    if (parent != NULL) {
        PyObject *flags = PyTuple_GET_ITEM(parent, 3);
        if ((PyObject *)Py_TYPE(flags) != self->trace_flags_class) {
            goto twin;
        }
        long bits = PyLong_AsLong(flags);
        remote = PyObject_IsTrue(PyTuple_GET_ITEM(parent, 2));
        if ((bits == -1 && PyErr_Occurred()) || remote < 0) {
            goto done;
        }
        sampled = (bits & 1) != 0;
        random_id = (bits & 2) != 0;
        kind = remote ? (sampled ? 1 : 2) : (sampled ? 3 : 4);
    }
    PyObject *decision = PyTuple_GET_ITEM(self->fixed, kind);
    if (decision == Py_None) { /* the sampler's own call: the twin's */
        goto twin;
    }
    draw = held_attr(self->random, self->random, self->random_fields, str_getrandbits);
    if (draw == NULL) {
        goto done;
    }
    trace_id = parent != NULL ? Py_NewRef(PyTuple_GET_ITEM(parent, 0)) : draw_id(draw, int_128);
    if (trace_id == NULL) {
        goto done;
    }
    if (PyLong_CheckExact(decision)) { /* TraceIdRatioBased: the low 64 bits below its bound */
        unsigned long long low = PyLong_AsUnsignedLongLongMask(trace_id);
        PyObject *low_bits = low == (unsigned long long)-1 && PyErr_Occurred()
                                 ? NULL
                                 : PyLong_FromUnsignedLongLong(low);
        int below = low_bits != NULL ? PyObject_RichCompareBool(low_bits, decision, Py_LT) : -1;
        Py_XDECREF(low_bits);
        if (below < 0) {
            goto done;
        }
        decision = below ? self->sample : self->drop;
    }
    PyObject *state = parent != NULL ? PyTuple_GET_ITEM(parent, 4) : Py_None;
    span_id = draw_id(draw, int_64);
    if (span_id == NULL) {
        goto done;
    }
    PyObject *flags = PyTuple_GET_ITEM(self->flags, (decision == self->sample) * 2 + random_id);
    PyObject *made_args[7] = {self->span_context_class, trace_id, span_id, Py_False, flags,
                              state != Py_None ? state : self->default_state, Py_True};
    span_context = new_tuple(NULL, made_args, 7); /* ids in range: drawn, or a valid parent's */
    if (span_context == NULL) {
        goto done;
    }
    metrics = held_attr(self->tracer, self->tracer, self->tracer_fields, str_tracer_metrics);
    if (metrics == NULL) {
        goto done;
    }
    if (self->no_metrics != NULL && (PyObject *)Py_TYPE(metrics) == self->no_metrics) {
        end = Py_NewRef(self->no_metrics_end);
    }
    else {
        PyObject *metric_args[3] = {metrics, parent != NULL ? parent : Py_None, decision};
        end = PyObject_VectorcallMethod(str_start_span, metric_args,
                                        3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (end == NULL) {
            goto done;
        }
    }
    if (decision == self->drop) {
        result = non_recording_span(self, span_context);
    }
    else {
        result = open_recording(self, args[0], parent != NULL ? parent : Py_None, span_context,
                                sampler, args[2], end);
    }
    goto done;
twin:
    result = PyObject_Vectorcall(self->twin, args, nargsf, NULL);
done:
    Py_XDECREF(sampler);
    Py_XDECREF(parent);
    Py_XDECREF(generator);
    Py_XDECREF(draw);
    Py_XDECREF(trace_id);
    Py_XDECREF(span_id);
    Py_XDECREF(span_context);
    Py_XDECREF(metrics);
    Py_XDECREF(end);
    return result;
}

#define SPAN_OPEN_FIELDS(X)                                                                \
    X(twin) X(tracer) X(sampler) X(fixed) X(drop) X(sample) X(flags) X(random_ids)          \
    X(random) X(span_key) X(span_readers) X(span_context_class) X(trace_flags_class)       \
    X(default_state) X(no_metrics) X(no_metrics_end) X(non_recording) X(new_attributes)   \
    X(empty_attributes) X(new_list) X(list_fields) X(empty_events) X(empty_links)          \
    X(span_class) X(template) X(threading) X(multi) X(processors) X(limits)               \
    X(tracer_fields) X(random_fields) X(multi_fields) X(limits_fields) X(non_recording_init)

TWIN_TYPE(span_open, SpanOpen, SpanOpenType, SPAN_OPEN_FIELDS,
          "A request span's start, made by span_open().")

static PyObject *
span_open(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_nargs("span_open", nargs, 34)) {
        return NULL;
    }
    if (!held_fields_ok("span_open", args, 29, 33, 1)) {
        return NULL;
    }
    if (!PyTuple_CheckExact(args[3]) || PyTuple_GET_SIZE(args[3]) != 5
        || !PyTuple_CheckExact(args[6]) || PyTuple_GET_SIZE(args[6]) != 4
        || (args[7] != Py_None && !PyType_Check(args[7])) || !PyDict_CheckExact(args[10])
        || !PyType_Check(args[11]) || !PyType_IsSubtype((PyTypeObject *)args[11], &PyTuple_Type)
        || !PyType_Check(args[12]) || (args[14] != Py_None && !PyType_Check(args[14]))
        || !PyType_Check(args[16]) || !PyType_Check(args[17]) || !PyDict_Check(args[18])
        || !PyType_Check(args[19]) || !PyDict_Check(args[20]) || !PyType_Check(args[23])
        || !PyDict_Check(args[24])) {
        PyErr_SetString(PyExc_TypeError,
                        "span_open: fixed must be a 5-tuple, flags a 4-tuple, span_readers, "
                        "the templates and fields dicts, span_context_class a tuple type, the "
                        "classes types or None");
        return NULL;
    }
    SpanOpen *self = (SpanOpen *)TWIN_NEW(SpanOpen, SpanOpenType, span_open_call,
                                          non_recording_init, args, 34);
    if (self != NULL) { /* None: not the SDK's id generator, no tracer metrics class */
        Py_SETREF(self->random_ids, args[7] != Py_None ? Py_NewRef(args[7]) : NULL);
        Py_SETREF(self->no_metrics, args[14] != Py_None ? Py_NewRef(args[14]) : NULL);
    }
    return (PyObject *)self;
}

/* ------------------------------------------------------------------ a request span's end
 *
 * ``span_close(...)`` makes ``DirectSpans.close``: ``DirectSpans.finish``'s common case
 * (a span of the SDK's class, the processors of setup, the lone batch queue, room for the
 * attributes, given as a dict or the empty mapping), reading and writing the span as
 * ``finish`` does, in its order and under the span's lock; then the span, if sampled,
 * encoded by ``sdk_span`` and queued by ``queue_item``. What it does not take is decided
 * before the lock and goes to the twin; a span already ended goes to the twin's
 * ``_finish_sdk``, a span C does not encode to ``_export`` and a full queue to
 * ``enqueue``, as in ``finish``. */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *twin, *batch, *span_class, *multi, *processors, *no_metrics_end, *types;
    PyObject *finish_sdk, *export, *enqueue;
} SpanClose;

static PyObject *str_attributes_field, *str_maxlen, *str_start_time, *str_end_time;
static PyObject *str_name_field, *str_immutable, *str_record_end_metrics, *str_context_field;
static PyObject *str_parent_field, *str_kind_field, *str_events_field, *str_links_field;
static PyObject *str_status_field, *str_resource_field, *str_scope_field;

/* Under the span's lock: 1 if the span was open (now ended: name, attributes, end time,
 * its attributes made immutable), 0 if already ended, -1 on error. */
static int
close_locked(PyObject *span, PyObject *bounded, PyObject *values, PyObject *attributes,
             PyObject *name, PyObject *end_time)
{
    PyObject *start = PyObject_GetAttr(span, str_start_time);
    PyObject *end = start != NULL ? PyObject_GetAttr(span, str_end_time) : NULL;
    int open = end != NULL ? start != Py_None && end == Py_None : -1;
    Py_XDECREF(start);
    Py_XDECREF(end);
    if (open <= 0) {
        return open;
    }
    if (name != Py_None && PyObject_SetAttr(span, str_name_field, name) < 0) {
        return -1;
    }
    if (PyDict_CheckExact(attributes)) {
        Py_ssize_t position = 0;
        PyObject *key, *value;
        while (PyDict_Next(attributes, &position, &key, &value)) {
            Py_INCREF(key);
            Py_INCREF(value);
            /* values.pop(key, None): a key set again moves to the end, as in the SDK */
            int status = PyDict_Contains(values, key);
            if (status > 0) {
                status = PyDict_DelItem(values, key);
            }
            if (status >= 0) {
                status = PyDict_SetItem(values, key, value);
            }
            Py_DECREF(key);
            Py_DECREF(value);
            if (status < 0) {
                return -1;
            }
        }
    }
    PyObject *now = Py_NewRef(end_time);
    if (end_time == Py_None) {
        PyObject *clock = module_attr(time_module, str_time_ns);
        Py_SETREF(now, clock != NULL ? PyObject_CallNoArgs(clock) : NULL);
        Py_XDECREF(clock);
    }
    int status = now != NULL ? PyObject_SetAttr(span, str_end_time, now) : -1;
    Py_XDECREF(now);
    if (status < 0 || PyObject_SetAttr(bounded, str_immutable, Py_True) < 0) {
        return -1;
    }
    return 1;
}

/* The ended span, if sampled, encoded and queued as ``finish`` does: 0, or -1 on error. */
static int
close_export(SpanClose *self, PyObject *span)
{
    PyObject *context = PyObject_GetAttr(span, str_context_field);
    if (context == NULL) {
        return -1;
    }
    long flags = -1;
    if (PyTuple_Check(context) && PyTuple_GET_SIZE(context) > 3) {
        flags = PyLong_AsLong(PyTuple_GET_ITEM(context, 3));
    }
    if (flags == -1 && PyErr_Occurred()) {
        Py_DECREF(context);
        return -1;
    }
    if (flags >= 0 && !(flags & 1)) { /* not sampled: not exported */
        Py_DECREF(context);
        return 0;
    }
    PyObject *names[11] = {str_parent_field, str_name_field,      str_kind_field,
                           str_start_time,   str_end_time,        str_attributes_field,
                           str_events_field, str_links_field,     str_status_field,
                           str_resource_field, str_scope_field};
    PyObject *fields[13] = {context};
    int read = 1;
    for (int i = 0; i < 11; i++) {
        fields[i + 1] = read ? PyObject_GetAttr(span, names[i]) : NULL;
        read = fields[i + 1] != NULL;
    }
    fields[12] = self->types;
    PyObject *item = NULL;
    if (read && flags >= 0) {
        item = sdk_span(NULL, fields, 13);
        if (item == NULL && PyErr_ExceptionMatches(PyExc_Exception)) {
            PyErr_Clear(); /* _export's encoder reports it */
        }
    }
    for (int i = 0; i < 12; i++) {
        Py_XDECREF(fields[i]);
    }
    if (!read || PyErr_Occurred()) {
        Py_XDECREF(item);
        return -1;
    }
    PyObject *called;
    if (item == NULL || item == Py_None) { /* not C's to encode: the twin's _export */
        called = PyObject_CallOneArg(self->export, span);
    }
    else {
        PyObject *queue_args[2] = {self->batch, item};
        called = queue_item(NULL, queue_args, 2);
        if (called == Py_False) {
            Py_SETREF(called, PyObject_Vectorcall(self->enqueue, queue_args, 2, NULL));
        }
    }
    Py_XDECREF(item);
    Py_XDECREF(called);
    return called != NULL ? 0 : -1;
}

static PyObject *
span_close_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    SpanClose *self = (SpanClose *)op;
    if (PyVectorcall_NARGS(nargsf) != 4 || kwnames != NULL
        || (PyObject *)Py_TYPE(args[0]) != self->span_class) {
        return PyObject_Vectorcall(self->twin, args, nargsf, kwnames);
    }
    PyObject *span = args[0], *attributes = args[1];
    PyObject *bounded = NULL, *values = NULL, *maxlen = NULL, *lock = NULL, *result = NULL;
    PyObject *now = PyObject_GetAttr(self->multi, str_span_processors);
    if (now == NULL) {
        return NULL;
    }
    int common = now == self->processors;
    Py_DECREF(now);
    Py_ssize_t adding = common ? PyObject_Length(attributes) : 0;
    if (adding < 0) {
        return NULL;
    }
    if (common && adding > 0 && !PyDict_CheckExact(attributes)) {
        common = 0; /* another mapping: the twin's */
    }
    bounded = common ? PyObject_GetAttr(span, str_attributes_field) : NULL;
    values = bounded != NULL ? PyObject_GetAttr(bounded, str_dict) : NULL;
    maxlen = values != NULL ? PyObject_GetAttr(bounded, str_maxlen) : NULL;
    if (common && maxlen == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            goto done;
        }
        PyErr_Clear(); /* not the SDK's attributes: the twin's */
        common = 0;
    }
    if (common && !PyDict_CheckExact(values)) {
        common = 0;
    }
    if (common && maxlen != Py_None) {
        PyObject *count = PyLong_FromSsize_t(PyDict_GET_SIZE(values) + adding);
        int over = count != NULL ? PyObject_RichCompareBool(count, maxlen, Py_GT) : -1;
        Py_XDECREF(count);
        if (over < 0) {
            goto done;
        }
        common = !over;
    }
    if (!common) {
        result = PyObject_Vectorcall(self->twin, args, nargsf, NULL);
        goto done;
    }
    lock = PyObject_GetAttr(span, str_lock);
    if (lock == NULL || call_method(lock, str_acquire) < 0) {
        goto done;
    }
    int open = release(lock, close_locked(span, bounded, values, attributes, args[2], args[3]));
    if (open < 0) {
        goto done;
    }
    if (!open) { /* already ended: the SDK's own errors or warnings */
        result = PyObject_Vectorcall(self->finish_sdk, args, 4, NULL);
        goto done;
    }
    PyObject *record_end = PyObject_GetAttr(span, str_record_end_metrics);
    int call = record_end != NULL ? PyObject_IsTrue(record_end) : -1;
    if (call > 0 && record_end != self->no_metrics_end) {
        PyObject *called = PyObject_CallNoArgs(record_end);
        call = called != NULL ? 0 : -1;
        Py_XDECREF(called);
    }
    Py_XDECREF(record_end);
    if (call >= 0 && close_export(self, span) == 0) {
        result = Py_NewRef(Py_None);
    }
done:
    Py_XDECREF(bounded);
    Py_XDECREF(values);
    Py_XDECREF(maxlen);
    Py_XDECREF(lock);
    return result;
}

#define SPAN_CLOSE_FIELDS(X)                                                               \
    X(twin) X(batch) X(span_class) X(multi) X(processors) X(no_metrics_end) X(types)        \
    X(finish_sdk) X(export) X(enqueue)

TWIN_TYPE(span_close, SpanClose, SpanCloseType, SPAN_CLOSE_FIELDS,
          "A request span's end, made by span_close().")

static PyObject *
span_close(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_nargs("span_close", nargs, 10)) {
        return NULL;
    }
    if (!PyType_Check(args[2]) || !PyTuple_CheckExact(args[6])) {
        PyErr_SetString(PyExc_TypeError, "span_close: span_class must be a class, types a tuple");
        return NULL;
    }
    return TWIN_NEW(SpanClose, SpanCloseType, span_close_call, enqueue, args, 10);
}

/* ------------------------------------------------------------------ a request's close
 *
 * ``request_close(...)`` makes ``ServerTelemetry._close_request``: ``_close`` (what
 * ``_traced`` runs once the app is done) for its common case: the request counted out, its
 * telemetry finished at once or joined to the waiting batch of this loop (``_end``'s two
 * common cases, reading and writing the middleware's batch state as ``_end`` does), a
 * failure handed to ``_failed``, then the client id's and the context's tokens reset, each
 * as ``_close`` resets it. ``_end``'s other cases (no batch yet, another loop, another
 * state object) are ``_end``'s own. */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *twin, *telemetry, *globals, *get_loop, *current_task, *finish_request, *end;
    PyObject *finish_each, *failed, *client_var, *api_detach;
    PyObject *telemetry_fields; /* its __dict__, or None (held_attr) */
} RequestClose;

static PyObject *str_batch_max, *str_batch_field, *str_loop_field, *str_batch_task;
static PyObject *str_grown, *str_detach, *str_http_text_format, *str_last_hex;

/* ``_end(...)``'s common cases (args: its seven), else ``_end`` itself: 0, or -1 */
static int
close_end(RequestClose *self, PyObject *const *args)
{
    PyObject *state = args[3], *loop = NULL, *batch = NULL, *field = NULL, *task = NULL;
    PyObject *called = NULL;
    int status = -1;
    if (!Py_IS_TYPE(state, &SendWrapperType)) {
        goto other;
    }
    SendWrapper *wrapper = (SendWrapper *)state;
    int sent = PyObject_IsTrue(wrapper->sent);
    if (sent < 0) {
        return -1;
    }
    if (!sent) { /* its duration and end time are now, whenever it is finished */
        PyObject *clock = module_attr(time_module, str_perf_counter);
        PyObject *now = clock != NULL ? PyObject_CallNoArgs(clock) : NULL;
        Py_XDECREF(clock);
        clock = now != NULL ? module_attr(time_module, str_time_ns) : NULL;
        PyObject *now_ns = clock != NULL ? PyObject_CallNoArgs(clock) : NULL;
        Py_XDECREF(clock);
        if (now_ns == NULL) {
            Py_XDECREF(now);
            return -1;
        }
        Py_SETREF(wrapper->sent, now);
        Py_SETREF(wrapper->sent_ns, now_ns);
    }
    loop = PyObject_CallNoArgs(self->get_loop);
    PyObject *telemetry = self->telemetry, *fields = self->telemetry_fields;
    batch = loop != NULL ? held_attr(telemetry, telemetry, fields, str_batch_field) : NULL;
    field = batch != NULL ? held_attr(telemetry, telemetry, fields, str_loop_field) : NULL;
    if (field == NULL) {
        goto done;
    }
    if (batch == Py_None || !PyList_CheckExact(batch) || field != loop) {
        goto other;
    }
    task = PyObject_CallOneArg(self->current_task, loop);
    Py_SETREF(field, task != NULL ? held_attr(telemetry, telemetry, fields, str_batch_task) : NULL);
    if (field == NULL) {
        goto done;
    }
    if (task == field) { /* the task that ended the quiet loop's request: at once */
        called = PyObject_Vectorcall(self->finish_request, args, 7, NULL);
        status = called != NULL ? 0 : -1;
        goto done;
    }
    /* another task's request, while the batch waits: it joins it, with its context */
    PyObject *item = PyTuple_New(7);
    if (item == NULL) {
        goto done;
    }
    for (int i = 0; i < 7; i++) {
        PyTuple_SET_ITEM(item, i, Py_NewRef(args[i]));
    }
    PyObject *context = PyContext_CopyCurrent();
    PyObject *pair = context != NULL ? PyTuple_Pack(2, context, item) : NULL;
    Py_XDECREF(context);
    Py_DECREF(item);
    status = pair != NULL ? PyList_Append(batch, pair) : -1;
    Py_XDECREF(pair);
    if (status < 0 || PyObject_SetAttr(self->telemetry, str_grown, Py_True) < 0) {
        status = -1;
        goto done;
    }
    Py_SETREF(field, held_attr(telemetry, telemetry, fields, str_batch_max));
    PyObject *size = field != NULL ? PyLong_FromSsize_t(PyList_GET_SIZE(batch)) : NULL;
    int full = size != NULL ? PyObject_RichCompareBool(size, field, Py_GE) : -1;
    Py_XDECREF(size);
    if (full > 0) {
        PyObject *fresh = PyList_New(0);
        if (fresh == NULL || PyObject_SetAttr(self->telemetry, str_batch_field, fresh) < 0) {
            Py_XDECREF(fresh);
            status = -1;
            goto done;
        }
        Py_DECREF(fresh);
        called = PyObject_CallOneArg(self->finish_each, batch);
    }
    status = full < 0 || (full > 0 && called == NULL) ? -1 : 0;
    goto done;
other:
    called = PyObject_Vectorcall(self->end, args, 7, NULL);
    status = called != NULL ? 0 : -1;
done:
    Py_XDECREF(loop);
    Py_XDECREF(batch);
    Py_XDECREF(field);
    Py_XDECREF(task);
    Py_XDECREF(called);
    return status;
}

/* ``active_key[0] -= 1``, then the request's telemetry finished: 0, or -1 */
static int
close_finish(RequestClose *self, PyObject *const *args)
{
    PyObject *key = args[7];
    PyObject *count = PySequence_GetItem(key, 0);
    PyObject *less = count != NULL ? PyNumber_InPlaceSubtract(count, int_one) : NULL;
    int status = less != NULL ? PySequence_SetItem(key, 0, less) : -1;
    Py_XDECREF(count);
    Py_XDECREF(less);
    if (status < 0) {
        return -1;
    }
    PyObject *most = PyObject_GetAttr(self->telemetry, str_batch_max);
    int batched = most != NULL ? PyObject_RichCompareBool(most, int_one, Py_GT) : -1;
    Py_XDECREF(most);
    if (batched != 0) {
        return batched < 0 ? -1 : close_end(self, args);
    }
    PyObject *called = PyObject_Vectorcall(self->finish_request, args, 7, NULL);
    Py_XDECREF(called);
    return called != NULL ? 0 : -1;
}

static PyObject *
request_close_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    RequestClose *self = (RequestClose *)op;
    if (PyVectorcall_NARGS(nargsf) != 10 || kwnames != NULL) {
        return PyObject_Vectorcall(self->twin, args, nargsf, kwnames);
    }
    PyObject *client_token = args[8], *token = args[9];
    if (close_finish(self, args) < 0 && PyErr_ExceptionMatches(PyExc_Exception)) {
        /* never replace the app's outcome, never leak ids: reported */
        PyObject *error = fetch_error();
        PyObject *reported = error != NULL ? PyObject_CallOneArg(self->failed, error) : NULL;
        Py_XDECREF(reported);
        Py_XDECREF(error);
    }
    /* finally: the tokens reset, whatever happened (an error since is the one raised) */
    PyObject *type, *error, *traceback;
    PyErr_Fetch(&type, &error, &traceback);
    int status = 0;
    if (client_token != Py_None) {
        status = PyContextVar_Reset(self->client_var, client_token);
    }
    if (status == 0) {
        PyObject *detach = PyDict_GetItemWithError(self->globals, str_detach);
        if (detach == NULL && !PyErr_Occurred()) {
            PyErr_SetObject(PyExc_NameError, str_detach);
        }
        PyObject *done = detach != NULL ? PyObject_CallOneArg(detach, token) : NULL;
        if (done == NULL && PyErr_ExceptionMatches(PyExc_Exception)) {
            PyErr_Clear(); /* the API's detach logs why */
            done = PyObject_CallOneArg(self->api_detach, token);
        }
        status = done != NULL ? 0 : -1;
        Py_XDECREF(done);
    }
    if (status < 0) { /* raised in the finally: replaces what was raised before */
        Py_XDECREF(type);
        Py_XDECREF(error);
        Py_XDECREF(traceback);
        return NULL;
    }
    if (type != NULL) {
        PyErr_Restore(type, error, traceback);
        return NULL;
    }
    Py_RETURN_NONE;
}

#define REQUEST_CLOSE_FIELDS(X)                                                            \
    X(twin) X(telemetry) X(globals) X(get_loop) X(current_task) X(finish_request) X(end)    \
    X(finish_each) X(failed) X(client_var) X(api_detach) X(telemetry_fields)

TWIN_TYPE(request_close, RequestClose, RequestCloseType, REQUEST_CLOSE_FIELDS,
          "A request's close, made by request_close().")

static PyObject *
request_close(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_nargs("request_close", nargs, 12)) {
        return NULL;
    }
    if (!PyDict_CheckExact(args[2]) || !PyContextVar_CheckExact(args[9])) {
        PyErr_SetString(PyExc_TypeError,
                        "request_close: globals must be a dict, client_var a ContextVar");
        return NULL;
    }
    if (!held_fields_ok("request_close", args, 11, 12, 1)) {
        return NULL;
    }
    return TWIN_NEW(RequestClose, RequestCloseType, request_close_call, telemetry_fields, args,
                    12);
}

/* ------------------------------------------------------------------ a request's start
 *
 * ``request_begin(...)`` makes ``ServerTelemetry._begin_request``: ``_begin``'s common case
 * (the propagator seen before, the headers plain with at most one ``traceparent``, the
 * direct span path), reading and calling what ``_begin`` reads and calls, in its order.
 * What it does not take is decided before the first step with an effect (the client id's
 * check, which may warn) and goes to the twin; the rarer cases after that step (a
 * recording span's attributes, a span context of another shape) call the twin's own
 * helpers, ``_recorded`` and ``_span_ids``. */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *twin, *globals, *propagate, *w3c_headers, *id_header, *known_methods;
    PyObject *client_id, *context_class, *usable, *start_max, *start_open, *recorded;
    PyObject *span_ids, *non_recording, *span_context_of, *span_context_class, *which, *remember_ids;
    PyObject *span_key, *current_var, *client_var, *active_counts, *active_add, *new_send;
    PyObject *send_slow, *hosts, *parse_host, *redact_query;
    /* textmap_get: the API's get_global_textmap while it compiles to ``return
     * _HTTP_TEXT_FORMAT`` (read from propagate's dict instead of called), else None;
     * ids_globals: the dict remember_ids sets ``_last_hex`` in (set here instead of
     * calling it), or None */
    PyObject *textmap_get, *ids_globals;
} RequestBegin;

static PyObject *str_w3c_only, *str_get_global_textmap, *str_extract, *str_traceparent;
static PyObject *str_baggage, *str_scheme, *str_http_scheme, *str_get_word, *str_scheme_attr;
static PyObject *str_path_attr, *str_empty, *str_method_original, *str_query_string;
static PyObject *str_url_query, *str_host, *str_server_address, *str_server_port, *str_client;
static PyObject *str_client_address, *str_user_agent, *str_user_agent_attr, *str_client_id_attr;

/* ``scope.get(key, default)``: a new reference, NULL on error */
static PyObject *
scope_get(PyObject *scope, PyObject *key, PyObject *default_value)
{
    PyObject *value = PyDict_GetItemWithError(scope, key);
    if (value == NULL && PyErr_Occurred()) {
        return NULL;
    }
    return Py_NewRef(value != NULL ? value : default_value);
}

/* ``_extract(carrier, propagator, w3c_only)``: a new reference, NULL on error */
static PyObject *
begin_extract(RequestBegin *self, PyObject *carrier, PyObject *textmap, int w3c_only)
{
    if (w3c_only) {
        int found = PyDict_Contains(carrier, str_traceparent);
        if (found == 0) {
            found = PyDict_Contains(carrier, str_baggage);
        }
        if (found < 0) {
            return NULL;
        }
        if (!found) {
            return PyObject_CallNoArgs(self->context_class);
        }
    }
    return PyObject_CallMethodOneArg(textmap, str_extract, carrier);
}

/* ``set_span_in_context(span, parent)`` as ``_start_span`` makes it: a new reference */
static PyObject *
begin_context(RequestBegin *self, PyObject *parent, PyObject *span)
{
    PyObject *values;
    if (PyDict_CheckExact(parent) || Py_TYPE(parent) == (PyTypeObject *)self->context_class) {
        values = PyDict_Copy(parent); /* dict.copy, which the API's Context keeps */
    }
    else {
        values = PyObject_CallMethodNoArgs(parent, str_copy);
    }
    if (values == NULL || PyObject_SetItem(values, self->span_key, span) < 0) {
        Py_XDECREF(values);
        return NULL;
    }
    PyObject *ctx = PyObject_CallOneArg(self->context_class, values);
    Py_DECREF(values);
    return ctx;
}

/* The span's context, ids, flags, hex ids and headers, read as ``_span_ids`` reads them
 * for an exact span context read by position; 0 (nothing set, no error) for anything
 * else, which ``_span_ids`` itself answers. The references are the caller's to drop. */
static int
begin_ids(RequestBegin *self, PyObject *span, PyObject **context, PyObject **made)
{
    PyObject *reader = PyDict_GetItemWithError(self->span_context_of, (PyObject *)Py_TYPE(span));
    if (reader == NULL || self->span_context_class == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    PyObject *read = PyObject_CallOneArg(reader, span);
    if (read == NULL) {
        return -1;
    }
    if ((PyObject *)Py_TYPE(read) != self->span_context_class || PyTuple_GET_SIZE(read) < 6
        || PyTuple_GET_ITEM(read, 5) != Py_True || !PyLong_Check(PyTuple_GET_ITEM(read, 3))) {
        Py_DECREF(read);
        return 0;
    }
    long flags = PyLong_AsLong(PyTuple_GET_ITEM(read, 3));
    if (flags == -1 && PyErr_Occurred()) {
        Py_DECREF(read);
        return -1;
    }
    PyObject *ids_args[4] = {PyTuple_GET_ITEM(read, 0), PyTuple_GET_ITEM(read, 1),
                             PyTuple_GET_ITEM(read, 3), self->which};
    PyObject *ids = request_ids(NULL, ids_args, 4);
    if (ids == NULL || ids == Py_None) {
        Py_DECREF(read);
        Py_XDECREF(ids);
        return ids == NULL ? -1 : 0;
    }
    *context = read;
    *made = ids;
    return 1;
}

/* ``value``'s truth, or -1 with an error set; NULL (absent) is false */
static int
truth_of(PyObject *value)
{
    return value != NULL ? PyObject_IsTrue(value) : (PyErr_Occurred() ? -1 : 0);
}

/* ``_recorded``'s additions to the direct span's attribute dict (the span not None): the
 * attributes only a recording span keeps, in the twin's order. 0, or -1 on error. */
static int
begin_recorded(RequestBegin *self, PyObject *scope, PyObject *method, PyObject *carrier,
               PyObject *client_id, PyObject *attributes)
{
    int other = same_str(method, str_other);
    if (other != 0) {
        PyObject *raw = other > 0 ? scope_get(scope, str_method, str_empty) : NULL;
        int status = raw != NULL ? PyDict_SetItem(attributes, str_method_original, raw) : -1;
        Py_XDECREF(raw);
        if (status < 0) {
            return -1;
        }
    }
    PyObject *query = PyDict_GetItemWithError(scope, str_query_string);
    int some = truth_of(query);
    if (some < 0) {
        return -1;
    }
    if (some) { /* _redact_query(query.decode("latin-1")) */
        Py_INCREF(query);
        PyObject *text = PyBytes_Check(query)
            ? PyUnicode_DecodeLatin1(PyBytes_AS_STRING(query), PyBytes_GET_SIZE(query), NULL)
            : PyObject_CallMethod(query, "decode", "s", "latin-1");
        Py_DECREF(query);
        PyObject *redacted = text != NULL ? PyObject_CallOneArg(self->redact_query, text) : NULL;
        Py_XDECREF(text);
        int status = redacted != NULL ? PyDict_SetItem(attributes, str_url_query, redacted) : -1;
        Py_XDECREF(redacted);
        if (status < 0) {
            return -1;
        }
    }
    PyObject *host = PyDict_GetItemWithError(carrier, str_host);
    if ((some = truth_of(host)) < 0) {
        return -1;
    }
    if (some) { /* _hosts.get(host) or _parse_host(host) */
        Py_INCREF(host);
        PyObject *parsed = PyDict_GetItemWithError(self->hosts, host);
        int known = truth_of(parsed);
        if (known > 0) {
            Py_INCREF(parsed);
        }
        else {
            parsed = known == 0 ? PyObject_CallOneArg(self->parse_host, host) : NULL;
        }
        Py_DECREF(host);
        if (parsed == NULL) {
            return -1;
        }
        int status = -1;
        if (PyTuple_CheckExact(parsed) && PyTuple_GET_SIZE(parsed) == 2) {
            PyObject *port = PyTuple_GET_ITEM(parsed, 1);
            status = PyDict_SetItem(attributes, str_server_address, PyTuple_GET_ITEM(parsed, 0));
            if (status == 0 && port != Py_None) {
                status = PyDict_SetItem(attributes, str_server_port, port);
            }
        }
        else {
            PyErr_SetString(PyExc_TypeError, "request_begin: a parsed host must be a pair");
        }
        Py_DECREF(parsed);
        if (status < 0) {
            return -1;
        }
    }
    PyObject *client = PyDict_GetItemWithError(scope, str_client);
    if ((some = truth_of(client)) < 0) {
        return -1;
    }
    if (some) {
        PyObject *address = PySequence_GetItem(client, 0);
        int status = address != NULL ? PyDict_SetItem(attributes, str_client_address, address)
                                     : -1;
        Py_XDECREF(address);
        if (status < 0) {
            return -1;
        }
    }
    PyObject *agent = PyDict_GetItemWithError(carrier, str_user_agent);
    if ((some = truth_of(agent)) < 0
        || (some && PyDict_SetItem(attributes, str_user_agent_attr, agent) < 0)) {
        return -1;
    }
    if (client_id != Py_None) {
        PyObject *ids = PyTuple_Pack(1, client_id);
        int status = ids != NULL ? PyDict_SetItem(attributes, str_client_id_attr, ids) : -1;
        Py_XDECREF(ids);
        if (status < 0) {
            return -1;
        }
    }
    return 0;
}

static PyObject *
request_begin_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    RequestBegin *self = (RequestBegin *)op;
    if (PyVectorcall_NARGS(nargsf) != 2 || kwnames != NULL || !PyDict_CheckExact(args[0])) {
        return PyObject_Vectorcall(self->twin, args, nargsf, kwnames);
    }
    PyObject *scope = args[0], *send = args[1];
    PyObject *start = NULL, *textmap = NULL, *path = NULL, *scanned = NULL, *client_id = NULL;
    PyObject *method = NULL, *parent = NULL, *scheme = NULL, *version = NULL;
    PyObject *attributes = NULL, *span = NULL, *context = NULL, *made = NULL, *helper = NULL;
    PyObject *ctx = NULL, *outer = NULL, *token = NULL, *client_token = NULL, *active = NULL;
    PyObject *entry = NULL, *state = NULL, *current = NULL, *result = NULL;
    PyObject *clock = module_attr(time_module, str_perf_counter);
    start = clock != NULL ? PyObject_CallNoArgs(clock) : NULL;
    Py_XDECREF(clock);
    PyObject *get = start != NULL ? module_attr(self->propagate, str_get_global_textmap)
                                  : NULL;
    textmap = get == NULL                  ? NULL
              : get == self->textmap_get ? module_attr(self->propagate, str_http_text_format)
                                         : PyObject_CallNoArgs(get);
    Py_XDECREF(get);
    if (textmap == NULL) {
        goto done;
    }
    /* _propagator(): the last propagator seen, and whether it is W3C-only */
    PyObject *seen = PyDict_GetItemWithError(self->globals, str_w3c_only);
    PyObject *headers = seen != NULL ? PyDict_GetItemWithError(scope, str_headers) : NULL;
    path = headers != NULL ? PyDict_GetItemWithError(scope, str_path) : NULL;
    if (PyErr_Occurred()) {
        goto done;
    }
    if (path == NULL || !PyTuple_CheckExact(seen) || PyTuple_GET_SIZE(seen) != 2
        || PyTuple_GET_ITEM(seen, 0) != textmap) {
        path = NULL;
        goto twin;
    }
    Py_INCREF(path);
    int w3c_only = PyObject_IsTrue(PyTuple_GET_ITEM(seen, 1));
    if (w3c_only < 0) {
        goto done;
    }
    /* _read_headers(scope, w3c_only) */
    PyObject *scan_args[3] = {headers, self->id_header, w3c_only ? self->w3c_headers : Py_None};
    Py_INCREF(headers);
    scanned = scan_headers(NULL, scan_args, 3);
    Py_DECREF(headers);
    if (scanned == NULL) {
        goto done;
    }
    if (scanned == Py_None) {
        goto twin;
    }
    long traceparents = PyLong_AsLong(PyTuple_GET_ITEM(scanned, 1));
    if (traceparents > 1) { /* dropped, with a warning: the twin's */
        goto twin;
    }
    PyObject *carrier = PyTuple_GET_ITEM(scanned, 0), *client_ids = PyTuple_GET_ITEM(scanned, 2);
    if (client_ids != Py_None) {
        client_id = PyObject_CallOneArg(self->client_id, client_ids);
        if (client_id == NULL) {
            goto done;
        }
    }
    else {
        client_id = Py_NewRef(Py_None);
    }
    /* the method, the parent context */
    method = scope_get(scope, str_method, str_get_word);
    int known = method != NULL ? PySet_Contains(self->known_methods, method) : -1;
    if (known < 0) {
        goto done;
    }
    if (!known) {
        Py_SETREF(method, Py_NewRef(str_other));
    }
    parent = begin_extract(self, carrier, textmap, w3c_only);
    if (parent == NULL) {
        goto done;
    }
    /* _start_span(scope, method, carrier, parent, client_id) */
    int other = same_str(method, str_other);
    scheme = other >= 0 ? scope_get(scope, str_scheme, str_http_scheme) : NULL;
    version = scheme != NULL ? scope_get(scope, str_http_version, str_default_version) : NULL;
    attributes = version != NULL ? PyDict_New() : NULL;
    if (attributes == NULL || PyDict_SetItem(attributes, str_method_attr, method) < 0
        || PyDict_SetItem(attributes, str_scheme_attr, scheme) < 0
        || PyDict_SetItem(attributes, str_path_attr, path) < 0
        || PyDict_SetItem(attributes, str_network_version, version) < 0) {
        goto done;
    }
    PyObject *name = other ? str_http_word : method;
    int direct;
    if (Py_IS_TYPE(self->start_open, &SpanOpenType)) {
        direct = span_usable((SpanOpen *)self->start_open, self->start_max);
    }
    else {
        PyObject *usable = PyObject_CallOneArg(self->usable, self->start_max);
        direct = usable != NULL ? PyObject_IsTrue(usable) : -1;
        Py_XDECREF(usable);
    }
    if (direct < 0) {
        goto done;
    }
    if (direct) {
        PyObject *open_args[3] = {name, parent, attributes};
        span = PyObject_Vectorcall(self->start_open, open_args, 3, NULL);
        if (span == NULL) {
            goto done;
        }
    }
    else {
        span = Py_NewRef(Py_None);
    }
    if (span != Py_None && (PyObject *)Py_TYPE(span) != self->non_recording) {
        if (begin_recorded(self, scope, method, carrier, client_id, attributes) < 0) {
            goto done; /* (the direct span's dict: the additions of _recorded) */
        }
    }
    else if (span == Py_None) { /* the SDK's way, with all its attributes: the twin's */
        PyObject *recorded_args[8] = {scope, method, name, carrier, parent, client_id,
                                      attributes, span};
        Py_SETREF(span, PyObject_Vectorcall(self->recorded, recorded_args, 8, NULL));
        if (span == NULL) {
            goto done;
        }
    }
    PyObject *trace_id, *span_id, *flags, *hex_ids, *response_headers;
    int read = begin_ids(self, span, &context, &made);
    if (read < 0) {
        goto done;
    }
    if (read) {
        trace_id = PyTuple_GET_ITEM(context, 0);
        span_id = PyTuple_GET_ITEM(context, 1);
        flags = PyTuple_GET_ITEM(context, 3);
        hex_ids = PyTuple_GET_ITEM(made, 0);
        response_headers = PyTuple_GET_ITEM(made, 1);
    }
    else { /* (span, span_context, trace_id, span_id, flags, hex_ids, headers) */
        helper = PyObject_CallOneArg(self->span_ids, span);
        if (helper == NULL) {
            goto done;
        }
        if (!PyTuple_CheckExact(helper) || PyTuple_GET_SIZE(helper) != 7) {
            PyErr_SetString(PyExc_TypeError, "request_begin: _span_ids must return 7 items");
            goto done;
        }
        Py_SETREF(span, Py_NewRef(PyTuple_GET_ITEM(helper, 0)));
        context = Py_NewRef(PyTuple_GET_ITEM(helper, 1));
        trace_id = PyTuple_GET_ITEM(helper, 2);
        span_id = PyTuple_GET_ITEM(helper, 3);
        flags = PyTuple_GET_ITEM(helper, 4);
        hex_ids = PyTuple_GET_ITEM(helper, 5);
        response_headers = PyTuple_GET_ITEM(helper, 6);
    }
    if (self->ids_globals != Py_None) { /* remember_ids(context, hex_ids), as it does */
        PyObject *last = PyTuple_Pack(2, context, hex_ids);
        int set = last != NULL ? PyDict_SetItem(self->ids_globals, str_last_hex, last) : -1;
        Py_XDECREF(last);
        if (set < 0) {
            goto done;
        }
    }
    else {
        PyObject *remember_args[2] = {context, hex_ids};
        PyObject *remembered = PyObject_Vectorcall(self->remember_ids, remember_args, 2, NULL);
        if (remembered == NULL) {
            goto done;
        }
        Py_DECREF(remembered);
    }
    ctx = begin_context(self, parent, span);
    if (ctx == NULL) {
        goto done;
    }
    /* the request's context current, the client's id set only to change it */
    if (PyContextVar_Get(self->current_var, NULL, &outer) < 0) {
        goto done;
    }
    if (outer == NULL) {
        PyErr_SetObject(PyExc_LookupError, self->current_var);
        goto done;
    }
    token = PyContextVar_Set(self->current_var, ctx);
    if (token == NULL) {
        goto done;
    }
    if (client_id == Py_None) {
        PyObject *was;
        if (PyContextVar_Get(self->client_var, Py_None, &was) < 0) {
            goto done;
        }
        int set = was != Py_None;
        Py_DECREF(was);
        client_token = set ? PyContextVar_Set(self->client_var, client_id) : Py_NewRef(Py_None);
    }
    else {
        client_token = PyContextVar_Set(self->client_var, client_id);
    }
    active = client_token != NULL ? PyDict_New() : NULL;
    if (active == NULL || PyDict_SetItem(active, str_method_attr, method) < 0
        || PyDict_SetItem(active, str_scheme_attr, scheme) < 0) {
        goto done;
    }
    /* _ActiveRequests.add(active): its count's entry, [count, attributes], counted */
    PyObject *key = PyTuple_Pack(2, method, scheme);
    PyObject *found = key != NULL ? PyDict_GetItemWithError(self->active_counts, key) : NULL;
    Py_XDECREF(key);
    if (found != NULL && PyList_CheckExact(found) && PyList_GET_SIZE(found) == 2
        && PyLong_CheckExact(PyList_GET_ITEM(found, 0))) {
        entry = Py_NewRef(found);
        PyObject *count = PyNumber_Add(PyList_GET_ITEM(found, 0), int_one);
        if (count == NULL || PyList_SetItem(entry, 0, count) < 0) {
            goto done;
        }
    }
    else if (key == NULL || PyErr_Occurred()
             || (entry = PyObject_CallOneArg(self->active_add, active)) == NULL) {
        goto done;
    }
    PyObject *wrapper_args[6] = {send, response_headers, self->id_header, outer,
                                 self->send_slow, self->current_var};
    state = PyObject_Vectorcall(self->new_send, wrapper_args, 6, NULL);
    current = state != NULL ? PyTuple_Pack(6, ctx, trace_id, span_id, flags, context, hex_ids)
                            : NULL;
    if (current != NULL) {
        result = PyTuple_Pack(9, state, span, context, current, token, client_token, active,
                              entry, start);
    }
    goto done;
twin:
    result = PyObject_Vectorcall(self->twin, args, nargsf, NULL);
done:
    Py_XDECREF(start);
    Py_XDECREF(textmap);
    Py_XDECREF(path);
    Py_XDECREF(scanned);
    Py_XDECREF(client_id);
    Py_XDECREF(method);
    Py_XDECREF(parent);
    Py_XDECREF(scheme);
    Py_XDECREF(version);
    Py_XDECREF(attributes);
    Py_XDECREF(span);
    Py_XDECREF(context);
    Py_XDECREF(made);
    Py_XDECREF(helper);
    Py_XDECREF(ctx);
    Py_XDECREF(outer);
    Py_XDECREF(token);
    Py_XDECREF(client_token);
    Py_XDECREF(active);
    Py_XDECREF(entry);
    Py_XDECREF(state);
    Py_XDECREF(current);
    return result;
}

#define REQUEST_BEGIN_FIELDS(X)                                                            \
    X(twin) X(globals) X(propagate) X(w3c_headers) X(id_header) X(known_methods)           \
    X(client_id) X(context_class) X(usable) X(start_max) X(start_open) X(recorded)        \
    X(span_ids)                                                                            \
    X(non_recording) X(span_context_of) X(span_context_class) X(which) X(remember_ids)     \
    X(span_key) X(current_var) X(client_var) X(active_counts) X(active_add) X(new_send)    \
    X(send_slow) X(hosts) X(parse_host) X(redact_query) X(textmap_get) X(ids_globals)

TWIN_TYPE(request_begin, RequestBegin, RequestBeginType, REQUEST_BEGIN_FIELDS,
          "A request's start, made by request_begin().")

static PyObject *
request_begin(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_nargs("request_begin", nargs, 30)) {
        return NULL;
    }
    if (!PyDict_CheckExact(args[1]) || !PyDict_CheckExact(args[3]) || !PyBytes_CheckExact(args[4])
        || !PyAnySet_Check(args[5]) || !PyType_Check(args[7]) || !PyType_Check(args[13])
        || !PyDict_CheckExact(args[14]) || (args[15] != Py_None && !PyType_Check(args[15]))
        || !PyContextVar_CheckExact(args[19]) || !PyContextVar_CheckExact(args[20])
        || !PyDict_CheckExact(args[21]) || !PyDict_CheckExact(args[25])
        || (args[29] != Py_None && !PyDict_CheckExact(args[29]))) {
        PyErr_SetString(PyExc_TypeError,
                        "request_begin: globals, w3c_headers, span_context_of, active_counts, "
                        "hosts and ids_globals must be dicts, "
                        "id_header bytes, known_methods a set, the classes types, the variables "
                        "ContextVars");
        return NULL;
    }
    RequestBegin *self = (RequestBegin *)TWIN_NEW(RequestBegin, RequestBeginType,
                                                  request_begin_call, ids_globals, args, 30);
    if (self != NULL) { /* None: a span context not read by position */
        Py_SETREF(self->span_context_class, args[15] != Py_None ? Py_NewRef(args[15]) : NULL);
    }
    return (PyObject *)self;
}

static PyMethodDef speedups_methods[] = {
    {"encode_fields", (PyCFunction)(void (*)(void))encode_fields, METH_FASTCALL,
     "encode_fields(tag, mapping, skip) -> bytes | None\n\n"
     "The repeated KeyValue fields (tag: the field's key bytes) of a dict's plain items but\n"
     "skip, in order; None when an item is not plain (the Python encoder takes it)."},
    {"encode_span", (PyCFunction)(void (*)(void))encode_span, METH_FASTCALL,
     "encode_span(trace_id, span_id, parent_span_id, parent_remote, name, kind, start, end,\n"
     "            attributes, status_code, status_description) -> bytes | None"},
    {"sdk_span", (PyCFunction)(void (*)(void))sdk_span, METH_FASTCALL,
     "sdk_span(context, parent, name, kind, start, end, attributes, events, links, status,\n"
     "         resource, scope, types) -> Encoded | None\n\n"
     "_otlp_encode.encode_span for an SDK span's fields, in its plain case; None for any\n"
     "other span (the Python encoder's)."},
    {"encode_log_event", (PyCFunction)(void (*)(void))encode_log_event, METH_FASTCALL,
     "encode_log_event(timestamp, head, event, skip, trace_id, span_id, trace_flags)\n"
     "    -> bytes | None"},
    {"json_line", (PyCFunction)json_line, METH_O,
     "json_line(mapping) -> bytes | None\n\n"
     "orjson.dumps(mapping) for a dict of plain items (exact str keys; values of exactly str,\n"
     "bool, int within 64 bits, a float written without an exponent, or None); None for any\n"
     "other (orjson's own to write)."},
    {"histogram_aggregate", (PyCFunction)(void (*)(void))histogram_aggregate, METH_FASTCALL,
     "histogram_aggregate(aggregation, value, reservoir, names, values) -> bool\n\n"
     "aggregation.aggregate(measurement, False) for the SDK's explicit-bucket histogram\n"
     "aggregation, then (reservoir not None) values stored under names in the value's\n"
     "exemplar bucket; False when it changed nothing (the Python path's to do)."},
    {"frame_items", (PyCFunction)(void (*)(void))frame_items, METH_FASTCALL,
     "frame_items(items, tag, encoded) -> bytes | None\n\n"
     "_otlp_encode._encode_each for a list or tuple of Encoded items (exact type encoded);\n"
     "None when an item is not one (the Python loop's)."},
    {"iso_timestamp", (PyCFunction)(void (*)(void))iso_timestamp, METH_FASTCALL,
     "iso_timestamp(time_ns, fallback) -> str\n\n"
     "_logging.iso_timestamp(time_ns); fallback(time_ns) for a time before 1970 or past the\n"
     "C library's range."},
    {"new_instance", (PyCFunction)(void (*)(void))new_instance, METH_FASTCALL | METH_KEYWORDS,
     "new_instance(cls, template, /, **fields) -> object\n\n"
     "object.__new__(cls) (not cls's own __new__), then setattr for each of template's\n"
     "items and each field, in order."},
    {"new_tuple", (PyCFunction)(void (*)(void))new_tuple, METH_FASTCALL,
     "new_tuple(cls, *items) -> tuple\n\n"
     "tuple.__new__(cls, items) for a subclass cls of tuple, without the items' tuple."},
    {"request_ids", (PyCFunction)(void (*)(void))request_ids, METH_FASTCALL,
     "request_ids(trace_id, span_id, flags, which)\n"
     "    -> ((trace_hex, span_hex), headers) | None\n\n"
     "_http_server._request_ids_py for ids in range; None for any other (the Python twin's)."},
    {"send_wrapper", (PyCFunction)(void (*)(void))send_wrapper, METH_FASTCALL,
     "send_wrapper(send, headers, id_header, outer, slow, var) -> SendWrapper\n\n"
     "_http_server._SendWrapper(send, headers, id_header, outer), whose messages go to send\n"
     "without a coroutine (the last one run with the ContextVar var set to outer; var None:\n"
     "slow's); messages not in the plain shape are slow(wrapper, message)."},
    {"merge_contextvars", (PyCFunction)(void (*)(void))merge_contextvars, METH_FASTCALL,
     "merge_contextvars(logger, method_name, event_dict) -> event_dict\n\n"
     "structlog.contextvars.merge_contextvars in C (for the prefix 'structlog_')."},
    {"layer_dispatch", (PyCFunction)(void (*)(void))layer_dispatch, METH_FASTCALL,
     "layer_dispatch(twin, app, key, taken, blank, fields, ready) -> LayerDispatch\n\n"
     "An outer layer's _dispatch (twin) in C: app(scope, receive, send) for the events it\n"
     "passes on, twin(...) for any other."},
    {"access_line", (PyCFunction)(void (*)(void))access_line, METH_FASTCALL,
     "access_line(twin, live, installed, levels, merge, var, client_var, service, structure,\n"
     "            emit, heads, name, dumps, dumps_default, write, stamp_fallback, emit_fast)\n"
     "    -> AccessLine\n\n"
     "_access_log.DirectAccessLog.__call__ (twin) in C for its common case; twin(...) for\n"
     "any other."},
    {"span_close", (PyCFunction)(void (*)(void))span_close, METH_FASTCALL,
     "span_close(twin, batch, span_class, multi, processors, no_metrics_end, types,\n"
     "           finish_sdk, export, enqueue) -> SpanClose\n\n"
     "_fast_span.DirectSpans.finish (twin) in C for its common case; twin(...) for any\n"
     "other."},
    {"output_write", (PyCFunction)(void (*)(void))output_write, METH_FASTCALL,
     "output_write(twin, output, sys, lock) -> OutputWrite\n\n"
     "_logging._Output.write (twin) in C for a line of bytes and a stdout with a buffer;\n"
     "twin(...) for any other."},
    {"logs_queue", (PyCFunction)(void (*)(void))logs_queue, METH_FASTCALL,
     "logs_queue(twin, multi, processors, logger, limit, metrics, batch, encoded, enqueue,\n"
     "           multi_fields, logger_fields, batch_fields) -> LogsQueue\n\n"
     "_otlp_http.DirectLogs.emit_encoded (twin) in C."},
    {"request_close", (PyCFunction)(void (*)(void))request_close, METH_FASTCALL,
     "request_close(twin, telemetry, globals, get_loop, current_task, finish_request, end,\n"
     "              finish_each, failed, client_var, api_detach, telemetry_fields)\n"
     "    -> RequestClose\n\n"
     "_http_server.ServerTelemetry._close (twin) in C for its common case; twin(...) for\n"
     "any other."},
    {"request_dispatch", (PyCFunction)(void (*)(void))request_dispatch, METH_FASTCALL,
     "request_dispatch(twin, app, traced, excluded, below_root, fastapi_key, traced_key)\n"
     "    -> RequestDispatch\n\n"
     "_http_server.ServerTelemetry._dispatch (twin) in C for a scope dict whose type is a\n"
     "str; twin(...) for any other."},
    {"request_traced", (PyCFunction)(void (*)(void))request_traced, METH_FASTCALL,
     "request_traced(twin, owner, fields, raised) -> RequestTraced\n\n"
     "_http_server.ServerTelemetry._traced (twin) in C: an awaitable per request, not a\n"
     "coroutine; twin(...) for a call not of three positional arguments."},
    {"span_open", (PyCFunction)(void (*)(void))span_open, METH_FASTCALL,
     "span_open(twin, tracer, sampler, fixed, drop, sample, flags, random_ids, random,\n"
     "          span_key, span_readers, span_context_class, trace_flags_class,\n"
     "          default_state, no_metrics, no_metrics_end, non_recording, new_attributes,\n"
     "          empty_attributes, new_list, list_fields, empty_events, empty_links,\n"
     "          span_class, template, threading, multi, processors, limits, tracer_fields,\n"
     "          random_fields, multi_fields, limits_fields, non_recording_init)\n"
     "    -> SpanOpen\n\n"
     "_fast_span.DirectSpans.start_open (twin) in C for its common case; twin(...) for any\n"
     "other."},
    {"request_begin", (PyCFunction)(void (*)(void))request_begin, METH_FASTCALL,
     "request_begin(twin, globals, propagate, w3c_headers, id_header, known_methods,\n"
     "              client_id, context_class, usable, start_max, start_open, recorded,\n"
     "              span_ids, non_recording, span_context_of, span_context_class, which,\n"
     "              remember_ids, span_key, current_var, client_var, active_counts, active_add,\n"
     "              new_send, send_slow, hosts, parse_host, redact_query, textmap_get,\n"
     "              ids_globals)\n"
     "    -> RequestBegin\n\n"
     "_http_server.ServerTelemetry._begin (twin) in C for its common case; twin(...) for\n"
     "any other."},
    {"request_end", (PyCFunction)(void (*)(void))request_end, METH_FASTCALL,
     "request_end(twin, record, direct_finish, access, non_recording, no_attributes,\n"
     "            route_of) -> RequestEnd\n\n"
     "_http_server.ServerTelemetry._finish (twin) in C for its common case; twin(...) for\n"
     "any other."},
    {"histogram_record", (PyCFunction)(void (*)(void))histogram_record, METH_FASTCALL,
     "histogram_record(fast, var, fields, held) -> HistogramRecord\n\n"
     "_fast_histogram.FastHistogram.record (fast's) in C for its common case; fast.record\n"
     "for any other."},
    {"queue_item", (PyCFunction)(void (*)(void))queue_item, METH_FASTCALL,
     "queue_item(batch, item) -> bool\n\n"
     "_otlp_http.enqueue(batch, item) when the item fits in the queue of this process's\n"
     "batch processor (or it is shut down); False, nothing done, for enqueue to run."},
    {"scan_headers", (PyCFunction)(void (*)(void))scan_headers, METH_FASTCALL,
     "scan_headers(headers, id_header, wanted) -> (carrier, traceparents, client_ids) | None\n\n"
     "_http_server._scan_headers for a list or tuple of (bytes, bytes) pairs; None for any\n"
     "other headers (the Python loop's to read)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "kiki_otel._speedups",
    .m_doc = "The request path's common cases in C: the OTLP encoder, the access line, the "
             "histogram, the span's objects, the headers' scan, the response's id headers, "
             "a line's timestamp and the request's send.",
    .m_size = 0,
    .m_methods = speedups_methods,
};

static int
intern_names(void)
{
    struct {
        PyObject **slot;
        const char *text;
    } names[] = {
        {&str_lock, "_lock"},
        {&str_name, "name"},
        {&str_config_field, "_config"},
        {&str_locked, "locked"},
        {&str_structlog_prefix, "structlog_"},
        {&str_setdefault, "setdefault"},
        {&str_value, "_value"},
        {&str_sum, "_sum"},
        {&str_min, "_min"},
        {&str_max, "_max"},
        {&str_record_min_max, "_record_min_max"},
        {&str_boundaries, "_boundaries"},
        {&str_acquire, "acquire"},
        {&str_release, "release"},
        {&str_storage, "_reservoir_storage"},
        {&str_dict, "_dict"},
        {&str_dropped, "dropped"},
        {&str_dq, "_dq"},
        {&str_status_code, "_status_code"},
        {&str_description, "_description"},
        {&str_type, "type"},
        {&str_status, "status"},
        {&str_headers, "headers"},
        {&str_more_body, "more_body"},
        {&str_response_start, "http.response.start"},
        {&str_response_body, "http.response.body"},
        {&str_response_pathsend, "http.response.pathsend"},
        {&str_method, "method"},
        {&str_path, "path"},
        {&str_route, "route"},
        {&str_duration_ms, "duration_ms"},
        {&str_event, "event"},
        {&str_logger, "logger"},
        {&str_level, "level"},
        {&str_timestamp, "timestamp"},
        {&str_trace_id, "trace_id"},
        {&str_request_id, "request_id"},
        {&str_span_id, "span_id"},
        {&str_client_request_id, "client_request_id"},
        {&str_service, "service"},
        {&str_exc_info, "exc_info"},
        {&str_info, "info"},
        {&str_error, "error"},
        {&str_access_event, "http.request"},
        {&str_time_ns, "time_ns"},
        {&str_state, "state"},
        {&str_route_key, "route"},
        {&str_root_path, "root_path"},
        {&str_app_root_path, "app_root_path"},
        {&str_http_version, "http_version"},
        {&str_default_version, "1.1"},
        {&str_network_version, "network.protocol.version"},
        {&str_http_route, "http.route"},
        {&str_status_attr, "http.response.status_code"},
        {&str_method_attr, "http.request.method"},
        {&str_other, "_OTHER"},
        {&str_http_word, "HTTP"},
        {&str_perf_counter, "perf_counter"},
        {&str_round, "__round__"},
        {&str_sent, "sent"},
        {&str_sent_ns, "sent_ns"},
        {&str_consumer, "_consumer"},
        {&str_cache, "_cache"},
        {&str_histogram, "_histogram"},
        {&str_meter_config, "_meter_config"},
        {&str_is_enabled, "is_enabled"},
        {&str_reader_storages, "_reader_storages"},
        {&str_storages, "_storages"},
        {&str_sdk_config, "_sdk_config"},
        {&str_exemplar_filter, "exemplar_filter"},
        {&str_trace_based, "_trace_based"},
        {&str_aggregate_each, "_aggregate_each"},
        {&str_shutdown, "_shutdown"},
        {&str_pid, "_pid"},
        {&str_queue, "_queue"},
        {&str_max_queue_size, "_max_queue_size"},
        {&str_appendleft, "appendleft"},
        {&str_max_export_batch_size, "_max_export_batch_size"},
        {&str_worker_awaken, "_worker_awaken"},
        {&str_is_set, "is_set"},
        {&str_set, "set"},
        {&str_usable, "usable"},
        {&str_w3c_only, "_w3c_only"},
        {&str_get_global_textmap, "get_global_textmap"},
        {&str_extract, "extract"},
        {&str_traceparent, "traceparent"},
        {&str_baggage, "baggage"},
        {&str_scheme, "scheme"},
        {&str_http_scheme, "http"},
        {&str_get_word, "GET"},
        {&str_scheme_attr, "url.scheme"},
        {&str_path_attr, "url.path"},
        {&str_copy, "copy"},
        {&str_sampler, "sampler"},
        {&str_id_generator, "id_generator"},
        {&str_getrandbits, "getrandbits"},
        {&str_tracer_metrics, "_tracer_metrics"},
        {&str_start_span, "start_span"},
        {&str_span_processors, "_span_processors"},
        {&str_tracer_config, "_tracer_config"},
        {&str_max_span_attributes, "max_span_attributes"},
        {&str_http_type, "http"},
        {&str_websocket, "websocket"},
        {&str_stdout, "stdout"},
        {&str_buffer, "buffer"},
        {&str_flush, "flush"},
        {&str_write, "write"},
        {&str_lost, "_lost"},
        {&str_failing, "_failing"},
        {&str_raw, "raw"},
        {&str_write_through, "write_through"},
        {&str_closed, "closed"},
        {&str_fileno, "fileno"},
        {&str_attributes_field, "_attributes"},
        {&str_maxlen, "maxlen"},
        {&str_start_time, "_start_time"},
        {&str_end_time, "_end_time"},
        {&str_name_field, "_name"},
        {&str_immutable, "_immutable"},
        {&str_record_end_metrics, "_record_end_metrics"},
        {&str_context_field, "_context"},
        {&str_parent_field, "_parent"},
        {&str_kind_field, "_kind"},
        {&str_events_field, "_events"},
        {&str_links_field, "_links"},
        {&str_status_field, "_status"},
        {&str_resource_field, "_resource"},
        {&str_scope_field, "_instrumentation_scope"},
        {&str_empty, ""},
        {&str_method_original, "http.request.method_original"},
        {&str_query_string, "query_string"},
        {&str_url_query, "url.query"},
        {&str_host, "host"},
        {&str_server_address, "server.address"},
        {&str_server_port, "server.port"},
        {&str_client, "client"},
        {&str_client_address, "client.address"},
        {&str_user_agent, "user-agent"},
        {&str_user_agent_attr, "user_agent.original"},
        {&str_client_id_attr, "http.request.header.x-request-id"},
        {&str_lock_class, "Lock"},
        {&str_resource, "resource"},
        {&str_batch_max, "_batch_max"},
        {&str_batch_field, "_batch"},
        {&str_loop_field, "_loop"},
        {&str_batch_task, "_batch_task"},
        {&str_grown, "_grown"},
        {&str_detach, "_detach"},
        {&str_log_processors, "_log_record_processors"},
        {&str_logger_config, "_logger_config"},
        {&str_emit_log, "emit_log"},
        {&str_log_resource, "_resource"},
        {&str_queue_method, "queue"},
        {&str_begin_request, "_begin_request"},
        {&str_close_request, "_close_request"},
        {&str_app_field, "_app"},
        {&str_throw, "throw"},
        {&str_close, "close"},
        {&str_init, "__init__"},
        {&str_http_text_format, "_HTTP_TEXT_FORMAT"},
        {&str_last_hex, "_last_hex"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (*names[i].slot == NULL) {
            *names[i].slot = PyUnicode_InternFromString(names[i].text);
            if (*names[i].slot == NULL) {
                return -1;
            }
        }
    }
    return 0;
}

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (intern_names() < 0 || access_keys_init() < 0) {
        return NULL;
    }
    if (empty_tuple == NULL && (empty_tuple = PyTuple_New(0)) == NULL) {
        return NULL;
    }
    if (bytes_traceresponse == NULL
        && (bytes_traceresponse = PyBytes_FromString("traceresponse")) == NULL) {
        return NULL;
    }
    if (bytes_server_timing == NULL
        && (bytes_server_timing = PyBytes_FromString("server-timing")) == NULL) {
        return NULL;
    }
    if (zero_float == NULL && (zero_float = PyFloat_FromDouble(0.0)) == NULL) {
        return NULL;
    }
    if (zero_int == NULL && (zero_int = PyLong_FromLong(0)) == NULL) {
        return NULL;
    }
    if (int_500 == NULL && (int_500 = PyLong_FromLong(500)) == NULL) {
        return NULL;
    }
    if (float_1e6 == NULL && (float_1e6 = PyFloat_FromDouble(1e6)) == NULL) {
        return NULL;
    }
    if (float_1e3 == NULL && (float_1e3 = PyFloat_FromDouble(1e3)) == NULL) {
        return NULL;
    }
    if (kw_span == NULL
        && ((kw_attributes = Py_BuildValue("(sss)", "_dict", "maxlen", "_lock")) == NULL
            || (kw_list = Py_BuildValue("(ss)", "_dq", "_lock")) == NULL
            || (kw_span = Py_BuildValue("(sssssssssss)", "_name", "_context", "_parent",
                                        "_resource", "_sampler", "_attributes", "_events",
                                        "_links", "_lock", "_record_end_metrics",
                                        "_start_time"))
                   == NULL)) {
        return NULL;
    }
    if ((int_128 == NULL && (int_128 = PyLong_FromLong(128)) == NULL)
        || (int_64 == NULL && (int_64 = PyLong_FromLong(64)) == NULL)
        || (int_one == NULL && (int_one = PyLong_FromLong(1)) == NULL)) {
        return NULL;
    }
    if (PyType_Ready(&SendWrapperType) < 0 || PyType_Ready(&LastSendType) < 0
        || PyType_Ready(&AccessLineType) < 0 || PyType_Ready(&HistogramRecordType) < 0
        || PyType_Ready(&RequestEndType) < 0 || PyType_Ready(&RequestBeginType) < 0
        || PyType_Ready(&SpanOpenType) < 0 || PyType_Ready(&RequestDispatchType) < 0
        || PyType_Ready(&OutputWriteType) < 0 || PyType_Ready(&SpanCloseType) < 0
        || PyType_Ready(&RequestCloseType) < 0 || PyType_Ready(&LogsQueueType) < 0
        || PyType_Ready(&LayerDispatchType) < 0 || PyType_Ready(&RequestTracedType) < 0
        || PyType_Ready(&TracedRunType) < 0) {
        return NULL;
    }
    if (text_io_type == NULL) { /* io's classes, as sys.stdout is made of them */
        PyObject *io = PyImport_ImportModule("io");
        PyObject *text = io != NULL ? PyObject_GetAttrString(io, "TextIOWrapper") : NULL;
        PyObject *buffered = text != NULL ? PyObject_GetAttrString(io, "BufferedWriter") : NULL;
        PyObject *file = buffered != NULL ? PyObject_GetAttrString(io, "FileIO") : NULL;
        Py_XDECREF(io);
        if (file == NULL || !PyType_Check(text) || !PyType_Check(buffered)
            || !PyType_Check(file)) {
            Py_XDECREF(text);
            Py_XDECREF(buffered);
            Py_XDECREF(file);
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "_speedups: io's classes are not classes");
            }
            return NULL;
        }
        text_io_type = (PyTypeObject *)text; /* held for good, as the module's */
        buffered_writer_type = (PyTypeObject *)buffered;
        file_io_type = (PyTypeObject *)file;
    }
    if (lock_type == NULL) {
        PyObject *thread = PyImport_ImportModule("_thread");
        PyObject *type = thread != NULL ? PyObject_GetAttrString(thread, "LockType") : NULL;
        Py_XDECREF(thread);
        if (type == NULL) {
            return NULL;
        }
        if (!PyType_Check(type)) {
            Py_DECREF(type);
            PyErr_SetString(PyExc_TypeError, "_thread.LockType is not a type");
            return NULL;
        }
        lock_type = (PyTypeObject *)type;
    }
    if (time_perf_counter == NULL) {
        PyObject *time = PyImport_ImportModule("time");
        if (time == NULL) {
            return NULL;
        }
        time_perf_counter = PyObject_GetAttrString(time, "perf_counter");
        time_time_ns = PyObject_GetAttrString(time, "time_ns");
        time_module = time;
        if (time_perf_counter == NULL || time_time_ns == NULL) {
            return NULL;
        }
    }
    return PyModule_Create(&speedups_module);
}
