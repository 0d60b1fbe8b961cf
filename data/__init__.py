"""Real proteins shipped with ankh_jax (provenance in README.md here), installed as the resource package
``ankh_jax.sample_data``: the demo's pretraining input and the Pfam family task's sample splits."""
