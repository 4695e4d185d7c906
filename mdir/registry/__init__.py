"""The model registry: generators registered in MLflow and loaded back, without pickle.

Below training, Tune, metrics and retrieval, which all use it; it imports none of them
(only `mdir.methods` for the method table, and MLflow). Modules:

* `uri` — the one parser of ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION`` (no MLflow);
* `aliases` — resolve a URI to one version, version tags, the ``champion`` alias;
* `generators` — `register_generator`, `load_translator` / `Translator`, `list_models`,
  the signature and model card;
* `pyfunc_model` — the models-from-code pyfunc logged with each generator;
* `cli` — ``mdir models summary | translate | list``.
"""
