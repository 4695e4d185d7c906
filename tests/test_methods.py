"""Methods: config union, registry, schedule, image pool, MDUIT pairing, gradient flow,
determinism, generator round trip, and short single-process training runs."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mdir.config import ConfigError, validate
from mdir.methods import METHODS, build_generator, get_method_factory, translate_with
from mdir.methods.base import EpochContext, ImageStore
from mdir.methods.config import CycleGANConfig, MDUITConfig, Pix2PixConfig
from mdir.methods.pairing import (
    COL_NEGS,
    COL_S_NEG,
    COL_T_NEG,
    COL_T_POS,
    COL_TARGET,
    compute_pairing,
)
from mdir.methods.pool import ImagePool
from mdir.methods.schedule import linear_decay
from mdir.methods.specs import parse_method_config

SIZE = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


CONDITIONS = ["day", "night", "snow"]


# ---------------------------------------------------------------------------------------------
# tiny synthetic data: content = a smooth random pattern per place, appearance = condition
def _content(place: int, size: int = SIZE) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + place)
    low = torch.rand(1, 3, 4, 4, generator=g) * 2 - 1
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[0]


def _appearance(x: torch.Tensor, condition: str) -> torch.Tensor:
    if condition == "night":
        x = 0.3 * x - 0.5 + torch.tensor([-0.1, -0.1, 0.2]).view(3, 1, 1)
    elif condition == "snow":
        x = 0.5 * x + 0.4
    return x.clamp(-1, 1)


class MemoryStore:
    """In-memory `ImageStore` over synthetic places × conditions with poses."""

    def __init__(
        self, n_places: int = 4, conditions: Sequence[str] = CONDITIONS, with_pose: bool = True
    ):
        self.conditions = list(conditions)
        imgs, cond, place, pose = [], [], [], []
        for p in range(n_places):
            for c, name in enumerate(self.conditions):
                imgs.append(_appearance(_content(p), name))
                cond.append(c)
                place.append(p)
                # places 20 m apart on x; conditions of one place within 1 m and 2°
                a = np.radians(1.0 * c)
                pose.append([20.0 * p + 0.5 * c, 0.0, 0.0, np.cos(a / 2), 0.0, 0.0, np.sin(a / 2)])
        self.images = torch.stack(imgs)
        self._ids = np.arange(len(imgs), dtype=np.int64) + 100  # ids ≠ row numbers
        self._meta = {
            "condition": np.array(cond, dtype=np.int64),
            "place": np.array(place, dtype=np.int64),
            "pose": np.array(pose, dtype=np.float64)
            if with_pose
            else np.full((len(imgs), 7), np.nan),
            "split": np.array(["train"] * len(imgs)),
        }

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> np.ndarray:
        return self._ids

    def meta(self) -> dict[str, np.ndarray]:
        return self._meta

    def load(self, ids: Sequence[int]) -> torch.Tensor:
        return self.images[[int(i) - 100 for i in ids]]


def tiny(name: str, **kw):
    """Narrow networks for 32-px tests (keyword arguments override)."""
    if name == "pix2pix":
        return Pix2PixConfig(**{"ngf": 8, "ndf": 8, "num_downs": 5, **kw})
    if name == "cyclegan":
        return CycleGANConfig(**{"ngf": 8, "ndf": 8, "n_blocks": 2, **kw})
    base = {
        "ngf": 4, "ndf": 8, "n_res_enc": 1, "n_res_dec": 1, "ea_hidden": 8, "proj_hidden": 16,
        "proj_dim": 8, "n_neg": 4, "allow_random_vgg": True,
    }  # fmt: skip
    return MDUITConfig(**{**base, **kw})


def paired_batch(step: int, b: int = 2) -> dict[str, torch.Tensor]:
    places = [(step * b + i) % 6 for i in range(b)]
    a = torch.stack([_appearance(_content(p), "day") for p in places])
    bb = torch.stack([_appearance(_content(p), "night") for p in places])
    return {"A": a, "B": bb}


def unpaired_batch(step: int, b: int = 2) -> dict[str, torch.Tensor]:
    a = torch.stack([_appearance(_content((step * b + i) % 6), "day") for i in range(b)])
    bb = torch.stack([_appearance(_content((step * b + i + 3) % 6), "night") for i in range(b)])
    return {"A": a, "B": bb}


# ---------------------------------------------------------------------------------------------
def test_method_config_union_and_defaults():
    cfg = parse_method_config({"name": "mduit"})
    assert isinstance(cfg, MDUITConfig)
    assert (cfg.beta_rs, cfg.beta_rc, cfg.beta_cc, cfg.beta_ca, cfg.beta_nce) == (
        100,
        100,
        10,
        1,
        1,
    )
    assert (cfg.margin_content, cfg.tau, cfg.n_neg, cfg.init_std, cfg.decay_start_frac) == (
        0.1,
        0.07,
        16,
        0.001,
        0.7,
    )
    assert (cfg.lr, cfg.beta1, cfg.beta2) == (2e-4, 0.5, 0.999)
    p = parse_method_config({"name": "pix2pix", "beta1": 0.9})
    assert isinstance(p, Pix2PixConfig) and p.lambda_l1 == 100 and p.beta1 == 0.9
    c = parse_method_config({"name": "cyclegan"})
    assert (
        isinstance(c, CycleGANConfig)
        and c.lambda_cyc == 10
        and c.pool_size == 50
        and c.n_blocks == 9
    )

    from pydantic import BaseModel

    from mdir.methods.specs import MethodConfig

    class Job(BaseModel):
        method: MethodConfig

    with pytest.raises(ConfigError, match="method.pix2pix.lambda_l"):
        validate(Job, {"method": {"name": "pix2pix", "lambda_l": 3}})
    with pytest.raises(ConfigError, match="method"):
        validate(Job, {"method": {"name": "munit"}})


def test_registry():
    assert {"pix2pix", "cyclegan", "mduit"} <= set(METHODS)
    assert METHODS["pix2pix"].data_mode == "paired"
    assert METHODS["cyclegan"].data_mode == "unpaired"
    assert METHODS["mduit"].data_mode == "single"
    with pytest.raises(KeyError, match="valid methods"):
        get_method_factory("stargan")


def test_linear_decay_schedule():
    # MDUIT: 35 constant epochs of 50, then linear decay (junyanz 'linear' policy)
    assert linear_decay(0, 50, 0.7) == 1.0 and linear_decay(34, 50, 0.7) == 1.0
    assert linear_decay(35, 50, 0.7) == pytest.approx(1 - 1 / 16)
    assert linear_decay(49, 50, 0.7) == pytest.approx(1 / 16)
    # short runs keep the shape: 10 epochs → 7 constant
    assert [round(linear_decay(e, 10, 0.7), 3) for e in (6, 7, 9)] == [1.0, 0.75, 0.25]
    assert linear_decay(5, 10, 1.0) == 1.0  # thesis: no decay


def test_image_pool():
    pool = ImagePool(2, seed=0)
    x = torch.arange(6.0).view(6, 1, 1, 1)
    first = pool.query(x[:2])
    assert torch.equal(first, x[:2])  # filling: returned as is
    out = torch.cat([pool.query(x[i : i + 1]) for i in range(2, 6)])
    assert set(out.flatten().tolist()) <= set(range(6))
    state = pool.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    other = ImagePool(2)
    other.load_state_dict(torch.load(buf, weights_only=True))
    y = torch.full((3, 1, 1, 1), 9.0)
    assert torch.equal(pool.query(y), other.query(y))  # same images, same RNG
    assert torch.equal(ImagePool(0).query(y), y)


# ---------------------------------------------------------------------------------------------
def test_pairing_by_pose_and_by_place():
    store = MemoryStore(n_places=4)
    meta = store.meta()
    # embeddings that identify the place: same place → similar
    z = F.normalize(torch.eye(4)[meta["place"]] + 0.01 * torch.randn(len(store), 4), dim=1)
    for pose in (meta["pose"], None):
        t = compute_pairing(z, meta["condition"], meta["place"], pose, n_neg=5, seed=1, epoch=3)
        assert t.shape == (12, 9)
        rows = np.arange(12)
        cond, place = meta["condition"], meta["place"]
        assert (cond[t[:, COL_TARGET]] != cond).all()  # target: another condition …
        assert (place[t[:, COL_TARGET]] == place).all()  # … the most similar (same place)
        assert (cond[t[:, COL_T_POS]] == cond[t[:, COL_TARGET]]).all()
        assert (t[:, COL_T_POS] != t[:, COL_TARGET]).all()
        assert (cond[t[:, COL_T_NEG]] != cond[t[:, COL_TARGET]]).all()
        assert (place[t[:, COL_S_NEG]] != place).all()  # content negatives: other places
        assert (place[t[:, COL_NEGS:]] != place[:, None]).all()
        assert (t[:, COL_NEGS:] != rows[:, None]).all()
        again = compute_pairing(z, cond, place, pose, n_neg=5, seed=1, epoch=3)
        assert np.array_equal(t, again)  # deterministic given (z, metadata, seed, epoch)
    # pose decides over place ids: two "places" 3 m apart are the same content
    pose = meta["pose"].copy()
    pose[meta["place"] == 1, 0] = 3.0
    t = compute_pairing(z, meta["condition"], meta["place"], pose, n_neg=5)
    src = np.nonzero(meta["place"] == 0)[0]
    assert not np.isin(meta["place"][t[src, COL_NEGS:]], [0, 1]).any()
    # … but not if the rotation differs by more than 8°
    a = np.radians(20.0)
    pose[meta["place"] == 1, 3:] = [np.cos(a / 2), 0, 0, np.sin(a / 2)]
    t = compute_pairing(z, meta["condition"], meta["place"], pose, n_neg=30)
    assert np.isin(meta["place"][t[src, COL_NEGS:]], [1]).any()


def test_mduit_epoch_pairing_is_identical_across_ranks():
    torch.manual_seed(0)
    store = MemoryStore(n_places=3)
    assert isinstance(store, ImageStore)
    m0 = METHODS["mduit"](tiny("mduit"))
    m0.on_epoch_start(
        0, EpochContext(epoch=0, num_epochs=2, device=torch.device("cpu"), store=store)
    )
    assert m0.table is not None and m0.bank is not None and m0.bank.shape == (9, 8)
    # rank 1 of 2 with different weights: gets rank 0's table through all_reduce_mean
    m1 = METHODS["mduit"](tiny("mduit", init_std=0.05))
    contrib = {"table": torch.from_numpy(m0.table).double() * 2, "bank": m0.bank * 2}

    def fake_all_reduce_mean(t: torch.Tensor) -> torch.Tensor:  # rank 0 sends 2·x, rank 1 zeros
        other = contrib["table"] if t.dtype == torch.float64 else contrib["bank"]
        return (t + other) / 2

    ctx = EpochContext(epoch=0, num_epochs=2, device=torch.device("cpu"), rank=1, world_size=2, store=store,
                       all_reduce_mean=fake_all_reduce_mean)  # fmt: skip
    m1.on_epoch_start(0, ctx)
    assert np.array_equal(m1.table, m0.table)
    assert torch.allclose(m1.bank, m0.bank)
    # checkpointed state restores the pairing
    buf = io.BytesIO()
    torch.save(m0.state_dict(), buf)
    buf.seek(0)
    m2 = METHODS["mduit"](tiny("mduit"))
    m2.load_state_dict(torch.load(buf, weights_only=True))
    assert np.array_equal(m2.table, m0.table)


# ---------------------------------------------------------------------------------------------
def _check_grads(method, frozen_ids=frozenset()):
    for name, net in method.networks.items():
        for pname, p in net.named_parameters():
            if id(p) in frozen_ids:
                assert p.grad is None, f"frozen {name}.{pname} got a gradient"
                assert not p.requires_grad
            else:
                assert p.grad is not None, f"{name}.{pname} got no gradient"
                assert p.grad.abs().sum() > 0, f"{name}.{pname} has a zero gradient"


def test_gradients_reach_every_trainable_param_pix2pix_cyclegan():
    torch.manual_seed(0)
    m = METHODS["pix2pix"](tiny("pix2pix"))
    m.train_step(paired_batch(0))
    _check_grads(m)
    m = METHODS["cyclegan"](tiny("cyclegan", lambda_identity=0.5))
    m.train_step(unpaired_batch(0))
    _check_grads(m)


def test_gradients_mduit_reach_trainables_not_vgg():
    torch.manual_seed(0)
    store = MemoryStore(n_places=3)
    m = METHODS["mduit"](tiny("mduit", init_std=0.02))
    m.on_epoch_start(
        0, EpochContext(epoch=0, num_epochs=1, device=torch.device("cpu"), store=store)
    )
    ids = torch.tensor([100, 104])
    logs = m.train_step({"A": store.load(ids.tolist()), "A_id": ids})
    assert {"adv_i", "adv_a", "rec_self", "rec_cyc", "con_c", "con_a", "nce", "D_i", "D_a"} <= set(
        logs
    )
    vgg = m.networks["E_a"].vgg
    _check_grads(m, frozen_ids={id(p) for p in vgg.parameters()})
    # the optimiser does not own the frozen VGG
    owned = {id(p) for g in m.optimizers["G"].param_groups for p in g["params"]}
    assert not owned & {id(p) for p in vgg.parameters()}
    assert m.vgg_label == "random"


def test_mduit_requires_store_or_explicit_batch():
    m = METHODS["mduit"](tiny("mduit"))
    with pytest.raises(ValueError, match="explicit keys"):
        m.train_step({"A": torch.zeros(1, 3, SIZE, SIZE)})
    with pytest.raises(ValueError, match="reference"):
        m.translate(torch.zeros(1, 3, SIZE, SIZE))


@pytest.mark.parametrize("name", ["pix2pix", "cyclegan", "mduit"])
def test_deterministic_with_fixed_seed(name):
    def run() -> list[dict[str, float]]:
        torch.manual_seed(123)
        m = METHODS[name](tiny(name))
        if name == "mduit":
            store = MemoryStore(n_places=2)
            m.on_epoch_start(
                0, EpochContext(epoch=0, num_epochs=1, device=torch.device("cpu"), store=store)
            )
            ids = [100, 103]
            batches = [{"A": store.load(ids), "A_id": torch.tensor(ids)}] * 2
        else:
            batches = [paired_batch(i) for i in range(2)]
        return [m.train_step(b) for b in batches]

    assert run() == run()


@pytest.mark.parametrize("name", ["pix2pix", "cyclegan", "mduit"])
def test_generator_round_trip(name):
    torch.manual_seed(0)
    cfg = tiny(name)
    m = METHODS[name](cfg)
    buf = io.BytesIO()
    torch.save(m.generator().state_dict(), buf)
    buf.seek(0)
    gen = build_generator(cfg)
    gen.load_state_dict(torch.load(buf, weights_only=True))
    x = paired_batch(0)["A"]
    ref = paired_batch(1)["B"] if name == "mduit" else None
    # same seed, same dropout masks (pix2pix translates with dropout on by default)
    torch.manual_seed(7)
    rebuilt = translate_with(gen, cfg, x, ref)
    torch.manual_seed(7)
    assert torch.allclose(rebuilt, m.translate(x, ref), atol=1e-6)
    assert gen.training  # translate_with restores the mode


# ---------------------------------------------------------------------------------------------
def _mean(xs: list[float]) -> float:
    return float(np.mean(xs))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "key", "steps", "factor"),
    [
        ("pix2pix", "G_L1", 200, 0.5),
        ("cyclegan", "cycle_A", 200, 0.5),
        ("mduit", "rec_self", 120, 0.65),
    ],
)
def test_training_reduces_reconstruction_loss(name, key, steps, factor):
    """Single-process training on tiny synthetic data lowers the reconstruction loss
    (mean of the last 10 steps vs the first step's). MDUIT's decoder has no skip connections
    and learns more slowly than the U-Net, hence 4 images, lr 2e-3 and a milder factor."""
    torch.manual_seed(0)
    if name == "mduit":
        m = METHODS[name](tiny(name, ngf=8, lr=2e-3, init_std=0.02))
        store = MemoryStore(n_places=2, conditions=["day", "night"])
        m.on_epoch_start(
            0, EpochContext(epoch=0, num_epochs=1, device=torch.device("cpu"), store=store)
        )
        rng = np.random.default_rng(0)
        batches = (
            torch.from_numpy(rng.choice(store.ids(), 2, replace=False)) for _ in range(steps)
        )
        logs = [m.train_step({"A": store.load(b.tolist()), "A_id": b})[key] for b in batches]
    else:
        m = METHODS[name](tiny(name, lr=1e-3))
        make = paired_batch if name == "pix2pix" else unpaired_batch
        logs = [m.train_step(make(i))[key] for i in range(steps)]
    start, end = logs[0], _mean(logs[-10:])  # loss before any update vs the last 10 steps
    assert end < factor * start, f"{name} {key}: {start:.4f} → {end:.4f}"
