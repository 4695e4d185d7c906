"""``SRC/A/<name>`` and ``SRC/B/<name>`` with matching file names (pix2pix pairs).

Pairs are matched by file stem (``x.jpg`` in A with ``x.png`` in B is a pair). A file
without a partner is counted as ``unpaired``. Condition names default to "A" and "B"
(`condition_a` / `condition_b` options, e.g. day / night).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

from mdir.data import io
from mdir.data.layouts.base import BadRow, Item, LayoutBase


class PairedLayout(LayoutBase):
    name = "paired"
    paired = True

    def __init__(self, condition_a: str = "A", condition_b: str = "B") -> None:
        self.condition_a = condition_a
        self.condition_b = condition_b

    def _files(self, src: str, sub: str) -> dict[str, str]:
        fs, root = io.get_fs(io.join(src, sub))
        if not fs.exists(root):
            raise io.DataPathError(f"paired layout needs {io.join(src, sub)!r}")
        out = {}
        for path in sorted(fs.find(root)):
            base = posixpath.basename(path)
            if base.startswith("."):
                continue
            out.setdefault(
                posixpath.splitext(path[len(root) :].lstrip("/"))[0], io.full_uri(fs, path)
            )
        return out

    def scan(self, src: str) -> Iterator[Item | BadRow]:
        a, b = self._files(src, "A"), self._files(src, "B")
        for stem in sorted(set(a) | set(b)):
            if stem not in b:
                yield BadRow("unpaired", a[stem], "no partner in B/")
            elif stem not in a:
                yield BadRow("unpaired", b[stem], "no partner in A/")
            else:
                yield Item(
                    source=a[stem],
                    condition=self.condition_a,
                    source_b=b[stem],
                    condition_b=self.condition_b,
                    place=stem,
                )
