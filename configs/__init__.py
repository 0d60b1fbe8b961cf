"""The gin files of ankh_jax (models/, runs/, downstream/, ready pretraining files), installed as the resource
package ``ankh_jax.configs`` so that ``--gin_file=pretrain_tiny_cpu.gin`` works from any directory."""
