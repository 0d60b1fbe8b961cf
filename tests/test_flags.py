"""flags.configure: a bad gin configuration is one line; an error raised while importing a command's modules is a
bug and keeps its traceback (it used to be reported as "invalid gin configuration", exit 2)."""

import sys

import pytest

from ankh_jax import flags


def _args(*bindings):
    return flags.parse(["--gin_file=configs/pretrain_tiny_cpu.gin", *bindings], prog="test")


def test_a_misspelled_binding_is_one_line(capsys):
    assert not flags.configure("test", _args("--gin.TRAIN_STEP=5"), modules=("ankh_jax.training.loop",))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TRAIN_STEP" in err[0] and "did you mean TRAIN_STEPS" in err[0], err


def test_a_bug_while_importing_a_commands_modules_keeps_its_traceback(tmp_path, monkeypatch):
    (tmp_path / "broken_command_module.py").write_text("raise ValueError('a bug at import time')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="a bug at import time"):
        flags.configure("test", _args(), modules=("broken_command_module",))
    sys.modules.pop("broken_command_module", None)
