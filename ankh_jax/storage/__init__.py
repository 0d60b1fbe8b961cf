"""The lowest layer: where files live and how they are written, for a local disk and for object storage (gs://).

Every path a user gives may be a local path or a ``gs://`` URL; the modules here are the one place that knows the
difference. Nothing here imports jax, TensorFlow or the model.
"""

import os as _os

# etils.epath decides once per process whether gs:// goes through TensorFlow's gfile; ankh_jax uses fsspec/gcsfs
# (see paths.py), so say so before anything touches a path.
_os.environ.setdefault("EPATH_USE_TF", "false")
