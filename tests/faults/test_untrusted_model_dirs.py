"""A model directory from a stranger (the hub, a colleague, a bucket) is read bounded and contained: its JSON files
are regular files under a size cap, its index names files inside it, its sizes are checked against the tensors it
holds before anything is built, and its float parameters are floats. Each refusal is one line from the command
(exit 2) naming the file and the field or entry; an HF cache's symlinked files still load."""

import json
import os
import shutil

import numpy as np
import pytest

from ankh_jax import export_hf, score
from ankh_jax.io import hf_files

SEQ = "MKTAYIAKQR"


@pytest.fixture(scope="module")
def sharded(hf_dir_a, tmp_path_factory):
    """model a as safetensors shards with an index (``model.safetensors.index.json``)."""
    out = tmp_path_factory.mktemp("sharded") / "model"
    assert export_hf.main([f"--model={hf_dir_a}", f"--output={out}", "--max_shard_size_gb=0.00002"]) == 0
    assert (out / hf_files.SAFETENSORS_INDEX).exists() and not (out / hf_files.SAFETENSORS_FILE).exists()
    return out


def _copy(src, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def _score(model, tmp_path, capsys):
    """``score --fasta`` on ``model``: (exit status, stderr lines, output path)."""
    fasta = tmp_path / "in.fasta"
    fasta.write_text(f">p\n{SEQ}\n")
    out = tmp_path / "out.csv"
    capsys.readouterr()
    rc = score.main([f"--model={model}", f"--fasta={fasta}", f"--output={out}"])
    return rc, capsys.readouterr().err.strip().splitlines(), out


def _refused(model, tmp_path, capsys, *named):
    rc, err, out = _score(model, tmp_path, capsys)
    assert rc == 2 and len(err) == 1, err
    for text in named:
        assert text in err[0], err[0]
    assert not out.exists()
    return err[0]


def _edit_index(model, edit):
    path = model / hf_files.SAFETENSORS_INDEX
    index = json.loads(path.read_text())
    edit(index["weight_map"])
    path.write_text(json.dumps(index))
    return index


def _first_shard(model) -> str:
    return min(json.loads((model / hf_files.SAFETENSORS_INDEX).read_text())["weight_map"].values())


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_an_index_naming_a_file_outside_the_model_directory_is_refused(sharded, tmp_path, capsys, where):
    """Before: the weights were read from ``../outside/evil.safetensors`` (or an absolute path), exit 0."""
    model = _copy(sharded, tmp_path)
    shard = _first_shard(model)
    (tmp_path / "outside").mkdir()
    shutil.copy(model / shard, tmp_path / "outside" / "evil.safetensors")
    name = "../outside/evil.safetensors" if where == "parent" else str(tmp_path / "outside" / "evil.safetensors")
    _edit_index(model, lambda wm: wm.update({k: name for k, v in wm.items() if v == shard}))
    _refused(model, tmp_path, capsys, f"{model / hf_files.SAFETENSORS_INDEX}", name, "outside the model directory")


def test_an_index_entry_that_is_a_device_is_refused_unread(sharded, tmp_path, capsys):
    model = _copy(sharded, tmp_path)
    shard = _first_shard(model)
    _edit_index(model, lambda wm: wm.update({k: "/dev/zero" for k, v in wm.items() if v == shard}))
    _refused(model, tmp_path, capsys, "/dev/zero", "outside the model directory")
    # A name inside the directory that links to a device: the kind of file is checked, through the link.
    model2 = tmp_path / "m2"
    shutil.copytree(sharded, model2)
    os.remove(model2 / shard)
    os.symlink("/dev/zero", model2 / shard)
    _refused(model2, tmp_path, capsys, str(model2 / shard), "not a regular file")


@pytest.mark.parametrize("content,named", [
    ("{not json", "not valid JSON"),
    ('{"weight_map": {"shared.weight": 1}}', "weight_map entry 'shared.weight' is 1, not a file name"),
    ('["model-00001.safetensors"]', "no weight_map"),
])
def test_a_damaged_index_is_one_line_naming_it(sharded, tmp_path, capsys, content, named):
    model = _copy(sharded, tmp_path)
    (model / hf_files.SAFETENSORS_INDEX).write_text(content)
    _refused(model, tmp_path, capsys, str(model / hf_files.SAFETENSORS_INDEX), named)


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json"])
def test_a_model_json_linked_to_dev_zero_is_refused_unread(hf_dir_a, tmp_path, capsys, name):
    """Before: json.load read 8.7 GB of zeros, then a MemoryError traceback."""
    model = _copy(hf_dir_a, tmp_path)
    assert (model / name).exists()
    os.remove(model / name)
    os.symlink("/dev/zero", model / name)
    _refused(model, tmp_path, capsys, str(model / name), "not a regular file")


@pytest.mark.parametrize("change,named", [
    ({"num_layers": 10_000_000}, "num_layers=10000000: must be in 0..1024"),  # before: 89 s, 9.6 GB, MemoryError
    ({"num_layers": 100}, "config.json says num_layers=100, the weights hold 2 encoder layers"),
    ({"num_decoder_layers": 1000}, "config.json says num_decoder_layers=1000, the weights hold 1 decoder layers"),
    ({"d_model": "64"}, "d_model='64': must be an integer"),
    ({"d_model": 10**9}, "d_model=1000000000: must be in 1..65536"),
    ({"layer_norm_epsilon": "tiny"}, "layer_norm_epsilon='tiny': must be a number"),
])
def test_config_sizes_are_checked_before_anything_is_built(hf_dir_a, tmp_path, capsys, change, named):
    model = _copy(hf_dir_a, tmp_path)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, **change}))
    _refused(model, tmp_path, capsys, str(model / "config.json"), named)


@pytest.mark.parametrize("content,named", [
    ("[1, 2, 3]", "holds a JSON list, not an object"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("\xff\xfe{}", "not valid JSON"),
])
def test_a_config_json_that_is_not_an_object_is_one_line(hf_dir_a, tmp_path, capsys, content, named):
    model = _copy(hf_dir_a, tmp_path)
    (model / "config.json").write_bytes(content.encode("latin-1"))
    _refused(model, tmp_path, capsys, str(model / "config.json"), named)


def test_integer_weights_are_refused_naming_the_tensor(hf_dir_a, tmp_path, capsys):
    """Before: shared.weight stored as int64 in safetensors (or pytorch_model.bin) loaded and scored, exit 0."""
    from safetensors.numpy import load_file, save_file

    model = _copy(hf_dir_a, tmp_path)
    state = load_file(str(model / hf_files.SAFETENSORS_FILE))
    state["shared.weight"] = np.round(state["shared.weight"] * 10).astype(np.int64)
    save_file(state, str(model / hf_files.SAFETENSORS_FILE))
    _refused(model, tmp_path, capsys, "tensor shared.weight is stored as int64")

    torch = pytest.importorskip("torch")
    os.remove(model / hf_files.SAFETENSORS_FILE)
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()},
               model / hf_files.TORCH_FILE)
    _refused(model, tmp_path, capsys, str(model / hf_files.TORCH_FILE), "tensor shared.weight is stored as int64")


def test_float8_weights_numpy_cannot_read_are_one_line_naming_the_tensor(hf_dir_a, tmp_path, capsys):
    """Before: safetensors failed inside numpy (AttributeError: no float8_e4m3fn), a traceback."""
    import ml_dtypes
    from safetensors.numpy import load_file, save_file

    model = _copy(hf_dir_a, tmp_path)
    state = load_file(str(model / hf_files.SAFETENSORS_FILE))
    state["shared.weight"] = state["shared.weight"].astype(ml_dtypes.float8_e4m3fn)
    save_file(state, str(model / hf_files.SAFETENSORS_FILE))
    _refused(model, tmp_path, capsys, str(model / hf_files.SAFETENSORS_FILE),
             "tensor shared.weight is stored as F8_E4M3, which numpy cannot read")


def test_an_hf_cache_layout_of_symlinked_files_still_loads(hf_dir_a, sharded, tmp_path, capsys):
    """HF's cache keeps every file as ``snapshots/<rev>/<name> -> ../../blobs/<hash>``: links out of the model
    directory to regular files are how it works, and must load (single file and shards)."""
    for source in (hf_dir_a, sharded):
        cache = tmp_path / source.name
        (cache / "blobs").mkdir(parents=True)
        snapshot = cache / "snapshots" / "rev"
        snapshot.mkdir(parents=True)
        for name in os.listdir(source):
            shutil.copy(source / name, cache / "blobs" / f"blob-{name}")
            os.symlink(f"../../blobs/blob-{name}", snapshot / name)
        rc, err, out = _score(snapshot, tmp_path, capsys)
        assert rc == 0, err
        assert out.read_text().splitlines()[1].startswith(f"p,{len(SEQ)},")
