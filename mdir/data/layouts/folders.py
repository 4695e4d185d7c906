"""``SRC/<condition>/**/<image>``: one folder per condition (any depth below it).

Every file below a condition folder is an input (so non-images are counted as
``not_image``, not silently ignored); files directly in SRC have no condition and are
counted as ``malformed_row``. Hidden files/folders are ignored.
"""

from __future__ import annotations

from collections.abc import Iterator

from mdir.data import io
from mdir.data.layouts.base import BadRow, Item, LayoutBase


class FoldersLayout(LayoutBase):
    name = "folders"

    def scan(self, src: str) -> Iterator[Item | BadRow]:
        fs, root = io.get_fs(src)
        root = root.rstrip("/")
        for path in sorted(fs.find(root)):
            rel = path[len(root) :].lstrip("/")
            parts = rel.split("/")
            if any(p.startswith(".") or p.startswith("_tmp.") for p in parts):
                continue
            uri = io.full_uri(fs, path)
            if len(parts) < 2:
                yield BadRow("malformed_row", uri, "file outside a <condition>/ folder")
                continue
            yield Item(source=uri, condition=parts[0])
