"""Files named inside documents we read (plans, manifests, variant tables).

A document from elsewhere may name ``../../etc/passwd`` or a symlink that leads out of
its folder; every reader resolves the names it is given through ``file_inside``, so one
rule decides what a document may point at.
"""

from __future__ import annotations

from pathlib import Path


def file_inside(folder: Path, name: object, subfolders: bool = False) -> Path:
    """The regular file ``name`` names in ``folder``, still inside it after symlinks.

    ``subfolders`` False: ``name`` must be a plain file name; True: a relative path below
    ``folder``. Raises ``ValueError`` saying why not (callers add which document and field).
    """
    if not isinstance(name, str) or name in ("", ".", ".."):
        raise ValueError(f"model file {name!r} must be a file name inside {folder}")
    if not subfolders and ("/" in name or "\\" in name):
        raise ValueError(f"model file {name!r} must be a plain file name inside {folder}")
    root = folder.resolve()
    try:
        path = (folder / name).resolve()
        inside = path.is_relative_to(root) and path.is_file()
    except (OSError, ValueError):  # a NUL byte, a name too long, a symlink loop
        inside = False
    if not inside:
        raise ValueError(f"model file {name!r} is not a file inside {folder}")
    return folder / name
