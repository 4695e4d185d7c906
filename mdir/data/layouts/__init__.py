"""Ingest layouts: one module per way a dataset stores its images (explicit registry).

`get_layout(name, **options)` builds one; an unknown name raises a `ValueError` listing
the valid ones. Generic layouts: folders, paired, list. Dataset layouts of the papers
live next to them (robotcar_seasons, aachen, transient_attributes, tokyo247, revisited,
retrieval_sfm) — each tested on a tiny fixture written in the real layout.
"""

from __future__ import annotations

import importlib
from typing import Any

from mdir.data.layouts.base import BadRow, Item, Layout

# name → "module:Class" (imported lazily so that one layout's optional needs never
# break the others)
LAYOUTS: dict[str, str] = {
    "folders": "mdir.data.layouts.folders:FoldersLayout",
    "paired": "mdir.data.layouts.paired:PairedLayout",
    "list": "mdir.data.layouts.listfile:ListLayout",
    "robotcar_seasons": "mdir.data.layouts.robotcar_seasons:RobotCarSeasonsLayout",
    "aachen": "mdir.data.layouts.aachen:AachenLayout",
    "transient_attributes": "mdir.data.layouts.transient_attributes:TransientAttributesLayout",
    "tokyo247": "mdir.data.layouts.tokyo247:Tokyo247Layout",
    "revisited": "mdir.data.layouts.revisited:RevisitedLayout",
    "retrieval_sfm": "mdir.data.layouts.retrieval_sfm:RetrievalSfMLayout",
}


def get_layout(name: str, **options: Any) -> Layout:
    if name not in LAYOUTS:
        raise ValueError(f"unknown layout {name!r}; choose one of {sorted(LAYOUTS)}")
    mod, cls = LAYOUTS[name].split(":")
    return getattr(importlib.import_module(mod), cls)(**options)


__all__ = ["LAYOUTS", "BadRow", "Item", "Layout", "get_layout"]
