# A slotted object's fields, read where their member descriptors say they live (what a
# descriptor's __get__ does, without the attribute lookup around it), and filled in objects
# made empty (as unpickling does it: a frozen dataclass's __setattr__ and __init__ skipped).
# Shared by both compiled modules: the compiler's readers (compile.pyx) read and make a million
# endpoints and backends of a big cluster, the core's load (core.pyx) reads its maps.
from cpython.ref cimport PyObject

cdef extern from *:
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
    #define fastpath_give_slot(item, offset, value) (fastpath_slot_at((item), (offset)) = (value))
    """
    Py_ssize_t slot_offset "fastpath_slot_offset"(object descriptor)
    PyObject* slot_at "fastpath_slot_at"(object item, Py_ssize_t offset)  # NULL: the slot is unset
    object new_empty "fastpath_new_empty"(object cls)  # every slot NULL: fill each before use
    void fill_slot "fastpath_fill_slot"(object item, Py_ssize_t offset, object value)
    void give_slot "fastpath_give_slot"(object item, Py_ssize_t offset, PyObject* value)  # takes the reference


cdef inline Py_ssize_t offset_of(type cls, str name) except -1:
    """Where objects of `cls` hold their field `name` (TypeError if it is no object slot)."""
    from types import MemberDescriptorType
    descriptor = cls.__dict__.get(name)
    if type(descriptor) is not MemberDescriptorType or slot_offset(descriptor) < 0:
        raise TypeError(f"{cls.__name__}.{name} is not a slot")
    return slot_offset(descriptor)


cdef inline object slot_or_attribute(object item, type cls, Py_ssize_t offset, str name):
    """item.name: read from its slot when item is exactly of `cls` (offset_of(cls, name)), by
    attribute otherwise (a subclass, a stand-in) or when the slot is unset (AttributeError)."""
    cdef PyObject* value
    if type(item) is cls:
        value = slot_at(item, offset)
        if value != NULL:
            return <object>value
    return getattr(item, name)
