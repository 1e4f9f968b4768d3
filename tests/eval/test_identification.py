import numpy as np
import pytest
import torch

from facerec.errors import DataError
from facerec.eval.identification import (
    megaface_evaluate, read_devkit_feature, read_noise_list, read_template_list, topk_scores, write_devkit_feature,
)


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


# ---- exact search with a low-precision screen -------------------------------------------------

def _unit(x):
    from facerec.eval.search import unit_rows

    return unit_rows(torch.as_tensor(x))


def reference_topk(q, b, k):
    """Top-k of the full score matrix of the fp32 unit vectors, fp64 products rounded once to fp32."""
    full = (_unit(q).double() @ _unit(b).double().t()).float()
    return torch.topk(full, min(k, full.shape[1]), dim=1)[0], full


def near_tie_data(seed=0, n_q=40, d=64):
    """Adversarial distractors: for each of the first queries a cluster of scores spaced 1e-5 apart
    within 1e-3 (far below bf16's resolution of ~4e-3), 30 duplicates of one vector, and tiny
    perturbations of the query itself; plus random vectors."""
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(n_q, d, generator=g, dtype=torch.float64), dim=1)
    rows = [torch.randn(1500, d, generator=g, dtype=torch.float64)]
    for i in range(8):
        v = torch.randn(100, d, generator=g, dtype=torch.float64)
        v -= (v @ q[i])[:, None] * q[i]  # orthogonal to the query
        v = torch.nn.functional.normalize(v, dim=1)
        target = 0.3 + 1e-5 * torch.arange(100, dtype=torch.float64)  # scores 0.3 .. 0.301
        rows.append(target[:, None] * q[i] + torch.sqrt(1 - target**2)[:, None] * v)
        rows.append(rows[-1][i : i + 1].repeat(30, 1))  # duplicates
        rows.append(q[i] + 1e-3 * torch.randn(20, d, generator=g, dtype=torch.float64))  # near copies
    b = torch.cat(rows)
    b = b[torch.randperm(len(b), generator=g)]
    return q.float(), b.float()


@pytest.mark.parametrize("data,k", [("random", 10), ("near_ties", 10), ("near_ties", 40)])
def test_bf16_screen_is_bitwise_equal_to_exact(data, k):
    """k = 40 puts the boundary of the top-k of the first queries inside the 1e-3 cluster."""
    from facerec.eval.search import topk_search

    if data == "random":
        g = torch.Generator().manual_seed(1)
        q, b = torch.randn(200, 64, generator=g), torch.randn(3000, 64, generator=g)
    else:
        q, b = near_tie_data()
    ref, full = reference_topk(q, b, k)
    qn = _unit(q)
    exact_rows, exact_glob = topk_search(qn, b, k, 300, chunk=700, screen="none")
    bf_rows, bf_glob = topk_search(qn, b, k, 300, chunk=700, screen="bf16")
    assert torch.equal(exact_rows, ref) and torch.equal(bf_rows, ref)
    assert torch.equal(bf_glob, exact_glob) and torch.equal(exact_glob, torch.topk(full.flatten(), 300)[0])
    # a block with too many candidates is screened again in fp32: same answer
    cap_rows, cap_glob = topk_search(qn, b, k, 300, chunk=700, screen="bf16", candidate_cap=1)
    assert torch.equal(cap_rows, ref) and torch.equal(cap_glob, exact_glob)
    assert torch.equal(topk_scores(q, b, k, chunk=700, screen="bf16"), ref)


def test_screen_without_error_margin_would_be_wrong(monkeypatch):
    """The test above can fail: with the error bound set to 0 the bf16 screen loses true top-k
    members on the near-tie data."""
    import facerec.eval.search as search

    q, b = near_tie_data()
    ref, _ = reference_topk(q, b, 40)
    monkeypatch.setattr(search, "screen_error_bound", lambda dim, screen, rounded_output=None: 0.0)
    wrong, _ = search.topk_search(_unit(q), b, 40, 0, chunk=700, screen="bf16")
    assert not torch.equal(wrong[:8], ref[:8])


def test_error_bound_holds_and_is_tight_enough():
    from facerec.eval.search import screen_error_bound

    g = torch.Generator().manual_seed(2)
    q, b = _unit(torch.randn(300, 64, generator=g)), _unit(torch.randn(2000, 64, generator=g))
    exact = (q.double() @ b.double().t())
    bf = (q.bfloat16() @ b.bfloat16().t()).double()
    delta = screen_error_bound(64, "bf16")
    assert (bf - exact).abs().max() <= delta
    assert 2**-8 < delta < 4 * 2**-8  # inputs (2u) + output rounding (u) + fp32 terms
    assert (q @ b.t() - exact).abs().max() <= screen_error_bound(64, "none") < 1e-4


def test_exact_scores_are_correctly_rounded():
    from fractions import Fraction

    from facerec.eval.search import exact_scores

    g = torch.Generator().manual_seed(3)
    q = torch.randn(60, 16, generator=g)
    b = torch.randn(60, 16, generator=g)
    b[:10] = 0.0  # exact zeros
    b[10:20] = q[10:20] * torch.tensor([1.0, -1.0] * 8)  # near-zero sums
    got = exact_scores(q, b)
    for i in range(60):
        f = sum(Fraction(float(x)) * Fraction(float(y)) for x, y in zip(q[i].tolist(), b[i].tolist()))
        c = np.float32(float(f))
        nbrs = [np.nextafter(c, np.float32(-np.inf)), c, np.nextafter(c, np.float32(np.inf))]
        best = min(abs(Fraction(float(v)) - f) for v in nbrs)
        assert abs(Fraction(float(got[i])) - f) == best, i


def test_all_ties_stay_exact_and_bounded():
    """Every distractor identical: every pair is a candidate; rescored in bounded batches."""
    from facerec.eval.search import topk_search

    g = torch.Generator().manual_seed(4)
    q = torch.randn(30, 32, generator=g)
    b = torch.randn(1, 32, generator=g).repeat(4000, 1)
    ref, full = reference_topk(q, b, 5)
    rows, glob = topk_search(_unit(q), b, 5, 50, chunk=1500, screen="bf16", candidate_cap=1000)
    assert torch.equal(rows, ref) and torch.equal(glob, torch.topk(full.flatten(), 50)[0])


def test_resolve_screen(monkeypatch):
    import facerec.train.runtime as runtime
    from facerec.eval.search import resolve_screen

    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    assert resolve_screen("auto", "cpu") == "none"  # emulated bf16 is hundreds of times slower
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    assert resolve_screen("auto", "cpu") == "bf16"
    assert resolve_screen("none") == "none" and resolve_screen("bf16") == "bf16"
    with pytest.raises(DataError, match="CUDA"):
        resolve_screen("fp16", "cpu")
    with pytest.raises(DataError, match="screen must be"):
        resolve_screen("int8")


def exact_brute_force(probes, labels, distractors, max_rank=10, far=None):
    """Like brute_force, on the fp32 unit vectors with every score rounded once to fp32."""
    p, d = _unit(probes).double(), _unit(distractors).double()
    sd = (p @ d.t()).float().numpy()
    sp = (p @ p.t()).float().numpy()
    ranks, genuine = [], []
    for a in range(len(p)):
        for b in range(len(p)):
            if a != b and labels[a] == labels[b]:
                ranks.append(1 + int((sd[a] > sp[a, b]).sum()))
                if a < b:
                    genuine.append(sp[a, b])
    ranks = np.array(ranks)
    cmc = np.array([(ranks <= r).mean() for r in range(1, max_rank + 1)])
    imp = np.sort(sd.ravel())[::-1]
    tar = float((np.array(genuine) > imp[int(np.floor(far * imp.size))]).mean())
    return cmc, tar


def near_tie_protocol(seed=6, n_ids=6, per=4, d=48):
    """Probes whose genuine scores sit inside clusters of distractor scores spaced 1e-5 apart."""
    g = torch.Generator().manual_seed(seed)
    probes, labels, dis = make(seed, n_ids=n_ids, per=per, n_dis=800, d=d)
    p = _unit(probes).double()
    rows = [torch.as_tensor(dis, dtype=torch.float64)]
    for a in range(0, len(p), 3):
        b = a + 1 if labels[a + 1] == labels[a] else a - 1
        t = float(p[a] @ p[b])
        v = torch.nn.functional.normalize(torch.randn(60, d, generator=g, dtype=torch.float64), dim=1)
        v -= (v @ p[a])[:, None] * p[a]
        v = torch.nn.functional.normalize(v, dim=1)
        s = (t + 1e-5 * torch.arange(-30, 30, dtype=torch.float64)).clamp(-1, 1)
        rows.append(s[:, None] * p[a] + torch.sqrt(1 - s**2)[:, None] * v)
    return probes, labels, torch.cat(rows).float().numpy()


@pytest.mark.parametrize("screen", ["none", "bf16"])
def test_megaface_evaluate_exact_under_near_ties(screen):
    probes, labels, dis = near_tie_protocol()
    res = megaface_evaluate(probes, labels, dis, fars=(1e-3,), chunk=300, screen=screen)
    cmc, tar = exact_brute_force(probes, labels, dis, far=1e-3)
    np.testing.assert_array_equal(res.cmc, cmc)
    assert res.tar_at_far["1e-3"] == tar
    assert 0 < res.rank1 < 1  # the clusters do push genuine matches down


def test_faiss_screen_bitwise_equal():
    pytest.importorskip("faiss")
    from facerec.eval.search import topk_search

    q, b = near_tie_data()
    ref, full = reference_topk(q, b, 10)
    rows, glob = topk_search(_unit(q), b, 10, 100, chunk=700, use_faiss=True)
    assert torch.equal(rows, ref) and torch.equal(glob, torch.topk(full.flatten(), 100)[0])


# ---- MegaFace devkit layout ----------------------------------------------------------------

SUFFIX = "_mobilefacenet_112x112.bin"


def devkit_tree(root, seed=7):
    """A tiny devkit-layout tree: FaceScrub features at facescrub/<person>/<image><suffix>, MegaFace
    features at megaface/<a>/<b>/<image><suffix>, JSON template lists of 10 and 100 distractors."""
    import json

    probes, labels, dis = make(seed, n_ids=5, per=3, n_dis=100, d=16)
    people = [f"Person_{i}" for i in range(5)]
    fs_paths = [f"{people[lab]}/{people[lab]}_{j}.png" for j, lab in enumerate(labels)]
    mf_paths = [f"{i % 7}/{1000 + i}@N0{i % 3}/{2000 + i}_0.jpg" for i in range(100)]
    for rel, f in list(zip(fs_paths, probes)):
        (root / "facescrub" / rel).parent.mkdir(parents=True, exist_ok=True)
        write_devkit_feature(root / "facescrub" / (rel + SUFFIX), f)
    for rel, f in zip(mf_paths, dis):
        (root / "megaface" / rel).parent.mkdir(parents=True, exist_ok=True)
        write_devkit_feature(root / "megaface" / (rel + SUFFIX), f.reshape(-1, 1))  # devkit: N rows x 1 col
    lists = root / "templatelists"
    lists.mkdir()
    ids = [p.split("/")[0] for p in fs_paths]
    (lists / "facescrub_features_list.json").write_text(json.dumps({"path": fs_paths, "id": ids}))
    order = np.random.default_rng(seed).permutation(100)
    (lists / "megaface_features_list.json_100_1").write_text(json.dumps({"path": [mf_paths[i] for i in order]}))
    (lists / "megaface_features_list.json_10_1").write_text(json.dumps({"path": [mf_paths[i] for i in order[:10]]}))
    return probes, labels, dis, order, fs_paths, mf_paths


def test_devkit_lists_and_features_match_brute_force(tmp_path, capsys):
    import json

    from facerec.cli import main
    from facerec.eval.identification import devkit_evaluate

    probes, labels, dis, order, fs_paths, mf_paths = devkit_tree(tmp_path)
    lists = tmp_path / "templatelists"
    res = devkit_evaluate(tmp_path / "megaface", tmp_path / "facescrub", lists / "megaface_features_list.json",
                          lists / "facescrub_features_list.json", sizes=[10, 100], fars=(1e-2,))
    for size in (10, 100):
        cmc, tar = exact_brute_force(probes, labels, dis[order[:size]], far=1e-2)
        np.testing.assert_array_equal(res[size].cmc, cmc)
        assert res[size].tar_at_far["1e-2"] == tar and res[size].num_distractors == size
    assert res[10].rank1 > res[100].rank1  # more distractors, harder
    # the CLI, suffix detected, @R noise lists applied by list path
    (tmp_path / "fs_noise.txt").write_text("Person_0_0.png\n")
    (tmp_path / "mf_noise.txt").write_text(mf_paths[order[3]] + "\n")
    out = tmp_path / "r.json"
    assert main(["megaface", "--devkit-features", str(tmp_path), "--megaface-list",
                 str(lists / "megaface_features_list.json_100_1"), "--facescrub-list",
                 str(lists / "facescrub_features_list.json"), "--sizes", "10,100", "--fars", "1e-2",
                 "--probe-noise", str(tmp_path / "fs_noise.txt"), "--distractor-noise", str(tmp_path / "mf_noise.txt"),
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())["results"]
    keep_p = np.array([p != "Person_0/Person_0_0.png" for p in fs_paths])
    for size in (10, 100):
        keep_d = order[:size][order[:size] != order[3]]
        cmc, tar = exact_brute_force(probes[keep_p], labels[keep_p], dis[keep_d], far=1e-2)
        np.testing.assert_array_equal(r[str(size)]["cmc"], cmc)
        assert r[str(size)]["tar_at_far"]["1e-2"] == tar
        assert (r[str(size)]["removed_probes"], r[str(size)]["removed_distractors"]) == (1, 1)
    assert "distractors: 100 (99 used)" in capsys.readouterr().out


def test_devkit_errors_name_the_file(tmp_path, capsys):
    import json

    from facerec.cli import main
    from facerec.eval.identification import devkit_evaluate, read_template_list

    devkit_tree(tmp_path)
    lists = tmp_path / "templatelists"
    (lists / "bad.json").write_text('{"path": ["a", ')
    with pytest.raises(DataError, match="bad.json: not a JSON"):
        read_template_list(lists / "bad.json")
    (lists / "bad2.json").write_text('{"paths": []}')
    with pytest.raises(DataError, match="bad2.json.*'path'"):
        read_template_list(lists / "bad2.json")
    (lists / "bad3.json").write_text(json.dumps({"path": ["a/b.png"], "id": ["a", "b"]}))
    with pytest.raises(DataError, match="bad3.json.*'id'"):
        read_template_list(lists / "bad3.json", want_ids=True)
    (lists / "no_ids.json").write_text(json.dumps({"path": ["Ann/Ann_1.png", "Bob/Bob_2.png"]}))
    assert read_template_list(lists / "no_ids.json", want_ids=True)[1] == ["Ann", "Bob"]  # person = folder
    victim = next((tmp_path / "megaface").rglob("*" + SUFFIX))
    victim.unlink()
    with pytest.raises(DataError, match=f"missing.*{victim.name}"):
        devkit_evaluate(tmp_path / "megaface", tmp_path / "facescrub", lists / "megaface_features_list.json_100_1",
                        lists / "facescrub_features_list.json", suffix=SUFFIX)
    # through the CLI: a clear one-line error, exit code 2, no traceback
    assert main(["megaface", "--devkit-features", str(tmp_path), "--megaface-list", str(lists / "bad.json"),
                 "--facescrub-list", str(lists / "facescrub_features_list.json")]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "Traceback" not in err
    assert main(["megaface", "--devkit-features", str(tmp_path), "--megaface-list",
                 str(lists / "megaface_features_list.json"), "--facescrub-list",
                 str(lists / "facescrub_features_list.json"), "--sizes", "10,1000"]) == 2
    assert "megaface_features_list.json_1000_1" in capsys.readouterr().err


# ---- block search internals: row-maximum pre-pass, reused buffers --------------------------------

def _count_gathered_blocks(monkeypatch):
    """Counts the blocks whose candidates were found on a gathered subset of rows."""
    import facerec.eval.search as search

    calls = {"gathered": 0, "blocks": 0}
    orig = search._candidates

    def spy(*args, **kwargs):
        hot, mask = orig(*args, **kwargs)
        calls["blocks"] += 1
        calls["gathered"] += hot is not None
        return hot, mask

    monkeypatch.setattr(search, "_candidates", spy)
    return calls


@pytest.mark.parametrize("data,screen", [("random", "none"), ("near_ties", "none"), ("near_ties", "bf16")])
def test_row_maximum_prepass_is_bitwise_exact(monkeypatch, data, screen):
    """Many small chunks against few k: most blocks go through the gathered-rows path, whose
    per-row and global top-k must still equal the brute force bit for bit."""
    from facerec.eval.search import topk_search

    calls = _count_gathered_blocks(monkeypatch)
    if data == "random":
        g = torch.Generator().manual_seed(7)
        q, b = torch.randn(64, 32, generator=g), torch.randn(12000, 32, generator=g)
    else:
        q, b = near_tie_data()
    ref, full = reference_topk(q, b, 3)
    rows, glob = topk_search(_unit(q), b, 3, 20, chunk=64, block_elements=64 * 16, screen=screen)
    assert torch.equal(rows, ref) and torch.equal(glob, torch.topk(full.flatten(), 20)[0])
    assert torch.equal(topk_scores(q, b, 3, chunk=64, block_elements=64 * 16, screen=screen), ref)
    assert calls["gathered"] > calls["blocks"] // 2  # the path under test was taken


def test_nan_distractor_does_not_hide_a_block(monkeypatch):
    """A NaN row makes every row maximum of its block NaN; those rows must still be searched
    (the NaN item itself is never a candidate, as before)."""
    from facerec.eval.search import topk_search

    g = torch.Generator().manual_seed(8)
    q, b = torch.randn(16, 32, generator=g), torch.randn(5000, 32, generator=g)
    clean = topk_search(_unit(q), b, 4, chunk=50)[0]
    bad = b.clone()
    bad[4321] = float("nan")
    bad[2210] = _unit(q)[0] * 7.0  # a top-1 match for query 0 in a NaN-free block...
    bad[4322] = _unit(q)[1] * 3.0  # ...and one next to the NaN row, in the same chunk
    ref, _ = reference_topk(q, torch.cat([bad[:4321], bad[4322:]]), 4)
    assert torch.equal(topk_search(_unit(q), bad, 4, chunk=50)[0], ref)
    assert not torch.equal(ref, clean)


def test_unit_rows_into_matches_unit_rows():
    from facerec.eval.search import _unit_rows_into, unit_rows

    g = torch.Generator().manual_seed(9)
    x = torch.randn(300, 512, generator=g) * torch.logspace(-20, 20, 300)[:, None]
    x[5] = 0.0
    buf = torch.empty(512, 512)
    for rows in (1, 7, 300):
        got = _unit_rows_into(x[:rows], buf)
        assert got.data_ptr() == buf.data_ptr() and torch.equal(got, unit_rows(x[:rows]))


def test_topk_scores_normalises_numpy_and_fp64_queries_per_group():
    from facerec.eval.search import topk_search

    g = torch.Generator().manual_seed(10)
    q = torch.randn(50, 24, generator=g, dtype=torch.float64) * 3
    b = torch.randn(900, 24, generator=g)
    ref, _ = reference_topk(q.float(), b, 5)
    for queries in (q.float(), q.float().numpy(), q.float().t().contiguous().t()):  # incl. column-major
        assert torch.equal(topk_scores(queries, b, 5, chunk=100, block_elements=100 * 8), ref)
    assert torch.equal(topk_search(_unit(q.float()), b.numpy(), 5, chunk=100)[0], ref)


@pytest.mark.parametrize("ratio", [1, 10**9])
def test_topk_scores_with_and_without_a_normalised_query_copy(monkeypatch, ratio):
    """ratio 1: the queries are normalised once (the copy path); 10^9: a group at a time."""
    import facerec.eval.search as search

    monkeypatch.setattr(search, "_QUERY_COPY_RATIO", ratio)
    q, b = near_tie_data()
    q = q * 3.0  # not unit rows: topk_scores normalises them
    ref, _ = reference_topk(q, b, 10)
    assert torch.equal(topk_scores(q, b, 10, chunk=300, block_elements=300 * 16), ref)


@pytest.mark.parametrize("read, kind", [
    (read_noise_list, "noise list file"),
    (read_template_list, "JSON template list file"),
], ids=["noise", "template"])
def test_a_directory_for_a_list_says_so(tmp_path, read, kind):
    with pytest.raises(DataError) as e:
        read(tmp_path)
    assert str(tmp_path) in str(e.value) and f"is a directory, not a {kind}" in str(e.value)


def test_a_file_for_a_devkit_feature_directory_says_so(tmp_path, capsys):
    from facerec.cli import main

    (tmp_path / "features.bin").write_bytes(b"")
    (tmp_path / "facescrub").mkdir()
    code = main(["megaface", "--megaface-features", str(tmp_path / "features.bin"), "--facescrub-features",
                 str(tmp_path / "facescrub"), "--megaface-list", str(tmp_path / "m.json"), "--facescrub-list",
                 str(tmp_path / "f.json")])
    err = capsys.readouterr().err
    assert code == 2 and "features.bin' is a file, not a directory" in err and "Traceback" not in err
