"""Files named inside documents we read (plans, manifests, variant tables).

A document from elsewhere may name ``../../etc/passwd`` or a symlink that leads out of
its folder; every reader resolves the names it is given through ``file_inside``, so one
rule decides what a document may point at.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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


def read_json_document(path: Path, fmt: str, max_bytes: int) -> dict[str, Any]:
    """``path`` as a JSON object whose ``format`` is ``fmt``, read only when it is at most
    ``max_bytes`` (a hostile file may be huge). Raises ``ValueError`` saying what is wrong."""
    if path.stat().st_size > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes")
    try:
        doc = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, deep nesting, huge ints
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise ValueError(f"'format' must be {fmt!r}")
    return doc
