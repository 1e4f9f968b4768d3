import json

import pytest

from facerec.cli import main
from facerec.export import read_onnx_metadata
from facerec.models import load_checkpoint

pytest.importorskip("onnxruntime")


def test_export_weights_and_onnx_from_the_command_line(shared_data, tmp_path, capsys):
    ckpt = shared_data / "weights" / "mobilefacenet_casia_xiaoccer" / "068.ckpt"
    st = tmp_path / "mfn.safetensors"
    assert main(["export", "weights", "--model", str(ckpt), "--out", str(st)]) == 0
    assert load_checkpoint(st).preprocess == load_checkpoint(ckpt).preprocess
    lfw = shared_data / "lfw"
    onnx_path, report = tmp_path / "mfn.onnx", tmp_path / "parity.json"
    faces = sorted((lfw / "images").iterdir())[:3]
    assert main(["export", "onnx", "--model", str(st), "--out", str(onnx_path), "--parity-images", *map(str, faces),
                 "--landmarks", str(lfw / "landmarks.tsv"), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "parity passed" in out
    r = json.loads(report.read_text())
    assert r["passed"] and r["images"] >= 3 and r["min_cosine"] > 0.99999
    assert read_onnx_metadata(onnx_path)["template"] == "sphereface"
    assert main(["export", "onnx", "--model", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
