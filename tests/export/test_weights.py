import json

import pytest
import torch

from facerec.contract import Threshold
from facerec.errors import CheckpointError
from facerec.export import load_safetensors, read_safetensors_metadata, save_safetensors
from facerec.models import create_model, load_checkpoint

pytest.importorskip("safetensors")


@pytest.mark.parametrize("name,kwargs", [("mobilefacenet", {"input_size": (112, 96), "embedding_size": 128}),
                                         ("iresnet18", {"input_size": (32, 32), "embedding_size": 64})])
def test_round_trip_rebuilds_architecture_contract_and_threshold(tmp_path, name, kwargs):
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    with torch.no_grad():
        model.train()(torch.randn(4, 3, *model.preprocess.input_size))  # non-trivial BN statistics
    model.eval()
    model.threshold = Threshold(0.31, "best_accuracy", "lfw", "sum", 6000, 0.99, 0.004, 0.985)
    path = tmp_path / "m.safetensors"
    save_safetensors(model, path)
    meta = read_safetensors_metadata(path)
    assert meta["arch"] == model.arch and json.loads(meta["input_size"]) == list(model.preprocess.input_size)
    assert meta["color"] == "RGB" and json.loads(meta["threshold"])["cosine"] == 0.31
    loaded = load_checkpoint(path)  # no arch given
    assert loaded.arch == model.arch and loaded.preprocess == model.preprocess
    assert loaded.threshold == model.threshold and not loaded.training
    x = torch.randn(2, 3, *model.preprocess.input_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_foreign_or_corrupt_safetensors_are_refused(tmp_path):
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="without facerec metadata"):
        load_safetensors(plain)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(junk)
