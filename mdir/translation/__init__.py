"""Dataset-scale translation: a registered generator applied to a whole mdir dataset on Ray
Data, written as a new dataset in the same shard schema (``mdir data translate``).

Sits above `mdir.data`, `mdir.methods` and `mdir.registry` (it reads shards, loads a
translator and writes shards); `mdir.data` itself imports none of it.

* `any_size` — the one function that translates uint8 images at their stored size;
* `dataset`  — plan, Ray Data actor pool, resumable shard writing, manifest;
* `cli`      — the ``mdir data translate`` command (mounted by `mdir.cli`).
"""
