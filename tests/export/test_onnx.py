"""ONNX export: parity on real aligned faces for every backbone family, metadata, refusal."""

import json

import numpy as np
import pytest
import torch

from facerec.export import OnnxEmbedder, export_onnx, read_onnx_metadata
from facerec.export.onnx import ExportError
from facerec.models import create_model, load_checkpoint

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

FAMILIES = {  # one small member of each registered family
    "mobilefacenet": {"input_size": (112, 96), "embedding_size": 128},
    "mbf": {"input_size": (112, 112)},
    "iresnet18": {"input_size": (32, 32)},
    "ir_se50": {"input_size": (32, 32)},
}


def calibrated(name, **kwargs):
    """A random model with BatchNorm statistics that match its activations (see conftest)."""
    from conftest import _calibrate_batchnorm

    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    return _calibrate_batchnorm(model, model.preprocess.input_size)


@pytest.fixture(scope="module")
def lfw_faces(shared_data):
    """Ten real LFW faces, ArcFace-aligned 112x112 with the shared landmarks."""
    from facerec.data.align import align_face, read_landmarks
    from facerec.data.decode import decode_image

    lm = read_landmarks(shared_data / "lfw" / "landmarks.tsv")
    names = [k for k, v in sorted(lm.items()) if v is not None][:10]
    return np.stack([align_face(decode_image((shared_data / "lfw" / "images" / n).read_bytes()), lm[n])
                     for n in names])


def test_registry_families_are_covered():
    from facerec.models import list_models

    families = {"mobilefacenet": "mobilefacenet", "mbf": "mbf", "iresnet": "iresnet18", "ir_se": "ir_se50"}
    for name in list_models():
        assert any(name.startswith(prefix) for prefix in families), f"{name}: add its family to FAMILIES"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_parity_on_real_faces_for_every_family(name, lfw_faces, tmp_path):
    model = calibrated(name, **FAMILIES[name])
    out = tmp_path / f"{name}.onnx"
    report = export_onnx(model, out, parity_images=lfw_faces, image_source="lfw")
    assert report.passed and report.images == 10 and out.is_file()
    assert report.min_cosine > 0.99999 and report.max_abs_diff <= report.atol
    meta = read_onnx_metadata(out)
    assert json.loads(meta["input_size"]) == list(model.preprocess.input_size)
    assert meta["color"] == "RGB" and meta["template"] == model.preprocess.template
    assert int(meta["embedding_size"]) == model.preprocess.embedding_size
    assert json.loads(meta["facerec_model"])["arch"] == model.arch
    runtime = OnnxEmbedder(out)  # dynamic batch: 3 is neither of the exported shapes
    x = torch.randn(3, 3, *model.preprocess.input_size)
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(runtime(x), ref, atol=1e-4 * max(1.0, float(ref.abs().max())), rtol=1e-4)


def test_folded_preprocessing_on_the_pretrained_model(shared_data, lfw_faces, tmp_path):
    from facerec.eval.embeddings import extract_embeddings

    model = load_checkpoint(shared_data / "weights" / "mobilefacenet_casia_xiaoccer" / "068.ckpt")
    out = tmp_path / "mfn.onnx"
    report = export_onnx(model, out, fold_preprocessing=True, parity_images=lfw_faces)
    assert report.passed and report.preprocessing_folded
    meta = read_onnx_metadata(out)
    assert meta["preprocessing_folded"] == "true" and "0..255" in meta["input_format"]
    import onnxruntime as ort

    from facerec.eval.embeddings import fit_to_contract

    pixels = fit_to_contract(torch.from_numpy(lfw_faces).permute(0, 3, 1, 2), model.preprocess).float()
    got = ort.InferenceSession(str(out)).run(None, {"input": pixels.numpy()})[0]
    ref = extract_embeddings(model, lfw_faces, model.preprocess, flip="none", progress=False)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    # the runtime wrapper takes the contract's normalised input like the PyTorch model
    via_runtime = extract_embeddings(OnnxEmbedder(out), lfw_faces, model.preprocess, flip="sum", progress=False)
    np.testing.assert_allclose(via_runtime, extract_embeddings(model, lfw_faces, model.preprocess, flip="sum",
                                                               progress=False), atol=1e-4, rtol=1e-4)


class _ExportsDifferently(torch.nn.Module):
    """Eager and exported graphs differ: what a broken conversion looks like."""

    def __init__(self):
        super().__init__()
        self.net = calibrated("mobilefacenet", input_size=(112, 96), embedding_size=128)
        self.arch, self.arch_kwargs, self.preprocess = self.net.arch, self.net.arch_kwargs, self.net.preprocess
        self.threshold = None

    def forward(self, x):
        if torch.compiler.is_exporting():
            return self.net(x.flip(-1))
        return self.net(x)


def test_failed_parity_refuses_and_writes_nothing(lfw_faces, tmp_path):
    out = tmp_path / "broken.onnx"
    with pytest.raises(ExportError, match="parity FAILED"):
        export_onnx(_ExportsDifferently(), out, parity_images=lfw_faces)
    assert not out.exists()
