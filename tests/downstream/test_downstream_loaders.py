"""Every task's loader on small files written here: CSV and ``save_to_disk`` layouts, labels, errors."""

import csv
import json
import os

import numpy as np
import pyarrow as pa
import pytest
from ankh_jax.tasks.contacts import contact_task
from ankh_jax.tasks.deeploc import deeploc_task
from ankh_jax.tasks.fluorescence import fluorescence_task
from ankh_jax.tasks.lookup import lookup_task
from ankh_jax.tasks.pfam_family import pfam_family_task
from ankh_jax.tasks.remote_homology import remote_homology_task
from ankh_jax.tasks.solubility import solubility_task
from ankh_jax.tasks.ssp import ssp3_task, ssp8_task

from ankh_jax.downstream.datasets import DataError, read_columns
from ankh_jax.downstream.task_spec import load_task


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def write_saved_split(directory, columns: dict):
    """The layout ``datasets.Dataset.save_to_disk`` writes: Arrow IPC stream + state.json."""
    os.makedirs(directory, exist_ok=True)
    table = pa.table(columns)
    with pa.OSFile(os.path.join(directory, "data-00000-of-00001.arrow"), "wb") as sink, \
            pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    with open(os.path.join(directory, "state.json"), "w") as f:
        json.dump({"_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_split": None}, f)
    with open(os.path.join(directory, "dataset_info.json"), "w") as f:
        json.dump({"features": {}}, f)


def test_ssp_reads_letters_and_disorder_mask(tmp_path):
    header = ["input", "dssp3", "dssp8", "disorder"]
    write_csv(tmp_path / "training_hhblits.csv", header,
              [["MKVL", "CHHE", "CHGE", "1.0 1.0 0.0 1.0"], ["AAGG", "EECC", "EBTS", "1 1 1 1"]])
    for name in ("CASP12", "CASP14", "CB513", "TS115"):
        write_csv(tmp_path / f"{name}.csv", header, [["MKV", "HHC", "HGC", "1.0 1.0 1.0"]])
    data = load_task(ssp3_task(data_dir=str(tmp_path), valid_fraction=0.0))
    assert data.classes == ("C", "H", "E")
    np.testing.assert_array_equal(data.splits["train"].labels[0], [0, 1, -100, 2])
    assert sorted(data.test_names()) == ["test/CASP12", "test/CASP14", "test/CB513", "test/TS115"]
    data8 = load_task(ssp8_task(data_dir=str(tmp_path), valid_fraction=0.0))
    assert data8.classes == ("C", "H", "G", "E", "B", "T", "S")
    write_csv(tmp_path / "CB513.csv", header, [["MKV", "HH", "HGC", "1.0 1.0 1.0"]])
    with pytest.raises(DataError, match=r"CB513.csv: row 1, column 'dssp3': 2 labels for a sequence of 3"):
        load_task(ssp3_task(data_dir=str(tmp_path), valid_fraction=0.0))


def test_deeploc_carves_a_deterministic_validation_split(tmp_path):
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 30)) for _ in range(200)]
    rows = [[s, ["Nucleus", "Cytoplasm", "Membrane"][i % 3]] for i, s in enumerate(seqs)]
    write_csv(tmp_path / "train.csv", ["input", "loc"], rows)
    write_csv(tmp_path / "test.csv", ["input", "loc"], rows[:5])
    a = load_task(deeploc_task(data_dir=str(tmp_path), valid_fraction=0.2))
    b = load_task(deeploc_task(data_dir=str(tmp_path), valid_fraction=0.2))
    assert a.classes == ("Nucleus", "Cytoplasm", "Membrane")
    assert 20 <= len(a.splits["valid"].sequences) <= 60
    assert a.splits["valid"].sequences == b.splits["valid"].sequences
    assert not set(a.splits["valid"].sequences) & set(a.splits["train"].sequences)
    write_csv(tmp_path / "test.csv", ["input", "loc"], [["MKV", "Golgi"]])
    with pytest.raises(DataError, match="test.csv: row 1.*'Golgi' does not occur in training"):
        load_task(deeploc_task(data_dir=str(tmp_path)))


def test_remote_homology_from_save_to_disk(tmp_path):
    root = tmp_path / "remote_homology"
    write_saved_split(root / "train", {"primary": ["MKV", "GGA", "LLK"], "fold_label": [3, 7, 3]})
    write_saved_split(root / "validation", {"primary": ["MKA"], "fold_label": [7]})
    write_saved_split(root / "test_fold_holdout", {"primary": ["MKW"], "fold_label": [3]})
    with open(root / "dataset_dict.json", "w") as f:
        json.dump({"splits": ["train", "validation", "test_fold_holdout"]}, f)
    data = load_task(remote_homology_task(data_dir=str(root), train="train", valid="validation",
                                          tests=(("fold", "test_fold_holdout"),)))
    assert data.classes == ("3", "7")
    assert data.splits["train"].labels == [0, 1, 0]
    assert data.splits["test/fold"].labels == [0]
    with pytest.raises(DataError, match="is a DatasetDict; name a split"):
        read_columns(str(root), ["primary"])
    assert read_columns(f"{root}:validation", ["primary"]) == {"primary": ["MKA"]}


def test_solubility_binary_and_fluorescence_regression(tmp_path):
    write_csv(tmp_path / "train.csv", ["sequences", "labels"], [["MKV", "1"], ["GGA", "0"]])
    write_csv(tmp_path / "validation.csv", ["sequences", "labels"], [["MKV", "0.0"]])
    write_csv(tmp_path / "test.csv", ["sequences", "labels"], [["MKV", "2"]])
    with pytest.raises(DataError, match=r"test.csv: row 1, column 'labels'.*'2' is not a binary label"):
        load_task(solubility_task(data_dir=str(tmp_path)))
    write_csv(tmp_path / "test.csv", ["sequences", "labels"], [["MKV", "1"]])
    assert load_task(solubility_task(data_dir=str(tmp_path))).splits["train"].labels == [1, 0]
    flu = tmp_path / "flu"
    flu.mkdir()
    for name in ("train", "validation", "test"):
        write_csv(flu / f"{name}.csv", ["primary", "log_fluorescence"], [["SKGEE", "3.5"], ["SKGEL", "1.25"]])
    data = load_task(fluorescence_task(data_dir=str(flu)))
    assert data.splits["test/fluorescence"].labels == [3.5, 1.25]
    write_csv(flu / "test.csv", ["primary", "log_fluorescence"], [["SKGEE", "bright"]])
    with pytest.raises(DataError, match="test.csv: row 1, column 'log_fluorescence': 'bright' is not a number"):
        load_task(fluorescence_task(data_dir=str(flu)))


def test_contacts_from_coordinates_csv_and_arrow(tmp_path):
    coords = np.zeros((30, 3))
    coords[:, 0] = np.arange(30) * 3.8           # a straight chain: only |i-j| <= 2 within 8 Å
    coords[25] = coords[0] + [0, 5.0, 0]          # residue 25 folds back next to residue 0
    seq = "A" * 30
    flat = " ".join(f"{v:.3f}" for v in coords.ravel())
    mask = " ".join(["1"] * 29 + ["0"])
    for name in ("train", "valid", "test"):
        write_csv(tmp_path / f"{name}.csv", ["primary", "tertiary", "valid_mask"], [[seq, flat, mask]])
    data = load_task(contact_task(data_dir=str(tmp_path)))
    contacts, valid = data.splits["train"].labels[0]
    assert contacts[0, 25] and contacts[25, 0] and not contacts[0, 10]
    assert valid.sum() == 29 and not valid[29]
    arrow = tmp_path / "arrow_train"
    write_saved_split(arrow, {"primary": [seq], "tertiary": [coords.tolist()], "valid_mask": [[1] * 30]})
    data = load_task(contact_task(data_dir="", train=str(arrow), valid=str(arrow), tests=()))
    np.testing.assert_array_equal(data.splits["train"].labels[0][0], contacts)
    write_csv(tmp_path / "test.csv", ["primary", "tertiary", "valid_mask"], [[seq + "A", flat, mask]])
    with pytest.raises(DataError, match=r"test.csv: row 1, column 'tertiary': coordinates of shape \(30, 3\)"):
        load_task(contact_task(data_dir=str(tmp_path)))


def test_lookup_and_pfam_and_bad_residues(tmp_path):
    write_csv(tmp_path / "lookup.csv", ["sequence", "label"], [["MKV", "1.10.8.10"], ["GGA", "2.40.50.140"]])
    write_csv(tmp_path / "test.csv", ["sequence", "label"], [["MKL", "1.10.8.20"]])
    data = load_task(lookup_task(data_dir=str(tmp_path)))
    assert data.splits["train"].labels == ["1.10.8.10", "2.40.50.140"] and "valid" not in data.splits
    pfam = load_task(pfam_family_task())
    assert len(pfam.classes) == 11 and len(pfam.splits["train"].sequences) == 1012
    write_csv(tmp_path / "test.csv", ["sequence", "label"], [["MKL", "1.1"], ["MK1L", "1.1"]])
    with pytest.raises(DataError, match=r"test.csv: record 'row 2': invalid residue '1' at position 3"):
        load_task(lookup_task(data_dir=str(tmp_path)))
    with pytest.raises(DataError, match=r"missing column\(s\) \['label'\]"):
        read_columns(write_csv(tmp_path / "x.csv", ["sequence"], [["MKV"]]), ["sequence", "label"])
    with pytest.raises(DataError, match="no such CSV file"):
        read_columns(str(tmp_path / "nope.csv"), ["sequence"])


def test_contact_test_proteins_are_evaluated_whole(tmp_path):
    """Issue 11: max_length cropped test proteins too, so L became the crop and long-range pairs past it vanished.
    Here the long-range contacts (0, 25) and (1, 25) lie past a crop of 20: a perfect predictor scores P@L/5 =
    2/6 on the whole protein (L = 30: the top 6 pairs, residue 29 unresolved), and nothing on the cropped one."""
    from ankh_jax.downstream.metrics import contact_precision

    coords = np.zeros((30, 3))
    coords[:, 0] = np.arange(30) * 3.8
    coords[25] = coords[0] + [0, 5.0, 0]
    flat = " ".join(f"{v:.3f}" for v in coords.ravel())
    mask = " ".join(["1"] * 29 + ["0"])
    for name in ("train", "valid", "test"):
        write_csv(tmp_path / f"{name}.csv", ["primary", "tertiary", "valid_mask"], [["A" * 30, flat, mask]])
    data = load_task(contact_task(data_dir=str(tmp_path), max_length=20))
    for split in ("train", "valid"):
        assert len(data.splits[split].sequences[0]) == 20 and data.splits[split].labels[0][0].shape == (20, 20)
    test = data.splits["test/proteinnet"]
    contacts, valid = test.labels[0]
    assert len(test.sequences[0]) == 30 and contacts.shape == (30, 30) and contacts[0, 25] and contacts[1, 25]
    perfect = contacts.astype(float)
    assert contact_precision([perfect], [contacts], [valid])["L/5"] == pytest.approx(2 / 6)


def test_non_finite_labels_and_masks_are_refused_naming_file_and_row(tmp_path):
    """A NaN label ranked as the largest value (regression) or became a class named 'nan'; a NaN mask scored."""
    write_csv(tmp_path / "train.csv", ["primary", "log_fluorescence"], [["SKGEE", "3.5"], ["SKGEL", "-inf"]])
    write_csv(tmp_path / "validation.csv", ["primary", "log_fluorescence"], [["SKGEE", "3.5"]])
    write_csv(tmp_path / "test.csv", ["primary", "log_fluorescence"], [["SKGEE", "3.5"]])
    with pytest.raises(DataError, match=r"train.csv: row 2, column 'log_fluorescence': '-inf' is not a finite"):
        load_task(fluorescence_task(data_dir=str(tmp_path)))
    write_csv(tmp_path / "train.csv", ["sequence", "label"], [["MKV", "3"], ["GGA", "nan"]])
    with pytest.raises(DataError, match=r"train.csv: row 2, column 'label'.*'nan' is not a class label"):
        load_task(pfam_family_task(data_dir=str(tmp_path), train="train.csv", valid="train.csv", test="train.csv"))
    write_csv(tmp_path / "ssp.csv", ["input", "dssp3", "disorder"], [["MKV", "HEC", "1 nan 1"]])
    with pytest.raises(DataError, match=r"ssp.csv: row 1, column 'disorder': value 2 is not a finite number"):
        load_task(ssp3_task(data_dir=str(tmp_path), train="ssp.csv", valid="ssp.csv", tests=()))


def test_leakage_is_counted_on_whole_sequences_with_known_answers(tmp_path):
    """Issue 24: training rows cropped by max_length still match the whole test protein they came from; a carved
    validation split never shares a sequence with training (the hash sends copies to one side)."""
    from ankh_jax.downstream.leakage import count_leakage, findings

    long = "MKV" * 20                                             # 60 residues, cropped to 32 in training
    train = [[long, "a"], ["GSHMSL", "b"], ["GSHMSL", "b"], ["GSHMSL", "b"], ["WWYY", "a"]]
    write_csv(tmp_path / "train.csv", ["sequence", "label"], train)
    write_csv(tmp_path / "valid.csv", ["sequence", "label"], [["WWYY", "a"], ["PPPP", "b"]])
    write_csv(tmp_path / "test.csv", ["sequence", "label"], [[long, "a"], ["KKKK", "b"], ["KKKK", "b"]])
    spec = pfam_family_task(data_dir=str(tmp_path), train="train.csv", valid="valid.csv", test="test.csv",
                            max_length=32)
    data = load_task(spec)
    assert data.splits["train"].sequences[0] == long[:32]
    report = count_leakage(data.splits)
    assert report == {"train": {"rows": 5, "duplicates": 2},
                      "valid": {"rows": 2, "duplicates": 0, "in_train": 1},
                      "test/pfam_family": {"rows": 3, "duplicates": 1, "in_train": 1}}
    assert len(findings(report)) == 4
    rows = [[seq, "x"] for seq in ("ACDE", "FGHI", "KLMN", "PQRS", "TVWY", "AAAA", "CCCC", "DDDD") for _ in range(3)]
    write_csv(tmp_path / "deeploc.csv", ["sequence", "label"], rows)
    carved = load_task(deeploc_task(data_dir=str(tmp_path), train="deeploc.csv", valid=None, test="deeploc.csv",
                                    sequence_column="sequence", label_column="label", valid_fraction=0.5))
    report = count_leakage(carved.splits)
    assert report["valid"]["in_train"] == 0 and report["valid"]["rows"] > 0
    assert report["train"]["duplicates"] + report["valid"]["duplicates"] == 16  # 24 rows, 8 distinct
