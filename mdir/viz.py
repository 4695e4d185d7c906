"""Labelled image grids: what a person looks at to judge a translation.

Every grid mdir writes (training samples, the demo's held-out grid, dataset contact sheets)
goes through `labelled_grid`, so each says what its rows and columns are (condition, role,
step) and is upscaled to a size that can be judged by eye (nearest neighbour: no smoothing
that would hide a generator's artefacts).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BG = (255, 255, 255)
FG = (20, 20, 20)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def labelled_grid(
    cells: Sequence[Sequence[np.ndarray]],
    col_titles: Sequence[str] | None = None,
    row_titles: Sequence[str] | None = None,
    title: str | None = None,
    tile: int | None = None,
    pad: int = 4,
) -> np.ndarray:
    """uint8 [H, W, 3] grid of `cells[row][col]` (uint8 HWC images, any sizes; each is
    resized to `tile` × `tile`, default: the first image's side, at least 128 px), with
    column titles above, row titles on the left and an optional title line on top."""
    from PIL import Image, ImageDraw

    rows = [list(r) for r in cells if len(r)]
    if not rows:
        raise ValueError("labelled_grid: no images")
    first = np.asarray(rows[0][0])
    tile = tile or max(128, int(first.shape[0]))
    ncol = max(len(r) for r in rows)
    fsize = max(11, tile // 10)
    font = _font(fsize)
    line = fsize + 2 * pad
    left = 0
    if row_titles:
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        left = max(int(probe.textlength(t, font=font)) for t in row_titles) + 2 * pad
    top = (line if title else 0) + (line if col_titles else 0)
    w = left + ncol * (tile + pad) + pad
    h = top + len(rows) * (tile + pad) + pad
    canvas = Image.new("RGB", (w, h), BG)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad), title, fill=FG, font=font)
    y0 = line if title else 0
    for c, t in enumerate(col_titles or []):
        draw.text((left + pad + c * (tile + pad), y0 + pad), t, fill=FG, font=font)
    for r, row in enumerate(rows):
        y = top + pad + r * (tile + pad)
        if row_titles and r < len(row_titles):
            draw.text((pad, y + tile // 2 - fsize // 2), row_titles[r], fill=FG, font=font)
        for c, img in enumerate(row):
            im = Image.fromarray(np.asarray(img, dtype=np.uint8)).resize(
                (tile, tile), Image.Resampling.NEAREST
            )
            canvas.paste(im, (left + pad + c * (tile + pad), y))
    return np.asarray(canvas)
