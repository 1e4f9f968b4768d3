import pytest
import torch

from facerec.contract import Preprocess
from facerec.errors import CheckpointError
from facerec.models import create_model, list_models, load_checkpoint, save_model

# Parameter counts measured for the defaults (512-d, 112x112; mobilefacenet 128-d). The IResNet
# and mbf figures equal arcface_torch's get_model(...) (checked locally against its backbones: strict
# load and identical eval-mode embeddings, max abs difference 0).
PARAMS = {
    "iresnet18": 24_025_600, "iresnet34": 34_139_328, "iresnet50": 43_590_848,
    "iresnet100": 65_156_160, "iresnet200": 118_833_920, "mobilefacenet": 1_003_136,
    "ir_se50": 43_813_568, "ir_se100": 65_528_384, "mbf": 2_059_520, "mbf_large": 6_314_880,
}
FAST = {"mobilefacenet", "iresnet18", "mbf"}


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", list_models())
def test_parameter_count(name):
    assert n_params(create_model(name)) == PARAMS[name]


@pytest.mark.parametrize("name", sorted(FAST))  # every backbone: tests/models/test_fast_paths.py (small input)
def test_shape_determinism_and_split_forward(name):
    torch.manual_seed(0)
    m = create_model(name, embedding_size=64).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        y1, y2 = m(x), m(x)
        y3 = m.forward_head(m.forward_features(x))
    assert y1.shape == (2, 64) and torch.equal(y1, y2) and torch.equal(y1, y3)
    assert m.preprocess.embedding_size == 64 and m.preprocess.input_size == (112, 112)


@pytest.mark.parametrize("name", sorted(FAST))
def test_save_load_round_trip_keeps_weights_and_contract(name, tmp_path):
    contract = Preprocess(input_size=(112, 112), color="BGR", mean=(127.5,) * 3, std=(128.0,) * 3, embedding_size=32)
    m = create_model(name, embedding_size=32, preprocess=contract).eval()
    save_model(m, tmp_path / "m.pt")
    back = load_checkpoint(tmp_path / "m.pt")
    assert back.arch == m.arch and back.preprocess == contract
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(back(x), m(x))


def test_aliases():
    assert create_model("r18").arch == "iresnet18"


def test_arcface_torch_state_dict_infers_architecture(tmp_path):
    src = create_model("r18", embedding_size=128)
    state = {f"module.{k}": v for k, v in src.state_dict().items()}  # as saved from DDP
    torch.save(state, tmp_path / "backbone.pth")
    m = load_checkpoint(tmp_path / "backbone.pth")
    assert m.arch == "iresnet18" and m.preprocess.embedding_size == 128


def test_strict_load_failure_lists_mismatches(tmp_path):
    state = create_model("r18").state_dict()
    del state["layer1.0.bn1.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "bad.pth", arch="r18")
    msg = str(e.value)
    assert "layer1.0.bn1.weight" in msg and "extra.weight" in msg and "bad.pth" in msg
    with pytest.raises(CheckpointError, match="shape mismatches"):
        torch.save(create_model("mobilefacenet", embedding_size=64).state_dict(), tmp_path / "m.pth")
        load_checkpoint(tmp_path / "m.pth", arch="mobilefacenet")


@pytest.mark.shared_data
def test_seed_mobilefacenet_checkpoint_loads_with_contract(shared_data):
    m = load_checkpoint(shared_data / "weights" / "mobilefacenet_casia_xiaoccer" / "068.ckpt")
    assert n_params(m) == 999_552  # the count ../shared/data/README.md gives
    p = m.preprocess
    assert (p.input_size, p.color, p.template, p.embedding_size) == ((112, 96), "RGB", "sphereface", 128)
    assert p.mean == (127.5,) * 3 and p.std == (128.0,) * 3


def test_se_block_reweights_channels():
    from facerec.models.iresnet import SqueezeExcite

    se = SqueezeExcite(32)
    x = torch.randn(2, 32, 5, 5)
    w = torch.sigmoid(se.fc2(torch.relu(se.fc1(x.mean((2, 3), keepdim=True)))))
    assert torch.allclose(se(x), x * w)
    assert ((w > 0) & (w < 1)).all()


def test_arcface_torch_mbf_state_dict_infers_architecture(tmp_path):
    src = create_model("mbf", embedding_size=256).eval()
    torch.save(src.state_dict(), tmp_path / "backbone.pth")
    m = load_checkpoint(tmp_path / "backbone.pth")
    assert m.arch == "mbf" and m.preprocess.embedding_size == 256
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(m(x), src(x))
