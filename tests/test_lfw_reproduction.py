"""Real faces, real numbers: the shared CASIA MobileFaceNet on LFW through facerec end to end.

Raw LFW photos + landmarks -> aligned lfw.bin (ArcFace 112x112, JPEG q95) -> checkpoint loaded
through the converter with its contract (112x96 SphereFace crop, RGB, (x-127.5)/128) -> 10-fold
accuracy under both protocols and all flip modes. The bound is the independent measurement in
../shared/data/README.md (within 0.3 points, and at least 98.8%).
"""

import numpy as np
import pytest

# ../shared/data/README.md, "Measured here (independent implementation)", in percent.
REFERENCE = {
    ("insightface", "none"): 98.917, ("insightface", "sum"): 98.967, ("insightface", "concat"): 98.967,
    ("sphereface", "none"): 98.917, ("sphereface", "sum"): 99.033, ("sphereface", "concat"): 99.083,
}


@pytest.fixture(scope="module")
def lfw_embeddings(shared_data, tmp_path_factory):
    from facerec.data.align import read_landmarks
    from facerec.data.bins import read_bin
    from facerec.data.decode import decode_image
    from facerec.data.pairs import build_pairs_bin, read_lfw_pairs
    from facerec.eval.embeddings import extract_embeddings
    from facerec.models import load_checkpoint

    lfw = shared_data / "lfw"
    out = tmp_path_factory.mktemp("lfw") / "lfw.bin"
    pairs = read_lfw_pairs(lfw / "pairs.txt")
    stats = build_pairs_bin(pairs, lfw / "images", read_landmarks(lfw / "landmarks.tsv"), out)
    assert stats == {"pairs": 6000, "images": 7701, "missing_landmarks": 1}
    images, issame = read_bin(out)
    # embed each distinct image once (pairs reuse images), then expand back to pair order
    uniq, inverse = np.unique(np.array(images, dtype=object).astype("S"), return_inverse=True)
    decoded = np.stack([decode_image(bytes(b)) for b in uniq])
    model = load_checkpoint(shared_data / "weights" / "mobilefacenet_casia_xiaoccer" / "068.ckpt")
    e = extract_embeddings(model, decoded, model.preprocess, flip="none", batch_size=256, progress=False)
    ef = extract_embeddings(model, decoded[:, :, ::-1].copy(), model.preprocess, flip="none", batch_size=256,
                            progress=False)
    return e[inverse], ef[inverse], issame


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("protocol", ["insightface", "sphereface"])
@pytest.mark.parametrize("flip", ["none", "sum", "concat"])
def test_pretrained_mobilefacenet_reproduces_lfw(lfw_embeddings, protocol, flip):
    from facerec.eval.verification import evaluate

    e, ef, issame = lfw_embeddings
    emb = {"none": e, "sum": e + ef, "concat": np.concatenate([e, ef], axis=1)}[flip]
    acc = 100 * evaluate(emb, issame, protocol=protocol).accuracy_mean
    ref = REFERENCE[(protocol, flip)]
    print(f"LFW {protocol}/{flip}: {acc:.3f} (independent: {ref:.3f})")
    assert abs(acc - ref) <= 0.3 and acc >= 98.8
