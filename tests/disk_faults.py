"""Files that fail the way a full disk does, shared by the journal and fault-injection tests."""

from __future__ import annotations

import errno
import os


def disk_full() -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class WrappedFile:
    """A file object that behaves as the one it wraps unless a subclass overrides ``write``."""

    def __init__(self, handle):
        self._handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._handle.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._handle, name)


class FailingFile(WrappedFile):
    """A file object whose ``write`` puts half the bytes on disk, then fails the way ``on_write`` says."""

    def __init__(self, handle, on_write):
        super().__init__(handle)
        self._on_write = on_write

    def write(self, data):
        self._handle.write(data[: len(data) // 2])
        self._handle.flush()
        self._on_write()


def fill_the_disk_in_journal_line(monkeypatch, *, record: str, torn: bool) -> None:
    """The next journal line holding ``record`` hits a full disk, after half of it (``torn``) or none of it landed.

    Patches the ``open`` the journal module uses, so only appends to a journal are affected.
    """
    import privimage.training.journal as journal_module

    real_open = open

    class FullDisk(WrappedFile):
        def write(self, data):
            if record in data.decode(errors="replace"):
                if torn:
                    self._handle.write(data[: len(data) // 2])
                    self._handle.flush()
                disk_full()
            return self._handle.write(data)

    def journal_open(path, mode="r", *args, **kwargs):
        # The journal appends its lines in mode "ab" and opens nothing else that way.
        handle = real_open(path, mode, *args, **kwargs)
        return FullDisk(handle) if mode == "ab" else handle

    monkeypatch.setattr(journal_module, "open", journal_open, raising=False)
