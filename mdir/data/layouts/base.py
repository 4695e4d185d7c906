"""What an ingest layout provides: a deterministic scan of SRC into `Item`s.

A layout knows only where a dataset keeps its files and metadata; reading, validating,
de-duplicating, sharding and counting bad input are done once, in `mdir.data.ingest`.
A new dataset layout is one small module with a `scan`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

IMAGE_EXTS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
    ".ppm",
    ".pgm",
    ".pnm",
)


@dataclass(frozen=True)
class Item:
    """One input row: an image file (URI), its condition and what else is known."""

    source: str
    condition: str
    place: int | str | None = None
    pose: tuple[float, ...] | None = None  # x, y, z, qw, qx, qy, qz (camera centre, cam→world)
    split: str | None = None  # None: assigned from a hash of the source path
    source_b: str | None = None  # paired image (pix2pix)
    condition_b: str | None = None
    condition_raw: str | None = None  # the dataset's own name when `condition` is mapped

    def fingerprint(self) -> str:
        fields = (
            self.source,
            self.condition,
            self.place,
            self.pose,
            self.split,
            self.source_b,
            self.condition_b,
        )
        # condition_raw only when set: shards of datasets ingested before it existed keep
        # their digests, so a re-run resumes instead of rewriting them
        if self.condition_raw is not None:
            fields = (*fields, self.condition_raw)
        return repr(fields)


@dataclass(frozen=True)
class BadRow:
    """A row of metadata that cannot become an `Item` (counted under `reason`)."""

    reason: str
    source: str
    detail: str = ""


class Layout(Protocol):
    name: str
    paired: bool

    def scan(self, src: str) -> Iterator[Item | BadRow]:
        """Items in a deterministic order (sorted), so re-runs produce the same shards."""
        ...

    def extra(self, src: str) -> dict[str, Any]:
        """Layout-specific metadata stored in manifest.extra (e.g. retrieval ground truth)."""
        ...


class LayoutBase:
    """Defaults for layouts: unpaired, no extra metadata."""

    name = "base"
    paired = False

    def extra(self, src: str) -> dict[str, Any]:
        return {}


def parse_fraction(value: float | str, field: str) -> float:
    """A layout option in [0, 1) (options arrive as strings from ``-o KEY=VALUE``)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"layout option {field}={value!r}: expected a number in [0, 1)") from None
    if not 0.0 <= f < 1.0:
        raise ValueError(f"layout option {field}={value!r}: expected a number in [0, 1)")
    return f


def parse_names(value: str | list[str] | tuple[str, ...], field: str) -> tuple[str, ...]:
    """``a,b,c`` (CLI) or a list (Python) → names; an empty list is an error naming `field`."""
    names = tuple(
        n.strip() for n in (value.split(",") if isinstance(value, str) else value) if n.strip()
    )
    if not names:
        raise ValueError(f"layout option {field}: needs at least one name, e.g. {field}=a,b")
    return names


def seeded_val_split(groups: dict[str, list[str]], fraction: float, seed: int) -> set[str]:
    """Keys held out for validation: in each group (a condition, say), the
    ``round(fraction · n)`` keys first in a seeded hash order (at least one when the group has
    two or more keys and fraction > 0).

    Why per group: a rare domain (Aachen's ~100 night images) still gets validation images,
    and the counts are exact instead of binomial. Why a hash of (seed, key) and not a shuffled
    list: adding images to a dataset does not move the other images between splits. Keys
    should be paths relative to the dataset root, so a local and an s3:// copy split alike.
    """
    import hashlib

    out: set[str] = set()
    if fraction <= 0:
        return out
    for keys in groups.values():
        ordered = sorted(
            set(keys), key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest()
        )
        n_val = round(fraction * len(ordered))
        if n_val == 0 and len(ordered) >= 2:
            n_val = 1
        out.update(ordered[:n_val])
    return out


def quat_to_matrix(q: tuple[float, float, float, float]) -> list[list[float]]:
    w, x, y, z = q
    n = (w * w + x * x + y * y + z * z) ** 0.5 or 1.0
    w, x, y, z = w / n, x / n, y / n, z / n
    return [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]


def world_to_camera_to_pose(
    qw: float, qx: float, qy: float, qz: float, tx: float, ty: float, tz: float
) -> tuple[float, ...]:
    """Visual-localization benchmark convention (``name qw qx qy qz tx ty tz``: the
    world→camera rotation R and translation t) → mdir pose: camera centre c = −Rᵀt and the
    camera→world rotation (the conjugate quaternion)."""
    r = quat_to_matrix((qw, qx, qy, qz))
    c = [-(r[0][i] * tx + r[1][i] * ty + r[2][i] * tz) for i in range(3)]
    return (c[0], c[1], c[2], qw, -qx, -qy, -qz)


def read_pose_file(text: str) -> dict[str, tuple[float, ...]]:
    """``name qw qx qy qz tx ty tz`` per line (world→camera) → {name: mdir pose}; lines that
    do not parse are ignored (the image then simply has no pose)."""
    out: dict[str, tuple[float, ...]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 8 or line.lstrip().startswith("#"):
            continue
        try:
            vals = [float(v) for v in parts[1:]]
        except ValueError:
            continue
        out[parts[0]] = world_to_camera_to_pose(*vals)
    return out


def safe_unpickle(data: bytes):
    """Load a dataset's ground-truth pickle (revisited Oxford/Paris, Retrieval-SfM) with
    an allow-list: only containers, numbers, strings and numpy arrays — never arbitrary
    callables."""
    import io as _io
    import pickle

    allowed = {
        ("builtins", "dict"),
        ("builtins", "list"),
        ("builtins", "tuple"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "int"),
        ("builtins", "float"),
        ("builtins", "str"),
        ("builtins", "bytes"),
        ("collections", "OrderedDict"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    class _Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if (module, name) in allowed:
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")

    return _Restricted(_io.BytesIO(data), encoding="latin1").load()


def read_first_pickle(src: str, names: list[str], layout: str) -> tuple[str, Any]:
    """(name, safe-unpickled content) of the first of `names` under `src` that exists: the
    retrieval benchmarks ship one ground-truth pickle per dataset variant (roxford5k /
    rparis6k, SfM-120k / 30k) and a layout takes whichever is there."""
    from mdir.data import io

    fs, _ = io.get_fs(src)
    for n in names:
        uri = io.join(src, n)
        if fs.exists(io.get_fs(uri)[1]):
            return n, safe_unpickle(io.read_bytes(uri))
    raise io.DataPathError(f"{src!r} has none of {names} ({layout} layout)")


def list_images(src: str, sub: str) -> list[tuple[str, str]]:
    """(path relative to `src`, URI) of every non-hidden file below src/sub, sorted."""
    from mdir.data import io

    fs, root = io.get_fs(src)
    root = root.rstrip("/")
    base = root + "/" + sub.strip("/") if sub else root
    if not fs.exists(base):
        return []
    out = []
    for p in sorted(fs.find(base)):
        rel = p[len(root) :].lstrip("/")
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        out.append((rel, io.full_uri(fs, p)))
    return out
