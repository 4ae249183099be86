#!/usr/bin/env bash
# Build fastpath (the whole package, compiled core included) into a throwaway folder for fuzzing,
# without touching the repository's own in-place build:
#
#   tests/fuzz/build_core.sh debug DEST [REV]   # FASTPATH_DEBUG=1: bounds checks, -O0 -g, asserts
#   tests/fuzz/build_core.sh asan  DEST [REV]   # the same plus -fsanitize=address
#
# REV: a git revision to build (default: the working tree as it is, uncommitted changes included).
# Then run with PYTHONPATH=DEST (see tests/fuzz/README.md; an ASan build also needs LD_PRELOAD).
set -euo pipefail
mode=${1:?usage: build_core.sh debug|asan DEST [REV]}
dest=${2:?usage: build_core.sh debug|asan DEST [REV]}
rev=${3:-}
repo=$(cd "$(dirname "$0")/../.." && pwd)
src=$(mktemp -d "${TMPDIR:-/tmp}/fastpath-fuzz-src.XXXXXX")
trap 'rm -rf "$src"' EXIT

if [ -n "$rev" ]; then
    git -C "$repo" archive "$rev" | tar -x -C "$src"
else
    # The working tree minus ignored files (build products, caches, venvs).
    git -C "$repo" ls-files -z --cached --others --exclude-standard \
        | (cd "$repo" && xargs -0 cp --parents -t "$src" 2>/dev/null || true)
fi

export FASTPATH_DEBUG=1
case "$mode" in
    debug) ;;
    asan)
        export CFLAGS="-fsanitize=address -fno-omit-frame-pointer ${CFLAGS:-}"
        export LDFLAGS="-fsanitize=address ${LDFLAGS:-}"
        ;;
    *) echo "unknown mode $mode (debug or asan)" >&2; exit 2 ;;
esac
rm -rf "$dest"
(cd "$src" && python -m pip install --quiet --no-deps --no-build-isolation --target "$dest" .)
preload=""
if [ "$mode" = asan ]; then preload=$(gcc -print-file-name=libasan.so); fi
LD_PRELOAD="$preload" ASAN_OPTIONS=detect_leaks=0 PYTHONPATH="$dest" \
    python -c "import fastpath._core as c; assert c.DEBUG_BUILD; print('built', c.__file__)"
