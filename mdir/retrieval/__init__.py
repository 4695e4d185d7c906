"""Downstream retrieval fine-tuning that consumes registered generators (issue 8).

GeM embedding network (VGG-16 / ResNet-50/101 / tiny trunk + GeM with learnable p + L2N) fine-tuned
with the contrastive loss on tuples (1 query, 1 positive, 5 hard negatives) on Ray Train, with
a registered generator as augmentation (p = 0.15), learned whitening Lw, and recall /
localization / revisited mAP evaluation. Thesis 3.3-3.4 and chapter 5; MDUIT 3.3.

Modules (one idea each):

* `config`      `RetrievalJobConfig` (pydantic, paper defaults), `load_retrieval_config`
* `positives`   `Matching`: positives/negatives from place ids, poses (< 8°, < 7 m) or pairs
* `mining`      `mine_tuples` / `select_tuples`: hard-negative mining as an explicit step
* `descriptors` `extract` (single / multi-scale 1, 1/√2, 1/2 as a GeM-p mean; sharded over DDP ranks)
* `whitening`   `learn_whitening`, `Whitening` (Radenović Lw from matching pairs)
* `search`      exact (torch) and faiss nearest-neighbour search
* `augment`     `GanAugmenter`: translate with probability p, reflection-pad to 256, MDUIT
                references, counts
* `model`       `EmbeddingModel` = [-1,1] → ImageNet normalisation → `RetrievalNet`
* `data`        `SplitData` (store + conditions + matching), `ConcatStore`, `per_shape`
                (images of different shapes: one network call per shape group)
* `evaluate`    `EvalSet` (test size, query bbx crops), `compute_metrics`, `evaluate_model`,
                `evaluate_registered`
* `table`       the papers' table (ROxf/RPar E/M/H, Tokyo) and MDUIT's localization table
* `registry`    generator alias resolution (`resolve_model`), save/load/register the network
* `train`       `run_training` (driver: fail fast, MLflow run, TorchTrainer, registration) and
                the per-worker loop (`train_worker`; `train_local` runs it without Ray)
* `experiment`  `run_compare`: with vs without GAN augmentation, side-by-side table
* `cli`         ``mdir retrieval train|eval``; ``jobs/retrieval.py`` for ``ray job submit``
"""
