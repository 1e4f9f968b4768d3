import pytest

from facerec.config import Config, load_config, parse_override, save_config
from facerec.errors import ConfigError


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_and_overrides():
    cfg = load_config(None, ["train.epochs=3", "optim.milestones=[1, 2]", "head.m=0.35", "data.val=[a.bin]"])
    assert cfg.train.epochs == 3.0 and isinstance(cfg.train.epochs, float)
    assert cfg.optim.milestones == [1.0, 2.0]
    assert cfg.head.m == 0.35
    assert cfg.data.val == ["a.bin"]
    assert cfg.model.input_size == (112, 112)


def test_yaml_values_and_nested_section(tmp_path):
    p = write(tmp_path, "model:\n  name: r50\n  input_size: [112, 96]\ndata:\n  synthetic:\n    identities: 7\n")
    cfg = load_config(p)
    assert cfg.model.name == "r50" and cfg.model.input_size == (112, 96)
    assert cfg.data.synthetic.identities == 7


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.epoch=3", "did you mean 'train.epochs'"),
        ("trian.epochs=3", "did you mean 'train'"),
        ("data.synthetic.identitys=3", "did you mean 'data.synthetic.identities'"),
    ],
)
def test_unknown_key_names_nearest(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, [override])


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    p = write(tmp_path, "train:\n  batch_sise: 8\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "train.batch_sise" in msg and "train.batch_size" in msg


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.batch_size=abc", "expects int"),
        ("train.batch_size=1.5", "expects int"),
        ("train.channels_last=3", "expects bool"),
        ("train.epochs=true", "expects float"),
        ("eval.flip=sun", "did you mean 'sum'"),
        ("model.input_size=[1,2,3]", "expects 2 values"),
        ("optim.milestones=5", "expects list"),
    ],
)
def test_wrong_type_names_key_and_type(override, expected):
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert key in str(e.value) and expected in str(e.value)


def test_optional_accepts_null():
    assert load_config(None, ["optim.head_lr=null"]).optim.head_lr is None
    assert load_config(None, ["optim.head_lr=0.2"]).optim.head_lr == 0.2


def test_missing_and_non_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError):
        load_config(bad)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.epochs")
    with pytest.raises(ConfigError, match="not a section"):
        load_config(None, ["train.epochs.x=1"])


def test_resolved_config_round_trip(tmp_path):
    cfg = load_config(None, ["train.epochs=2", "model.options={width_mult: 0.5}"])
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == cfg
    assert isinstance(again, Config)


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(root.glob("*.yaml"))
    assert any(f.name == "demo.yaml" for f in files)
    for f in files:
        load_config(f)


def test_scientific_notation_without_a_dot_is_a_float(tmp_path):
    """PyYAML (YAML 1.1) reads 5e-4 as a string; a float key takes it as the number it is."""
    cfg = load_config(None, ["optim.weight_decay=5e-4", "optim.lr=1E-1"])
    assert cfg.optim.weight_decay == 5e-4 and cfg.optim.lr == 0.1
    (tmp_path / "c.yaml").write_text("optim:\n  weight_decay: 1e-5\n")
    assert load_config(tmp_path / "c.yaml").optim.weight_decay == 1e-5
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(None, ["optim.lr=fast"])


def test_a_directory_for_the_config_says_so(tmp_path):
    """A run folder given for its config.yaml gets "is a directory", not "does not exist"."""
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path)
    assert str(tmp_path) in str(e.value) and "is a directory, not a YAML config file" in str(e.value)
