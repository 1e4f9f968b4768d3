import numpy as np
import pytest
import torch

from facerec.errors import DataError
from facerec.eval.identification import megaface_evaluate, read_devkit_feature, topk_scores, write_devkit_feature


def brute_force(probes, labels, distractors, max_rank=10, far=None):
    p = probes / np.linalg.norm(probes, axis=1, keepdims=True)
    d = distractors / np.linalg.norm(distractors, axis=1, keepdims=True)
    sd = p @ d.T
    ranks, genuine = [], []
    for a in range(len(p)):
        for b in range(len(p)):
            if a != b and labels[a] == labels[b]:
                t = p[a] @ p[b]
                ranks.append(1 + int((sd[a] > t).sum()))
                if a < b:
                    genuine.append(t)
    ranks = np.array(ranks)
    cmc = np.array([(ranks <= r).mean() for r in range(1, max_rank + 1)])
    tar = None
    if far is not None:
        imp = np.sort(sd.ravel())[::-1]
        k = int(np.floor(far * imp.size))
        tar = float((np.array(genuine) > imp[k]).mean())
    return cmc, tar


def make(seed, n_ids=8, per=3, n_dis=500, d=16, noise=0.6):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, d))
    labels = np.repeat(np.arange(n_ids), per)
    probes = centres[labels] + noise * rng.normal(size=(len(labels), d))
    return probes.astype(np.float32), labels, rng.normal(size=(n_dis, d)).astype(np.float32)


@pytest.mark.parametrize("seed,chunk", [(0, 64), (1, 1000), (2, 7)])
def test_cmc_and_tar_match_brute_force(seed, chunk):
    probes, labels, dis = make(seed)
    res = megaface_evaluate(probes, labels, dis, max_rank=10, fars=(1e-3,), chunk=chunk)
    cmc, tar = brute_force(probes.astype(np.float64), labels, dis.astype(np.float64), far=1e-3)
    np.testing.assert_allclose(res.cmc, cmc)
    assert res.rank1 == cmc[0] and res.num_pairs == 8 * 3 * 2
    assert res.tar_at_far["1e-3"] == pytest.approx(tar)


def test_far_below_one_impostor_is_undefined():
    probes, labels, dis = make(0, n_dis=10)
    assert megaface_evaluate(probes, labels, dis, fars=(1e-6,)).tar_at_far["1e-6"] is None


def test_topk_chunked_equals_full():
    rng = np.random.default_rng(3)
    q, b = rng.normal(size=(5, 8)), rng.normal(size=(300, 8))
    full = torch.topk(torch.nn.functional.normalize(torch.tensor(q).float(), dim=1)
                      @ torch.nn.functional.normalize(torch.tensor(b).float(), dim=1).t(), 4)[0]
    torch.testing.assert_close(topk_scores(q, b, 4, chunk=17), full)


def test_noise_removed_probes_change_the_result():
    """@R variant: dropping a listed noisy probe image is just evaluating without it."""
    probes, labels, dis = make(4)
    probes[0] = -probes[1]  # a mislabelled image
    keep = np.arange(len(labels)) != 0
    noisy = megaface_evaluate(probes, labels, dis)
    clean = megaface_evaluate(probes[keep], labels[keep], dis)
    assert clean.rank1 > noisy.rank1


def test_devkit_feature_round_trip_and_errors(tmp_path):
    f = np.arange(8, dtype=np.float32)
    write_devkit_feature(tmp_path / "a.bin", f)
    np.testing.assert_array_equal(read_devkit_feature(tmp_path / "a.bin"), f.reshape(1, -1))
    (tmp_path / "b.bin").write_bytes(np.array([1, 8, 32, 6], dtype="<i4").tobytes() + f.tobytes())
    with pytest.raises(DataError, match="type 6"):
        read_devkit_feature(tmp_path / "b.bin")
    (tmp_path / "c.bin").write_bytes(np.array([1, 8, 32, 5], dtype="<i4").tobytes() + f[:3].tobytes())
    with pytest.raises(DataError, match="announces"):
        read_devkit_feature(tmp_path / "c.bin")
