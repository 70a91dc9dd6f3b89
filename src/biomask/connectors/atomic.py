"""Atomic output: write under a temporary name, fsync, rename into place on commit.

Every file sink stages its output here, so there is one commit path for all of them:

* :class:`StagedFile` opens ``.<name>.tmp-<pid>-<random>`` beside the final name;
  :meth:`StagedFile.commit` flushes, fsyncs and renames it over the final name
  (``os.replace``, atomic on POSIX) and fsyncs the directory.
* :class:`StagedDir` builds a directory under the same kind of name; its commit fsyncs
  every directory in it and renames it into place. Replacing an existing directory moves
  the old one aside first, so at no moment does the final name hold a partial output.
* ``abort()``, an exception, or a killed process leaves the final name as it was. The
  temporaries of writers whose process is gone are swept the next time the same output
  is staged.
* An existing output is refused unless ``overwrite``: the old output stays readable until
  the new one commits. Files are never appended to.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import IO

from biomask.errors import ConnectorError, OutputExistsError

__all__ = ["StagedDir", "StagedFile", "fsync_dir", "remove"]


def _exists_error(final: Path) -> OutputExistsError:
    return OutputExistsError(f"output {final} exists; pass --overwrite to replace it")


def _stage_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _prepare(final: Path, *, overwrite: bool, append: bool) -> None:
    """Refuse what cannot be written; make the parent; sweep dead writers' temporaries."""
    if append:
        raise ConnectorError(
            f"cannot append to {final}: appending is supported for postgresql outputs only"
        )
    if (final.exists() or final.is_symlink()) and not overwrite:
        raise _exists_error(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConnectorError(f"cannot write {final}: {exc.strerror or exc}") from exc
    _sweep_stale(final)


def _install(tmp: Path, final: Path, overwrite: bool) -> None:
    """Move ``tmp`` to ``final`` atomically (files) or as close to it as POSIX allows (dirs)."""
    if final.exists() or final.is_symlink():
        if not overwrite:
            raise _exists_error(final)
        if final.is_dir() and not final.is_symlink():
            # rename() cannot replace a non-empty directory: move the old one aside first;
            # at no moment does the final name hold a partial output.
            old = final.with_name(f".{final.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
            os.rename(final, old)
            os.rename(tmp, final)
            fsync_dir(final.parent)
            shutil.rmtree(old, ignore_errors=True)
            return
    if tmp.is_dir() and final.exists():
        final.unlink()
    os.replace(tmp, final)
    fsync_dir(final.parent)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_stale(final: Path) -> None:
    """Remove temporaries left by killed writers of the same output (their pid is gone)."""
    prefix = f".{final.name}.tmp-"
    try:
        entries = list(final.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        pid_text = entry.name[len(prefix) :].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            remove(entry)


def remove(path: Path) -> None:
    """Delete a file or directory tree; a missing one is not an error."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename in it survives a crash (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class StagedFile:
    """One output file written under a temporary name, renamed into place on commit.

    Parameters
    ----------
    final:
        The name the file will have once committed.
    overwrite:
        Replace an existing ``final`` (on commit, atomically).
    append:
        Always refused (a file cannot take rows atomically); accepted so the message names
        the output and says where appending works.

    Attributes
    ----------
    path:
        The temporary file (``.<name>.tmp-<pid>-<random>`` beside ``final``).
    file:
        The open, writable temporary file; None once committed or aborted.

    Raises
    ------
    OutputExistsError
        ``final`` exists and ``overwrite`` is false.
    ConnectorError
        ``append``, or the temporary file cannot be created.
    """

    def __init__(self, final: Path, *, overwrite: bool = False, append: bool = False) -> None:
        _prepare(final, overwrite=overwrite, append=append)
        self.final = final
        self.overwrite = overwrite
        self.path = _stage_name(final)
        self.committed = False
        try:
            self.file: IO[bytes] | None = open(self.path, "xb")  # noqa: SIM115
        except OSError as exc:
            self.file = None
            remove(self.path)
            raise ConnectorError(f"cannot write {final}: {exc.strerror or exc}") from exc

    def commit(self) -> None:
        """Flush, fsync and close the file, then rename it to the final name.

        Raises
        ------
        OutputExistsError
            ``final`` appeared meanwhile and ``overwrite`` is false.
        ConnectorError
            Aborted earlier, or the disk refused (the temporary is removed).
        """
        if self.committed:
            return
        if self.file is None:
            raise ConnectorError(f"cannot commit {self.final}: the sink was aborted")
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            self.file = None
            _install(self.path, self.final, self.overwrite)
        except OSError as exc:
            self.abort()
            raise ConnectorError(f"cannot write {self.final}: {exc.strerror or exc}") from exc
        self.committed = True

    def abort(self) -> None:
        """Close and delete the temporary file; the final name is untouched."""
        if self.committed:
            return
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
            self.file = None
        remove(self.path)


class StagedDir:
    """One output directory built under a temporary name, renamed into place on commit.

    Parameters and errors as :class:`StagedFile`; :attr:`path` is the temporary directory,
    created empty, in which the caller writes (and fsyncs) its files.
    """

    def __init__(self, final: Path, *, overwrite: bool = False, append: bool = False) -> None:
        _prepare(final, overwrite=overwrite, append=append)
        self.final = final
        self.overwrite = overwrite
        self.path = _stage_name(final)
        self.committed = False
        try:
            self.path.mkdir()
        except OSError as exc:
            raise ConnectorError(f"cannot write {final}: {exc.strerror or exc}") from exc

    def commit(self) -> None:
        """fsync every directory in the tree, then rename it to the final name.

        The caller has closed and fsynced its files. Errors as :meth:`StagedFile.commit`.
        """
        if self.committed:
            return
        if not self.path.is_dir():
            raise ConnectorError(f"cannot commit {self.final}: the sink was aborted")
        try:
            for d in sorted({p.parent for p in self.path.rglob("*")} | {self.path}):
                fsync_dir(d)
            _install(self.path, self.final, self.overwrite)
        except OSError as exc:
            self.abort()
            raise ConnectorError(f"cannot write {self.final}: {exc.strerror or exc}") from exc
        self.committed = True

    def abort(self) -> None:
        """Delete the temporary directory; the final name is untouched."""
        if not self.committed:
            remove(self.path)
