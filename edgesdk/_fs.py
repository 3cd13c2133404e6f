"""Atomic file replacement with the permissions of a plain ``open(path, "w")``.

    with replacing(bundle_dir / "manifest.json") as tmp:
        tmp.write_text(text)          # or onnx.save(model, tmp)

tempfile.mkstemp creates its file with mode 0600, and os.replace keeps that mode, so a
bundle written that way is unreadable by other users (a server running as another account,
a shared model directory). The temporary file here is created with 0666, which the kernel
reduces by the umask, exactly as open() would; the process umask is never read or changed
(os.umask can only be read by setting it, which races with other threads creating files).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replacing(target: str | os.PathLike) -> Iterator[Path]:
    """A fresh, empty temporary file next to `target`; when the block succeeds it replaces
    `target` atomically, when it raises it is removed and `target` is left as it was."""
    target = Path(target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        break
    else:  # pragma: no cover - 100 collisions of 48 random bits
        raise FileExistsError(f"no free temporary name next to {target}")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
