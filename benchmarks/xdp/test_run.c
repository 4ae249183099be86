/*
 * Runs a batch of packets through an XDP program with BPF_PROG_TEST_RUN, one packet per call
 * (repeat 1), each rewritten in place: the loop of bench_xdp.py, in C so that no interpreter
 * time sits between the calls. Built by benchmarks/kernel_xdp.py with `cc -O2 -shared -lbpf`.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <bpf/bpf.h>

/* Returns 0, or -errno of the first call that failed (its index in *failed_at). retvals[i] gets
 * the program's verdict; *kernel_ns the sum of the kernel's own per-run durations. */
int run_batch(int prog_fd, uint8_t *buf, const uint64_t *offsets, const uint32_t *lengths,
              size_t n, uint32_t *retvals, uint64_t *kernel_ns, size_t *failed_at)
{
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t *packet = buf + offsets[i];
        struct bpf_test_run_opts opts;
        memset(&opts, 0, sizeof opts);
        opts.sz = sizeof opts;
        opts.data_in = packet;
        opts.data_out = packet;
        opts.data_size_in = lengths[i];
        opts.data_size_out = lengths[i];
        opts.repeat = 1;
        if (bpf_prog_test_run_opts(prog_fd, &opts) != 0) {
            *failed_at = i;
            return -errno;
        }
        retvals[i] = opts.retval;
        total += opts.duration;
    }
    *kernel_ns = total;
    return 0;
}

/* One packet, `repeat` times in one call: the kernel's average ns per run (its own timer). */
int run_repeated(int prog_fd, const uint8_t *packet, uint32_t length, int repeat,
                 uint32_t *retval, uint32_t *duration_ns)
{
    uint8_t out[2048];
    struct bpf_test_run_opts opts;
    if (length > sizeof out)
        return -EMSGSIZE;
    memset(&opts, 0, sizeof opts);
    opts.sz = sizeof opts;
    opts.data_in = packet;
    opts.data_out = out;
    opts.data_size_in = length;
    opts.data_size_out = sizeof out;
    opts.repeat = repeat;
    if (bpf_prog_test_run_opts(prog_fd, &opts) != 0)
        return -errno;
    *retval = opts.retval;
    *duration_ns = opts.duration;
    return 0;
}
