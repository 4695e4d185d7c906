"""Networks of both papers as plain modules (no device / DDP logic; see `mdir.methods`).

Contract names:
* `mdir.models.unet.UnetGenerator` (pix2pix unet_256), `mdir.models.patchgan.PatchDiscriminator`
  (70×70 PatchGAN), `mdir.models.resnet_gen.ResnetGenerator` (CycleGAN resnet_9blocks);
* `mdir.models.mduit` — E_c `ContentEncoder`, E_a `AppearanceEncoder`, `appearance_conv`
  (f ⊗ W as one grouped conv), G `Decoder`, H `ProjectionHead`, `MDUITTranslator`;
* `mdir.models.retrieval.RetrievalNet` (vgg16 | resnet50 | tiny trunk + GeM + L2N [+ Lw]);
* `mdir.models.pooling.gem` / `GeM` / `l2n`;
* `mdir.models.weights.load_vgg16(source, allow_random) -> (module, label)` (never downloads);
* (network summaries of a method live in `mdir.methods.summary`, behind ``mdir models summary``).
"""
