# ankh_jax: `make install` then `make test`; `make demo` runs the main job on the proteins shipped in data/.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO   ?= demo_out
# Tests and demo run on the CPU; eight fake devices stand in for a pod slice where a test needs a mesh.
export JAX_PLATFORMS ?= cpu
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: install test demo lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

install: $(PY)
	# The CPU build of torch first (it is on disk here); a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,tpu]'
	$(PY) -c "import jax, flax, seqio, transformers; print('ankh_jax installed: jax', jax.__version__, 'flax', flax.__version__, 'transformers', transformers.__version__)"

test:
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

demo:
	$(PY) -m ankh_jax.train --gin_file=configs/pretrain_tiny_cpu.gin --gin.MODEL_DIR="'$(DEMO)/pretrain'"
	$(PY) -m ankh_jax.export_hf --model=$(DEMO)/pretrain --output=$(DEMO)/hf_export
	$(PY) -m ankh_jax.embed --model=$(DEMO)/hf_export --fasta=data/sample_proteins.fasta \
	    --output=$(DEMO)/embeddings.h5 --pooling=mean
	$(PY) -m ankh_jax.plot $(DEMO)/pretrain --output=$(DEMO)/plots/training.png
	$(PY) scripts/demo_summary.py --model_dir=$(DEMO)/pretrain --hf_dir=$(DEMO)/hf_export \
	    --embeddings=$(DEMO)/embeddings.h5 --fasta=data/sample_proteins.fasta \
	    --labels=data/pfam_family_train.csv,data/pfam_family_valid.csv,data/pfam_family_test.csv \
	    --plots_dir=$(DEMO)/plots
	$(PY) -m ankh_jax.generate --model=$(DEMO)/hf_export --fasta=data/sample_proteins.fasta --max_records=8 \
	    --mask_fraction=0.05 --num_samples=2 --output=$(DEMO)/variants.fasta
	$(PY) -m ankh_jax.score --model=$(DEMO)/hf_export --fasta=data/sample_proteins.fasta --max_records=8 \
	    --output=$(DEMO)/pseudo_likelihood.csv

lint:
	$(PY) -m ruff check ankh_jax tasks scripts tests

bench:
	$(PY) scripts/bench_train.py
	$(PY) scripts/bench_embed.py
	$(PY) scripts/bench_long_proteins.py --lengths=1000,2000,5000,10000
	$(PY) -m ankh_jax.plan_memory --gin_file=configs/pretrain_ankh_large.gin --target=tpu:v4:4x4x4
	$(PY) scripts/bench_generate.py

clean:
	rm -rf $(DEMO) build .pytest_cache
