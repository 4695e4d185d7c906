"""The synthetic night rule (README, "Synthetic data"): every light source of a night image
sits on the geometry of its place — lit windows on facades, lamp light around lamp posts."""

import numpy as np
from scipy.ndimage import distance_transform_edt

from mdir.data.synth import geometry_maps, render_place

SIZE = 64
POST_RADIUS = SIZE / 6  # lamp glow extends around the lamp head on top of its post


def _lit(img: np.ndarray) -> np.ndarray:
    """Bright warm pixels: lit windows and lamp heads (R ≥ 200 and R − B ≥ 60)."""
    rgb = img.astype(int)
    return (rgb[..., 0] >= 200) & (rgb[..., 0] - rgb[..., 2] >= 60)


def _explained(lit: np.ndarray, kind: np.ndarray) -> tuple[int, int]:
    """(lit pixels on a facade or near a lamp post, lit pixels)."""
    near_post = distance_transform_edt(kind != 4) <= POST_RADIUS
    return int(((kind == 2) | near_post)[lit].sum()), int(lit.sum())


def _views(places: int = 6, poses: int = 3):
    for place in range(places):
        rows = render_place(place, poses, ["day", "night"], SIZE, seed=0)
        maps = geometry_maps(place, poses, SIZE, seed=0)
        for j, kind in enumerate(maps):
            yield place, rows[2 * j]["image"], rows[2 * j + 1]["image"], kind


def test_night_lights_lie_on_the_places_geometry():
    views = list(_views())
    on, lit, windows, day_lit = 0, 0, 0, 0
    shuffled_on, shuffled_lit = 0, 0
    for _place, day, night, kind in views:
        a, b = _explained(_lit(night), kind)
        on, lit = on + a, lit + b
        far = _lit(night) & (distance_transform_edt(kind != 4) > POST_RADIUS)
        windows += int((far & (kind == 2)).sum())
        day_lit += int(_lit(day).sum())
        # control: the same lights upside down land on sky and road, not on the geometry
        a, b = _explained(_lit(night)[::-1], kind)
        shuffled_on, shuffled_lit = shuffled_on + a, shuffled_lit + b
    assert lit > 500 and windows > 200, (lit, windows)  # there are lights, windows among them
    assert on / lit >= 0.97, on / lit
    assert shuffled_on / shuffled_lit < on / lit - 0.2, (shuffled_on / shuffled_lit, on / lit)
    assert day_lit == 0  # the day image of the same pose has no such lights


def test_night_keeps_the_geometry_visible():
    """Facades and road are lit (ambient + lamps), not black: a translator has something to
    keep, and a night query has something to match."""
    for _place, day, night, kind in _views(places=3, poses=2):
        lum = night.astype(float).mean(-1)
        assert lum[kind == 1].mean() > 8  # the road is not black
        assert lum[kind == 2].mean() > lum[kind == 0].mean()  # facades brighter than the sky
        assert night.mean() < 0.5 * day.mean()
