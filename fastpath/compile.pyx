# cython: language_level=3
"""The model's and the compiler's per-endpoint loops, compiled (the module fastpath._compile).

A big cluster has a million endpoints. fastpath.model reads each one out of its raw slice
(plain_ipv4_endpoint), and fastpath.compiler visits each one a few times: to read it out of its
EndpointSlice, to choose a service port's sets, to number the backends, to list each service
port's backend ids. It also walks every Service's ports (service_ports; add_ports): a
hundred thousand of them took half of a compile in Python. Those loops live here, written
against the same objects the Python compiler passes around (the model's slotted dataclasses
in, fastpath.compiler's named tuples and fastpath.maps' classes out); the rules they apply are
the compiler's, documented where it calls them (pysrc/fastpath/compiler.py) and repeated in
each function here.

The full compile keeps each endpoint as a C record (Gatherer): its key, its name and its
conditions as bits, with no other Python object made or freed per endpoint. The incremental
path (fastpath.endpoints) needs candidate tuples it can remember between changes: candidates()
makes them from records read the same way, and port_sets() chooses their sets through the
same Gatherer code.

Slotted objects are read and made through their slots' offsets (Fields), not attribute by
attribute: at a million endpoints the attribute machinery was a quarter of the time.
"""
cimport cython
from cpython.dict cimport PyDict_GetItem
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_AsUnsignedLongLong, PyLong_FromSsize_t, PyLong_FromUnsignedLongLong
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE, PyTuple_New, PyTuple_SET_ITEM
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport qsort
from libc.string cimport memchr, memcmp, memcpy, memset, strlen

from ids cimport int_or_zero
from prefetch cimport prefetch
from slots cimport fill_slot, give_slot, new_empty, offset_of, slot_at

from dataclasses import fields as dataclass_fields

# Frozen dataclasses whose objects, once made, hold the same values for good: an untracked one
# is as safe in an untracked tuple as a string is (see cycle_free). Made before fastpath.model
# is imported: importing it makes its Makers (each adds its class), maybe while this module is
# still loading.
cdef set IMMUTABLE = set()

from fastpath.maps import FRONTEND_KINDS, PROTOCOL_NUMBERS, Frontend, family_of
from fastpath.maps import Service as MapService
from fastpath.model import (ClusterError, Endpoint, EndpointConditions, EndpointPort, EndpointSlice,
                            ObjectReference, Service, ServicePort)
from fastpath.model import _CONDITIONS as SHARED_CONDITIONS_BY_VALUES
from fastpath.model import (DEFAULT_NAMESPACE, LABEL_SERVICE_NAME, PROTOCOLS, SERVICE_TYPES, SLICE_FAMILIES,
                            TRAFFIC_POLICIES)

cdef extern from "Python.h":
    bint PyUnicode_IS_COMPACT_ASCII(object text)
    void* PyUnicode_DATA(object text)
    Py_ssize_t PyUnicode_GET_LENGTH(object text)

cdef extern from *:
    # A str made of ASCII parts, copied byte by byte (the parts are a few bytes each: joined as
    # an f-string, a libc memmove call per part was 8 % of gathering in perf); NULL, with no
    # error set, when a part is no compact ASCII str (then the caller joins them as Python does).
    """
    static PyObject* fastpath_join_ascii(PyObject** parts, int count) {
        Py_ssize_t size = 0;
        for (int i = 0; i < count; i++) {
            if (!PyUnicode_CheckExact(parts[i]) || !PyUnicode_IS_COMPACT_ASCII(parts[i])) return NULL;
            size += PyUnicode_GET_LENGTH(parts[i]);
        }
        PyObject* joined = PyUnicode_New(size, 127);
        if (joined == NULL) return NULL;
        Py_UCS1* out = PyUnicode_1BYTE_DATA(joined);
        for (int i = 0; i < count; i++) {
            const Py_UCS1* part = PyUnicode_1BYTE_DATA(parts[i]);
            for (Py_ssize_t j = 0, n = PyUnicode_GET_LENGTH(parts[i]); j < n; j++) *out++ = part[j];
        }
        return joined;
    }
    """
    PyObject* join_ascii "fastpath_join_ascii"(PyObject** parts, int count) except? NULL

cdef inline const char* text_bytes(str text, Py_ssize_t* size) except NULL:
    """A str's UTF-8 bytes and their count: an ASCII string's own bytes, read in place."""
    if PyUnicode_IS_COMPACT_ASCII(text):
        size[0] = PyUnicode_GET_LENGTH(text)
        return <const char*>PyUnicode_DATA(text)
    return PyUnicode_AsUTF8AndSize(text, size)


cdef inline bint truth(object value) except -1:
    """bool(value), without a call for the booleans and None."""
    if value is True:
        return True
    if value is False or value is None:
        return False
    return bool(value)


cdef inline bint true_or_null(object value) except -1:
    """value is None or bool(value): a condition the API reads as true when absent."""
    return value is None or truth(value)


cdef inline bint same_text(object value, object text) except -1:
    """value == text, without the generic comparison's calls when both are str."""
    if value is text:
        return True
    if type(value) is str and type(text) is str:
        if PyUnicode_GET_LENGTH(value) != PyUnicode_GET_LENGTH(text):
            return False
        if PyUnicode_IS_COMPACT_ASCII(value) and PyUnicode_IS_COMPACT_ASCII(text):
            return memcmp(PyUnicode_DATA(value), PyUnicode_DATA(text), PyUnicode_GET_LENGTH(value)) == 0
    return value == text


cdef inline bint nonempty(object value) except -1:
    """bool(value), without a call for a str."""
    if type(value) is str:
        return PyUnicode_GET_LENGTH(value) != 0
    return bool(value)


cdef extern from "arpa/inet.h" nogil:
    struct in_addr:
        uint32_t s_addr
    int inet_aton(const char* text, in_addr* address)
    int inet_pton(int family, const char* text, void* address)
    uint32_t ntohl(uint32_t value)
    int AF_INET6

cdef extern from *:
    # An instance of a tuple subclass (a named tuple) made directly, as tuple.__new__ would
    # allocate it: its items start NULL, for PyTuple_SET_ITEM.
    """
    #define fastpath_tuple_alloc(cls, size) PyType_GenericAlloc((PyTypeObject*)(cls), (size))
    """
    object tuple_alloc "fastpath_tuple_alloc"(object cls, Py_ssize_t size)

cdef extern from "Python.h":
    void gc_untrack "PyObject_GC_UnTrack"(object item)
    bint gc_is_tracked "PyObject_GC_IsTracked"(object item)
    bint gc_type "PyObject_IS_GC"(object item)

cdef enum:
    PORT_BITS = 16  # a backend key is ip << 16 | port (fastpath.compiler._backend_key)
    WARM_AHEAD = 16  # endpoints of a slice fetched together, level by level (warm)
    LOOKUP_AHEAD = 4  # ports between fetching a port's Service and its name's strings (add_ports)
    WARM_STAGES = 5  # levels of a port's objects (warm_port), each fetched a port ahead of the next
    IDS_AHEAD = 4  # ports between fetching a port's id ints and making its sets (number)
    WARM_PORT_MOST = 32  # endpoints of a slice warm_port fetches (warm, the rest: a multiple of WARM_AHEAD)
    MAX_FIELDS = 16  # of a class Fields reads (the model's Service has 16)
    KEY_BYTES = 24  # the bytes of Keyed.words

cdef enum:
    # A _Candidate's items (fastpath.compiler).
    KEY = 0
    NAME = 1
    READY = 2
    SERVING = 3
    TERMINATING = 4
    LOCAL = 5
    ZONE_HINTS = 6
    NODE_HINTS = 7


cdef object IPV6 = 1 << 128
cdef uint64_t V4_MAPPED = 0xFFFF  # bits 32-127 of an IPv4-mapped IPv6 address

# Why an endpoint of an IPv6 slice is no candidate (counted in `skipped`).
MAPPED_IN_IPV6 = "IPv4-mapped address in an IPv6 EndpointSlice"


def map_address(str text):
    """A model address (canonical text) as a map address (fastpath.maps: IPv4 as its 32-bit
    value, IPv6 tagged with IPV6). An IPv4-mapped IPv6 address is its IPv4 address, as in
    kube-proxy (Go's net.IP). OSError for text that is no address, as socket.inet_pton raises."""
    cdef Py_ssize_t size
    cdef const char* utf8 = PyUnicode_AsUTF8AndSize(text, &size)
    cdef uint32_t v4
    cdef uint64_t high, low
    if strlen(utf8) != <size_t>size:
        raise ValueError("embedded null character")
    if memchr(utf8, b":", size) == NULL:
        parse_ipv4(text, &v4)
        return PyLong_FromUnsignedLongLong(v4)
    parse_ipv6(text, &high, &low)
    if high == 0 and low >> 32 == V4_MAPPED:
        return PyLong_FromUnsignedLongLong(low & 0xFFFFFFFF)
    return IPV6 | PyLong_FromUnsignedLongLong(high) << 64 | PyLong_FromUnsignedLongLong(low)


@cython.final  # its cdef methods called directly, not through a vtable
cdef class Fields:
    """The slots of one slotted class, by offset: read without the attribute lookup around the
    descriptor (the candidates loop reads eleven fields per endpoint), and filled in objects
    made empty. Objects of any other type (a subclass, a stand-in) are read by attribute."""
    cdef type cls
    cdef tuple names
    cdef Py_ssize_t count
    cdef Py_ssize_t offsets[MAX_FIELDS]

    def __cinit__(self, type cls, names=None):
        from dataclasses import fields
        if names is None:  # every field of a dataclass, in order
            names = tuple(field.name for field in fields(cls))
        if len(names) > MAX_FIELDS:
            raise TypeError(f"{cls.__name__} has more than {MAX_FIELDS} fields")
        self.cls, self.names, self.count = cls, tuple(names), len(names)
        for index, name in enumerate(self.names):
            self.offsets[index] = offset_of(cls, name)

    cdef inline object get(self, item, Py_ssize_t index):
        cdef PyObject* value
        if type(item) is self.cls:
            value = slot_at(item, self.offsets[index])
            if value != NULL:
                return <object>value
        return self.by_attribute(item, index)

    cdef object by_attribute(self, item, Py_ssize_t index):
        # Out of line: get, the slot read, stays small enough for the C compiler to inline.
        return getattr(item, self.names[index])

    cdef inline object new(self):
        """An object of the class with every slot empty: fill each one (fill) before use."""
        return new_empty(self.cls)

    cdef inline void fill(self, item, Py_ssize_t index, value):
        fill_slot(item, self.offsets[index], value)

    cdef inline void give(self, item, Py_ssize_t index, PyObject* value) noexcept:
        """fill with a reference the caller owns: the slot takes it, `value` is not touched."""
        give_slot(item, self.offsets[index], value)


cdef Fields every_field(type cls, tuple names):
    """Fields of `names`, which must be every field of the dataclass `cls`: its objects are made
    here with each slot filled (ImportError if the class has other fields)."""
    if {field.name for field in dataclass_fields(cls)} != set(names):
        raise ImportError(f"{cls.__name__} has other fields than fastpath._compile fills")
    return Fields(cls, names)


# The model fields the candidates loop reads, and their indexes in each Fields.
cdef Fields ENDPOINT = Fields(Endpoint, ("addresses", "conditions", "node_name", "hints_for_zones",
                                         "hints_for_nodes", "target_ref"))
cdef Fields CONDITIONS = Fields(EndpointConditions, ("ready", "serving", "terminating"))
cdef Fields REFERENCE = Fields(ObjectReference, ("namespace", "name"))
cdef enum:
    EP_ADDRESSES, EP_CONDITIONS, EP_NODE_NAME, EP_ZONE_HINTS, EP_NODE_HINTS, EP_TARGET_REF
    IS_READY = 0, IS_SERVING, IS_TERMINATING
    REF_NAMESPACE = 0, REF_NAME

# Slices and Services: read by the compiler's loops, made by the model's readers (every field).
cdef Fields SLICE = every_field(EndpointSlice, ("namespace", "name", "ports", "endpoints", "service_name",
                                                "address_type"))
cdef Fields SLICE_PORT = every_field(EndpointPort, ("name", "protocol", "port"))
cdef enum:
    SL_NAMESPACE = 0, SL_NAME, SL_PORTS, SL_ENDPOINTS, SL_SERVICE_NAME, SL_ADDRESS_TYPE
    SP_NAME = 0, SP_PROTOCOL, SP_PORT

cdef Fields SERVICE = every_field(Service, ("namespace", "name", "type", "cluster_ips", "headless", "ports",
                                            "external_ips", "load_balancer_ingress", "internal_traffic_policy",
                                            "external_traffic_policy", "selector", "session_affinity",
                                            "affinity_timeout", "load_balancer_source_ranges", "external_name",
                                            "publish_not_ready_addresses"))
cdef Fields SERVICE_PORT = every_field(ServicePort, ("name", "protocol", "port", "target_port", "node_port"))
cdef enum:
    SV_NAMESPACE = 0, SV_NAME, SV_TYPE, SV_CLUSTER_IPS, SV_HEADLESS, SV_PORTS, SV_EXTERNAL_IPS, SV_INGRESS,
    SV_INTERNAL_POLICY, SV_EXTERNAL_POLICY, SV_SELECTOR, SV_AFFINITY, SV_AFFINITY_TIMEOUT, SV_SOURCE_RANGES,
    SV_EXTERNAL_NAME, SV_PUBLISH_NOT_READY
    PT_NAME = 0, PT_PROTOCOL, PT_PORT, PT_TARGET_PORT, PT_NODE_PORT
    PORT_ITEMS = 6  # a compiler._Port: (service, port, family, cluster_ip, proto, name)


cdef inline bint canonical_ipv4(const char* text, Py_ssize_t size, uint32_t* value) noexcept nogil:
    """Canonical dotted decimal (four parts 0..255, no leading zero) as its 32-bit value, which is
    what inet_aton reads it as; False for any other text (inet_aton decides, at ten times the
    cost: it reads each part with strtoul). One pass, one test per byte for a digit."""
    cdef uint32_t result = 0, part = 0
    cdef int digits = 0, dots = 0
    cdef Py_ssize_t i
    cdef unsigned char digit
    if size < 7 or size > 15:
        return False
    for i in range(size):
        digit = <unsigned char>text[i] - c'0'
        if digit <= 9:
            if digits == 3 or (digits and part == 0):  # a fourth digit, a leading zero
                return False
            part = part * 10 + digit
            digits += 1
        elif text[i] == c'.' and digits and dots < 3 and part <= 255:
            result = result << 8 | part
            part = digits = 0
            dots += 1
        else:
            return False
    if dots != 3 or not digits or part > 255:
        return False
    value[0] = result << 8 | part
    return True


cdef int parse_ipv4(str text, uint32_t* value) except -1:
    """A dotted quad as its 32-bit value, read as socket.inet_aton reads it (OSError if not)."""
    cdef Py_ssize_t size
    cdef const char* utf8 = text_bytes(text, &size)
    return parse_ipv4_bytes(utf8, size, value)


cdef int parse_ipv4_bytes(const char* utf8, Py_ssize_t size, uint32_t* value) except -1:
    """parse_ipv4 of a text's UTF-8 bytes (NUL-terminated, `size` before the NUL)."""
    cdef in_addr v4
    if canonical_ipv4(utf8, size, value):
        return 0
    if strlen(utf8) != <size_t>size or not inet_aton(utf8, &v4):
        raise OSError("illegal IP address string passed to inet_aton")
    value[0] = ntohl(v4.s_addr)
    return 0


cdef int parse_ipv6(str text, uint64_t* high, uint64_t* low) except -1:
    """IPv6 text as its two 64-bit halves, read as socket.inet_pton reads it (OSError if not)."""
    cdef Py_ssize_t size
    cdef const char* utf8 = text_bytes(text, &size)
    cdef unsigned char v6[16]
    cdef int i
    if strlen(utf8) != <size_t>size:
        raise ValueError("embedded null character")
    if inet_pton(AF_INET6, utf8, v6) != 1:
        raise OSError("illegal IP address string passed to inet_pton")
    high[0] = low[0] = 0
    for i in range(8):
        high[0] = high[0] << 8 | v6[i]
        low[0] = low[0] << 8 | v6[8 + i]
    return 0


# --------------------------------------------------------------------------------------------
# Reading an EndpointSlice's endpoints (fastpath.model)
#
# A big cluster's slices hold a million endpoints, nearly all written by the EndpointSlice
# controller: canonical IPv4 addresses, conditions of true/false/null, no hints. The model reads
# those here, each made as an Endpoint with its slots filled (a frozen dataclass's __init__ sets
# each field through object.__setattr__: most of the time in Python); anything else is left to
# the model's field-by-field reader, which also words the errors.

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object text)
    object PyList_AsTuple(object items)

cdef Fields NEW_ENDPOINT = every_field(Endpoint, ("addresses", "conditions", "node_name", "zone",
                                                  "hints_for_zones", "hints_for_nodes", "target_ref"))
cdef Fields NEW_REFERENCE = every_field(ObjectReference, ("kind", "namespace", "name"))

# The model's shared conditions (model._CONDITIONS), by ready * 9 + serving * 3 + terminating,
# each of them 0 for null, 1 for true, 2 for false. They hold nothing but booleans: the cyclic
# collector need not know them, nor (see Maker) the endpoints read here, which hold
# nothing else but strings and tuples of strings. A million of them made while a load pauses
# the collector were otherwise all traversed by its first pass after.
cdef tuple SHARED_CONDITIONS = tuple(SHARED_CONDITIONS_BY_VALUES[ready, serving, terminating]
                                     for ready in (None, True, False) for serving in (None, True, False)
                                     for terminating in (None, True, False))
for conditions in SHARED_CONDITIONS:
    gc_untrack(conditions)


cdef inline int condition_value(object value) noexcept:
    """0 for null, 1 for true, 2 for false (exactly: 1 is no condition), -1 for anything else."""
    if value is None:
        return 0
    if value is True:
        return 1
    if value is False:
        return 2
    return -1


cdef inline bint string_or_null(object value) noexcept:
    return value is None or type(value) is str


def plain_ipv4_endpoint(raw):
    """The Endpoint an IPv4 slice's raw endpoint reads as when it is written as the EndpointSlice
    controller writes it: a dict, canonical dotted-quad addresses, no hints, conditions of
    true/false/null, strings or null elsewhere; None for anything else (the model's full reader
    then reads it, and reports what is wrong). Equal to what the full reader makes of it."""
    return plain_endpoint(raw)


def plain_ipv4_endpoints(raws):
    """plain_ipv4_endpoint of each of an IPv4 slice's raw endpoints, in one call rather than a
    Python call each (ClusterState.from_objects of 20,000 Services: 0.90 of the time, paired):
    (the list, None where an endpoint is not plain; how many are None)."""
    cdef list endpoints = []
    cdef Py_ssize_t missing = 0
    for raw in raws:
        endpoint = plain_endpoint(raw)
        missing += endpoint is None
        endpoints.append(endpoint)
    return endpoints, missing


cdef object plain_endpoint(raw):
    cdef Py_ssize_t size
    cdef const char* text
    cdef uint32_t v4
    cdef int ready, serving, terminating
    if type(raw) is not dict:
        return None
    addresses = (<dict>raw).get("addresses")
    if type(addresses) is not list or not addresses or (<dict>raw).get("hints") is not None:
        return None
    for address in <list>addresses:
        if type(address) is not str or not PyUnicode_IS_ASCII(address):
            return None
        text = PyUnicode_AsUTF8AndSize(address, &size)
        if not canonical_ipv4(text, size, &v4):
            return None
    conditions = (<dict>raw).get("conditions")
    if conditions is None:
        ready = serving = terminating = 0
    elif type(conditions) is dict:
        ready = condition_value((<dict>conditions).get("ready"))
        serving = condition_value((<dict>conditions).get("serving"))
        terminating = condition_value((<dict>conditions).get("terminating"))
        if ready < 0 or serving < 0 or terminating < 0:
            return None
    else:
        return None
    ref = (<dict>raw).get("targetRef")
    target_ref = None
    if ref is not None:
        if type(ref) is not dict:
            return None
        kind, namespace, name = (<dict>ref).get("kind"), (<dict>ref).get("namespace"), (<dict>ref).get("name")
        if not (string_or_null(kind) and string_or_null(namespace) and string_or_null(name)):
            return None
        target_ref = NEW_REFERENCE.new()
        NEW_REFERENCE.fill(target_ref, 0, kind)
        NEW_REFERENCE.fill(target_ref, 1, namespace)
        NEW_REFERENCE.fill(target_ref, 2, name)
        gc_untrack(target_ref)
    node_name, zone = (<dict>raw).get("nodeName"), (<dict>raw).get("zone")
    if not (string_or_null(node_name) and string_or_null(zone)):
        return None
    address_tuple = PyList_AsTuple(addresses)
    gc_untrack(address_tuple)
    endpoint = NEW_ENDPOINT.new()
    NEW_ENDPOINT.fill(endpoint, 0, address_tuple)
    NEW_ENDPOINT.fill(endpoint, 1, SHARED_CONDITIONS[ready * 9 + serving * 3 + terminating])
    NEW_ENDPOINT.fill(endpoint, 2, node_name or None)
    NEW_ENDPOINT.fill(endpoint, 3, zone or None)
    NEW_ENDPOINT.fill(endpoint, 4, ())
    NEW_ENDPOINT.fill(endpoint, 5, ())
    NEW_ENDPOINT.fill(endpoint, 6, target_ref)
    gc_untrack(endpoint)
    return endpoint


# --------------------------------------------------------------------------------------------
# Reading an EndpointSlice's shell and a Service (fastpath.model)
#
# A big cluster has a hundred thousand of each, nearly all written alike: IPv4 slices as the
# EndpointSlice controller writes them; ClusterIP services with one IPv4 cluster IP, ports of
# plain numbers and names, no affinity, no external or load-balancer address. The model reads
# those here, each made with its slots filled (SLICE, SERVICE); anything else (another type or
# family, a node port, affinity, ranges, anything odd or wrong) is left to the model's
# field-by-field reader, which also words the errors.

cdef inline bint unset(object value) noexcept:
    """None or "": a field the model reads as its default."""
    return value is None or type(value) is str and PyUnicode_GET_LENGTH(value) == 0


cdef inline bint empty_list(object value) noexcept:
    """None or []: a list field the model reads as empty."""
    return value is None or type(value) is list and PyList_GET_SIZE(value) == 0


cdef inline object plain_choice(object value, tuple choices, str default):
    """The model's reading of a choice (its default when unset) when `value` is one of `choices`
    as a plain str; None otherwise."""
    if unset(value):
        return default
    if type(value) is str and value in choices:
        return value
    return None


cdef bint port_name_text(str text) noexcept:
    """An ASCII target port name with a letter, as the model takes it (a name holds a letter)."""
    cdef Py_ssize_t i
    cdef Py_UCS4 c
    if not PyUnicode_IS_ASCII(text):
        return False
    for i in range(PyUnicode_GET_LENGTH(text)):
        c = text[i]
        if u'a' <= c <= u'z' or u'A' <= c <= u'Z':
            return True
    return False


def plain_ipv4_slice(obj, namespace, name):
    """The EndpointSlice a raw one reads as when it is written as the EndpointSlice controller
    writes it: addressType IPv4, metadata and its labels dicts (the service-name label a string
    or unset), ports of plain names, protocols and numbers (1-65535 or unset; no name and protocol
    twice), and only plain endpoints (plain_ipv4_endpoint). None for anything else (the model's
    full reader then reads it, and reports what is wrong). Equal to what the full reader makes of
    it."""
    if type(obj) is not dict or type(namespace) is not str or type(name) is not str:
        return None
    address_type, metadata = (<dict>obj).get("addressType"), (<dict>obj).get("metadata")
    if type(address_type) is not str or address_type != "IPv4" or type(metadata) is not dict:
        return None
    labels = (<dict>metadata).get("labels")
    service_name = None
    if labels is not None:
        if type(labels) is not dict:
            return None
        service_name = (<dict>labels).get(LABEL_SERVICE_NAME)
        if service_name is not None and type(service_name) is not str:
            return None
    raw_ports, raw_endpoints = (<dict>obj).get("ports"), (<dict>obj).get("endpoints")
    if raw_ports is None:
        raw_ports = []
    if raw_endpoints is None:
        raw_endpoints = []
    if type(raw_ports) is not list or type(raw_endpoints) is not list:
        return None
    ports = []
    for raw in <list>raw_ports:
        if type(raw) is not dict:
            return None
        port_name, number = (<dict>raw).get("name"), (<dict>raw).get("port")
        if unset(port_name):
            port_name = ""
        elif type(port_name) is not str:
            return None
        protocol = plain_choice((<dict>raw).get("protocol"), PROTOCOLS, "TCP")
        if protocol is None or not (number is None or type(number) is int and 1 <= number <= 65535):
            return None
        for other in ports:  # matching by name and protocol must be unambiguous
            if SLICE_PORT.get(other, SP_NAME) == port_name and SLICE_PORT.get(other, SP_PROTOCOL) == protocol:
                return None
        port = SLICE_PORT.new()
        SLICE_PORT.fill(port, SP_NAME, port_name)
        SLICE_PORT.fill(port, SP_PROTOCOL, protocol)
        SLICE_PORT.fill(port, SP_PORT, number)
        gc_untrack(port)  # strings and ints: in no cycle (see Maker)
        ports.append(port)
    endpoints = []
    for raw in <list>raw_endpoints:
        endpoint = plain_endpoint(raw)
        if endpoint is None:
            return None
        endpoints.append(endpoint)
    port_tuple, endpoint_tuple = PyList_AsTuple(ports), PyList_AsTuple(endpoints)
    gc_untrack(port_tuple)
    gc_untrack(endpoint_tuple)
    made = SLICE.new()
    SLICE.fill(made, SL_NAMESPACE, namespace)
    SLICE.fill(made, SL_NAME, name)
    SLICE.fill(made, SL_SERVICE_NAME, service_name)
    SLICE.fill(made, SL_ADDRESS_TYPE, "IPv4")
    SLICE.fill(made, SL_PORTS, port_tuple)
    SLICE.fill(made, SL_ENDPOINTS, endpoint_tuple)
    gc_untrack(made)  # strings and untracked tuples of untracked model objects: in no cycle
    return made


cdef object plain_service_port(raw):
    """A raw service port's ServicePort when it is plain (see plain_service), else None."""
    if type(raw) is not dict:
        return None
    number, target, node_port = (<dict>raw).get("port"), (<dict>raw).get("targetPort"), (<dict>raw).get("nodePort")
    if type(number) is not int or not 1 <= number <= 65535:
        return None
    if target is None or type(target) is int and target == 0:
        target = number  # the API server's default
    elif type(target) is int:
        if not 1 <= target <= 65535:
            return None
    elif type(target) is not str or not port_name_text(target):
        return None
    if node_port is None or type(node_port) is int and node_port == 0:
        node_port = None
    elif type(node_port) is not int or not 1 <= node_port <= 65535:
        return None
    name = (<dict>raw).get("name")
    if unset(name):
        name = ""
    elif type(name) is not str:
        return None
    protocol = plain_choice((<dict>raw).get("protocol"), PROTOCOLS, "TCP")
    if protocol is None:
        return None
    port = SERVICE_PORT.new()
    SERVICE_PORT.fill(port, PT_NAME, name)
    SERVICE_PORT.fill(port, PT_PROTOCOL, protocol)
    SERVICE_PORT.fill(port, PT_PORT, number)
    SERVICE_PORT.fill(port, PT_TARGET_PORT, target)
    SERVICE_PORT.fill(port, PT_NODE_PORT, node_port)
    gc_untrack(port)  # strings and ints: in no cycle (see Maker)
    return port


cdef tuple PLAIN_SERVICE_TYPES = tuple(kind for kind in SERVICE_TYPES if kind != "ExternalName")  # (no cluster IP read)


def plain_service(obj, namespace, name):
    """The Service a raw Service reads as when it is written as most are: spec and status dicts;
    type ClusterIP (or unset), NodePort, or LoadBalancer without ingress yet; spec.clusterIP a
    canonical IPv4 address, spec.clusterIPs unset, empty or that address alone; ports of plain
    numbers (1-65535), target ports of numbers or ASCII names, node ports unset, 0 or plain
    numbers, no name or protocol twice; no session affinity; no external IPs, source ranges or
    load-balancer ingress; a selector of strings; traffic policies and publishNotReadyAddresses
    unset or valid. None for anything else (the model's full reader
    then reads it, and reports what is wrong). Equal to what the full reader makes of it."""
    cdef Py_ssize_t size
    cdef uint32_t v4
    cdef const char* text
    if type(obj) is not dict or type(namespace) is not str or type(name) is not str:
        return None
    spec, status = (<dict>obj).get("spec"), (<dict>obj).get("status")
    if type(spec) is not dict:
        return None
    if status is not None:
        if type(status) is not dict:
            return None
        balancer = (<dict>status).get("loadBalancer")
        if balancer is not None and (type(balancer) is not dict or not empty_list((<dict>balancer).get("ingress"))):
            return None
    service_type = plain_choice((<dict>spec).get("type"), PLAIN_SERVICE_TYPES, "ClusterIP")
    if service_type is None:
        return None
    # One IPv4 cluster IP, written as the API server writes it.
    primary, listed = (<dict>spec).get("clusterIP"), (<dict>spec).get("clusterIPs")
    if type(primary) is not str or not PyUnicode_IS_ASCII(primary):
        return None
    text = text_bytes(primary, &size)
    if not canonical_ipv4(text, size, &v4):
        return None
    if not empty_list(listed) and not (type(listed) is list and PyList_GET_SIZE(listed) == 1
                                       and type((<list>listed)[0]) is str and (<list>listed)[0] == primary):
        return None
    if plain_choice((<dict>spec).get("sessionAffinity"), ("None",), "None") is None:
        return None
    if not empty_list((<dict>spec).get("externalIPs")) or not empty_list((<dict>spec).get("loadBalancerSourceRanges")):
        return None
    external_policy = plain_choice((<dict>spec).get("externalTrafficPolicy"), TRAFFIC_POLICIES, "Cluster")
    internal_policy = plain_choice((<dict>spec).get("internalTrafficPolicy"), TRAFFIC_POLICIES, "Cluster")
    publish = (<dict>spec).get("publishNotReadyAddresses")
    if external_policy is None or internal_policy is None or not (publish is None or type(publish) is bool):
        return None
    raw_ports = (<dict>spec).get("ports")
    if raw_ports is None:
        raw_ports = []
    elif type(raw_ports) is not list:
        return None
    ports = []
    for raw in <list>raw_ports:
        port = plain_service_port(raw)
        if port is None:
            return None
        for other in ports:  # a service has a handful of ports: no name or number twice
            if SERVICE_PORT.get(other, PT_PROTOCOL) == SERVICE_PORT.get(port, PT_PROTOCOL) and (
                    SERVICE_PORT.get(other, PT_NAME) == SERVICE_PORT.get(port, PT_NAME)
                    or SERVICE_PORT.get(other, PT_PORT) == SERVICE_PORT.get(port, PT_PORT)):
                return None
        ports.append(port)
    raw_selector = (<dict>spec).get("selector")
    selector = None
    if raw_selector is not None:
        if type(raw_selector) is not dict:
            return None
        pairs = []
        for key, value in (<dict>raw_selector).items():
            if type(key) is not str or type(value) is not str:
                return None
            pairs.append((key, value))
        if pairs:
            pairs.sort()
            for pair in pairs:
                gc_untrack(pair)
            selector = PyList_AsTuple(pairs)
            gc_untrack(selector)
    cluster_ips = (primary,)
    port_tuple = PyList_AsTuple(ports)
    gc_untrack(cluster_ips)
    gc_untrack(port_tuple)
    service = SERVICE.new()
    SERVICE.fill(service, SV_NAMESPACE, namespace)
    SERVICE.fill(service, SV_NAME, name)
    SERVICE.fill(service, SV_TYPE, service_type)
    SERVICE.fill(service, SV_CLUSTER_IPS, cluster_ips)
    SERVICE.fill(service, SV_HEADLESS, False)
    SERVICE.fill(service, SV_PORTS, port_tuple)
    SERVICE.fill(service, SV_SELECTOR, selector)
    SERVICE.fill(service, SV_AFFINITY, "None")
    SERVICE.fill(service, SV_AFFINITY_TIMEOUT, None)
    SERVICE.fill(service, SV_EXTERNAL_IPS, ())
    SERVICE.fill(service, SV_EXTERNAL_POLICY, external_policy)
    SERVICE.fill(service, SV_INTERNAL_POLICY, internal_policy)
    SERVICE.fill(service, SV_INGRESS, ())
    SERVICE.fill(service, SV_SOURCE_RANGES, ())
    SERVICE.fill(service, SV_EXTERNAL_NAME, None)
    SERVICE.fill(service, SV_PUBLISH_NOT_READY, publish is True)
    # Strings, ints, booleans, None and untracked tuples of them or of ServicePorts: in no cycle.
    gc_untrack(service)
    return service


@cython.final  # its cdef methods called directly, not through a vtable
cdef class PlainCollector:
    """fastpath.model's collector (_Collector), for the objects most of a big dump is: a Service
    or EndpointSlice of the kind's current apiVersion, its metadata a dict holding a name and a
    namespace (or none: "default") that are strings, which plain_service or plain_ipv4_slice
    reads. collect(obj, source) checks and reads such an object in one call, records it in
    `first_seen` ((kind, namespace, name) -> source) and appends it to `objects[kind]`, as the
    collector's own add() would. For anything else (another kind or version, a List, other
    metadata, a name seen before, a field the readers leave to the model) it returns False
    having changed nothing, and the collector reads the object in Python, wording its errors.
    (At 100,000 Services that Python was a third of reading their decoded dicts.)"""
    cdef dict first_seen
    cdef list services, slices
    cdef str service_version, slice_version

    def __cinit__(self, dict first_seen, dict objects, str service_version, str slice_version):
        self.first_seen = first_seen
        self.services, self.slices = objects["Service"], objects["EndpointSlice"]
        self.service_version, self.slice_version = service_version, slice_version

    def collect(self, obj, source):
        cdef PyObject* value
        cdef bint service
        if type(obj) is not dict:
            return False
        value = PyDict_GetItem(obj, "kind")
        if value == NULL or type(<object>value) is not str:
            return False
        kind = <object>value
        if kind == "Service":
            service, version = True, self.service_version
        elif kind == "EndpointSlice":
            service, version = False, self.slice_version
        else:
            return False
        value = PyDict_GetItem(obj, "apiVersion")
        if value == NULL or type(<object>value) is not str or <object>value != version:
            return False
        value = PyDict_GetItem(obj, "metadata")
        if value == NULL or type(<object>value) is not dict:
            return False
        metadata = <object>value
        value = PyDict_GetItem(metadata, "name")
        if value == NULL or type(<object>value) is not str or PyUnicode_GET_LENGTH(<object>value) == 0:
            return False
        name = <object>value
        value = PyDict_GetItem(metadata, "namespace")
        if value == NULL or <object>value is None:
            namespace = DEFAULT_NAMESPACE
        elif type(<object>value) is str:
            namespace = <object>value if PyUnicode_GET_LENGTH(<object>value) else DEFAULT_NAMESPACE
        else:
            return False
        key = (kind, namespace, name)
        if key in self.first_seen:
            return False  # a duplicate: the collector says so
        made = plain_service(obj, namespace, name) if service else plain_ipv4_slice(obj, namespace, name)
        if made is None:
            return False
        self.first_seen[key] = source
        (self.services if service else self.slices).append(made)
        return True


# --------------------------------------------------------------------------------------------
# Endpoints as records
#
# An endpoint of a service port is read once, into a record: its backend key as three 64-bit
# words (ip << 16 | port, as fastpath.compiler._backend_key; up to 145 bits), its name, and its
# conditions as flag bits. The full compile keeps only records (Gatherer: no Python object per
# endpoint but its name); the incremental path (fastpath.endpoints) gets candidate tuples made
# from the same records. Both choose a port's sets through the same code (Gatherer.choose).

cdef enum:
    # An endpoint's flags.
    F_READY = 1
    F_SERVING = 2
    F_TERMINATING = 4
    F_LOCAL = 8

cdef enum:
    # Which of a service port's sets an endpoint is in.
    IN_CLUSTER = 1
    IN_LOCAL = 2
    IN_SERVING = 4

cdef struct Keyed:
    uint64_t words[3]  # the backend key, most significant word first
    Py_ssize_t position  # where the endpoint was gathered (numbering's ties)
    PyObject* name  # a reference owned by the record's holder


cdef inline bint same_key(const Keyed* x, const Keyed* y) noexcept nogil:
    return x.words[0] == y.words[0] and x.words[1] == y.words[1] and x.words[2] == y.words[2]


cdef object WORD_MASK = (1 << 64) - 1


cdef object key_object(const Keyed* keyed):
    """The key as fastpath.compiler._backend_key makes it."""
    if keyed.words[0] == 0 and keyed.words[1] == 0:  # IPv4
        return PyLong_FromUnsignedLongLong(keyed.words[2])
    return (PyLong_FromUnsignedLongLong(keyed.words[0]) << 128
            | PyLong_FromUnsignedLongLong(keyed.words[1]) << 64
            | PyLong_FromUnsignedLongLong(keyed.words[2]))


cdef int key_words(object key, Keyed* keyed) except -1:
    """A key int (fastpath.compiler._backend_key) as the record's words."""
    if key <= WORD_MASK:  # IPv4
        keyed.words[0] = keyed.words[1] = 0
        keyed.words[2] = PyLong_AsUnsignedLongLong(key)
    else:
        keyed.words[0] = PyLong_AsUnsignedLongLong(key >> 128)
        keyed.words[1] = PyLong_AsUnsignedLongLong((key >> 64) & WORD_MASK)
        keyed.words[2] = PyLong_AsUnsignedLongLong(key & WORD_MASK)
    return 0


cdef object key_ip(const Keyed* keyed):
    """The backend's ip: its key without the port."""
    if keyed.words[0] == 0 and keyed.words[1] == 0:  # IPv4: no big int on the way
        return PyLong_FromUnsignedLongLong(keyed.words[2] >> PORT_BITS)
    return key_object(keyed) >> PORT_BITS


cdef inline bint prefer(uint8_t mine, uint8_t theirs) noexcept:
    """Is an endpoint with flags `mine` preferred to a duplicate with flags `theirs` (the same
    (ip, port) twice in a port's slices, as while the controller moves a pod)? Not terminating,
    as in kube-proxy; then ready, serving, local, so the result never depends on which slice was
    read first."""
    cdef uint8_t differ = mine ^ theirs
    if differ & F_TERMINATING:
        return not (mine & F_TERMINATING)
    if differ & F_READY:
        return mine & F_READY
    if differ & F_SERVING:
        return mine & F_SERVING
    return differ & F_LOCAL and mine & F_LOCAL


cdef uint8_t candidate_flags(object candidate) except? 0xFF:
    return ((F_READY if item(candidate, READY) else 0) | (F_SERVING if item(candidate, SERVING) else 0)
            | (F_TERMINATING if item(candidate, TERMINATING) else 0) | (F_LOCAL if item(candidate, LOCAL) else 0))


cpdef checked_port(number):
    """A backend port; the model's parser allows only 1..65535, a state built by hand might not
    (ClusterError)."""
    if not 0 <= number <= 0xFFFF:
        raise ClusterError(f"endpoint port {number} is outside 0..65535")
    return number




cdef inline PyObject* listed_item(object items, Py_ssize_t index) noexcept:
    """An item of a list or a tuple (borrowed), unchecked: what the warm functions walk."""
    return PyList_GET_ITEM(items, index) if type(items) is list else PyTuple_GET_ITEM(items, index)


cdef inline Py_ssize_t listed_size(object items) noexcept:
    """The items of a list or a tuple; 0 for anything else (the warm functions fetch nothing)."""
    if type(items) is list:
        return PyList_GET_SIZE(items)
    if type(items) is tuple:
        return PyTuple_GET_SIZE(items)
    return 0


cdef inline void warm_slice(object slices, Py_ssize_t index, int stage) noexcept:
    """Fetch slices[index] (a list or a tuple; past its end, nothing), stage 0, or the strings
    slices_by_service reads of it, stage 1."""
    cdef PyObject* endpoint_slice
    if index >= listed_size(slices):
        return
    endpoint_slice = listed_item(slices, index)
    if stage == 0:
        prefetch(endpoint_slice)
    elif type(<object>endpoint_slice) is SLICE.cls:
        prefetch(slot_at(<object>endpoint_slice, SLICE.offsets[SL_NAMESPACE]))
        prefetch(slot_at(<object>endpoint_slice, SLICE.offsets[SL_SERVICE_NAME]))


def slices_by_service(slices, skipped, set other):
    """compiler._slices_by_service (its rules are documented there): the IPv4 and IPv6 slices
    grouped by (namespace, service name, family), each group in slice name order; `other` gets
    the (namespace, service name) of every other slice (FQDN) that names one."""
    cdef dict grouped = {}
    cdef list group
    cdef Py_ssize_t index = 0
    for endpoint_slice in slices:
        # The slice two ahead, and the strings of the one ahead (their hashes are read).
        warm_slice(slices, index + 2, 0)
        warm_slice(slices, index + 1, 1)
        index += 1
        namespace, service_name = SLICE.get(endpoint_slice, SL_NAMESPACE), SLICE.get(endpoint_slice, SL_SERVICE_NAME)
        if service_name is None:
            skipped["EndpointSlice without a service-name label"] += 1
            continue
        address_type = SLICE.get(endpoint_slice, SL_ADDRESS_TYPE)
        family = SLICE_FAMILIES.get(address_type)
        if family is None:
            skipped[f"{address_type} EndpointSlice"] += 1
            other.add((namespace, service_name))
            continue
        key = (namespace, service_name, family)
        found = PyDict_GetItem(grouped, key)
        if found == NULL:
            grouped[key] = [endpoint_slice]
        else:
            (<list>found).append(endpoint_slice)
    for group in grouped.values():
        if len(group) > 1:  # the order that decides duplicates must not be the file order
            group.sort(key=slice_name)
    return grouped


cdef object slice_name(endpoint_slice):
    return SLICE.get(endpoint_slice, SL_NAME)


cdef dict PORT_TEXTS = {}  # port number -> ":8080 (" (at most 65,536 of them)
cdef str SLASH = "/", CLOSE = ")"


@cython.final  # its cdef methods called directly, not through a vtable
cdef class SliceReader:
    """Reads the endpoints of one EndpointSlice for one service port into records."""
    cdef object number  # the slice port's number for the service port; None: no such port
    cdef tuple endpoints
    cdef str namespace, name
    cdef int family
    cdef uint32_t port
    cdef object node
    cdef str port_text

    def __cinit__(self, endpoint_slice, port_name, protocol, int family, node):
        self.family, self.node = family, node
        self.number = None
        for slice_port in SLICE.get(endpoint_slice, SL_PORTS):
            if (SLICE_PORT.get(slice_port, SP_NAME) == port_name
                    and SLICE_PORT.get(slice_port, SP_PROTOCOL) == protocol):
                self.number = SLICE_PORT.get(slice_port, SP_PORT)
                break
        if self.number is None:
            return
        self.port = checked_port(self.number)
        self.endpoints = tuple(SLICE.get(endpoint_slice, SL_ENDPOINTS))
        self.namespace, self.name = SLICE.get(endpoint_slice, SL_NAMESPACE), SLICE.get(endpoint_slice, SL_NAME)
        # Backend names: "10.244.1.5:8080 (namespace/pod)"; a cluster has a handful of port
        # numbers, each one's text made once.
        self.port_text = <str>PORT_TEXTS.get(self.port)
        if self.port_text is None:
            self.port_text = PORT_TEXTS[self.port] = f":{self.port} ("

    cdef int read(self, endpoint, Keyed* keyed, uint8_t* flags, PyObject** hints) except -1:
        """The endpoint's key, name (a new reference in keyed.name), flags and hints (new
        references: zone hints, node hints); 1 (and nothing set) for an endpoint that is no
        candidate: an IPv4-mapped address in an IPv6 slice (the API server refuses them)."""
        cdef str address = ENDPOINT.get(endpoint, EP_ADDRESSES)[0]  # only the first address counts
        cdef Py_ssize_t size
        cdef const char* utf8 = text_bytes(address, &size)
        cdef uint32_t v4
        cdef uint64_t high, low
        cdef PyObject* name
        cdef PyObject* parts[6]
        if self.family == 4:
            parse_ipv4_bytes(utf8, size, &v4)
            keyed.words[0] = keyed.words[1] = 0
            keyed.words[2] = (<uint64_t>v4) << PORT_BITS | self.port
        elif memchr(utf8, b":", size) == NULL:
            parse_ipv4(address, &v4)  # IPv4 text: as map_address, an IPv4 address
            return 1
        else:
            parse_ipv6(address, &high, &low)
            if high == 0 and low >> 32 == V4_MAPPED:
                return 1
            keyed.words[0] = 1 << PORT_BITS | high >> 48  # bit 144: IPV6 << 16
            keyed.words[1] = high << 16 | low >> 48
            keyed.words[2] = (low & 0xFFFFFFFFFFFF) << PORT_BITS | self.port
            address = f"[{address}]"
        ref = ENDPOINT.get(endpoint, EP_TARGET_REF)
        ref_name = REFERENCE.get(ref, REF_NAME) if ref is not None else None
        if nonempty(ref_name):
            namespace = REFERENCE.get(ref, REF_NAMESPACE)
            if not nonempty(namespace):
                namespace = self.namespace
        else:  # no pod named: the slice
            namespace, ref_name = self.namespace, self.name
        conditions = ENDPOINT.get(endpoint, EP_CONDITIONS)
        flags[0] = ((F_READY if true_or_null(CONDITIONS.get(conditions, IS_READY)) else 0)
                    | (F_SERVING if true_or_null(CONDITIONS.get(conditions, IS_SERVING)) else 0)
                    | (F_TERMINATING if truth(CONDITIONS.get(conditions, IS_TERMINATING)) else 0)
                    | (F_LOCAL if self.node is not None and same_text(ENDPOINT.get(endpoint, EP_NODE_NAME), self.node)
                       else 0))
        zone_hints, node_hints = ENDPOINT.get(endpoint, EP_ZONE_HINTS), ENDPOINT.get(endpoint, EP_NODE_HINTS)
        # The name last: nothing after it can raise and leave its reference behind.
        parts[0], parts[1], parts[2] = <PyObject*>address, <PyObject*>self.port_text, <PyObject*>namespace
        parts[3], parts[4], parts[5] = <PyObject*>SLASH, <PyObject*>ref_name, <PyObject*>CLOSE
        name = join_ascii(parts, 6)
        if name == NULL:
            text = f"{address}{self.port_text}{namespace}/{ref_name})"
            Py_INCREF(text)
            name = <PyObject*>text
        Py_INCREF(zone_hints)
        Py_INCREF(node_hints)
        keyed.name, hints[0], hints[1] = name, <PyObject*>zone_hints, <PyObject*>node_hints
        return 0


def candidates(port, int family, slices, node, skipped, dict memo, candidate_type):
    """compiler._candidates: the service port's endpoints from its slices of the family, each a
    `candidate_type` (compiler._Candidate), duplicates included (port_sets resolves them); see
    there for the rules and `memo`. The endpoints are read as the full compile reads them
    (SliceReader), then made tuples."""
    cdef list found = []
    cdef dict known = None
    cdef dict contexts
    cdef tuple hit
    cdef SliceReader reader
    cdef Keyed keyed
    cdef uint8_t flags
    cdef PyObject* hints[2]
    for endpoint_slice in slices:
        reader = SliceReader(endpoint_slice, port.name, port.protocol, family, node)
        if reader.number is None:
            continue
        if memo is not None:
            contexts = memo.setdefault((reader.namespace, reader.name), {})
            context = (reader.number, family, node)
            known = contexts.get(context)
            # The candidates of the slice's recent versions, up to twice as many as it has
            # endpoints (then it starts afresh).
            if known is None or len(known) > 2 * len(reader.endpoints) + 8:
                known = contexts[context] = {}
        for endpoint in reader.endpoints:
            hit = known.get(id(endpoint)) if known is not None else None
            if hit is not None:  # (the memo holds that endpoint: no other object has its id)
                candidate = hit[1]
            elif reader.read(endpoint, &keyed, &flags, hints):
                candidate = None
            else:
                candidate = tuple_alloc(candidate_type, 8)
                fill(candidate, KEY, key_object(&keyed))
                # The references read() made go to the tuple.
                PyTuple_SET_ITEM(candidate, NAME, <object>keyed.name)
                PyTuple_SET_ITEM(candidate, ZONE_HINTS, <object>hints[0])
                PyTuple_SET_ITEM(candidate, NODE_HINTS, <object>hints[1])
                fill(candidate, READY, bool(flags & F_READY))
                fill(candidate, SERVING, bool(flags & F_SERVING))
                fill(candidate, TERMINATING, bool(flags & F_TERMINATING))
                fill(candidate, LOCAL, bool(flags & F_LOCAL))
            if known is not None and hit is None:
                known[id(endpoint)] = (endpoint, candidate)
            if candidate is None:
                skipped[MAPPED_IN_IPV6] += 1
            else:
                found.append(candidate)
    return found


cdef inline object item(object candidate, Py_ssize_t index):
    return <object>PyTuple_GET_ITEM(candidate, index)


cdef inline void fill(object item, Py_ssize_t index, object value):
    Py_INCREF(value)
    PyTuple_SET_ITEM(item, index, value)


cdef inline void warm_endpoint(PyObject* endpoint, int level) noexcept:
    """Fetch one level of what reading an endpoint touches: 0 the Endpoint, 1 the objects its
    slots hold, 2 the strings those hold (each level read from the one before, so fetched after
    it has arrived)."""
    cdef PyObject* value
    if level == 0:
        prefetch(endpoint)
        return
    if type(<object>endpoint) is not ENDPOINT.cls:
        return
    if level == 1:
        prefetch(slot_at(<object>endpoint, ENDPOINT.offsets[EP_ADDRESSES]))
        prefetch(slot_at(<object>endpoint, ENDPOINT.offsets[EP_CONDITIONS]))
        prefetch(slot_at(<object>endpoint, ENDPOINT.offsets[EP_TARGET_REF]))
        prefetch(slot_at(<object>endpoint, ENDPOINT.offsets[EP_NODE_NAME]))
        return
    value = slot_at(<object>endpoint, ENDPOINT.offsets[EP_ADDRESSES])
    if value != NULL and type(<object>value) is tuple and PyTuple_GET_SIZE(<object>value):
        prefetch(PyTuple_GET_ITEM(<object>value, 0))
    value = slot_at(<object>endpoint, ENDPOINT.offsets[EP_TARGET_REF])
    if value != NULL and type(<object>value) is REFERENCE.cls:
        prefetch(slot_at(<object>value, REFERENCE.offsets[REF_NAME]))
        prefetch(slot_at(<object>value, REFERENCE.offsets[REF_NAMESPACE]))


cdef void warm(tuple endpoints, Py_ssize_t start, Py_ssize_t end) noexcept:
    """Fetch what reading endpoints start..end will touch, level by level (warm_endpoint). A
    model is a graph of small objects spread over memory, six of them per endpoint; fetched one
    level at a time for a handful of endpoints, their misses overlap instead of coming one after
    another."""
    cdef Py_ssize_t i
    cdef int level
    for level in range(3):
        for i in range(start, end):
            warm_endpoint(PyTuple_GET_ITEM(endpoints, i), level)


cdef inline void warm_service(object service) noexcept:
    """Fetch the strings add_ports reads of a port's Service to look its slices up (their hashes)."""
    if type(service) is SERVICE.cls:
        prefetch(slot_at(service, SERVICE.offsets[SV_NAMESPACE]))
        prefetch(slot_at(service, SERVICE.offsets[SV_NAME]))


cdef void warm_port(object port_slices, int stage) noexcept:
    """Fetch one level of what reading a port's slices will touch: stage 0 the slices, 1 their
    endpoint and port tuples, 2 to 4 the levels of their endpoints (warm_endpoint) and ports.
    add_ports runs stage s for the port s + 1 ahead, so each level is fetched a port's reading
    after the level it is read from, and a port's objects spread over memory arrive together
    instead of one miss after another. Only lists and tuples of the model's own classes are
    warmed; anything else is read as it comes."""
    cdef Py_ssize_t i, j
    cdef PyObject* endpoint_slice
    cdef PyObject* items
    cdef PyObject* member
    for i in range(listed_size(port_slices)):
        endpoint_slice = listed_item(port_slices, i)
        if stage == 0:
            prefetch(endpoint_slice)
            continue
        if type(<object>endpoint_slice) is not SLICE.cls:
            continue
        if stage == 1:
            prefetch(slot_at(<object>endpoint_slice, SLICE.offsets[SL_ENDPOINTS]))
            prefetch(slot_at(<object>endpoint_slice, SLICE.offsets[SL_PORTS]))
            continue
        items = slot_at(<object>endpoint_slice, SLICE.offsets[SL_PORTS])
        if items != NULL and type(<object>items) is tuple and stage < 4:
            for j in range(min(PyTuple_GET_SIZE(<object>items), WARM_PORT_MOST)):
                member = PyTuple_GET_ITEM(<object>items, j)
                if stage == 2:
                    prefetch(member)
                elif type(<object>member) is SLICE_PORT.cls:
                    prefetch(slot_at(<object>member, SLICE_PORT.offsets[SP_NAME]))
        items = slot_at(<object>endpoint_slice, SLICE.offsets[SL_ENDPOINTS])
        if items != NULL and type(<object>items) is tuple:
            for j in range(min(PyTuple_GET_SIZE(<object>items), WARM_PORT_MOST)):
                warm_endpoint(PyTuple_GET_ITEM(<object>items, j), stage - 2)


cdef inline bint is_local(object policy) except -1:
    """policy == "Local" (a traffic policy), without a string comparison for "Cluster" or None."""
    if policy is None or type(policy) is str and PyUnicode_GET_LENGTH(policy) != 5:
        return False
    return policy == "Local"


cdef inline size_t key_slot(const Keyed* keyed, size_t mask) noexcept nogil:
    cdef uint64_t h = keyed.words[1] * <uint64_t>0xC2B2AE3D27D4EB4FULL
    h = (h ^ keyed.words[2] ^ keyed.words[0]) * <uint64_t>0x9E3779B97F4A7C15ULL
    return (h >> 32) & mask


@cython.final  # its cdef methods called directly, not through a vtable
cdef class Gatherer:
    """Service ports' endpoints as records, port after port: each port's distinct by key (the
    preferred of duplicates kept, see prefer), marked with the sets they are in (choose); then
    the backends numbered over all of them (number).

    The full compile adds each port's slices (add_slices) or, for a service built from Pods, its
    candidates (add_candidates); port_sets adds one port's candidates and reads its sets back."""
    cdef object node, zone, skipped
    cdef Keyed* keyed  # the records, port after port
    cdef uint8_t* sets  # IN_* bits, by record
    cdef Py_ssize_t count, capacity
    cdef Py_ssize_t* port_ends  # records of port p: port_ends[p - 1] (0 for p = 0) .. port_ends[p]
    cdef uint8_t* serving_is_cluster  # by port: its serving set equals its cluster set
    cdef Py_ssize_t ports, port_capacity
    # The port being added: its first record, and by record from there its flags, hints (owned
    # references: zone, node) and the candidate it came from (borrowed; add_candidates only).
    cdef Py_ssize_t start
    cdef uint8_t* flags
    cdef PyObject** hints
    cdef PyObject** origins
    cdef Py_ssize_t scratch_capacity
    cdef uint32_t* table  # open addressing: a key's record - start + 1; 0 free
    cdef size_t table_mask, table_capacity
    cdef bint numbered  # number() ran: the records' names went to the backends

    def __cinit__(self, node, zone, skipped):
        self.node, self.zone, self.skipped = node, zone, skipped

    def __dealloc__(self):
        cdef Py_ssize_t i
        self.release_hints()
        if not self.numbered:
            for i in range(self.count):
                Py_XDECREF(self.keyed[i].name)
        PyMem_Free(self.keyed)
        PyMem_Free(self.sets)
        PyMem_Free(self.port_ends)
        PyMem_Free(self.serving_is_cluster)
        PyMem_Free(self.flags)
        PyMem_Free(self.hints)
        PyMem_Free(self.origins)
        PyMem_Free(self.table)

    cdef void release_hints(self) noexcept:
        cdef Py_ssize_t i
        for i in range(2 * (self.count - self.start)):
            Py_XDECREF(self.hints[i])
        self.start = self.count

    cdef int begin_port(self, Py_ssize_t most) except -1:
        """Room for a port of at most `most` records."""
        cdef Py_ssize_t capacity
        cdef size_t size = 8
        if self.numbered:
            raise RuntimeError("the gatherer's backends are numbered: it takes no more ports")
        if self.count + most > self.capacity:
            capacity = max(2 * self.capacity, self.count + most, 16)
            self.keyed = <Keyed*>grown(self.keyed, capacity * sizeof(Keyed))
            self.sets = <uint8_t*>grown(self.sets, capacity)
            self.capacity = capacity
        if most > self.scratch_capacity:
            capacity = max(2 * self.scratch_capacity, most)
            self.flags = <uint8_t*>grown(self.flags, capacity)
            self.hints = <PyObject**>grown(self.hints, 2 * capacity * sizeof(PyObject*))
            self.origins = <PyObject**>grown(self.origins, capacity * sizeof(PyObject*))
            self.scratch_capacity = capacity
        while size < <size_t>(2 * most):
            size *= 2
        if size > self.table_capacity:
            self.table = <uint32_t*>grown(self.table, size * sizeof(uint32_t))
            self.table_capacity = size
        memset(self.table, 0, size * sizeof(uint32_t))
        self.table_mask = size - 1
        if self.ports == self.port_capacity:
            capacity = max(2 * self.port_capacity, 16)
            self.port_ends = <Py_ssize_t*>grown(self.port_ends, capacity * sizeof(Py_ssize_t))
            self.serving_is_cluster = <uint8_t*>grown(self.serving_is_cluster, capacity)
            self.port_capacity = capacity
        self.start = self.count
        return 0

    cdef void put(self, Keyed* keyed, uint8_t flags, PyObject** hints, PyObject* origin) noexcept:
        """Add a record of the port being added (its name and hints: references given to the
        gatherer), unless a preferred one of the same key is there (then they are released)."""
        cdef size_t slot = key_slot(keyed, self.table_mask)
        cdef Py_ssize_t at
        cdef PyObject* swap
        while self.table[slot]:
            at = self.table[slot] - 1
            if same_key(&self.keyed[self.start + at], keyed):
                if prefer(flags, self.flags[at]):  # replaces the one there, at its place
                    swap = self.keyed[self.start + at].name
                    self.keyed[self.start + at].name = keyed.name
                    keyed.name = swap
                    self.flags[at], self.origins[at] = flags, origin
                    hints[0], self.hints[2 * at] = self.hints[2 * at], hints[0]
                    hints[1], self.hints[2 * at + 1] = self.hints[2 * at + 1], hints[1]
                Py_XDECREF(keyed.name)
                Py_XDECREF(hints[0])
                Py_XDECREF(hints[1])
                return
            slot = (slot + 1) & self.table_mask
        at = self.count - self.start
        self.keyed[self.count] = keyed[0]
        self.flags[at], self.origins[at] = flags, origin
        self.hints[2 * at], self.hints[2 * at + 1] = hints[0], hints[1]
        self.table[slot] = at + 1
        self.count += 1

    cdef bint hinted(self, Py_ssize_t kind, where) except -1:
        """Do the hints of that kind (0 zones, 1 nodes) narrow the port's cluster set to `where`:
        every ready endpoint has such hints, and one names `where`?"""
        cdef Py_ssize_t i
        cdef bint named = False
        for i in range(self.count - self.start):
            if self.flags[i] & F_READY:
                if not <object>self.hints[2 * i + kind]:
                    return False
                named = named or where in <object>self.hints[2 * i + kind]
        return named

    cdef int choose(self) except -1:
        """Mark the port's records with the sets they are in (compiler.endpoint_sets documents
        the rules). cluster: the ready endpoints, narrowed by node hints, else by zone hints, when
        every ready endpoint carries that kind of hint and one names this node / zone; with none
        ready, the serving terminating ones, unfiltered. local (only with a node): the local ready
        endpoints, else the local serving terminating ones; hints do not apply. serving: every
        serving one."""
        cdef Py_ssize_t i, n = self.count - self.start, ready = 0, local = 0
        cdef Py_ssize_t kind = -1
        cdef uint8_t flags, bits
        cdef uint8_t* sets = self.sets + self.start
        where = None
        for i in range(n):
            ready += self.flags[i] & F_READY
        if ready and self.node is not None and self.hinted(1, self.node):
            kind, where = 1, self.node
        elif ready and self.zone is not None and self.hinted(0, self.zone):
            kind, where = 0, self.zone
        for i in range(n):
            flags = self.flags[i]
            bits = IN_SERVING if flags & F_SERVING else 0
            if ready:
                if flags & F_READY and (kind < 0 or where in <object>self.hints[2 * i + kind]):
                    bits |= IN_CLUSTER
            elif flags & F_SERVING and flags & F_TERMINATING:
                bits |= IN_CLUSTER
            if self.node is not None and flags & F_LOCAL and flags & F_READY:
                bits |= IN_LOCAL
                local += 1
            sets[i] = bits
        if self.node is not None and not local:
            for i in range(n):
                flags = self.flags[i]
                if flags & F_LOCAL and flags & F_SERVING and flags & F_TERMINATING:
                    sets[i] |= IN_LOCAL
        return 0

    cdef tuple end_port(self):
        """Release the port's scratch, drop its records in no set; (records in its cluster set,
        whether those are ready ones, records in its local set)."""
        cdef Py_ssize_t i, kept = self.start, cluster = 0, local = 0
        cdef bint ready = False, same = True
        cdef uint8_t bits
        for i in range(self.start, self.count):
            bits = self.sets[i]
            if not bits:
                Py_XDECREF(self.keyed[i].name)
                continue
            if bits & IN_CLUSTER:
                cluster += 1
                ready = ready or self.flags[i - self.start] & F_READY
            local += (bits & IN_LOCAL) != 0
            same = same and ((bits & IN_CLUSTER) != 0) == ((bits & IN_SERVING) != 0)
            self.keyed[kept] = self.keyed[i]
            self.sets[kept] = bits
            kept += 1
        self.release_hints()
        self.count = self.start = kept
        self.port_ends[self.ports] = kept
        self.serving_is_cluster[self.ports] = same
        self.ports += 1
        return cluster, ready, local

    def add_slices(self, port, int family, slices):
        """Add a service port (compiler._Port.port) of the family from its EndpointSlices of the
        family (in name order: that order decides nothing but is kept). Returns (endpoints in its
        cluster set, whether they are ready ones, endpoints in its local set)."""
        return self.gather_slices(port, family, slices, 0)

    def add_ports(self, list ports, slices, from_pods):
        """Add every service port (compiler._Port tuples, in id order): from its EndpointSlices,
        slices[(namespace, service name, family)], when there are any; else from the candidates
        from_pods(entry) gives (compiler._Candidate tuples), or from none when it gives None.

        Returns (index in `ports`, summary as add_slices returns it) for each port that may need
        a note (compiler._endpoint_notes): one with no endpoint in its cluster set, none ready,
        or none local while its service has a traffic policy Local."""
        cdef list remarkable = []
        cdef Py_ssize_t index, count = len(ports), ahead
        cdef tuple summary
        # Each port's slices looked up first, in a loop of its own: the lookups do not wait on
        # one another there, and the slices of the ports ahead are known to warm_port.
        cdef list found = []
        for index in range(count):
            if index + 2 * LOOKUP_AHEAD < count:
                prefetch(PyTuple_GET_ITEM(ports[index + 2 * LOOKUP_AHEAD], 0))
            if index + LOOKUP_AHEAD < count:
                warm_service(item(ports[index + LOOKUP_AHEAD], 0))
            entry = ports[index]
            service = item(entry, 0)
            found.append(slices.get((SERVICE.get(service, SV_NAMESPACE), SERVICE.get(service, SV_NAME), item(entry, 2))))
        for index in range(count):
            for ahead in range(1, WARM_STAGES + 1):
                if index + ahead < count:
                    warm_port(<object>PyList_GET_ITEM(found, index + ahead), ahead - 1)
            entry = ports[index]
            service, family = item(entry, 0), item(entry, 2)
            port_slices = <object>PyList_GET_ITEM(found, index)
            candidates = from_pods(entry) if port_slices is None else None
            if candidates is None:
                summary = self.gather_slices(item(entry, 1), family, port_slices or (), WARM_PORT_MOST)
            else:
                self.add_tuples(candidates)
                summary = self.end_port()
            cluster, ready, local = summary
            if not cluster or not ready or not local and (is_local(SERVICE.get(service, SV_INTERNAL_POLICY))
                                                          or is_local(SERVICE.get(service, SV_EXTERNAL_POLICY))):
                remarkable.append((index, summary))
        return remarkable

    cdef tuple gather_slices(self, port, int family, slices, Py_ssize_t warmed):
        """add_slices; `warmed`: endpoints at the start of each slice warm_port fetched."""
        cdef list readers = []
        cdef SliceReader reader
        cdef Py_ssize_t most = 0, i
        cdef tuple endpoints
        cdef Keyed keyed
        cdef uint8_t flags
        cdef PyObject* hints[2]
        port_name, protocol = port.name, port.protocol
        for endpoint_slice in slices:
            reader = SliceReader(endpoint_slice, port_name, protocol, family, self.node)
            if reader.number is not None:
                readers.append(reader)
                most += len(reader.endpoints)
        self.begin_port(most)
        for reader in readers:
            endpoints = reader.endpoints
            for i in range(len(endpoints)):
                if i >= warmed and i % WARM_AHEAD == 0:
                    warm(endpoints, i, min(i + WARM_AHEAD, len(endpoints)))
                if reader.read(endpoints[i], &keyed, &flags, hints):
                    self.skipped[MAPPED_IN_IPV6] += 1
                else:
                    self.put(&keyed, flags, hints, NULL)
        self.choose()
        return self.end_port()

    cdef int add_tuples(self, list candidates) except -1:
        cdef Keyed keyed
        cdef PyObject* hints[2]
        self.begin_port(len(candidates))
        for candidate in candidates:
            key_words(item(candidate, KEY), &keyed)
            keyed.name = PyTuple_GET_ITEM(candidate, NAME)
            hints[0], hints[1] = PyTuple_GET_ITEM(candidate, ZONE_HINTS), PyTuple_GET_ITEM(candidate, NODE_HINTS)
            Py_INCREF(<object>keyed.name)
            Py_INCREF(<object>hints[0])
            Py_INCREF(<object>hints[1])
            self.put(&keyed, candidate_flags(candidate), hints, <PyObject*>candidate)
        self.choose()
        return 0

    def add_candidates(self, list candidates):
        """Add a service port from its candidates (compiler._Candidate tuples, as from
        compiler._pod_candidates); returns what add_slices returns."""
        self.add_tuples(candidates)
        return self.end_port()

    def number(self, backend_type):
        """One backend per distinct (ip, port) over every set of every port, ids in key order
        ((ip, port) order, IPv4 first); an (ip, port) in several service ports, or named
        differently by two slices, is one backend named by the smallest name.

        Returns (backends, sets): the `backend_type` objects, and per port, in the order added,
        its (cluster, local, serving) backend ids, each a sorted tuple; serving is the cluster
        tuple itself when the two sets are equal. Once only: the records' names go to the
        backends."""
        cdef Py_ssize_t count = self.count, i = 0, first, p, start, end, ahead
        cdef uint32_t number = 0
        cdef PyObject* name = NULL
        cdef PyObject* other
        cdef uint32_t* ids = <uint32_t*>PyMem_Malloc(max(count, 1) * sizeof(uint32_t))  # by record
        # The records sorted in place (the gatherer needs their gathering order no more: the
        # ports' sets are read by position, from `sets` and `ids`), not a 40 MB copy of them.
        cdef Keyed* ordered = self.keyed
        cdef uint32_t* scratch = NULL  # a port's ids, for sorted_ids
        cdef Py_ssize_t most = 0
        cdef list backends = []
        cdef list numbers = []  # the id ints, shared by the backends and the services' tuples
        cdef list port_sets = []
        cdef Fields slots = Fields(backend_type, ("id", "ip", "port", "name"))
        cdef list port_numbers = [None] * 0x10000  # one int object per port number
        if self.numbered:
            raise RuntimeError("the gatherer's backends are already numbered")
        try:
            for p in range(self.ports):
                most = max(most, self.port_ends[p] - (self.port_ends[p - 1] if p else 0))
            scratch = <uint32_t*>PyMem_Malloc(max(most, 1) * sizeof(uint32_t))
            if ids == NULL or scratch == NULL:
                raise MemoryError()
            for i in range(count):
                ordered[i].position = i
            sort_by_key(ordered, count)
            # The records' name references go to the backends (or are released) as the walk
            # passes them: from here on the gatherer owns none. The walk is in key order, the
            # names lie in gathering order, so a name touched here is a cache miss: it is only
            # handed over, never read, but for a key gathered twice.
            self.numbered = True
            i = 0
            name = NULL  # the name of the backend being made, until it has it
            while i < count:
                # The records of one (ip, port): one backend, named by the smallest name.
                first = i
                name = ordered[i].name
                number += 1
                ids[ordered[i].position] = number
                i += 1
                while i < count and same_key(&ordered[i], &ordered[first]):
                    other = ordered[i].name
                    if <object>other < <object>name:
                        name, other = other, name
                    ids[ordered[i].position] = number
                    i += 1
                    Py_XDECREF(other)  # the name not kept
                backend = slots.new()
                numbers.append(PyLong_FromSsize_t(number))
                slots.fill(backend, 0, numbers[number - 1])
                slots.fill(backend, 1, key_ip(&ordered[first]))
                port = port_numbers[ordered[first].words[2] & 0xFFFF]
                if port is None:
                    port = port_numbers[ordered[first].words[2] & 0xFFFF] = PyLong_FromSsize_t(ordered[first].words[2] & 0xFFFF)
                slots.fill(backend, 2, port)
                slots.give(backend, 3, name)
                name = NULL
                # A backend holds ints and a string: it can be in no reference cycle, so the
                # cyclic collector need not know it. A million of them made while it was paused
                # would otherwise all be traversed by its first pass after (a second per big
                # compile).
                gc_untrack(backend)
                backends.append(backend)
            start = 0
            for p in range(self.ports):
                end = self.port_ends[p]
                if p + IDS_AHEAD < self.ports:  # the id ints of a port ahead, random lines: their counts change
                    for ahead in range(self.port_ends[p + IDS_AHEAD - 1], self.port_ends[p + IDS_AHEAD]):
                        prefetch(PyList_GET_ITEM(numbers, ids[ahead] - 1))
                cluster_ids = self.sorted_ids(start, end, IN_CLUSTER, ids, scratch, numbers)
                local_ids = self.sorted_ids(start, end, IN_LOCAL, ids, scratch, numbers)
                if self.serving_is_cluster[p]:
                    serving_ids = cluster_ids
                else:
                    serving_ids = self.sorted_ids(start, end, IN_SERVING, ids, scratch, numbers)
                port_sets.append((cluster_ids, local_ids, serving_ids))
                start = end
        except BaseException:
            if self.numbered:  # release the names the walk had not handed over
                Py_XDECREF(name)
                for first in range(i, count):
                    Py_XDECREF(ordered[first].name)
            raise
        finally:
            PyMem_Free(ids)
            PyMem_Free(scratch)
        return backends, port_sets

    cdef tuple sorted_ids(self, Py_ssize_t start, Py_ssize_t end, uint8_t bit, const uint32_t* ids,
                          uint32_t* scratch, list numbers):
        """The ids of the records start..end that are in set `bit`, ascending."""
        cdef Py_ssize_t position, n = 0, i, j
        cdef uint32_t number
        for position in range(start, end):
            if self.sets[position] & bit:
                scratch[n] = ids[position]
                n += 1
        if n == 0:
            return ()
        if n > 16:
            qsort(scratch, n, sizeof(uint32_t), compare_ids)
        else:  # a service port's handful: insertion sort
            for i in range(1, n):
                number, j = scratch[i], i
                while j > 0 and scratch[j - 1] > number:
                    scratch[j] = scratch[j - 1]
                    j -= 1
                scratch[j] = number
        cdef tuple made = PyTuple_New(n)
        for i in range(n):
            fill(made, i, <object>PyList_GET_ITEM(numbers, scratch[i] - 1))
        gc_untrack(made)  # ints only (see number)
        return made


cdef void* grown(void* memory, size_t size) except NULL:
    cdef void* bigger = PyMem_Realloc(memory, size)
    if bigger == NULL:
        raise MemoryError()
    return bigger


def port_sets(list candidates, node, zone, sets_type):
    """One service port's `sets_type` (compiler._Sets): cluster, local and serving lists of its
    candidates, in their order, chosen as the full compile chooses them (Gatherer.choose)."""
    cdef Gatherer gatherer = Gatherer(node, zone, None)
    cdef list cluster = [], local = [], serving = []
    cdef Py_ssize_t i
    cdef uint8_t bits
    gatherer.add_tuples(candidates)
    for i in range(gatherer.count):
        bits = gatherer.sets[i]
        candidate = <object>gatherer.origins[i]
        if bits & IN_CLUSTER:
            cluster.append(candidate)
        if bits & IN_LOCAL:
            local.append(candidate)
        if bits & IN_SERVING:
            serving.append(candidate)
    made = tuple_alloc(sets_type, 3)
    fill(made, 0, cluster)
    fill(made, 1, local)
    fill(made, 2, serving)
    return made


# --------------------------------------------------------------------------------------------
# Objects of slotted dataclasses, their slots filled directly: the maps' (new_filled, below the
# service ports), the model's (Maker)

IMMUTABLE.update((Endpoint, EndpointConditions, ObjectReference))  # (plain_ipv4_endpoint makes them)


cdef bint cycle_free(object value, int depth):
    """Can `value` be in no reference cycle, now and later? Yes for what the cyclic collector
    does not track and whose contents cannot change (strings, ints, None, untracked tuples and
    frozen model objects); also for a tuple of such values, nested up to `depth` deep, which is
    then untracked (as the collector itself untracks such tuples, but at its next pass)."""
    cdef type kind = type(value)
    if not gc_type(value):
        return True
    if not gc_is_tracked(value):
        return kind is tuple or kind in IMMUTABLE
    if kind is not tuple or depth == 0:
        return False
    for item in <tuple>value:
        if not cycle_free(item, depth - 1):
            return False
    gc_untrack(value)
    return True


cdef bint frozen_dataclass(type cls):
    """Is cls a frozen dataclass (its objects keep their values: they may go untracked)?"""
    params = getattr(cls, "__dataclass_params__", None)
    return params is not None and params.frozen


cdef class Maker:
    """Maker(cls)(**fields): cls(**fields) for a slotted dataclass without __post_init__, every
    field given by name (TypeError otherwise: defaults are not applied), its slots filled
    directly, as unpickling fills them. A frozen dataclass's __init__ sets each field through
    object.__setattr__: the model's readers make a Service (16 fields), its ports and its
    EndpointSlice's shell for each Service of a dump, and those __init__ calls took about a
    tenth of reading a big one.

    An object of a frozen class whose values can be in no reference cycle (cycle_free) is not
    tracked by the cyclic collector either: a big dump's 100,000 Services and EndpointSlices,
    their ports and tuples, were otherwise all traversed by the collection a load owes once it
    resumes it (0.11 s at 20,000 Services), and by every full collection after."""
    cdef Fields fields
    cdef bint frozen

    def __cinit__(self, type cls):
        if getattr(cls, "__post_init__", None) is not None:
            raise TypeError(f"{cls.__name__} has a __post_init__, which a Maker would skip")
        self.fields = Fields(cls)
        self.frozen = frozen_dataclass(cls)
        if self.frozen:
            IMMUTABLE.add(cls)

    def __call__(self, **values):
        cdef Py_ssize_t i
        cdef PyObject* value
        cdef bint leaf = self.frozen
        if len(values) == self.fields.count:
            item = self.fields.new()
            for i in range(self.fields.count):
                value = PyDict_GetItem(values, self.fields.names[i])
                if value == NULL:
                    break
                self.fields.fill(item, i, <object>value)
                leaf = leaf and cycle_free(<object>value, 3)
            else:
                if leaf:
                    gc_untrack(item)
                return item
        raise TypeError(f"{self.fields.cls.__name__} takes every one of its fields by name "
                        f"({', '.join(self.fields.names)}), got {', '.join(values) or 'none'}")


# --------------------------------------------------------------------------------------------
# Service ports

cdef struct PortOrder:
    # A service port's sort key: (namespace, name, port name, protocol, family), then the order
    # made (as a stable sort keeps ties). Borrowed: the services and _Ports hold them.
    PyObject* key[4]
    int family
    Py_ssize_t made


cdef extern from "Python.h":
    # (Declared nogil for qsort's comparator type: it runs with the GIL held, inside service_ports.)
    int unicode_compare "PyUnicode_Compare"(PyObject* left, PyObject* right) noexcept nogil


cdef int compare_ports(const void* a, const void* b) noexcept nogil:
    cdef const PortOrder* x = <const PortOrder*>a
    cdef const PortOrder* y = <const PortOrder*>b
    cdef int i, order
    for i in range(4):
        if x.key[i] != y.key[i]:
            order = unicode_compare(x.key[i], y.key[i])  # strings (service_ports checks): cannot fail
            if order:
                return order
    if x.family != y.family:
        return -1 if x.family < y.family else 1
    return -1 if x.made < y.made else (x.made > y.made)


cdef int family_count(addresses, families) except -1:
    """How many of the address texts are of no family in `families`."""
    cdef int count = 0
    for text in addresses:
        count += family_of(map_address(text)) not in families
    return count


cdef inline object new_port(port_type, service, port, family, cluster_ip, proto, name):
    """A compiler._Port (service, port, family, cluster_ip, proto, name), items set directly."""
    entry = tuple_alloc(port_type, PORT_ITEMS)
    fill(entry, 0, service)
    fill(entry, 1, port)
    fill(entry, 2, family)
    fill(entry, 3, cluster_ip)
    fill(entry, 4, proto)
    fill(entry, 5, name)
    return entry


def service_ports(services, skipped, service_ips, port_type):
    """compiler._service_ports (its rules are documented there): every TCP/UDP/SCTP service port
    of each family the service has a cluster IP of, as `port_type` (compiler._Port) named tuples
    sorted by (namespace, name, port name, protocol, family); `service_ips` (a set, or None)
    gets every cluster IP of a service with ports."""
    cdef list made = []
    cdef PortOrder* order = NULL
    cdef Py_ssize_t count = 0, capacity = 0, i
    cdef int family
    cdef list held = []  # the sort keys, if a stand-in's attributes made them
    cdef bint in_order = True
    not_text = None  # the type of a sort key that is no str (TypeError, if there is sorting to do)
    try:
        for service in services:
            kind = SERVICE.get(service, SV_TYPE)
            if kind == "ExternalName":
                skipped["ExternalName service"] += 1
                continue
            if SERVICE.get(service, SV_HEADLESS):
                skipped["headless service"] += 1
                continue
            ports = SERVICE.get(service, SV_PORTS)
            ip4 = ip6 = None  # the first cluster IP of each family (the API server allows no more)
            for text in SERVICE.get(service, SV_CLUSTER_IPS):
                address = map_address(text)
                if address >= IPV6:
                    ip6 = address if ip6 is None else ip6
                else:
                    ip4 = address if ip4 is None else ip4
                if service_ips is not None and ports:
                    service_ips.add(address)
            if ip4 is None and ip6 is None:
                continue
            external_ips, ingress = SERVICE.get(service, SV_EXTERNAL_IPS), SERVICE.get(service, SV_INGRESS)
            if external_ips or ingress:
                # A proxier of a family ignores the other family's external and load-balancer IPs.
                families = [family for family, ip in ((4, ip4), (6, ip6)) if ip is not None]
                for what, addresses in (("external IP", external_ips), ("load-balancer IP", service.load_balancer_vips)):
                    missed = family_count(addresses, families)
                    if missed:
                        skipped[f"{what} of a family the service has no cluster IP of"] += missed
            namespace, service_name = SERVICE.get(service, SV_NAMESPACE), SERVICE.get(service, SV_NAME)
            for port in ports:
                protocol = SERVICE_PORT.get(port, PT_PROTOCOL)
                proto = PyDict_GetItem(PROTOCOL_NUMBERS, protocol) if type(protocol) is str else NULL
                if proto == NULL:
                    skipped[f"{protocol} service port"] += 1
                    continue
                port_name = SERVICE_PORT.get(port, PT_NAME)
                name = f"{namespace}/{service_name}:{port_name}" if port_name else f"{namespace}/{service_name}"
                if type(service) is not SERVICE.cls or type(port) is not SERVICE_PORT.cls:
                    held.append((namespace, service_name, port_name, protocol))  # perhaps made by attribute reads
                for key in (namespace, service_name, port_name):
                    if type(key) is not str and not_text is None:
                        not_text = type(key)
                for family, ip in ((4, ip4), (6, ip6)):
                    if ip is None:
                        continue
                    made.append(new_port(port_type, service, port, family, ip, <object>proto, name))
                    # The sort key, recorded while the service's objects are in cache (a pass
                    # after this one would fetch them all again).
                    if count == capacity:
                        capacity = max(2 * capacity, 64)
                        order = <PortOrder*>grown(order, capacity * sizeof(PortOrder))
                    order[count].key[0], order[count].key[1] = <PyObject*>namespace, <PyObject*>service_name
                    order[count].key[2], order[count].key[3] = <PyObject*>port_name, <PyObject*>protocol
                    order[count].family, order[count].made = family, count
                    if not_text is None and count:
                        in_order = in_order and compare_ports(&order[count - 1], &order[count]) < 0
                    count += 1
        if count < 2:
            return made
        if not_text is not None:
            raise TypeError(f"a service's namespace, name, port name and protocol must be strings, "
                            f"got {not_text.__name__}")
        if in_order:  # a dump lists services by namespace and name: often nothing to sort
            return made
        qsort(order, count, sizeof(PortOrder), compare_ports)
        return [made[order[i].made] for i in range(count)]
    finally:
        PyMem_Free(order)


# --------------------------------------------------------------------------------------------
# The maps' Services and Frontends

cdef Fields MAP_SERVICE = every_field(MapService, ("id", "name", "backends", "local_backends", "serving",
                                                   "affinity_timeout_s", "family"))
cdef Fields FRONTEND = every_field(Frontend, ("ip", "port", "proto", "service", "kind", "local_policy",
                                              "source_ranges"))
cdef bint MAP_OBJECTS_FROZEN = frozen_dataclass(MapService) and frozen_dataclass(Frontend)
cdef str CLUSTER_IP = FRONTEND_KINDS[0]  # first in both of compiler._frontends' orders (see frontends)
cdef object NO_AFFINITY = 0
cdef tuple ALL_SOURCES = ()
cdef enum:
    # A compiler._FrontendClaim: (order, service, ip, port, proto, kind, local_policy, source_ranges).
    CL_SERVICE = 1, CL_IP, CL_PORT, CL_PROTO, CL_KIND, CL_LOCAL, CL_SOURCES
    CLAIM_ITEMS = 8


cdef object new_filled(Fields fields, PyObject** values):
    """An object of `fields`' class (a map class: MAP_OBJECTS_FROZEN), its slots filled with
    `values` (borrowed): neither __init__ nor __post_init__ runs, so nothing is checked (the
    compiler's maps are right by construction, see Maps.unchecked, and a core's load() checks
    the ids it indexes by). When every value can be in no reference cycle (ints, strings, the
    compiler's id tuples: see cycle_free), the object is not tracked by the cyclic collector
    either, as CPython does for such tuples (a compile's 200,000 Services and Frontends were
    otherwise all traversed by the collection that follows it: 80-100 ms)."""
    cdef Py_ssize_t i
    cdef bint leaf = MAP_OBJECTS_FROZEN
    made = fields.new()
    for i in range(fields.count):
        fields.fill(made, i, <object>values[i])
        leaf = leaf and cycle_free(<object>values[i], 3)
    if leaf:
        gc_untrack(made)
    return made


cdef inline object port_entry(list ports, Py_ssize_t index):
    entry = ports[index]
    if not isinstance(entry, tuple) or PyTuple_GET_SIZE(entry) != PORT_ITEMS:
        raise TypeError(f"a service port is a compiler._Port, not {type(entry).__name__}")
    return entry


def map_services(list ports, list id_sets, affinity_timeout):
    """compiler._compile's maps' Services, in id order: service port i of `ports` (compiler._Port
    tuples) is Service(i + 1, its name, its (cluster, local, serving) id tuples from `id_sets`,
    its affinity timeout, its family). `affinity_timeout(service)` (the compiler's rule) is asked
    only of a Service whose session affinity is set to something other than "None"; the others
    have 0. Made by new_filled (a row tuple, a call and an attribute read per port were 0.1 s of a
    100,000-Service compile)."""
    cdef Py_ssize_t i, count = len(ports)
    cdef list made = []
    cdef PyObject* values[7]
    if len(id_sets) != count:
        raise ValueError(f"{count} service ports, {len(id_sets)} id sets")
    for i in range(count):
        entry, sets = port_entry(ports, i), id_sets[i]
        if type(sets) is not tuple or PyTuple_GET_SIZE(sets) != 3:
            raise TypeError("a service port's id sets are a (cluster, local, serving) tuple")
        service = item(entry, 0)
        affinity = SERVICE.get(service, SV_AFFINITY)
        timeout = NO_AFFINITY if affinity is None or affinity == "None" else affinity_timeout(service)
        number = PyLong_FromSsize_t(i + 1)
        values[0], values[1] = <PyObject*>number, PyTuple_GET_ITEM(entry, 5)
        values[2], values[3], values[4] = PyTuple_GET_ITEM(sets, 0), PyTuple_GET_ITEM(sets, 1), PyTuple_GET_ITEM(sets, 2)
        values[5], values[6] = <PyObject*>timeout, PyTuple_GET_ITEM(entry, 2)
        made.append(new_filled(MAP_SERVICE, values))
    return made


cdef int claim_words(object ip, object port, object proto, Keyed* claim) except -1:
    """A claim's (ip, port, proto) as key words: the address in the first two, then its family,
    the port and the protocol in the third."""
    cdef long long address
    cdef long number = port, protocol = proto
    cdef int overflow
    if not 0 <= number <= 0xFFFF or not 0 <= protocol <= 0xFF:
        raise ValueError(f"a frontend's port {number} or protocol {protocol} is out of range")
    address = PyLong_AsLongLongAndOverflow(ip, &overflow)
    if overflow == 0 and 0 <= address <= 0xFFFFFFFF:
        claim.words[0], claim.words[1] = 0, <uint64_t>address
        claim.words[2] = <uint64_t>(number << 8 | protocol)
    elif address_family(ip) == 6:
        claim.words[0] = PyLong_AsUnsignedLongLong((ip & IPV6_MASK) >> 64)
        claim.words[1] = PyLong_AsUnsignedLongLong(ip & WORD_MASK)
        claim.words[2] = <uint64_t>(1 << 24 | number << 8 | protocol)
    else:
        raise ValueError(f"a frontend's address {ip!r} is no map address")
    return 0


cdef Py_ssize_t claim_owner(Py_ssize_t* table, size_t mask, Keyed* claims, Py_ssize_t index) noexcept:
    """The claim owning claims[index]'s (ip, port, proto), or -1 after making claims[index] its
    owner (open addressing, linear probing: the table holds claim indexes, -1 when free)."""
    cdef size_t slot = key_slot(&claims[index], mask)
    while table[slot] >= 0:
        if same_key(&claims[table[slot]], &claims[index]):
            return table[slot]
        slot = (slot + 1) & mask
    table[slot] = index
    return -1


def frontends(list ports, external_claims, kept_order):
    """compiler._frontends (its rules are documented there): the maps' Frontends of `ports`
    (compiler._Port tuples, in id order) and the refused claims.

    Each port's ClusterIP claim is read here and never made as a tuple; the others are asked of
    `external_claims(service_id, entry)` (compiler._FrontendClaim tuples), only for a port whose
    Service has load-balancer ingress or external IPs, or which has a node port. The ClusterIP
    claims come first in claim order, in port order (one per port; compiler._CLAIM_ORDER puts
    ClusterIP first), then the others sorted. The first claim of an (ip, port, proto) owns it.

    Returns (frontends, refused). The frontends: per service id, its ClusterIP frontend (if it
    kept its claim; FRONTEND_KINDS puts ClusterIP first), then its other kept claims as sorted by
    `kept_order` (service id first). Refused: a (claim, owner) pair per claim that found another
    service port's claim, or another kind's, owning its (ip, port, proto), in claim order; a
    ClusterIP claim is given as its port's index in `ports`, any other as its claim tuple."""
    cdef Py_ssize_t count = len(ports), total, i, owner, k, kept_count, service_id
    cdef list others = []
    cdef list refused = []
    cdef list kept_others = []
    cdef list made = []
    cdef Keyed* claims = NULL
    cdef Py_ssize_t* table = NULL
    cdef uint8_t* kept = NULL
    cdef size_t capacity = 16
    cdef PyObject* values[7]
    cdef object local  # (an object: values[5] points at it)
    try:
        kept = <uint8_t*>PyMem_Malloc(count + 1)
        claims = <Keyed*>PyMem_Malloc((count + 1) * sizeof(Keyed))
        if kept == NULL or claims == NULL:
            raise MemoryError()
        for i in range(count):
            entry = port_entry(ports, i)
            service, port = item(entry, 0), item(entry, 1)
            claim_words(item(entry, 3), SERVICE_PORT.get(port, PT_PORT), item(entry, 4), &claims[i])
            claims[i].position = i
            if (nonempty(SERVICE.get(service, SV_INGRESS)) or nonempty(SERVICE.get(service, SV_EXTERNAL_IPS))
                    or SERVICE_PORT.get(port, PT_NODE_PORT) is not None):
                others.extend(external_claims(i + 1, entry))
        others.sort()
        total = count + len(others)
        claims = <Keyed*>grown(claims, (total + 1) * sizeof(Keyed))
        for i in range(len(others)):
            claim = others[i]
            if not isinstance(claim, tuple) or PyTuple_GET_SIZE(claim) != CLAIM_ITEMS:
                raise TypeError(f"a frontend claim is a compiler._FrontendClaim, not {type(claim).__name__}")
            claim_words(item(claim, CL_IP), item(claim, CL_PORT), item(claim, CL_PROTO), &claims[count + i])
            claims[count + i].position = count + i
        while capacity < <size_t>total * 2:
            capacity <<= 1
        table = <Py_ssize_t*>PyMem_Malloc(capacity * sizeof(Py_ssize_t))
        if table == NULL:
            raise MemoryError()
        memset(table, 0xFF, capacity * sizeof(Py_ssize_t))  # every slot -1: free
        for i in range(count):
            owner = claim_owner(table, capacity - 1, claims, i)
            kept[i] = owner < 0
            if owner >= 0:  # another port's ClusterIP claim (a port has one)
                refused.append((i, owner))
        for i in range(count, total):
            owner = claim_owner(table, capacity - 1, claims, i)
            claim = others[i - count]
            if owner < 0:
                kept_others.append(claim)
            elif owner < count:
                refused.append((claim, owner))
            else:
                owning = others[owner - count]
                if not (item(owning, CL_SERVICE) == item(claim, CL_SERVICE)
                        and item(owning, CL_KIND) == item(claim, CL_KIND)):
                    refused.append((claim, owning))  # (the same address listed twice: nothing to say)
        kept_others.sort(key=kept_order)
        k, kept_count = 0, len(kept_others)
        for i in range(count):
            number = PyLong_FromSsize_t(i + 1)
            if kept[i]:
                entry = ports[i]
                port_number = SERVICE_PORT.get(item(entry, 1), PT_PORT)
                local = True if is_local(SERVICE.get(item(entry, 0), SV_INTERNAL_POLICY)) else False
                values[0], values[1] = PyTuple_GET_ITEM(entry, 3), <PyObject*>port_number
                values[2], values[3] = PyTuple_GET_ITEM(entry, 4), <PyObject*>number
                values[4], values[5], values[6] = <PyObject*>CLUSTER_IP, <PyObject*>local, <PyObject*>ALL_SOURCES
                made.append(new_filled(FRONTEND, values))
            while k < kept_count:
                claim = kept_others[k]
                service_id = item(claim, CL_SERVICE)
                if service_id != i + 1:
                    break
                values[0], values[1] = PyTuple_GET_ITEM(claim, CL_IP), PyTuple_GET_ITEM(claim, CL_PORT)
                values[2], values[3] = PyTuple_GET_ITEM(claim, CL_PROTO), PyTuple_GET_ITEM(claim, CL_SERVICE)
                values[4], values[5] = PyTuple_GET_ITEM(claim, CL_KIND), PyTuple_GET_ITEM(claim, CL_LOCAL)
                values[6] = PyTuple_GET_ITEM(claim, CL_SOURCES)
                made.append(new_filled(FRONTEND, values))
                k += 1
        if k != kept_count:
            raise ValueError("a claim names no service port, or kept_order does not sort by service id first")
        return made, refused
    finally:
        PyMem_Free(table)
        PyMem_Free(claims)
        PyMem_Free(kept)


# --------------------------------------------------------------------------------------------
# Numbering the backends: the sort

cdef int sort_by_key(Keyed* items, Py_ssize_t count) except -1:
    """Sort by key, ties in gathering order: an LSD radix sort by bytes (stable), skipping the
    bytes every key shares (a cluster's backends share their first address bytes and often
    their port), found in a first pass that also keeps their histograms from being counted. A
    million endpoints sort in a few passes; qsort took ten times as long."""
    cdef size_t (*histograms)[256]
    cdef size_t offsets[256]
    cdef size_t total
    cdef Keyed* spare
    cdef Keyed* swap
    cdef Keyed* original = items
    cdef Py_ssize_t i
    cdef int word, digit, shift, value, k, passes = 0
    cdef uint64_t varying[3]  # the bits some key differs from the first in
    cdef int byte_word[KEY_BYTES]  # the bytes sorted on, least significant first: their word
    cdef int byte_shift[KEY_BYTES]  # and their shift in it
    if count < 2:
        return 0
    varying[0] = varying[1] = varying[2] = 0
    for i in range(count):
        for word in range(3):
            varying[word] |= items[i].words[word] ^ items[0].words[word]
    for word in range(2, -1, -1):  # least significant word first
        for digit in range(8):
            if varying[word] >> (8 * digit) & 0xFF:
                byte_word[passes], byte_shift[passes] = word, 8 * digit
                passes += 1
    if passes == 0:  # one key: sorted, ties in their order
        return 0
    histograms = <size_t (*)[256]>PyMem_Malloc(passes * 256 * sizeof(size_t))
    spare = <Keyed*>PyMem_Malloc(count * sizeof(Keyed))
    if histograms == NULL or spare == NULL:
        PyMem_Free(histograms)
        PyMem_Free(spare)
        raise MemoryError()
    memset(histograms, 0, passes * 256 * sizeof(size_t))
    for i in range(count):  # every sorted byte's histogram in one pass
        for k in range(passes):
            histograms[k][(items[i].words[byte_word[k]] >> byte_shift[k]) & 0xFF] += 1
    for k in range(passes):
        total = 0
        for value in range(256):
            offsets[value] = total
            total += histograms[k][value]
        word, shift = byte_word[k], byte_shift[k]
        for i in range(count):
            value = (items[i].words[word] >> shift) & 0xFF
            spare[offsets[value]] = items[i]
            offsets[value] += 1
        swap = items
        items = spare
        spare = swap
    if items != original:  # an odd number of passes: the sorted keys are in the spare buffer
        memcpy(original, items, count * sizeof(Keyed))
        spare = items
    PyMem_Free(spare)
    PyMem_Free(histograms)
    return 0


cdef int compare_ids(const void* a, const void* b) noexcept nogil:
    cdef uint32_t x = (<const uint32_t*>a)[0], y = (<const uint32_t*>b)[0]
    return -1 if x < y else (x > y)


# --------------------------------------------------------------------------------------------
# Maps' bulk check of the backends and the ids services name

cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object value, int* overflow) except? -1


cdef object IPV6_END = IPV6 << 1
cdef object IPV6_MASK = IPV6 - 1


cdef int address_family(object ip) except -1:
    """4 or 6 for a map address (fastpath.maps: IPv4 as its 32-bit value, IPv6 tagged with
    IPV6 and never IPv4-mapped); 0 for any other int."""
    cdef int overflow
    cdef long long value = PyLong_AsLongLongAndOverflow(ip, &overflow)
    if overflow == 0:
        return 4 if 0 <= value <= 0xFFFFFFFF else 0
    if overflow > 0 and IPV6 <= ip < IPV6_END and (ip & IPV6_MASK) >> 32 != V4_MAPPED:
        return 6
    return 0


def members_valid(list services, list backends, service_type, backend_type):
    """Maps' bulk check of its backends and of what its services name (see Maps._valid): True
    only if backend i has the id i + 1 and a map address, every service is of family 4 or 6,
    and every id a service names is an int naming a backend of the service's family. False can
    also mean: let the item-by-item checks decide (anything not exactly of the map classes, ids
    in lists rather than tuples). A million ids in one pass, none of them put in a set."""
    cdef Fields backend_fields = Fields(backend_type, ("id", "ip"))
    cdef Fields service_fields = Fields(service_type, ("backends", "local_backends", "serving", "family"))
    cdef Py_ssize_t count = len(backends), i, number
    cdef int family
    cdef uint8_t* families = <uint8_t*>PyMem_Malloc(count + 1)  # by id; 0: no backend
    if families == NULL:
        raise MemoryError()
    try:
        families[0] = 0
        for i in range(count):
            backend = backends[i]
            if type(backend) is not backend_type:
                return False
            if int_or_zero(backend_fields.get(backend, 0)) != i + 1:
                return False
            value = backend_fields.get(backend, 1)
            if type(value) is not int:
                return False
            families[i + 1] = address_family(value)
            if families[i + 1] == 0:
                return False
        for service in services:
            if type(service) is not service_type:
                return False
            value = service_fields.get(service, 3)
            if type(value) is not int or value not in (4, 6):
                return False
            family = value
            members = service_fields.get(service, 0)
            for index in range(3):
                ids = service_fields.get(service, index)
                if index == 2 and ids is members:
                    break  # the serving set is the cluster set
                if type(ids) is not tuple:
                    return False
                for value in <tuple>ids:
                    number = int_or_zero(value)
                    if not 1 <= number <= count or families[number] != family:
                        return False
        return True
    finally:
        PyMem_Free(families)
