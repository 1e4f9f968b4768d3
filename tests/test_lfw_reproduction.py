"""Real faces, real numbers: the shared CASIA MobileFaceNet on LFW through facerec end to end.

The documented command sequence, run as a user would: `facerec data pairs2bin` (raw LFW photos +
landmarks -> ArcFace-aligned 112x112 JPEG q95 `.bin`), then `facerec eval` on the shared
checkpoint (loaded through the converter with its contract: 112x96 SphereFace crop, RGB,
(x-127.5)/128) under both protocols and all flip modes. The bound is the independent
measurement in ../shared/data/README.md: within 0.3 points, and at least 98.8%.
"""

import json

import pytest

from facerec.cli import main

# ../shared/data/README.md, "Measured here (independent implementation)", in percent.
REFERENCE = {
    ("insightface", "none"): 98.917, ("insightface", "sum"): 98.967, ("insightface", "concat"): 98.967,
    ("sphereface", "none"): 98.917, ("sphereface", "sum"): 99.033, ("sphereface", "concat"): 99.083,
}


@pytest.fixture(scope="module")
def lfw_results(shared_data, tmp_path_factory):
    lfw = shared_data / "lfw"
    out = tmp_path_factory.mktemp("lfw")
    assert main(["data", "pairs2bin", "--pairs", str(lfw / "pairs.txt"), "--images", str(lfw / "images"),
                 "--landmarks", str(lfw / "landmarks.tsv"), "--out", str(out / "lfw.bin")]) == 0
    assert main(["data", "info", str(out / "lfw.bin"), "--json"]) == 0
    ckpt = shared_data / "weights" / "mobilefacenet_casia_xiaoccer" / "068.ckpt"
    assert main(["eval", "--model", str(ckpt), "--bench", "lfw", "--data", str(out), "--protocol", "both",
                 "--flip", "all", "--json", str(out / "lfw.json")]) == 0
    return json.loads((out / "lfw.json").read_text())


@pytest.mark.slow
@pytest.mark.shared_data
def test_lfw_bin_has_the_standard_pairs(lfw_results, capsys):
    rows = lfw_results["results"]
    assert {r["num_pairs"] for r in rows} == {6000}
    assert lfw_results["preprocess"]["input_size"] == [112, 96]
    assert lfw_results["preprocess"]["template"] == "sphereface"


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("protocol", ["insightface", "sphereface"])
@pytest.mark.parametrize("flip", ["none", "sum", "concat"])
def test_pretrained_mobilefacenet_reproduces_lfw(lfw_results, protocol, flip):
    row = next(r for r in lfw_results["results"] if r["protocol"] == protocol and r["flip"] == flip)
    acc = 100 * row["accuracy_mean"]
    ref = REFERENCE[(protocol, flip)]
    print(f"LFW {protocol}/{flip}: {acc:.3f} (independent: {ref:.3f})")
    assert abs(acc - ref) <= 0.3 and acc >= 98.8
