"""The kernel reference point: fastpath's maps in an XDP program run by BPF_PROG_TEST_RUN.

`xdp/service_lb.bpf.c` does for IPv4 TCP/UDP what fastpath's core does (conntrack lookup, service
lookup, the same backend choice, DNAT / REVNAT with incremental checksums); `xdp/test_run.c`
runs a batch through it one packet per BPF_PROG_TEST_RUN call. This module builds both (clang
for the BPF target, cc for the loop, libbpf's headers: Debian packages clang and libbpf-dev),
loads the program with libbpf through ctypes, and fills its maps from a `fastpath.maps.Maps`.

    with KernelXdp.build(scratch_dir) as xdp:       # XdpUnavailable says why it cannot
        xdp.load(maps)
        verdicts, kernel_ns = xdp.run_batch(buf, offsets, lengths)

Needs root (or CAP_BPF and CAP_NET_ADMIN) and a kernel with BPF; the JIT is whatever the host
runs (/proc/sys/net/core/bpf_jit_enable).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import struct
import subprocess
import sysconfig
from array import array
from pathlib import Path

HERE = Path(__file__).resolve().parent / "xdp"
PROGRAM_SOURCE = HERE / "service_lb.bpf.c"
LOOP_SOURCE = HERE / "test_run.c"
LIBBPF_HEADER = Path("/usr/include/bpf/bpf_helpers.h")  # Debian's libbpf-dev

XDP_PASS, XDP_TX = 2, 3
CONNTRACK_ENTRIES = 2 * 524_288  # two per flow (the flow and its reply): fastpath's default flows


class XdpUnavailable(RuntimeError):
    """Why the kernel reference cannot run here (a missing tool, no BPF, not root)."""


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise XdpUnavailable(f"{command[0]} failed: {done.stderr.strip()[-300:]}")


def _multiarch_include() -> list[str]:
    """clang -target bpf does not search the host's multiarch headers (asm/types.h)."""
    multiarch = sysconfig.get_config_var("MULTIARCH")
    folder = Path("/usr/include", multiarch) if multiarch else None
    return [f"-I{folder}"] if folder and folder.is_dir() else []


def _libbpf() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf")
    if name is None:
        raise XdpUnavailable("libbpf not found (Debian package libbpf1)")
    lib = ctypes.CDLL(name, use_errno=True)
    pointer, integer = ctypes.c_void_p, ctypes.c_int
    for function, restype, argtypes in (
        ("bpf_object__open_file", pointer, [ctypes.c_char_p, pointer]),
        ("bpf_object__load", integer, [pointer]),
        ("bpf_object__close", None, [pointer]),
        ("bpf_object__find_map_by_name", pointer, [pointer, ctypes.c_char_p]),
        ("bpf_object__find_program_by_name", pointer, [pointer, ctypes.c_char_p]),
        ("bpf_map__set_max_entries", integer, [pointer, ctypes.c_uint32]),
        ("bpf_map__fd", integer, [pointer]),
        ("bpf_program__fd", integer, [pointer]),
        ("bpf_map_update_elem", integer, [integer, pointer, pointer, ctypes.c_uint64]),
    ):
        getattr(lib, function).restype = restype
        getattr(lib, function).argtypes = argtypes
    return lib


class KernelXdp:
    """The compiled program and loop; `load(maps)` puts the program and its maps in the kernel."""

    def __init__(self, program_object: Path, loop_library: Path):
        self._libbpf = _libbpf()
        self._object_path = program_object
        self._loop = ctypes.CDLL(str(loop_library))
        self._loop.run_batch.restype = ctypes.c_int
        self._loop.run_batch.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 3 + [
            ctypes.c_size_t, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64),
            ctypes.POINTER(ctypes.c_size_t)]
        self._loop.run_repeated.restype = ctypes.c_int
        self._loop.run_repeated.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32,
                                            ctypes.c_int, ctypes.POINTER(ctypes.c_uint32),
                                            ctypes.POINTER(ctypes.c_uint32)]
        self._object = None
        self.service_lb_fd = self.pass_fd = -1

    @classmethod
    def build(cls, scratch: Path) -> KernelXdp:
        """Compile the program and the loop into `scratch`; XdpUnavailable names what is missing."""
        clang, cc = shutil.which("clang"), shutil.which("cc") or shutil.which("gcc")
        if clang is None:
            raise XdpUnavailable("clang not found (Debian package clang)")
        if cc is None:
            raise XdpUnavailable("no C compiler (cc)")
        if not LIBBPF_HEADER.exists():
            raise XdpUnavailable("libbpf headers not found (Debian package libbpf-dev)")
        program, loop = scratch / "service_lb.bpf.o", scratch / "test_run.so"
        _run([clang, "-O2", "-g", "-target", "bpf", *_multiarch_include(), "-c",
              str(PROGRAM_SOURCE), "-o", str(program)])
        _run([cc, "-O2", "-shared", "-fPIC", "-o", str(loop), str(LOOP_SOURCE), "-lbpf"])
        return cls(program, loop)

    def load(self, maps) -> None:
        """Load the programs with their maps sized for `maps`, and fill them from it (again:
        what was loaded before is closed, conntrack starts empty)."""
        frontends, members, backends = _map_entries(maps)
        self.close()
        lib = self._libbpf
        obj = lib.bpf_object__open_file(str(self._object_path).encode(), None)
        if not obj:
            raise XdpUnavailable(f"cannot open the BPF object: errno {ctypes.get_errno()}")
        self._object = obj
        sizes = {b"conntrack": CONNTRACK_ENTRIES, b"frontends": max(len(frontends), 1),
                 b"members": max(len(members), 1), b"backends": len(backends)}
        for name, size in sizes.items():
            if lib.bpf_map__set_max_entries(lib.bpf_object__find_map_by_name(obj, name), size):
                raise XdpUnavailable(f"cannot size map {name.decode()}")
        failed = lib.bpf_object__load(obj)
        if failed == -errno.EACCES:
            raise XdpUnavailable("the verifier refused the XDP program (libbpf printed its log)")
        if failed:
            raise XdpUnavailable(f"cannot load the XDP program: {os.strerror(-failed)} "
                                 "(BPF needs root or CAP_BPF, and a kernel built with it)")
        self.service_lb_fd = lib.bpf_program__fd(lib.bpf_object__find_program_by_name(obj, b"service_lb"))
        self.pass_fd = lib.bpf_program__fd(lib.bpf_object__find_program_by_name(obj, b"pass"))
        for name, values in ((b"members", members), (b"backends", backends)):
            _fill(lib, obj, name, ((struct.pack("=I", i), value) for i, value in enumerate(values)))
        _fill(lib, obj, b"frontends", frontends.items())

    def track(self, packet: bytes) -> None:
        """A conntrack entry translating the packet's flow to where it already goes (its own
        destination): a packet that runs the established-flow path, lookup, rewrite and
        checksums, and comes out unchanged, so `run_repeated` does the same work every run."""
        saddr, daddr = packet[26:30], packet[30:34]
        ihl = (packet[14] & 0x0F) * 4
        sport, dport = packet[14 + ihl:16 + ihl], packet[16 + ihl:18 + ihl]
        key = saddr + daddr + sport + dport + bytes((packet[23], 0, 0, 0))
        value = daddr + dport + bytes(2)
        _fill(self._libbpf, self._object, b"conntrack", [(key, value)])

    def run_batch(self, buf: bytearray, offsets: array, lengths: array, fd: int | None = None):
        """Every packet through the program once, rewritten in place in `buf`: (verdicts as
        array('I'), the kernel's summed per-run ns)."""
        n = len(offsets)
        verdicts = array("I", bytes(4 * n))
        kernel_ns, failed_at = ctypes.c_uint64(), ctypes.c_size_t()
        view = (ctypes.c_char * len(buf)).from_buffer(buf)
        status = self._loop.run_batch(self.service_lb_fd if fd is None else fd,
                                      ctypes.addressof(view), offsets.buffer_info()[0],
                                      lengths.buffer_info()[0], n, verdicts.buffer_info()[0],
                                      ctypes.byref(kernel_ns), ctypes.byref(failed_at))
        del view
        if status:
            raise XdpUnavailable(f"BPF_PROG_TEST_RUN failed on packet {failed_at.value}: "
                                 f"errno {-status}")
        return verdicts, kernel_ns.value

    def run_repeated(self, packet: bytes, repeat: int, fd: int | None = None) -> tuple[int, int]:
        """One packet `repeat` times in one call (its data is not restored between runs):
        (the last verdict, the kernel's average ns per run)."""
        retval, duration = ctypes.c_uint32(), ctypes.c_uint32()
        status = self._loop.run_repeated(self.service_lb_fd if fd is None else fd, packet,
                                         len(packet), repeat, ctypes.byref(retval),
                                         ctypes.byref(duration))
        if status:
            raise XdpUnavailable(f"BPF_PROG_TEST_RUN failed: errno {-status}")
        return retval.value, duration.value

    def close(self) -> None:
        if self._object:
            self._libbpf.bpf_object__close(self._object)
            self._object = None

    def __enter__(self) -> KernelXdp:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fill(lib: ctypes.CDLL, obj, name: bytes, entries) -> None:
    """Put (key, value) byte strings into the loaded object's map `name`."""
    fd = lib.bpf_map__fd(lib.bpf_object__find_map_by_name(obj, name))
    for key, value in entries:
        if lib.bpf_map_update_elem(fd, key, value, 0):
            raise XdpUnavailable(f"cannot fill map {name.decode()}: errno {ctypes.get_errno()}")


def _map_entries(maps) -> tuple[dict[bytes, bytes], list[bytes], list[bytes]]:
    """fastpath's maps as the program's: frontend key -> (first member, count), the members
    (backend ids, every service's cluster set one after the other), backend id -> address, port.
    Only what the program implements: IPv4 TCP/UDP frontends without a traffic policy or
    source ranges (the standard workload's); anything else raises XdpUnavailable."""
    from fastpath.maps import IPV6, PROTO_TCP, PROTO_UDP

    members: list[bytes] = []
    first: dict[int, tuple[int, int]] = {}
    for service in maps.services:
        first[service.id] = (len(members), len(service.backends))
        members.extend(struct.pack("=I", backend) for backend in service.backends)
    frontends = {}
    for frontend in maps.frontends:
        if (frontend.ip & IPV6 or frontend.proto not in (PROTO_TCP, PROTO_UDP)
                or frontend.local_policy or frontend.source_ranges):
            raise XdpUnavailable(f"the XDP reference implements IPv4 TCP/UDP ClusterIP "
                                 f"frontends only, not {frontend}")
        key = struct.pack("!IH", frontend.ip, frontend.port) + bytes((frontend.proto, 0))
        frontends[key] = struct.pack("=II", *first[frontend.service])
    backends = [bytes(8)]  # id 0 is no backend
    for backend in maps.backends:
        if backend.ip & IPV6:
            raise XdpUnavailable(f"the XDP reference implements IPv4 backends only, not {backend}")
        backends.append(struct.pack("!IH", backend.ip, backend.port) + bytes(2))
    return frontends, members, backends
