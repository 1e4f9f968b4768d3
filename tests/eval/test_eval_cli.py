import json

import numpy as np
import pytest

from facerec.cli import main
from facerec.data.bins import write_bin
from facerec.data.recordio import write_face_rec
from facerec.data.synthetic import encode_jpeg, render_image
from facerec.errors import DataError
from facerec.eval.benchmark import evaluate_bins, fuse, resolve_bench
from facerec.models import create_model, save_model


@pytest.fixture
def tiny_bench(tmp_path):
    imgs, same = [], []
    for k in range(20):
        a = k
        b = k if k % 2 == 0 else k + 100
        imgs += [encode_jpeg(render_image(0, a, 0, size=32)), encode_jpeg(render_image(0, b, 1, size=32))]
        same.append(a == b)
    write_bin(tmp_path / "tiny.bin", imgs, same)
    model = create_model("mobilefacenet", embedding_size=16, input_size=(32, 32), width_mult=0.25)
    save_model(model, tmp_path / "m.pt")
    return tmp_path


def test_eval_cli_json_shape(tiny_bench, capsys):
    out = tiny_bench / "r.json"
    assert main(["eval", "--model", str(tiny_bench / "m.pt"), "--bench", "tiny", "--data", str(tiny_bench),
                 "--protocol", "both", "--flip", "all", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert len(res["results"]) == 6
    row = res["results"][0]
    assert set(row) >= {"bench", "protocol", "flip", "accuracy_mean", "accuracy_std", "tar_at_far", "auc", "eer"}
    assert row["bench"] == "tiny" and 0.0 <= row["accuracy_mean"] <= 1.0
    assert "| tiny | insightface | none |" in capsys.readouterr().out


def test_flip_modes_fuse_the_same_pass(tiny_bench):
    model = create_model("mobilefacenet", embedding_size=16, input_size=(32, 32), width_mult=0.25)
    rows = evaluate_bins(model, [str(tiny_bench / "tiny.bin")], flips=("none", "sum", "concat"), progress=False)
    assert [r["flip"] for r in rows] == ["none", "sum", "concat"]
    e, ef = np.ones((2, 3)), np.full((2, 3), 2.0)
    assert fuse(e, ef, "sum").tolist() == [[3.0] * 3] * 2 and fuse(e, ef, "concat").shape == (2, 6)


def test_unknown_bench_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="cfp_fp.bin"):
        resolve_bench("cfp_fp", tmp_path)


def test_data_info_rec_and_bin(tiny_bench, capsys):
    samples = [(label, encode_jpeg(render_image(0, label, j, size=32))) for label in range(3) for j in range(2)]
    write_face_rec(tiny_bench / "t.rec", samples)
    assert main(["data", "info", str(tiny_bench / "t.rec"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_images"] == 6 and info["num_classes"] == 3 and info["image_size"] == [32, 32]
    assert info["label_range"] == [0, 2]
    assert main(["data", "info", str(tiny_bench / "tiny.bin"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_pairs"] == 20 and info["num_same"] == 10
