"""Pictures of runs and embeddings (matplotlib, headless): ``python -m ankh_jax.plot``.

* :mod:`ankh_jax.plots.training`: ``MODEL_DIR/plots/training.png`` from a pretraining run's ``metrics.jsonl``;
* :mod:`ankh_jax.plots.embedding_map`: a 2-D map of pooled embeddings coloured by a label column, and the
  nearest-neighbour label agreement;
* :mod:`ankh_jax.plots.finetune_plots`: learning curves and, per task kind, confusion matrices, predicted-vs-true
  scatter or contact maps, beside a fine-tuning run's ``results.json``.

matplotlib is imported only when a picture is drawn, never by ``import ankh_jax`` (or ``ankh_jax.inference.embedding`` /
``ankh_jax.export_hf``).
"""
