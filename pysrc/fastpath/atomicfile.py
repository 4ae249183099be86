"""Output files written atomically: into a temporary file beside the target, renamed over it
only once complete, so a failure or Ctrl-C never leaves a half-written file (and a file that was
there before stays as it was). Shared by the capture writer, the trace writer and --stats."""
from __future__ import annotations

import os
import secrets
import stat
from typing import IO, Any


def open_beside(path: str) -> tuple[int, str | None]:
    """A descriptor to write `path` through, and the temporary file's name.

    The temporary file is new (O_EXCL, a random name) in the target's folder, so the final
    rename stays on one file system. A target that exists and is not a regular file (/dev/null,
    a FIFO) is opened and written in place: the name returned is then None.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(f"{path}: is a directory")
        return os.open(path, os.O_WRONLY | os.O_CLOEXEC), None
    directory, name = os.path.split(os.path.abspath(path))
    while True:
        temporary = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            # 0o666 and the umask: the final file gets the usual permissions.
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
        except OSError as error:  # name the file the user asked for, not the temporary one
            raise type(error)(error.errno, error.strerror, path) from None
        return fd, temporary


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
