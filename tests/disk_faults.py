"""A full disk under the DP-SGD journal, shared by the journal and fault-injection tests."""

from __future__ import annotations

import errno
import os


def fill_the_disk_in_journal_line(monkeypatch, *, record: str, torn: bool) -> None:
    """The next journal line holding ``record`` hits a full disk, after half of it (``torn``) or none of it landed.

    Patches the ``open`` the journal module uses, so only appends to a journal are affected.
    """
    import privimage.training.journal as journal_module

    real_open = open

    class FullDisk:
        def __init__(self, handle):
            self._handle = handle

        def write(self, data):
            if record in data.decode(errors="replace"):
                if torn:
                    self._handle.write(data[: len(data) // 2])
                    self._handle.flush()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self._handle.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._handle.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self._handle, name)

    def journal_open(path, mode="r", *args, **kwargs):
        # The journal appends its lines in mode "ab" and opens nothing else that way.
        handle = real_open(path, mode, *args, **kwargs)
        return FullDisk(handle) if mode == "ab" else handle

    monkeypatch.setattr(journal_module, "open", journal_open, raising=False)
