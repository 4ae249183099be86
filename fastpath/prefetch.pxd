# A cache prefetch the C compiler cannot drop.
#
# A prefetch changes nothing the compiler can see, so a function that does nothing else (like
# Engine._prefetch_entry) is "pure" to GCC, and a call to it whose result is unused is removed:
# the conntrack entry prefetch was compiled out that way. The empty volatile asm beside it is a
# side effect the compiler keeps, and costs no instruction. With it, 1,000,000 packets over
# 1,000,000 tracked flows take 100-110 ms instead of 205-230 (AMD EPYC guest).
#
# Write intent, kept in every cache level: what is fetched is about to be written (a conntrack
# entry, a counter, a reference count).
cdef extern from *:
    """
    #define fp_prefetch(p) do { \\
        __builtin_prefetch((p), 1, 3); \\
        __asm__ volatile("" : : "r"(p)); \\
    } while (0)
    """
    void prefetch "fp_prefetch"(const void* p) nogil


cdef inline void prefetch_item(const void* item, size_t size) noexcept nogil:
    """Both lines of an item that may straddle two (a 24-byte frontend map slot does one time
    in four, a 40-byte frontend more often)."""
    prefetch(item)
    prefetch(<const char*>item + size - 1)
