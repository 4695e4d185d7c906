"""MDUIT training method (see `mdir.models.mduit` for the networks and paper symbols).

Data mode "single": the batch carries source images ``A`` (I_s) with their store row ids
``A_id``; `on_epoch_start` embeds the whole `EpochContext.store` with E_c + H and computes
the pairing table (`mdir.methods.pairing`), and `train_step` loads each source's I_t,
I_t⁺, I_s⁻, I_t⁻ from the store. A batch may instead carry them explicitly as ``T``,
``T_pos``, ``S_neg``, ``T_neg`` (tests, benchmarks, custom loaders).

Generator objective (eq. 6):  β_adv_i·L_adv^i + β_adv_a·L_adv^a + β_rs·L_rec^self
+ β_rc·L_rec^cyc + β_cc·L_con^c + β_ca·L_con^a + β_NCE·L_NCE  (β = 1, 1, 100, 100, 10, 1, 1;
optionally normalised by their sum). D_i sees I_s, I_t as real and I_s→t as fake; D_a sees
(I_t, I_t⁺) as real and (I_t, I_s→t) as fake.

NCE negatives (N_neg = 16, τ = 0.07) — our DDP decision: negatives are *per rank*: for each
source, the pairing table names N_neg content negatives (by pose / place, drawn among the
most similar ones, see `mdir.methods.pairing`), and the step loads those images and embeds
them with the *current* E_c and H, gradients included (SimCLR, which the paper follows).
This needs no all-gather, does not depend on the batch size (the paper trains with batch 1,
so in-batch negatives would not exist) and gives every rank the same negatives for the same
source. An earlier version took the negatives' z from the epoch-start embedding bank
(detached): H then only had to move every current z away from those stale points —
measured on the demo, L_NCE fell to ~5e-4 while all current z were identical (z·z = 0.998)
and no image was told apart. The bank (z of every store image at epoch start, eval mode)
is still kept: it decides the pairing and the hard negatives. Without a store (explicit
batches) the negatives are z(I_s⁻) plus a per-rank FIFO queue of the last N_neg − 1
detached source embeddings.

Pairing is computed on rank 0 and broadcast through ``context.all_reduce_mean`` (rank 0
contributes world_size·table, the others zeros), so every rank uses the identical table
even if floating-point results differ slightly between devices.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from mdir import losses
from mdir.methods.base import EpochContext, ImageStore
from mdir.methods.common import GANMethod, raw, set_requires_grad
from mdir.methods.config import MDUITConfig
from mdir.methods.pairing import (
    COL_NEGS,
    COL_S_NEG,
    COL_T_NEG,
    COL_T_POS,
    COL_TARGET,
    compute_pairing,
)
from mdir.models.init import init_weights
from mdir.models.mduit import (
    AppearanceEncoder,
    ContentEncoder,
    Decoder,
    MDUITTranslator,
    ProjectionHead,
    appearance_conv,
)
from mdir.models.patchgan import PatchDiscriminator
from mdir.models.weights import load_vgg16


def build_mduit_networks(
    cfg: MDUITConfig, load_pretrained: bool = True
) -> tuple[dict[str, nn.Module], str]:
    """{E_c, E_a, G, D_i, D_a, H} with N(0, init_std) init (the VGG inside E_a keeps its
    weights) and the label of the VGG weights. With ``load_pretrained=False`` the VGG is
    random (structure only, for rebuilding a registered generator from a state dict)."""
    if load_pretrained:
        vgg, label = load_vgg16(cfg.vgg_weights, cfg.allow_random_vgg)
    else:
        vgg, label = _random_vgg(), "random"
    e_c = ContentEncoder(cfg.ngf, cfg.n_downsample, cfg.n_res_enc)
    c = e_c.out_channels
    e_a = AppearanceEncoder(
        vgg.features, c, cfg.ea_hidden, cfg.filter_size, weights_label=label, norm=cfg.head_norm
    )
    nets: dict[str, nn.Module] = {
        "E_c": e_c,
        "E_a": e_a,
        "G": Decoder(c, cfg.n_downsample, cfg.n_res_dec),
        "D_i": PatchDiscriminator(3, cfg.ndf, cfg.n_layers_d, "instance"),
        "D_a": PatchDiscriminator(6, cfg.ndf, cfg.n_layers_d, "instance"),
        "H": ProjectionHead(c, cfg.proj_hidden, cfg.proj_dim, cfg.gem_p, cfg.head_norm),
    }
    for name, net in nets.items():
        init_weights(net, cfg.init_std, skip=(e_a.vgg,) if name == "E_a" else ())
    return nets, label


def _random_vgg() -> nn.Module:
    from mdir.models.weights import VGG16Trunk

    return VGG16Trunk()


def build_mduit_translator(cfg: MDUITConfig) -> MDUITTranslator:
    """E_c + E_a + G (+ H for the embedding z_s) as one module, structure only (load a
    state dict into it)."""
    nets, _ = build_mduit_networks(cfg, load_pretrained=False)
    return MDUITTranslator(nets["E_c"], nets["E_a"], nets["G"], nets["H"])


class MDUIT(GANMethod):
    """MDUIT method: networks {E_c, E_a, G, D_i, D_a, H}; optimisers {"G": E_c, E_a (head),
    G, H; "D": D_i, D_a}. ``vgg_label`` says which VGG-16 weights E_a uses."""

    name = "mduit"
    data_mode: ClassVar = MDUITConfig.data_mode
    optim_groups: ClassVar = {"G": ("E_c", "E_a", "G", "H"), "D": ("D_i", "D_a")}

    def __init__(self, cfg: MDUITConfig, device: torch.device | str | None = None):
        super().__init__(cfg, device)
        nets, self.vgg_label = build_mduit_networks(cfg)
        self.networks = {k: v.to(self.device) for k, v in nets.items()}
        self.weights = losses.normalized_weights(
            {
                "adv_i": cfg.beta_adv_i,
                "adv_a": cfg.beta_adv_a,
                "rec_self": cfg.beta_rs,
                "rec_cyc": cfg.beta_rc,
                "con_c": cfg.beta_cc,
                "con_a": cfg.beta_ca,
                "nce": cfg.beta_nce,
            },
            cfg.loss_weight_norm,
        )
        self.store: ImageStore | None = None
        self.store_ids: np.ndarray | None = None  # row → store id
        self.row_of: dict[int, int] = {}
        self.table: np.ndarray | None = None  # pairing table [N, 4 + n_neg] of rows
        self.bank: Tensor | None = None  # z of every store row [N, K], detached
        self.queue: list[Tensor] = []  # fallback NCE negatives (explicit batches)

    # -- per epoch: embed the store and pair --------------------------------------------------
    def embed(self, images: Tensor) -> Tensor:
        """z = H(E_c(I)), L2-normalised [B, K] (no gradient, eval mode: H's BatchNorm uses
        its running statistics, so any chunk size works and no statistic is updated)."""
        e_c, h = raw(self.networks["E_c"]), raw(self.networks["H"])
        return self._eval_call(lambda x: h(e_c(x.to(self.device))), images)

    def on_epoch_start(self, epoch: int, context: EpochContext) -> None:
        """Re-pair sources and targets by embedding similarity (paper §3, "updated every
        epoch"); needs ``context.store`` (otherwise batches must be explicit)."""
        self.store = context.store
        if self.store is None:
            self.table = None
            return
        ids = np.asarray(self.store.ids(), dtype=np.int64)
        meta = self.store.meta()
        n = len(ids)
        k = self.cfg.proj_dim
        if context.rank == 0:
            zs = []
            for s in range(0, n, self.cfg.pairing_batch_size):
                zs.append(
                    self.embed(self.store.load(ids[s : s + self.cfg.pairing_batch_size].tolist()))
                    .float()
                    .cpu()
                )
            z = torch.cat(zs, 0) if zs else torch.zeros(0, k)
            pose = meta.get("pose")
            table = compute_pairing(
                z,
                np.asarray(meta["condition"]),
                np.asarray(meta.get("place", np.full(n, -1))),
                None if pose is None else np.asarray(pose, dtype=np.float64),
                self.cfg.n_neg,
                self.cfg.rot_thresh_deg,
                self.cfg.trans_thresh_m,
                self.cfg.seed,
                epoch,
                neg_pool=self.cfg.neg_pool_factor * self.cfg.n_neg,
            )
        else:
            z = torch.zeros(n, k)
            table = np.zeros((n, 4 + self.cfg.n_neg), dtype=np.int64)
        if context.world_size > 1:  # broadcast rank 0's decision (see module doc)
            scale = float(context.world_size) if context.rank == 0 else 0.0
            t = context.all_reduce_mean(torch.from_numpy(table).double().to(context.device) * scale)
            table = t.round().long().cpu().numpy()
            z = context.all_reduce_mean(z.to(context.device) * scale).cpu()
        self.store_ids, self.table = ids, table
        self.row_of = {int(i): r for r, i in enumerate(ids)}
        self.bank = z.to(self.device)

    # -- per step ---------------------------------------------------------------------------
    def _complete(self, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor | None]:
        """Fill T, T_pos, S_neg, T_neg from the store (if not given) and return the images
        of the NCE negatives picked in the pairing table ([B·N_neg, 3, H, W], source-major)
        or None (explicit mode)."""
        out = {k: v for k, v in batch.items() if isinstance(v, Tensor)}
        need = [k for k in ("T", "T_pos", "S_neg", "T_neg") if k not in out]
        if not need and ("A_id" not in out or self.table is None):
            return out, None
        if self.table is None or self.store is None or "A_id" not in out:
            raise ValueError(
                "mduit: batch needs 'A_id' and a pairing from on_epoch_start(context with a store), "
                f"or explicit keys T, T_pos, S_neg, T_neg (missing {need})"
            )
        try:
            rows = np.array([self.row_of[int(i)] for i in out["A_id"].tolist()])
        except KeyError as e:
            raise KeyError(f"mduit: source id {e} is not in the store used for pairing") from None
        tab = self.table[rows]
        cols = {"T": COL_TARGET, "T_pos": COL_T_POS, "S_neg": COL_S_NEG, "T_neg": COL_T_NEG}
        assert self.store_ids is not None
        for key in need:
            out[key] = self.store.load(self.store_ids[tab[:, cols[key]]].tolist())
        negs = self.store.load(self.store_ids[tab[:, COL_NEGS:].reshape(-1)].tolist())
        return out, negs

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        full, neg_images = self._complete(batch)
        i_s, i_t, i_tp, i_sn, i_tn = self._to_device(full, ("A", "T", "T_pos", "S_neg", "T_neg"))
        n = self.networks
        kind = self.cfg.gan_loss
        b = i_s.shape[0]
        # I_i⁻ of L_NCE, embedded below by the *current* E_c and H (SimCLR: gradients flow
        # through the negatives too); none in explicit mode
        i_neg = neg_images.to(self.device) if neg_images is not None else i_s[:0]

        # forward (E_c / E_a / G are batched over their several inputs: all are per-sample ops)
        f_all = n["E_c"](torch.cat([i_s, i_sn, i_neg], 0))
        f_s, f_sn, f_neg = f_all[:b], f_all[b : 2 * b], f_all[2 * b :]
        w_all = n["E_a"](torch.cat([i_s, i_t, i_tn], 0))
        w_s, w_t, w_tn = w_all[:b], w_all[b : 2 * b], w_all[2 * b :]
        out = n["G"](torch.cat([appearance_conv(f_s, w_t), appearance_conv(f_s, w_s)], 0))
        fake, rec_self = out[:b], out[b:]  # I_s→t, G(f_s ⊗ W_s)
        f_st = n["E_c"](fake)  # f_s→t
        rec_cyc = n["G"](appearance_conv(f_st, w_s))
        w_st = n["E_a"](fake)  # W_s→t
        z = n["H"](torch.cat([f_s, f_st, f_sn, f_neg], 0))
        z_s, z_st, z_sn, z_neg = z[:b], z[b : 2 * b], z[2 * b : 3 * b], z[3 * b :]
        if neg_images is not None:
            negs = z_neg.reshape(b, -1, z.shape[1])  # [B, N_neg, K]
        else:
            queue = [q.to(z_s.device) for q in self.queue]
            negs = torch.stack([torch.cat([z_sn[i : i + 1], *queue], 0) for i in range(b)], 0)

        set_requires_grad([n["D_i"], n["D_a"]], False)
        terms = {
            "adv_i": losses.gan_loss(raw(n["D_i"])(fake), True, kind),
            "adv_a": losses.gan_loss(raw(n["D_a"])(torch.cat([i_t, fake], 1)), True, kind),
            "rec_self": losses.l1_loss(rec_self, i_s),
            "rec_cyc": losses.l1_loss(rec_cyc, i_s),
            "con_c": losses.content_triplet_loss(f_s, f_st, f_sn, self.cfg.margin_content),
            "con_a": losses.filter_cosine_loss(w_t, w_st, w_tn),
            "nce": losses.nce_loss(z_s, z_st, negs, self.cfg.tau),
        }
        loss_g, logs = self._update_generator(terms)

        set_requires_grad([n["D_i"], n["D_a"]], True)
        fake_d = fake.detach()
        loss_di = losses.discriminator_loss(
            n["D_i"](torch.cat([i_s, i_t], 0)), n["D_i"](fake_d), kind
        )
        loss_da = losses.discriminator_loss(
            n["D_a"](torch.cat([i_t, i_tp], 1)), n["D_a"](torch.cat([i_t, fake_d], 1)), kind
        )
        self._update("D", loss_di + loss_da)

        if neg_images is None:  # explicit mode: remember recent sources as future negatives
            self.queue = ([z_s[i].detach().unsqueeze(0) for i in range(b)] + self.queue)[
                : self.cfg.n_neg - 1
            ]
        return {
            **logs,
            "G": float(loss_g.detach()),
            "D_i": float(loss_di.detach()),
            "D_a": float(loss_da.detach()),
        }

    def translate(self, images: Tensor, reference: Tensor | None = None) -> Tensor:
        """I_s→t = G(E_c(images) ⊗ E_a(reference)); `reference` is required (batch 1 is
        broadcast)."""
        if reference is None:
            raise ValueError(
                "mduit translates towards a target appearance: pass `reference` images"
            )
        gen = self.generator()
        return self._eval_call(
            lambda x, r: gen(x.to(self.device), r.to(self.device)), images, reference
        )

    def generator(self) -> nn.Module:
        return MDUITTranslator(
            raw(self.networks["E_c"]),
            raw(self.networks["E_a"]),
            raw(self.networks["G"]),
            raw(self.networks["H"]),
        )

    def state_dict(self) -> dict[str, Any]:
        """Pairing table, store ids, embedding bank and the fallback queue (all tensors)."""
        st: dict[str, Any] = {"queue": [q.cpu() for q in self.queue]}
        if self.table is not None and self.store_ids is not None and self.bank is not None:
            st.update(
                table=torch.from_numpy(self.table),
                ids=torch.from_numpy(self.store_ids),
                bank=self.bank.cpu(),
            )
        return st

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.queue = [q.to(self.device) for q in state.get("queue", [])]
        if "table" in state:
            self.table = state["table"].numpy()
            self.store_ids = state["ids"].numpy()
            self.row_of = {int(i): r for r, i in enumerate(self.store_ids)}
            self.bank = state["bank"].to(self.device)
