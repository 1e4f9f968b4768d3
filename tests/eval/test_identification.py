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


def test_noise_lists_remove_listed_probes_and_distractors(tmp_path):
    """@R variant: the images on the noise lists are dropped, i.e. the result equals evaluating
    without them; names match by any trailing part of their path."""
    from facerec.eval.identification import read_noise_list

    probes, labels, dis = make(4)
    probes[0] = -probes[1]  # a mislabelled probe image
    dis[7] = probes[2] * 3  # a distractor that is really a probe person
    pnames = [f"facescrub/person{lab}/img{i}.png" for i, lab in enumerate(labels)]
    dnames = [f"FlickrFinal2/{i // 100}/{i}.jpg" for i in range(len(dis))]
    (tmp_path / "fs.txt").write_text("# FaceScrub noise\nperson0/img0.png\n\n")
    (tmp_path / "mf.txt").write_text("FlickrFinal2/0/7.jpg\n")
    noisy = megaface_evaluate(probes, labels, dis, fars=(1e-3,))
    clean = megaface_evaluate(probes, labels, dis, fars=(1e-3,), probe_names=pnames, distractor_names=dnames,
                              probe_noise=read_noise_list(tmp_path / "fs.txt"),
                              distractor_noise=read_noise_list(tmp_path / "mf.txt"))
    keep_p, keep_d = np.arange(len(labels)) != 0, np.arange(len(dis)) != 7
    cmc, tar = brute_force(probes[keep_p].astype(np.float64), labels[keep_p], dis[keep_d].astype(np.float64),
                           far=1e-3)
    np.testing.assert_allclose(clean.cmc, cmc)
    assert clean.tar_at_far["1e-3"] == pytest.approx(tar)
    assert (clean.removed_probes, clean.removed_distractors) == (1, 1) and clean.num_distractors == len(dis) - 1
    assert clean.rank1 > noisy.rank1
    with pytest.raises(DataError, match="probe name"):
        megaface_evaluate(probes, labels, dis, probe_noise={"x"})


def test_lfw_mini_protocol_on_real_faces(shared_data, tmp_path, capsys):
    """People with 2+ images are probes, the others distractors; the pretrained model finds most."""
    import json
    import shutil

    from facerec.cli import main
    from facerec.eval.identification import folder_protocol

    src = shared_data / "lfw" / "images"
    people = sorted(src.iterdir())[:60]
    root = tmp_path / "lfw"
    for d in people:
        shutil.copytree(d, root / d.name)
    probes, labels, distractors = folder_protocol(root)
    multi = [d for d in people if len(list(d.glob("*.jpg"))) >= 2]
    assert len(set(labels.tolist())) == len(multi) and len(probes) + len(distractors) == sum(
        len(list(d.glob("*.jpg"))) for d in people)
    out = tmp_path / "mf.json"
    weights = shared_data / "weights" / "mobilefacenet_casia_xiaoccer" / "068.ckpt"
    assert main(["megaface", "--model", str(weights), "--images", str(root), "--landmarks",
                 str(shared_data / "lfw" / "landmarks.tsv"), "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["num_distractors"] == len(distractors) and r["rank1"] > 0.8
    assert "rank-1:" in capsys.readouterr().out


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


def test_faiss_backend_gives_the_same_result():
    pytest.importorskip("faiss")
    probes, labels, dis = make(5)
    a = megaface_evaluate(probes, labels, dis, fars=(1e-3,), chunk=100)
    b = megaface_evaluate(probes, labels, dis, fars=(1e-3,), chunk=100, use_faiss=True)
    np.testing.assert_allclose(a.cmc, b.cmc)
    assert a.tar_at_far == b.tar_at_far
    torch.testing.assert_close(topk_scores(probes, dis, 5, chunk=64, use_faiss=True), topk_scores(probes, dis, 5),
                               atol=1e-5, rtol=0)
