"""``python -m ankh_jax.finetune``: the downstream fine-tuning runner (see :mod:`ankh_jax.downstream.finetune`)."""

import sys

from ankh_jax.downstream.finetune import main

if __name__ == "__main__":
    sys.exit(main())
