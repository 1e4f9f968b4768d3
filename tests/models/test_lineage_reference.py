"""The shared CASIA MobileFaceNet through facerec equals the lineage's own network.

The reference numbers were computed once (2026-11-24) with the original definition
(Xiaoccer/MobileFaceNet_Pytorch, commit 26bd8d2, `core/model.py`, `MobileFacenet()` with
`load_state_dict(ckpt["net_state_dict"])`, eval mode) on the fixed input below: LFW
Aaron_Eckhart_0001 aligned by facerec to the SphereFace 112x96 template with the shared landmarks,
normalised as the lineage's LFW loader does, (x - 127.5) / 128, RGB. That code is not in this
repository; only the numbers are.
"""

import hashlib

import numpy as np
import pytest
import torch

IMAGE = "Aaron_Eckhart/Aaron_Eckhart_0001.jpg"
ALIGNED_SHA256 = "dd7d0db1b7bd151d724e70df2c13f5af430af668fad787b490841d074cefefbb"
NORM = 5.436831234917311
FIRST8 = [0.04775, -0.02334, 0.21313, -0.16156, -0.14518, -1.26145, -0.40172, 0.8286]
AT = {31: 0.29074, 64: 1.1177, 127: -0.31016}


def test_embedding_of_a_fixed_face_equals_the_lineage_definition(shared_data):
    from facerec.data.align import align_face, read_landmarks
    from facerec.data.decode import decode_image
    from facerec.models import load_checkpoint

    model = load_checkpoint(shared_data / "weights" / "mobilefacenet_casia_xiaoccer" / "068.ckpt")
    lm = read_landmarks(shared_data / "lfw" / "landmarks.tsv")[IMAGE]
    img = align_face(decode_image((shared_data / "lfw" / "images" / IMAGE).read_bytes()), lm, "sphereface", (112, 96))
    assert hashlib.sha256(img.tobytes()).hexdigest() == ALIGNED_SHA256, "the aligned input changed (alignment code?)"
    pre = model.preprocess
    assert pre.input_size == (112, 96) and pre.color == "RGB" and pre.std == (128.0,) * 3
    x = torch.from_numpy(((img - np.array(pre.mean)) / np.array(pre.std)).transpose(2, 0, 1)).float()[None]
    with torch.no_grad():
        e = model(x)[0].double()
    assert float(e.norm()) == pytest.approx(NORM, abs=1e-4)
    np.testing.assert_allclose(e[:8].numpy(), FIRST8, atol=1e-4)
    for i, v in AT.items():
        assert float(e[i]) == pytest.approx(v, abs=1e-4)
