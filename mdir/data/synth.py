"""Synthetic multi-condition dataset: street scenes ray-cast from known camera poses.

Every place is a street (road, pavement, box buildings with windows, lamp posts, sky)
in its own local frame; places are 1 km apart in the world. Each place is seen from
`poses_per_place` camera poses that differ by < 3 m from the place centre and < 3.5° in
yaw, so any two poses of a place are within the MDUIT positive thresholds (7 m, 8°) and
poses of different places are far apart. Every pose is rendered under every condition
from the same geometry:

* day: bright, blue sky, sun shading;
* dusk: warm low light, orange sky, some lit windows;
* night: dark blue ambient light, street lamps that light the ground and facades around
  them (Σ cos θ / (1 + d²) over the lamps) and glow, a random share of windows lit, and
  a noisier exposure — every light source sits on the place's geometry;
* snow: white ground and roofs, pale sky, flakes;
* rain: grey, wet dark road, streaks, blur.

Poses are stored as (x, y, z, qw, qx, qy, qz): camera centre in metres and the
camera-to-world rotation (a yaw about the world z axis; the camera looks along +x of
its own frame). Splits by pose index: the last pose of each place → test, the one before
→ val (when there are ≥ 3), the rest → train, so every split holds every condition.

Rendering is vectorised numpy (one ray-box pass per pose, shading per condition).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mdir.data import io
from mdir.data.images import encode_jpeg
from mdir.data.manifest import Manifest, write_manifest
from mdir.data.schema import rows_to_table
from mdir.data.shards import remove_stale_shards, write_shard

CONDITIONS = ("day", "night", "dusk", "snow", "rain")
PLACE_SPACING_M = 1000.0
MAX_OFFSET_M = 3.0
MAX_YAW_DEG = 3.5
CAMERA_HEIGHT_M = 1.7


@dataclass
class _Scene:
    boxes: np.ndarray  # [K, 6] xmin, xmax, ymin, ymax, zmin, zmax (place-local frame)
    colors: np.ndarray  # [K, 3] facade albedo
    lit: np.ndarray  # [K] fraction of lit windows at night
    lamps: np.ndarray  # [L, 3] lamp head positions
    road_half: float


def _make_scene(rng: np.random.Generator) -> _Scene:
    """Street along +x: buildings on both sides, lamp posts on the pavement."""
    road_half = rng.uniform(3.0, 5.0)
    boxes, colors = [], []
    for side in (-1.0, 1.0):
        x = rng.uniform(-6.0, 2.0)
        while x < 110.0:
            width = rng.uniform(7.0, 18.0)
            setback = road_half + rng.uniform(2.0, 5.0)
            depth = rng.uniform(6.0, 12.0)
            height = rng.uniform(5.0, 28.0)
            y0, y1 = (setback, setback + depth) if side > 0 else (-setback - depth, -setback)
            boxes.append([x, x + width, y0, y1, 0.0, height])
            colors.append(rng.uniform(0.25, 0.85, 3) * np.array([1.0, 0.9, 0.8]))
            x += width + rng.uniform(0.5, 6.0)
    lamps = []
    for side in (-1.0, 1.0):
        for lx in np.arange(rng.uniform(4, 12), 90.0, rng.uniform(16, 24)):
            lamps.append([lx, side * (road_half + 0.8), 5.0])
    # lamp posts as thin boxes
    for lx, ly, lz in lamps:
        boxes.append([lx - 0.12, lx + 0.12, ly - 0.12, ly + 0.12, 0.0, lz])
        colors.append(np.array([0.2, 0.2, 0.22]))
    k = len(boxes)
    lit = rng.uniform(0.2, 0.7, k)
    lit[-len(lamps) :] = 0.0
    return _Scene(np.array(boxes), np.array(colors), lit, np.array(lamps), road_half)


def _rays(size: int, yaw: float, pitch: float, fov_deg: float = 70.0) -> np.ndarray:
    """Unit ray directions [H, W, 3] of a pinhole camera (x forward, y left, z up)."""
    t = math.tan(math.radians(fov_deg) / 2)
    v, u = np.meshgrid(np.linspace(1, -1, size) * t, np.linspace(-1, 1, size) * t, indexing="ij")
    d = np.stack([np.ones_like(u), -u, v], -1)
    cp, sp = math.cos(pitch), math.sin(pitch)
    d = d @ np.array([[cp, 0, -sp], [0, 1, 0], [sp, 0, cp]]).T  # pitch about y
    cy, sy = math.cos(yaw), math.sin(yaw)
    d = d @ np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]]).T  # yaw about z
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


@dataclass
class _Geometry:
    t: np.ndarray  # [P] hit distance (inf = sky)
    kind: np.ndarray  # [P] 0 sky, 1 ground, 2 facade, 3 roof
    box: np.ndarray  # [P] box index (facade/roof)
    normal: np.ndarray  # [P, 3]
    point: np.ndarray  # [P, 3]
    dirs: np.ndarray  # [P, 3]


def _trace(scene: _Scene, origin: np.ndarray, dirs: np.ndarray) -> _Geometry:
    p = dirs.reshape(-1, 3)
    n = p.shape[0]
    inv = (1.0 / np.where(np.abs(p) < 1e-9, 1e-9, p)).astype(np.float32)
    b = scene.boxes.astype(np.float32)
    o = origin.astype(np.float32)
    lo = (b[None, :, 0::2] - o[None, None, :]) * inv[:, None, :]  # [P, K, 3] slab entry/exit
    hi = (b[None, :, 1::2] - o[None, None, :]) * inv[:, None, :]
    tnear3 = np.minimum(lo, hi)
    tfar = np.maximum(lo, hi).min(-1)
    tnear = tnear3.max(-1)
    hit = (tnear <= tfar) & (tfar > 0) & (tnear > 0)
    tb = np.where(hit, tnear, np.inf)
    k = tb.argmin(1)
    t_box = tb[np.arange(n), k]
    axis = tnear3[np.arange(n), k].argmax(-1)
    t_ground = np.where(
        p[:, 2] < -1e-6, -origin[2] / np.where(p[:, 2] < -1e-6, p[:, 2], -1), np.inf
    )
    kind = np.zeros(n, np.int8)
    t = np.minimum(t_box, t_ground)
    kind[np.isfinite(t_ground) & (t_ground <= t_box)] = 1
    on_box = np.isfinite(t_box) & (t_box < t_ground)
    kind[on_box] = np.where(axis[on_box] == 2, 3, 2)
    normal = np.zeros((n, 3))
    normal[np.arange(n), axis] = -np.sign(p[np.arange(n), axis])
    normal[kind == 1] = (0, 0, 1)
    tt = np.where(np.isfinite(t), t, 0.0)
    point = origin[None] + p * tt[:, None]
    return _Geometry(t, kind, k, normal, point, p)


#: Lamp power per condition (× `_lamp_irradiance`) and its warm sodium-like colour.
LAMP_POWER = {"night": 6.0, "dusk": 3.0}
LAMP_COLOUR = np.array([1.0, 0.80, 0.50])

_PALETTE = {
    #        sky top          sky horizon       light colour       ambient  sun
    "day": ((0.30, 0.50, 0.90), (0.70, 0.82, 0.95), (1.00, 0.98, 0.92), 0.45, 0.65),
    "dusk": ((0.25, 0.20, 0.45), (0.98, 0.55, 0.30), (1.00, 0.62, 0.35), 0.22, 0.35),
    "night": ((0.01, 0.015, 0.05), (0.07, 0.06, 0.10), (0.35, 0.40, 0.60), 0.10, 0.0),
    "snow": ((0.72, 0.74, 0.78), (0.88, 0.89, 0.91), (0.95, 0.97, 1.00), 0.65, 0.25),
    "rain": ((0.38, 0.40, 0.43), (0.55, 0.57, 0.60), (0.75, 0.78, 0.82), 0.40, 0.10),
}


def _shade(
    scene: _Scene,
    g: _Geometry,
    cond: str,
    size: int,
    cam: np.ndarray,
    yaw: float,
    pitch: float,
    rng: np.random.Generator,
) -> np.ndarray:
    if cond not in _PALETTE:
        raise ValueError(f"unknown synthetic condition {cond!r}; choose from {list(_PALETTE)}")
    sky_top, sky_hor, light, ambient, sun = (
        np.array(x) if isinstance(x, tuple) else x for x in _PALETTE[cond]
    )
    n = g.t.shape[0]
    img = np.zeros((n, 3))
    # sky: vertical gradient
    h = np.clip(g.dirs[:, 2] * 2.5, 0, 1)[:, None]
    sky = sky_hor * (1 - h) + sky_top * h
    img[:] = sky
    sun_dir = np.array([0.5, -0.6, 0.62])
    sun_dir /= np.linalg.norm(sun_dir)
    lambert = np.clip(g.normal @ sun_dir, 0, 1)
    lum = (ambient + sun * lambert)[:, None] * light
    if cond in LAMP_POWER:
        lum = lum + LAMP_POWER[cond] * _lamp_irradiance(scene, g)[:, None] * LAMP_COLOUR
    # ground: road, lane marks, pavement
    gm = g.kind == 1
    gx, gy = g.point[gm, 0], g.point[gm, 1]
    road = np.abs(gy) < scene.road_half
    albedo = np.where(road[:, None], np.array([0.28, 0.28, 0.30]), np.array([0.55, 0.52, 0.48]))
    lane = road & (np.abs(gy) < 0.12) & (np.mod(gx, 6.0) < 3.0)
    albedo[lane] = (0.9, 0.9, 0.85)
    if cond == "snow":
        albedo = np.where(road[:, None], np.array([0.78, 0.78, 0.80]), np.array([0.97, 0.97, 1.0]))
    if cond == "rain":
        albedo = albedo * 0.6  # wet
    img[gm] = albedo * lum[gm]
    # facades with windows
    fm = g.kind == 2
    bi = g.box[fm]
    pt = g.point[fm]
    along = np.where(np.abs(g.normal[fm, 0]) > 0.5, pt[:, 1], pt[:, 0])
    win = (
        (np.mod(along, 3.0) > 0.9)
        & (np.mod(along, 3.0) < 2.2)
        & (np.mod(pt[:, 2], 3.2) > 1.0)
        & (np.mod(pt[:, 2], 3.2) < 2.4)
        & (pt[:, 2] > 1.0)
    )
    win &= scene.lit[bi] > 0  # lamp posts have no windows
    base = scene.colors[bi]
    col = np.where(win[:, None], np.array([0.18, 0.22, 0.28]), base) * lum[fm]
    if cond in ("night", "dusk"):
        cell = np.floor(along / 3.0) * 131 + np.floor(pt[:, 2] / 3.2) * 17 + bi * 7
        on = win & (
            np.mod(np.sin(cell) * 43758.5453, 1.0)
            < scene.lit[bi] * (1.0 if cond == "night" else 0.4)
        )
        col[on] = np.array([1.0, 0.82, 0.45]) * (0.9 if cond == "night" else 0.7)
    img[fm] = col
    # roofs
    rm = g.kind == 3
    roof = scene.colors[g.box[rm]] * 0.7
    if cond == "snow":
        roof = np.full_like(roof, 0.96)
    img[rm] = roof * lum[rm]
    # aerial perspective: far things fade to the horizon colour
    hitm = g.kind > 0
    fog = np.exp(-g.t[hitm] / (60.0 if cond in ("rain", "snow") else 160.0))[:, None]
    img[hitm] = img[hitm] * fog + sky_hor * (1 - fog)
    img = img.reshape(size, size, 3)
    if cond in ("night", "dusk"):
        img = _lamp_glow(img, scene, cam, yaw, pitch, cond)
    if cond == "snow":
        m = rng.random((size, size)) < 0.012
        img[m] = 1.0
    if cond == "rain":
        img = _rain(img, rng)
    noise = 0.03 if cond == "night" else 0.012  # a night exposure is noisier
    img = img * rng.uniform(0.92, 1.08) + rng.normal(0, noise, img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _lamp_irradiance(scene: _Scene, g: _Geometry) -> np.ndarray:
    """Street-lamp light reaching each hit point: Σ_lamps cos θ / (1 + d²), d in metres from
    the lamp head, θ between the surface normal and the lamp (0 for sky and shadowed faces),
    so pools of light sit under the lamps and on the facades beside them."""
    out = np.zeros(g.t.shape[0])
    hit = g.kind > 0
    if not hit.any() or len(scene.lamps) == 0:
        return out
    to_lamp = scene.lamps[None, :, :] - g.point[hit][:, None, :]  # [P, L, 3]
    d2 = (to_lamp**2).sum(-1)
    cos = np.clip((to_lamp * g.normal[hit][:, None, :]).sum(-1) / np.sqrt(d2 + 1e-9), 0, 1)
    out[hit] = (cos / (1.0 + d2)).sum(-1)
    return out


def _lamp_glow(
    img: np.ndarray,
    scene: _Scene,
    cam: np.ndarray,
    yaw: float,
    pitch: float,
    cond: str,
    fov_deg: float = 70.0,
) -> np.ndarray:
    size = img.shape[0]
    rel = scene.lamps - cam[None]
    cy, sy = math.cos(-yaw), math.sin(-yaw)
    x = cy * rel[:, 0] - sy * rel[:, 1]
    y = sy * rel[:, 0] + cy * rel[:, 1]
    z = rel[:, 2]
    cp, sp = math.cos(-pitch), math.sin(-pitch)
    x, z = cp * x - sp * z, sp * x + cp * z
    front = x > 0.5
    t = math.tan(math.radians(fov_deg) / 2)
    u = (-y[front] / x[front] / t + 1) / 2 * (size - 1)
    v = (1 - z[front] / x[front] / t) / 2 * (size - 1)
    r = np.maximum(size * 0.6 / x[front], 0.6)
    yy, xx = np.mgrid[0:size, 0:size]
    d2 = (xx[None] - u[:, None, None]) ** 2 + (yy[None] - v[:, None, None]) ** 2
    glow = np.exp(-d2 / (2 * r[:, None, None] ** 2)).sum(0)
    strength = 1.0 if cond == "night" else 0.35
    return img + strength * glow[..., None] * np.array([1.0, 0.85, 0.55])


def _rain(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = img.shape[0]
    streaks = np.zeros((size, size))
    n = max(size * size // 500, 1)
    ys, xs = rng.integers(0, size, n), rng.integers(0, size, n)
    length = max(size // 10, 2)
    for i in range(length):  # diagonal streaks, vectorised over drops
        streaks[np.clip(ys + i, 0, size - 1), np.clip(xs + i // 3, 0, size - 1)] = 1.0
    img = img * 0.85 + 0.12 * streaks[..., None]
    # 3x3 box blur
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    img = sum(p[i : i + size, j : j + size] for i in range(3) for j in range(3)) / 9.0
    grey = img.mean(-1, keepdims=True)
    return 0.6 * img + 0.4 * grey


def yaw_quaternion(yaw: float) -> tuple[float, float, float, float]:
    """(qw, qx, qy, qz) of a rotation by `yaw` radians about the world z axis."""
    return (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))


def _split_of(pose_index: int, poses: int, held_out: bool = False) -> str:
    if held_out:  # a place never seen in training: its last pose queries the others
        return "query" if pose_index == poses - 1 else "database"
    if poses >= 2 and pose_index == poses - 1:
        return "test"
    if poses >= 3 and pose_index == poses - 2:
        return "val"
    return "train"


@dataclass
class _View:
    cam_local: np.ndarray
    yaw: float  # relative to the place's street axis
    pitch: float
    pose: list[float]  # world (x, y, z, qw, qx, qy, qz)


def _place_views(place: int, poses: int, seed: int) -> tuple[_Scene, list[_View]]:
    """The scene of `place` and its camera views (deterministic in seed and place)."""
    rng = np.random.default_rng([seed, place])
    scene = _make_scene(rng)
    base_yaw = rng.uniform(-math.pi, math.pi)
    origin = np.array([place * PLACE_SPACING_M, 0.0, 0.0])
    views = []
    for j in range(poses):
        r = MAX_OFFSET_M * math.sqrt(rng.uniform()) if j else 0.0
        a = rng.uniform(0, 2 * math.pi)
        dx, dy = r * math.cos(a), r * math.sin(a)
        dyaw = math.radians(rng.uniform(-MAX_YAW_DEG, MAX_YAW_DEG)) if j else 0.0
        pitch = math.radians(rng.uniform(-2.0, 4.0))
        # world pose: rotate the local frame by base_yaw about z, translate to the place
        cb, sb = math.cos(base_yaw), math.sin(base_yaw)
        wx = origin[0] + cb * dx - sb * dy
        wy = origin[1] + sb * dx + cb * dy
        pose = [wx, wy, CAMERA_HEIGHT_M, *yaw_quaternion(base_yaw + dyaw)]
        views.append(_View(np.array([dx, dy, CAMERA_HEIGHT_M]), dyaw, pitch, pose))
    return scene, views


def geometry_maps(place: int, poses: int, size: int, seed: int) -> list[np.ndarray]:
    """Per pose, what each pixel sees (uint8 [size, size]: 0 sky, 1 ground, 2 facade,
    3 roof, 4 lamp post) — the same geometry `render_place` shades under every condition."""
    scene, views = _place_views(place, poses, seed)
    n_lamps = len(scene.lamps)
    out = []
    for v in views:
        g = _trace(scene, v.cam_local, _rays(size, v.yaw, v.pitch))
        kind = g.kind.astype(np.uint8)
        post = (kind >= 2) & (g.box >= len(scene.boxes) - n_lamps)
        kind[post] = 4
        out.append(kind.reshape(size, size))
    return out


def render_place(
    place: int, poses: int, conditions: list[str], size: int, seed: int, held_out: bool = False
) -> list[dict]:
    """Rows (schema dicts without `id`) of one place: every pose under every condition
    (`held_out`: splits ``query`` / ``database`` instead of train / val / test)."""
    scene, views = _place_views(place, poses, seed)
    rows = []
    for j, v in enumerate(views):
        g = _trace(scene, v.cam_local, _rays(size, v.yaw, v.pitch))
        for cond in conditions:
            crng = np.random.default_rng(
                [seed, place, j, CONDITIONS.index(cond) if cond in CONDITIONS else 99]
            )
            img = _shade(scene, g, cond, size, v.cam_local, v.yaw, v.pitch, crng)
            rows.append(
                {
                    "image": img,
                    "width": size,
                    "height": size,
                    "condition": cond,
                    "place": place,
                    "place_name": f"synth-{place:05d}",
                    "pose": v.pose,
                    "split": _split_of(j, poses, held_out),
                    "source": f"synth://seed={seed}/place={place}/pose={j}/{cond}",
                    "pose_index": j,
                }
            )
    return rows


def synthesize(
    out: str,
    places: int = 6,
    conditions: list[str] | tuple[str, ...] = CONDITIONS,
    size: int = 64,
    seed: int = 0,
    poses_per_place: int = 4,
    paired: tuple[str, str] | None = None,
    rows_per_shard: int = 256,
    quality: int = 90,
    held_out_places: int = 0,
) -> Manifest:
    """Render the dataset and write shards + manifest to `out` (local path or s3://).

    `paired=("day", "night")` writes a paired dataset instead (pix2pix): one row per pose
    with ``image`` under the first and ``image_b`` under the second condition.
    `held_out_places=K` keeps the last K places out of train / val / test: their last pose
    goes to split ``query`` and the others to ``database``, so retrieval is evaluated on
    places that training never saw (the thesis protocol on the built-in data).
    Deterministic: the same arguments give byte-identical shards.
    """
    import hashlib

    conditions = list(conditions)
    unknown = [c for c in conditions + list(paired or ()) if c not in _PALETTE]
    if unknown:
        raise ValueError(f"unknown synthetic condition(s) {unknown}; choose from {list(_PALETTE)}")
    if places < 1 or poses_per_place < 1 or size < 8:
        raise ValueError("places, poses_per_place must be ≥ 1 and size ≥ 8")
    if not 0 <= held_out_places < places or (held_out_places and poses_per_place < 2):
        raise ValueError(
            f"held_out_places must be in [0, places) and needs ≥ 2 poses per place "
            f"(got {held_out_places} of {places} places, {poses_per_place} poses)"
        )
    io.check_reachable(out, must_exist=False)
    io.makedirs(out)
    render_conds = list(paired) if paired else conditions
    rows: list[dict] = []
    shards = []
    counts: dict[str, dict[str, int]] = {}
    next_id = 0

    def flush(final: bool = False) -> None:
        nonlocal rows
        while rows and (len(rows) >= rows_per_shard or final):
            chunk, rows = rows[:rows_per_shard], rows[rows_per_shard:]
            shards.append(write_shard(out, f"part-{len(shards):05d}.parquet", rows_to_table(chunk)))

    for p in range(places):
        held = p >= places - held_out_places
        place_rows = render_place(p, poses_per_place, render_conds, size, seed, held)
        if paired:
            by_pose: dict[int, dict[str, dict]] = {}
            for r in place_rows:
                by_pose.setdefault(r["pose_index"], {})[r["condition"]] = r
            items = []
            for _j, d in sorted(by_pose.items()):
                a, b = d[paired[0]], d[paired[1]]
                a = dict(a)
                a["image_b"] = encode_jpeg(b["image"], quality)
                a["condition_b"] = paired[1]
                items.append(a)
        else:
            items = place_rows
        for r in items:
            r["image"] = encode_jpeg(r["image"], quality)
            r["sha256"] = hashlib.sha256(r["image"]).hexdigest()
            r["id"] = next_id
            r.pop("pose_index", None)
            next_id += 1
            counts.setdefault(r["split"], {}).setdefault(r["condition"], 0)
            counts[r["split"]][r["condition"]] += 1
            rows.append(r)
        flush()
    flush(final=True)
    manifest = Manifest(
        name=f"synth-p{places}-s{size}-seed{seed}"
        + (f"-h{held_out_places}" if held_out_places else "")
        + (f"-{paired[0]}2{paired[1]}" if paired else ""),
        layout="synth",
        source=f"synth://places={places},poses={poses_per_place},size={size},seed={seed}"
        + (f",held_out={held_out_places}" if held_out_places else ""),
        paired=bool(paired),
        conditions=[paired[0]] if paired else conditions,
        counts=counts,
        shards=shards,
        extra={
            "poses_per_place": poses_per_place,
            "size": size,
            "seed": seed,
            "paired_with": paired[1] if paired else None,
            "held_out_places": held_out_places,
        },
    )
    remove_stale_shards(out, shards)
    write_manifest(out, manifest)
    manifest.uri = str(out).rstrip("/")
    return manifest
