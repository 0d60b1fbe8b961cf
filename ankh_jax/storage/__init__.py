"""The lowest layer: where files live and how they are written, for a local disk and for object storage (gs://).

Every path a user gives may be a local path or a ``gs://`` URL; the modules here are the one place that knows the
difference. Nothing here imports jax, TensorFlow or the model.
"""
