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


def test_report_markdown_and_roc_png(tiny_bench, capsys):
    pytest.importorskip("matplotlib")
    report = tiny_bench / "report"
    assert main(["eval", "--model", str(tiny_bench / "m.pt"), "--bench", "tiny", "--data", str(tiny_bench),
                 "--flip", "all", "--report", str(report)]) == 0
    md = (report / "report.md").read_text()
    assert "| tiny | insightface | sum | 20 |" in md and "![ROC tiny](roc_tiny.png)" in md
    png = (report / "roc_tiny.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_roc_points_match_a_naive_sweep():
    from facerec.eval.report import roc_points

    rng = np.random.default_rng(0)
    same = rng.random(200) < 0.4
    scores = np.round(np.where(same, rng.normal(0.6, 0.2, 200), rng.normal(0.2, 0.2, 200)), 2)  # ties
    far, tar = roc_points(scores, same)
    thresholds = np.sort(np.unique(scores))[::-1]
    naive_far = [np.mean(scores[~same] >= t) for t in thresholds]
    naive_tar = [np.mean(scores[same] >= t) for t in thresholds]
    np.testing.assert_allclose(far[1:], naive_far)
    np.testing.assert_allclose(tar[1:], naive_tar)
    assert far[-1] == tar[-1] == 1.0 and far[0] == tar[0] == 0.0


def test_foreign_onnx_with_stated_preprocessing(tiny_bench, tmp_path):
    pytest.importorskip("onnxruntime")
    import torch

    from facerec.eval.benchmark import evaluate_bins
    from facerec.models import load_checkpoint

    model = load_checkpoint(tiny_bench / "m.pt")
    onnx_path = tmp_path / "foreign.onnx"  # exported without facerec metadata, like another framework's
    torch.onnx.export(model, (torch.randn(2, 3, 32, 32),), str(onnx_path), input_names=["data"],
                      output_names=["fc1"], dynamo=False, dynamic_axes={"data": {0: "n"}, "fc1": {0: "n"}})
    assert main(["eval", "--onnx", str(onnx_path), "--bench", "tiny", "--data", str(tiny_bench)]) == 2  # no size
    out = tmp_path / "r.json"
    assert main(["eval", "--onnx", str(onnx_path), "--input-size", "32", "32", "--mean", "127.5", "127.5", "127.5",
                 "--std", "127.5", "127.5", "127.5", "--bench", "tiny", "--data", str(tiny_bench),
                 "--json", str(out)]) == 0
    ref = evaluate_bins(model, ["tiny"], tiny_bench, progress=False)
    got = json.loads(out.read_text())["results"][0]
    assert got["accuracy_mean"] == pytest.approx(ref[0]["accuracy_mean"])
    assert got["auc"] == pytest.approx(ref[0]["auc"], abs=1e-6)


@pytest.mark.parametrize("by_name", [False, True], ids=["path", "standard_name"])
def test_a_directory_for_a_bench_says_so(tmp_path, by_name):
    d = tmp_path / "lfw.bin"
    d.mkdir()
    with pytest.raises(DataError) as e:
        resolve_bench("lfw", tmp_path) if by_name else resolve_bench(str(d), None)
    assert str(d) in str(e.value) and "is a directory, not a .bin verification file" in str(e.value)
