# cython: language_level=3
"""The compiler's per-endpoint loops, compiled (the module fastpath._compile).

A big cluster has a million endpoints, and fastpath.compiler visits each one a few times: to
read it out of its EndpointSlice, to choose a service port's sets, to number the backends, to
list each service port's backend ids. Those loops live here, written against the same objects
the Python compiler passes around (the model's slotted dataclasses in, fastpath.compiler's named
tuples and fastpath.maps' classes out); the rules they apply are the compiler's, documented
where it calls them (pysrc/fastpath/compiler.py) and repeated in each function here.

Slotted objects are read and made through their slots' offsets (Fields), not attribute by
attribute: at a million endpoints the attribute machinery was a quarter of the time.
"""
from cpython.list cimport PyList_GET_ITEM
from cpython.long cimport PyLong_AsUnsignedLongLong, PyLong_FromSsize_t, PyLong_FromUnsignedLongLong
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.ref cimport PyObject, Py_INCREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_New, PyTuple_SET_ITEM
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport qsort
from libc.string cimport memchr, memcpy, memset, strlen

from prefetch cimport prefetch

from fastpath.model import ClusterError, Endpoint, EndpointConditions, ObjectReference

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

cdef extern from *:
    # A slotted object's field read where its member descriptor says it lives (what the
    # descriptor's __get__ does, without the attribute lookup around it). NULL: the slot is unset.
    # A new object of a slotted class is made empty (its slots NULL) and filled the same way,
    # as unpickling does it: a frozen dataclass's __setattr__ (and __init__) are skipped.
    """
    #include "structmember.h"
    static Py_ssize_t fastpath_slot_offset(PyObject* descriptor) {  /* -1: no object slot */
        PyMemberDef* member = ((PyMemberDescrObject*)descriptor)->d_member;
        return member->type == T_OBJECT_EX ? member->offset : -1;
    }
    #define fastpath_slot_at(item, offset) (*(PyObject**)((char*)(item) + (offset)))
    #define fastpath_new_empty(cls) PyType_GenericAlloc((PyTypeObject*)(cls), 0)
    #define fastpath_fill_slot(item, offset, value) \
        do { Py_INCREF(value); fastpath_slot_at((item), (offset)) = (value); } while (0)
    """
    Py_ssize_t slot_offset "fastpath_slot_offset"(object descriptor)
    PyObject* slot_at "fastpath_slot_at"(object item, Py_ssize_t offset)
    object new_empty "fastpath_new_empty"(object cls)
    void fill_slot "fastpath_fill_slot"(object item, Py_ssize_t offset, object value)
    void gc_untrack "PyObject_GC_UnTrack"(object item)

cdef enum:
    PORT_BITS = 16  # a backend key is ip << 16 | port (fastpath.compiler._backend_key)
    PREFETCH_AHEAD = 8  # objects fetched this many endpoints ahead in a walk in random order
    MAX_FIELDS = 8  # of a class Fields reads
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
    cdef unsigned char v6[16]
    if strlen(utf8) != <size_t>size:
        raise ValueError("embedded null character")
    if memchr(utf8, b":", size) == NULL:
        parse_ipv4(text, &v4)
        return PyLong_FromUnsignedLongLong(v4)
    if inet_pton(AF_INET6, utf8, v6) != 1:
        raise OSError("illegal IP address string passed to inet_pton")
    value = int.from_bytes(v6[:16], "big")
    if value >> 32 == V4_MAPPED:
        return value & 0xFFFFFFFF
    return IPV6 | value


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
        from types import MemberDescriptorType
        if names is None:  # every field of a dataclass, in order
            names = tuple(field.name for field in fields(cls))
        if len(names) > MAX_FIELDS:
            raise TypeError(f"{cls.__name__} has more than {MAX_FIELDS} fields")
        self.cls, self.names, self.count = cls, tuple(names), len(names)
        for index, name in enumerate(self.names):
            descriptor = cls.__dict__.get(name)
            if type(descriptor) is not MemberDescriptorType or slot_offset(descriptor) < 0:
                raise TypeError(f"{cls.__name__}.{name} is not a slot")
            self.offsets[index] = slot_offset(descriptor)

    cdef inline object get(self, item, Py_ssize_t index):
        cdef PyObject* value
        if type(item) is self.cls:
            value = slot_at(item, self.offsets[index])
            if value != NULL:
                return <object>value
        return getattr(item, self.names[index])

    cdef inline object new(self):
        """An object of the class with every slot empty: fill each one (fill) before use."""
        return new_empty(self.cls)

    cdef inline void fill(self, item, Py_ssize_t index, value):
        fill_slot(item, self.offsets[index], value)


# The model fields the candidates loop reads, and their indexes in each Fields.
cdef Fields ENDPOINT = Fields(Endpoint, ("addresses", "conditions", "node_name", "hints_for_zones",
                                         "hints_for_nodes", "target_ref"))
cdef Fields CONDITIONS = Fields(EndpointConditions, ("ready", "serving", "terminating"))
cdef Fields REFERENCE = Fields(ObjectReference, ("namespace", "name"))
cdef enum:
    EP_ADDRESSES, EP_CONDITIONS, EP_NODE_NAME, EP_ZONE_HINTS, EP_NODE_HINTS, EP_TARGET_REF
    IS_READY = 0, IS_SERVING, IS_TERMINATING
    REF_NAMESPACE = 0, REF_NAME


cdef int parse_ipv4(str text, uint32_t* value) except -1:
    """A dotted quad as its 32-bit value, read as socket.inet_aton reads it (OSError if not)."""
    cdef Py_ssize_t size
    cdef const char* utf8 = PyUnicode_AsUTF8AndSize(text, &size)
    cdef in_addr v4
    if strlen(utf8) != <size_t>size or not inet_aton(utf8, &v4):
        raise OSError("illegal IP address string passed to inet_aton")
    value[0] = ntohl(v4.s_addr)
    return 0


cdef inline object ipv4_key(str text, uint32_t port):
    cdef uint32_t v4
    parse_ipv4(text, &v4)
    return PyLong_FromUnsignedLongLong((<uint64_t>v4) << PORT_BITS | port)


cdef inline bint prefer(object candidate, object previous):
    """Is `candidate` preferred to `previous` (see keep)? Not terminating, then ready, serving,
    local, in that order."""
    cdef int i
    cdef bint mine = not item(candidate, TERMINATING), theirs = not item(previous, TERMINATING)
    if mine != theirs:
        return mine
    for i in (READY, SERVING, LOCAL):
        mine, theirs = item(candidate, i), item(previous, i)
        if mine != theirs:
            return mine
    return False


cpdef keep(dict found, candidate):
    """Keep `candidate` in `found` (key -> candidate) unless an endpoint of the same (ip, port)
    is already there and preferred: of duplicates (the same pod in two slices while the
    controller moves it) the non-terminating one wins, as in kube-proxy; then the ready, serving,
    local one, so the result never depends on which slice was read first."""
    key = item(candidate, KEY)
    previous = found.setdefault(key, candidate)
    if previous is not candidate and prefer(candidate, previous):
        found[key] = candidate


cpdef checked_port(number):
    """A backend port; the model's parser allows only 1..65535, a state built by hand might not
    (ClusterError)."""
    if not 0 <= number <= 0xFFFF:
        raise ClusterError(f"endpoint port {number} is outside 0..65535")
    return number


def candidates(port, int family, slices, node, skipped, dict memo, candidate_type):
    """compiler._candidates: the service port's endpoints from its slices of the family, one
    `candidate_type` (compiler._Candidate) per (ip, port); see there for the rules and `memo`."""
    cdef dict found = {}
    cdef dict known = None
    cdef dict contexts
    cdef tuple hit
    cdef object candidate
    cdef object number, ip, key
    cdef str address, name, namespace, slice_owner, port_text
    port_name, protocol = port.name, port.protocol
    for endpoint_slice in slices:
        for slice_port in endpoint_slice.ports:
            if slice_port.name == port_name and slice_port.protocol == protocol:
                number = slice_port.port
                break
        else:
            continue
        if number is None:
            continue
        checked_port(number)
        namespace = endpoint_slice.namespace
        slice_owner = f"{namespace}/{endpoint_slice.name}"
        port_text = f":{number} ("  # backend names: "10.244.1.5:8080 (namespace/pod)"
        if memo is not None:
            contexts = memo.setdefault((namespace, endpoint_slice.name), {})
            context = (number, family, node)
            known = contexts.get(context)
            # The candidates of the slice's recent versions, up to twice as many as it has
            # endpoints (then it starts afresh).
            if known is None or len(known) > 2 * len(endpoint_slice.endpoints) + 8:
                known = contexts[context] = {}
        for endpoint in endpoint_slice.endpoints:
            hit = known.get(id(endpoint)) if known is not None else None
            if hit is not None:  # (the memo holds that endpoint: no other object has its id)
                if hit[1] is None:
                    skipped[MAPPED_IN_IPV6] += 1
                    continue
                candidate = hit[1]
            else:
                address = ENDPOINT.get(endpoint, EP_ADDRESSES)[0]  # only the first address counts
                if family == 4:
                    key = ipv4_key(address, number)
                else:
                    ip = map_address(address)
                    if ip < IPV6:  # an IPv4-mapped address (the API server refuses them in IPv6 slices)
                        skipped[MAPPED_IN_IPV6] += 1
                        if known is not None:
                            known[id(endpoint)] = (endpoint, None)
                        continue
                    key = ip << PORT_BITS | number
                    address = f"[{address}]"
                ref = ENDPOINT.get(endpoint, EP_TARGET_REF)
                ref_name = REFERENCE.get(ref, REF_NAME) if ref is not None else None
                if ref_name:
                    name = f"{address}{port_text}{REFERENCE.get(ref, REF_NAMESPACE) or namespace}/{ref_name})"
                else:
                    name = f"{address}{port_text}{slice_owner})"
                conditions = ENDPOINT.get(endpoint, EP_CONDITIONS)
                ready, serving = CONDITIONS.get(conditions, IS_READY), CONDITIONS.get(conditions, IS_SERVING)
                candidate = tuple_alloc(candidate_type, 8)
                fill(candidate, KEY, key)
                fill(candidate, NAME, name)
                fill(candidate, READY, ready is None or ready)
                fill(candidate, SERVING, serving is None or serving)
                fill(candidate, TERMINATING, bool(CONDITIONS.get(conditions, IS_TERMINATING)))
                fill(candidate, LOCAL, node is not None and ENDPOINT.get(endpoint, EP_NODE_NAME) == node)
                fill(candidate, ZONE_HINTS, ENDPOINT.get(endpoint, EP_ZONE_HINTS))
                fill(candidate, NODE_HINTS, ENDPOINT.get(endpoint, EP_NODE_HINTS))
                if known is not None:
                    known[id(endpoint)] = (endpoint, candidate)
            keep(found, candidate)
    return list(found.values())


cdef list hinted(list ready, Py_ssize_t hints, where):
    """The ready endpoints whose hints of that kind name `where`, if every ready endpoint has
    such hints and one names it; else None (the hints do not apply)."""
    cdef bint named = False
    for candidate in ready:
        if not item(candidate, hints):
            return None
        named = named or where in item(candidate, hints)
    if not named:
        return None
    return [candidate for candidate in ready if where in item(candidate, hints)]


def port_sets(list candidates, node, zone, sets_type):
    """One service port's `sets_type` (compiler._Sets): cluster, local and serving lists of its
    candidates (compiler.endpoint_sets documents the rules).

    cluster: the ready endpoints, narrowed by node hints, else by zone hints, when every ready
    endpoint carries that kind of hint and one names this node / zone; with none ready, the
    serving terminating ones, unfiltered. local (only with a node): the local ready endpoints,
    else the local serving terminating ones; hints do not apply. serving: every serving one."""
    cdef list ready = [], cluster, local = [], serving = [], narrowed
    for candidate in candidates:
        if item(candidate, READY):
            ready.append(candidate)
        if item(candidate, SERVING):
            serving.append(candidate)
    cluster = ready
    if ready:
        narrowed = hinted(ready, NODE_HINTS, node) if node is not None else None
        if narrowed is None and zone is not None:
            narrowed = hinted(ready, ZONE_HINTS, zone)
        if narrowed is not None:
            cluster = narrowed
    else:
        cluster = [candidate for candidate in candidates
                   if item(candidate, SERVING) and item(candidate, TERMINATING)]
    if node is not None:  # nothing is local to no node
        local = [candidate for candidate in candidates if item(candidate, LOCAL) and item(candidate, READY)]
        if not local:
            local = [candidate for candidate in candidates if item(candidate, LOCAL)
                     and item(candidate, SERVING) and item(candidate, TERMINATING)]
    made = tuple_alloc(sets_type, 3)
    fill(made, 0, cluster)
    fill(made, 1, local)
    fill(made, 2, serving)
    return made


cdef inline object item(object candidate, Py_ssize_t index):
    return <object>PyTuple_GET_ITEM(candidate, index)


cdef inline void fill(object item, Py_ssize_t index, object value):
    Py_INCREF(value)
    PyTuple_SET_ITEM(item, index, value)


# --------------------------------------------------------------------------------------------
# Objects of fastpath.maps' slotted dataclasses, in bulk

def make_objects(cls, rows):
    """[cls(*row) for row in rows] for a slotted dataclass, every field given in order (ValueError
    otherwise), several times faster: neither __init__ nor __post_init__ runs, so nothing is
    checked (Maps checks what it is given, as for any other objects)."""
    cdef Fields slots = Fields(cls)
    cdef Py_ssize_t i
    cdef list made = []
    for row in rows:
        if len(row) != slots.count:
            raise ValueError(f"{cls.__name__} has {slots.count} fields, a row has {len(row)}")
        item = slots.new()
        for i in range(slots.count):
            slots.fill(item, i, row[i])
        made.append(item)
    return made


# --------------------------------------------------------------------------------------------
# Numbering the backends

cdef enum:
    # Which of a service port's sets an endpoint is in.
    IN_CLUSTER = 1
    IN_LOCAL = 2
    IN_SERVING = 4

cdef struct Keyed:
    uint64_t words[3]  # the backend key (ip << 16 | port, up to 145 bits), most significant first
    Py_ssize_t position  # where the endpoint was gathered
    PyObject* name  # its candidate's name (the candidate owns it): read in key order, beside the key


cdef int sort_by_key(Keyed* items, Py_ssize_t count) except -1:
    """Sort by key, ties in gathering order: an LSD radix sort by bytes (stable), skipping the
    bytes every key shares (a cluster's backends share their first address bytes and often
    their port). A million endpoints sort in a few passes; qsort took ten times as long."""
    cdef size_t (*histograms)[256]
    cdef size_t offsets[256]
    cdef size_t total
    cdef Keyed* spare
    cdef Keyed* swap
    cdef Keyed* original = items
    cdef Py_ssize_t i
    cdef int word, digit, value
    if count < 2:
        return 0
    histograms = <size_t (*)[256]>PyMem_Malloc(KEY_BYTES * 256 * sizeof(size_t))
    spare = <Keyed*>PyMem_Malloc(count * sizeof(Keyed))
    if histograms == NULL or spare == NULL:
        PyMem_Free(histograms)
        PyMem_Free(spare)
        raise MemoryError()
    memset(histograms, 0, KEY_BYTES * 256 * sizeof(size_t))
    for i in range(count):  # every byte's histogram in one pass
        for word in range(3):
            for digit in range(8):
                histograms[word * 8 + digit][(items[i].words[word] >> (8 * digit)) & 0xFF] += 1
    for word in range(2, -1, -1):  # least significant word first
        for digit in range(8):
            value = (items[0].words[word] >> (8 * digit)) & 0xFF
            if histograms[word * 8 + digit][value] == <size_t>count:
                continue  # every key has this byte
            total = 0
            for value in range(256):
                offsets[value] = total
                total += histograms[word * 8 + digit][value]
            for i in range(count):
                value = (items[i].words[word] >> (8 * digit)) & 0xFF
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


cdef inline bint same_key(const Keyed* x, const Keyed* y) noexcept nogil:
    return x.words[0] == y.words[0] and x.words[1] == y.words[1] and x.words[2] == y.words[2]


cdef object key_ip(const Keyed* keyed):
    """The backend's ip: its key without the port."""
    if keyed.words[0] == 0 and keyed.words[1] == 0:  # IPv4
        return PyLong_FromUnsignedLongLong(keyed.words[2] >> PORT_BITS)
    cdef object high = PyLong_FromUnsignedLongLong(keyed.words[0])
    cdef object middle = PyLong_FromUnsignedLongLong(keyed.words[1])
    return high << 112 | middle << 48 | PyLong_FromUnsignedLongLong(keyed.words[2] >> PORT_BITS)


cdef int compare_ids(const void* a, const void* b) noexcept nogil:
    cdef uint32_t x = (<const uint32_t*>a)[0], y = (<const uint32_t*>b)[0]
    return -1 if x < y else (x > y)


cdef object WORD_MASK = (1 << 64) - 1


cdef class _Gathered:
    """Every service port's endpoints, each port's distinct by key, in port order."""
    cdef Keyed* keyed
    cdef uint8_t* sets  # IN_* bits, by position
    cdef uint32_t* ids  # backend id, by position
    cdef Py_ssize_t* port_ends  # positions of port p: port_ends[p - 1] (0 for p = 0) .. port_ends[p]
    cdef uint8_t* serving_is_cluster  # by port: its serving set equals its cluster set
    cdef Py_ssize_t count

    def __cinit__(self, Py_ssize_t capacity, Py_ssize_t ports):
        self.keyed = <Keyed*>PyMem_Malloc(max(capacity, 1) * sizeof(Keyed))
        self.sets = <uint8_t*>PyMem_Malloc(max(capacity, 1))
        self.ids = <uint32_t*>PyMem_Malloc(max(capacity, 1) * sizeof(uint32_t))
        self.port_ends = <Py_ssize_t*>PyMem_Malloc(max(ports, 1) * sizeof(Py_ssize_t))
        self.serving_is_cluster = <uint8_t*>PyMem_Malloc(max(ports, 1))
        if not (self.keyed and self.sets and self.ids and self.port_ends
                and self.serving_is_cluster):
            raise MemoryError()

    def __dealloc__(self):
        PyMem_Free(self.keyed)
        PyMem_Free(self.sets)
        PyMem_Free(self.ids)
        PyMem_Free(self.port_ends)
        PyMem_Free(self.serving_is_cluster)

    cdef void add(self, candidate, uint8_t sets) except *:
        cdef Keyed* keyed = &self.keyed[self.count]
        key = item(candidate, KEY)
        if key <= WORD_MASK:  # IPv4
            keyed.words[0] = keyed.words[1] = 0
            keyed.words[2] = PyLong_AsUnsignedLongLong(key)
        else:
            keyed.words[0] = PyLong_AsUnsignedLongLong(key >> 128)
            keyed.words[1] = PyLong_AsUnsignedLongLong((key >> 64) & WORD_MASK)
            keyed.words[2] = PyLong_AsUnsignedLongLong(key & WORD_MASK)
        keyed.position = self.count
        self.sets[self.count] = sets
        keyed.name = PyTuple_GET_ITEM(candidate, NAME)
        self.count += 1


cdef tuple sorted_ids(_Gathered gathered, Py_ssize_t start, Py_ssize_t end, uint8_t bit,
                      uint32_t* scratch, list numbers):
    """The ids of the endpoints at positions start..end that are in set `bit`, ascending."""
    cdef Py_ssize_t position, n = 0, i, j
    cdef uint32_t number
    for position in range(start, end):
        if gathered.sets[position] & bit:
            scratch[n] = gathered.ids[position]
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
    cdef tuple ids = PyTuple_New(n)
    for i in range(n):
        fill(ids, i, <object>PyList_GET_ITEM(numbers, scratch[i] - 1))
    gc_untrack(ids)  # ints only (see number_backends)
    return ids


def number_backends(list chosen, backend_type):
    """One backend per distinct (ip, port) over every set of every service port, ids in key order
    ((ip, port) order, IPv4 first); an (ip, port) in several service ports, or named differently
    by two slices, is one backend named by the smallest name. `chosen` holds each service port's
    (cluster, local, serving) candidate lists.

    Returns (backends, sets): the `backend_type` objects, and per service port its
    (cluster, local, serving) backend ids, each a sorted tuple; serving is the cluster tuple
    itself when the two sets are equal."""
    cdef Py_ssize_t capacity = 0, p, position, start, end, i, first, count
    cdef list cluster, local, serving
    cdef dict index
    cdef uint8_t bit
    for sets in chosen:
        capacity += len(sets[0]) + len(sets[1]) + len(sets[2])
    cdef _Gathered gathered = _Gathered(capacity, len(chosen))
    for p, sets in enumerate(chosen):
        cluster, local, serving = sets
        same = serving == cluster
        gathered.serving_is_cluster[p] = same
        if same and not local:  # the usual case: one set
            for candidate in cluster:
                gathered.add(candidate, IN_CLUSTER | IN_SERVING)
        else:  # each (ip, port) once, in every set it is in
            index = {}
            for bit, group in ((IN_CLUSTER, cluster), (IN_LOCAL, local), (IN_SERVING, serving)):
                for candidate in group:
                    key = item(candidate, KEY)
                    at = index.get(key)
                    if at is None:
                        index[key] = gathered.count
                        gathered.add(candidate, bit)
                    else:
                        gathered.sets[<Py_ssize_t>at] |= bit
        gathered.port_ends[p] = gathered.count

    count = gathered.count
    sort_by_key(gathered.keyed, count)
    cdef list backends = []
    cdef list numbers = []  # the id ints, shared by the backends and the services' tuples
    cdef Fields slots = Fields(backend_type, ("id", "ip", "port", "name"))
    cdef list ports = [None] * 0x10000  # one int object per port number
    cdef Keyed* keyed = gathered.keyed
    cdef uint32_t number = 0
    i = 0
    while i < count:
        # The sorted walk reads the names in random order: fetch them ahead.
        if i + PREFETCH_AHEAD < count:
            prefetch(keyed[i + PREFETCH_AHEAD].name)
        # The endpoints of one (ip, port): one backend, named by the smallest name.
        first = i
        name = <object>keyed[i].name
        number += 1
        while i < count and same_key(&keyed[i], &keyed[first]):
            gathered.ids[keyed[i].position] = number
            other = <object>keyed[i].name
            if other < name:
                name = other
            i += 1
        backend = slots.new()
        numbers.append(PyLong_FromSsize_t(number))
        slots.fill(backend, 0, numbers[number - 1])
        slots.fill(backend, 1, key_ip(&keyed[first]))
        port = ports[keyed[first].words[2] & 0xFFFF]
        if port is None:
            port = ports[keyed[first].words[2] & 0xFFFF] = PyLong_FromSsize_t(keyed[first].words[2] & 0xFFFF)
        slots.fill(backend, 2, port)
        slots.fill(backend, 3, name)
        # A backend holds ints and a string: it can be in no reference cycle, so the cyclic
        # collector need not know it. A million of them made while it was paused would
        # otherwise all be traversed by its first pass after (a second per big compile).
        gc_untrack(backend)
        backends.append(backend)

    cdef list port_sets = []
    cdef uint32_t* scratch = <uint32_t*>PyMem_Malloc(max(capacity, 1) * sizeof(uint32_t))
    if scratch == NULL:
        raise MemoryError()
    try:
        start = 0
        for p in range(len(chosen)):
            end = gathered.port_ends[p]
            cluster_ids = sorted_ids(gathered, start, end, IN_CLUSTER, scratch, numbers)
            local_ids = sorted_ids(gathered, start, end, IN_LOCAL, scratch, numbers)
            if gathered.serving_is_cluster[p]:
                serving_ids = cluster_ids
            else:
                serving_ids = sorted_ids(gathered, start, end, IN_SERVING, scratch, numbers)
            port_sets.append((cluster_ids, local_ids, serving_ids))
            start = end
    finally:
        PyMem_Free(scratch)
    return backends, port_sets


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
    cdef int family, overflow
    cdef uint8_t* families = <uint8_t*>PyMem_Malloc(count + 1)  # by id; 0: no backend
    if families == NULL:
        raise MemoryError()
    try:
        families[0] = 0
        for i in range(count):
            backend = backends[i]
            if type(backend) is not backend_type:
                return False
            value = backend_fields.get(backend, 0)
            if type(value) is not int or PyLong_AsLongLongAndOverflow(value, &overflow) != i + 1 or overflow:
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
                    if type(value) is not int:
                        return False
                    number = PyLong_AsLongLongAndOverflow(value, &overflow)
                    if overflow or not 1 <= number <= count or families[number] != family:
                        return False
        return True
    finally:
        PyMem_Free(families)
