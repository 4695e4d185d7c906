"""mdir.data — shards, synthetic data, ingest, Ray Data pipelines.

Contract names (other areas import these):

* `mdir.data.config.DataConfig` — data section of a job config (uri, mode
  unpaired|paired|single, domain_a/domain_b condition lists, splits, image_size,
  augment scale_crop_flip|resize, scale_min, flip, materialize, parallelism, ...).
* `mdir.data.manifest.read_manifest(uri) -> Manifest` — counts per split/condition
  (`.counts`, `.count(split, conditions)`), `.conditions` (index ↔ name), `.shards`,
  `.skipped` per reason, `.rows`.
* `mdir.data.io.check_reachable(uri, must_exist=True, manifest=False)` — fail fast with a
  `DataPathError` naming the URI (local path or s3://; S3 settings from AWS_* env vars).
* `mdir.data.synth.synthesize(out, places=6, conditions=(day, night, dusk, snow, rain),
  size=64, seed=0, poses_per_place=4, paired=None) -> Manifest` (`mdir data synth`).
* `mdir.data.pipeline.make_train_datasets(cfg, split) -> dict[str, ray.data.Dataset]`
  — unpaired {"A", "B"}, paired {"AB"}, single {"A"}; pass as TorchTrainer(datasets=...).
* `mdir.data.pipeline.iter_train_batches(shards, batch_size, steps, device=None)` —
  `shards` = {key: ray.train.get_dataset_shard(key)}; exactly `steps` batches with
  "A"/"B" float32 [-1, 1] NCHW and "A_id", "A_condition", "A_place" int64 (same for B).
* `mdir.data.pipeline.steps_per_epoch(cfg, split, batch_size, world_size) -> int`.
* `mdir.data.store.ShardImageStore(uri, split, image_size, conditions=None)` —
  `mdir.methods.base.ImageStore` by row id (`ids()`, `meta()`, `load(ids)`).
* `mdir.data.pipeline.iter_images(uri, split=None, conditions=None, limit=None)` —
  (row metadata dict, uint8 HWC RGB) for evaluation and retrieval.

Every row has a stable int64 `id`; batches (`A_id`) and the store agree on it.

Other modules: `schema` (shard columns), `shards` (atomic Parquet IO), `images` (bad-input
validation and conversion, skip reasons), `ingest` (resumable ingest engine),
`layouts` (folders, paired, list, robotcar_seasons, aachen, transient_attributes,
tokyo247, revisited, retrieval_sfm — one module each, `get_layout(name)`), `synth`
(procedural street scenes), `stages` (torch-free Ray worker stages), `transforms`
(torch decode/resize helpers for the consumer side and the store), `raylocal`
(`init_ray`: a private local Ray that never attaches to someone else's cluster),
`inspect` (summary / contact sheet), `cli` (`mdir data synth|ingest|inspect`).
Benchmark: `mdir bench data URI --json` (mdir/bench/data.py).
"""
