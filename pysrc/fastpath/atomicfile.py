"""Output files written atomically: into a temporary file beside the target, renamed over it
only once complete, so a failure or Ctrl-C never leaves a half-written file (and a file that was
there before stays as it was). Shared by the capture writer, the trace writer and --stats;
AtomicWriter is the two writers' commit/abort lifecycle; PreparedOutput a temporary file opened
early, its space allocated while the caller does other work."""
from __future__ import annotations

import os
import stat
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11 on


def _special_target(path: str | os.PathLike[str]) -> os.stat_result | None:
    """The target's stat when it exists and is not a regular file (a device, a FIFO, a folder):
    such a target is not written through a temporary file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return None if stat.S_ISREG(st.st_mode) else st


def open_beside(path: str) -> tuple[int, str | None]:
    """A descriptor to write `path` through, and the temporary file's name.

    The temporary file is new (O_EXCL, a random name) in the target's folder, so the final
    rename stays on one file system. A target that exists and is not a regular file (/dev/null,
    a FIFO) is opened and written in place: the name returned is then None.
    """
    st = _special_target(path)
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(f"{path}: is a directory")
        return os.open(path, os.O_WRONLY | os.O_CLOEXEC), None
    directory, name = os.path.split(os.path.abspath(path))
    while True:
        temporary = os.path.join(directory, f".{name}.{os.urandom(4).hex()}.tmp")
        try:
            # 0o666 and the umask: the final file gets the usual permissions.
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
        except OSError as error:  # name the file the user asked for, not the temporary one
            raise type(error)(error.errno, error.strerror, path) from None
        return fd, temporary


class PreparedOutput:
    """The temporary file of an output opened before anything is ready to be written to it,
    its space allocated meanwhile on a thread of its own (prepare_output). A writer given it
    instead of a path takes it over (take()); until then discard() removes it.

    On tmpfs about two thirds of what writing a file costs is the kernel allocating its pages.
    A command with other work to do first (the CLI loading the cluster state) has them
    allocated by the other core meanwhile, and the replay's writes then only copy. What the
    writes do not fill is released when the writer commits (truncate_reserved).
    """

    def __init__(self, path: str | os.PathLike[str], size: int) -> None:
        import threading

        from fastpath._pcap import SpaceReservation

        self.path = os.fspath(path)
        fd, temporary = open_beside(self.path)
        if temporary is None:
            os.close(fd)
            raise ValueError(f"{self.path}: not a regular file, nothing to prepare")
        self._fd: int | None = fd
        self._tmp: str | None = temporary
        self._thread: threading.Thread | None = None
        try:
            self._reservation = SpaceReservation(fd, max(size, 0))
            thread = threading.Thread(target=self._reservation.run, name="fastpath-reserve",
                                      daemon=True)
            thread.start()
        except BaseException:
            self.discard()
            raise
        self._thread = thread

    def _stop(self) -> None:
        if self._thread is not None:
            self._reservation.cancel()
            self._thread.join()
            self._thread = None

    def take(self) -> tuple[int, str]:
        """Stop allocating (after the step under way) and hand over the descriptor and the
        temporary file's name, which the caller then owns."""
        self._stop()
        if self._fd is None or self._tmp is None:
            raise ValueError(f"{self.path}: prepared output already taken or discarded")
        taken = self._fd, self._tmp
        self._fd = self._tmp = None
        return taken

    def discard(self) -> None:
        """Stop allocating and remove the temporary file, unless a writer took it over."""
        self._stop()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        discard(None, self._tmp)
        self._tmp = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def __del__(self) -> None:
        if getattr(self, "_tmp", None) is not None:
            self.discard()


def prepare_output(path: str | os.PathLike[str], size: int) -> PreparedOutput | None:
    """Open the temporary file for `path` now and allocate `size` bytes of it in the background
    (PreparedOutput); None when `path` exists and is not a regular file (a device or a FIFO is
    written in place, opened by its writer). Errors are open_beside's."""
    if _special_target(path) is not None:
        return None
    return PreparedOutput(path, size)


def truncate_reserved(file: IO[Any]) -> None:
    """Release the space reserved beyond what was written to `file` (flushed first)."""
    file.flush()
    os.ftruncate(file.fileno(), file.tell())


def move_into_place(file: IO[Any], temporary: str | None, path: str) -> None:
    """Flush and close `file`, then rename the temporary file over `path`."""
    file.flush()
    if temporary is not None:
        os.fsync(file.fileno())  # the rename must not outlive the data on a crash
    file.close()
    if temporary is not None:
        os.replace(temporary, path)


def discard(file: IO[Any] | None, temporary: str | None) -> None:
    """Close `file` and remove the temporary file, quietly (this runs on error paths)."""
    if file is not None and not file.closed:
        try:
            file.close()
        except OSError:
            pass
    if temporary is not None:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass


class AtomicWriter:
    """The commit-on-success lifecycle shared by the capture and trace writers.

    A subclass opens `_file` (through _open_target, which sets `path` and keeps the temporary
    name in `_tmp`, or a caller's stream with `_owned` False). As a context manager it commits on
    normal exit and discards everything on an exception (KeyboardInterrupt included); outside
    `with`, call commit() then close(): close() without commit() discards the output, and so
    does the garbage collector for a writer abandoned open.
    """

    _what = "writer"  # for the "already committed or closed" message

    path: str | None
    _file: IO[Any] | None

    def __init__(self) -> None:
        self._done = False
        self._tmp: str | None = None
        self._owned = True  # False: a caller's stream, flushed on commit, never closed
        self._file = None
        # True when a temporary file beside the target is written: False for a caller's
        # stream and for a target that is a FIFO or a device (written in place).
        self.regular_file = False
        self._reserved = False  # a PreparedOutput taken over: trim its space on commit

    def _open_target(self, target: str | os.PathLike[str] | PreparedOutput) -> int:
        """The descriptor to write `target` through, a path (open_beside) or a PreparedOutput
        (taken over); sets `path`, `_tmp` and `regular_file`."""
        if isinstance(target, PreparedOutput):
            self.path = target.path
            fd, self._tmp = target.take()
            self._reserved = True
        else:
            self.path = os.fspath(target)
            fd, self._tmp = open_beside(self.path)
        self.regular_file = self._tmp is not None
        return fd

    @property
    def name(self) -> str:
        """The path written, or a description of the stream."""
        if self.path is not None:
            return self.path
        return str(getattr(self._file, "name", "<stream>"))

    def _check_open(self) -> None:
        if self._done:
            raise ValueError(f"{self.name}: {self._what} already committed or closed")

    def commit(self) -> None:
        """Flush, sync and move the output into place (a caller's stream: flush it)."""
        self._check_open()
        self._done = True
        try:
            assert self._file is not None
            if self._owned:
                assert self.path is not None
                if self._reserved:
                    truncate_reserved(self._file)
                move_into_place(self._file, self._tmp, self.path)
                self._tmp = None
            else:
                self._file.flush()
        except BaseException:
            self._discard()
            raise

    def abort(self) -> None:
        """Discard the output (the temporary file); a pre-existing target stays as it was."""
        self._done = True
        self._discard()

    def close(self) -> None:
        """Discard the output unless commit() was called."""
        if not self._done:
            self.abort()

    def _discard(self) -> None:
        discard(self._file if self._owned else None, self._tmp)
        self._tmp = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None and not self._done:
            self.commit()
        else:
            self.close()

    def __del__(self) -> None:
        # An abandoned writer leaves no temporary file behind.
        if getattr(self, "_done", True) is False:
            self.abort()
