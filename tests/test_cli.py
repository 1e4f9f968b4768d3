import subprocess
import sys

from facerec.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "train" in out


def test_missing_config_is_a_clear_error(tmp_path, capsys):
    code = main(["train", str(tmp_path / "missing.yaml")])
    err = capsys.readouterr().err
    assert code == 2
    assert "missing.yaml" in err and "does not exist" in err and "Traceback" not in err


def test_non_yaml_config_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: [1,\n")
    assert main(["train", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_bad_override_is_a_clear_error(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: 1\n")
    assert main(["train", str(cfg), "--set", "train.batchsize=3"]) == 2
    assert "did you mean 'train.batch_size'" in capsys.readouterr().err


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "facerec", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("facerec ")
