"""ankh_jax.parsing, the one place a ValueError is caught, and the user-text parsers built on it: a value that is not
a number is one InputError naming where it came from; a number is read as before."""

import math

import numpy as np
import pytest

from ankh_jax.downstream.datasets import DataError, parse_coordinates, parse_float_list
from ankh_jax.errors import InputError
from ankh_jax.inference.infilling import parse_mask_spec
from ankh_jax.io.shards import resolve_shards
from ankh_jax.parsing import try_float, try_int
from ankh_jax.score import read_mutations


def test_try_float_and_try_int_return_none_for_what_is_not_a_number():
    assert try_float(" 2.5 ") == 2.5 and try_float(3) == 3.0 and math.isnan(try_float("nan"))
    assert [try_float(v) for v in ("", "x", "1,5", None, [1.0])] == [None] * 5
    assert try_int("-7") == -7 and try_int(7.9) == 7
    assert [try_int(v) for v in ("7.0", "", "seven", None)] == [None] * 4


def test_a_shard_count_from_the_environment_that_is_not_an_integer_is_one_input_error(monkeypatch):
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(InputError, match=r"^JAX_NUM_PROCESSES='two' is not an integer$"):
        resolve_shards(None, None)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    assert resolve_shards(None, None) == (2, 1)


def test_mask_specs_parse_and_a_bad_part_is_named():
    assert parse_mask_spec("10-12, 30", 40) == (9, 10, 11, 29)
    for spec, part in (("10-x", "10-x"), ("3,,4", ""), ("a", "a")):
        with pytest.raises(InputError, match="neither a position"):
            parse_mask_spec(spec, 40)
        with pytest.raises(InputError) as err:
            parse_mask_spec(spec, 40)
        assert repr(part) in str(err.value)


def test_list_and_coordinate_cells_that_are_not_numbers_name_the_row_and_column():
    np.testing.assert_array_equal(parse_float_list("[0.5, 1]", source="s.csv", row=3, column="y"), [0.5, 1.0])
    with pytest.raises(DataError, match=r"^s.csv: row 3, column 'y': not a list of numbers: '0.5 x'$"):
        parse_float_list("0.5 x", source="s.csv", row=3, column="y")
    with pytest.raises(DataError, match="not a list of numbers"):
        parse_float_list([0.5, None], source="s.csv", row=3, column="y")
    coords = parse_coordinates("1 2 3 4 5 6", source="s.csv", row=2, column="xyz", length=2)
    np.testing.assert_array_equal(coords, [[1, 2, 3], [4, 5, 6]])
    with pytest.raises(DataError, match=r"^s.csv: row 2, column 'xyz': coordinates are not numbers$"):
        parse_coordinates("1 2 x", source="s.csv", row=2, column="xyz", length=1)


def test_a_measured_score_that_is_not_a_number_names_the_file_line_and_column(tmp_path):
    path = tmp_path / "dms.csv"
    path.write_text("mutant,DMS_score\nA1G,0.5\nA1C,-1e-3\n")
    assert read_mutations(str(path), "mutant", "ACD", "DMS_score")[2:] == (["A1G", "A1C"], "DMS_score")
    path.write_text("mutant,DMS_score\nA1G,0.5\nA1C,high\n")
    with pytest.raises(InputError, match=r"dms.csv: line 3: DMS_score='high' is not a number$"):
        read_mutations(str(path), "mutant", "ACD", "DMS_score")
