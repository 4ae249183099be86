"""Builds the compiled core: the Cython sources in fastpath/ become modules of the fastpath package.

Set FASTPATH_DEBUG=1 to build with Cython bounds/wraparound checks on, C asserts kept and no
optimisation (the build the fuzzers and the debug CI job use).
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTPATH_DEBUG", "") not in ("", "0")

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}
compile_args = ["-O0", "-g", "-UNDEBUG"] if DEBUG else ["-O3"]
macros = [("FASTPATH_DEBUG", "1")] if DEBUG else [("NDEBUG", "1")]
# The core's per-packet steps are one loop's body split into functions for legibility; GCC's
# default growth limits keep the biggest out of line, a call and its spills per packet. With
# these: 487 instructions a packet of the standard batch instead of 516, 0.97 of the time.
CORE_INLINING = () if DEBUG else ("--param", "max-inline-insns-single=2000", "--param", "inline-unit-growth=400")


def extension(module: str, source: str, extra_args: tuple[str, ...] = ()) -> Extension:
    return Extension(
        f"fastpath.{module}",
        [f"fastpath/{source}"],
        include_dirs=["fastpath"],
        extra_compile_args=compile_args + list(extra_args),
        define_macros=macros,
    )


# Directives change the generated C: keep the two builds' C files apart. Cython does not create
# the folder itself on every path (build_ext --inplace from a fresh clone).
BUILD_DIR = "build/cython-debug" if DEBUG else "build/cython"
os.makedirs(os.path.join(BUILD_DIR, "fastpath"), exist_ok=True)

setup(
    ext_modules=cythonize(
        [extension("_core", "core.pyx", CORE_INLINING), extension("_pcap", "pcap.pyx"), extension("_compile", "compile.pyx")],
        include_path=["fastpath"],
        compiler_directives=directives,
        build_dir=BUILD_DIR,
    ),
)
