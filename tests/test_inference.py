"""Embedder: embed / compare / search on real LFW faces with the shared pretrained model."""

import json
import shutil
import warnings

import numpy as np
import pytest

from facerec.cli import main
from facerec.contract import Threshold
from facerec.eval.thresholds import fit_threshold
from facerec.inference import Embedder, Landmarks


@pytest.fixture(scope="module")
def weights(shared_data):
    return shared_data / "weights" / "mobilefacenet_casia_xiaoccer" / "068.ckpt"


@pytest.fixture(scope="module")
def lfw(shared_data):
    return shared_data / "lfw"


@pytest.fixture(scope="module")
def people(lfw):
    """Six people with at least 3 photos each: {name: [paths]}."""
    out = {}
    for d in sorted((lfw / "images").iterdir()):
        files = sorted(d.glob("*.jpg"))
        if len(files) >= 3:
            out[d.name] = files[:3]
        if len(out) == 6:
            return out
    pytest.skip("not enough LFW people with 3 photos")


def test_same_person_scores_higher_than_different_people(weights, lfw, people):
    embedder = Embedder(weights)
    lm = Landmarks.read(lfw / "landmarks.tsv")
    names = list(people)
    same = [embedder.compare(people[n][0], people[n][1], lm).similarity for n in names]
    diff = [embedder.compare(people[a][0], people[b][0], lm).similarity for a, b in zip(names, names[1:])]
    assert min(same) > max(diff), (same, diff)
    assert embedder.compare(people[names[0]][0], people[names[0]][1], lm).same is None  # no stored threshold


def test_compare_decides_at_the_stored_threshold_and_says_which(weights, lfw, people):
    model_threshold = Threshold(0.29, "best_accuracy", "lfw", "sum", 6000, 0.9905)
    embedder = Embedder(weights, threshold=model_threshold)
    a, b = list(people)[:2]
    same = embedder.compare(people[a][0], people[a][1], lfw / "landmarks.tsv")
    diff = embedder.compare(people[a][0], people[b][0], lfw / "landmarks.tsv")
    assert same.same is True and diff.same is False
    assert "best accuracy 0.9905 on lfw" in same.describe() and "same person" in same.describe()


def test_search_ranks_the_right_identity_first_and_caches_the_gallery(weights, lfw, people, tmp_path):
    gallery = tmp_path / "gallery"
    for name, files in people.items():
        (gallery / name).mkdir(parents=True)
        for f in files[1:]:  # the first photo of each person is kept as a probe
            shutil.copy(f, gallery / name / f.name)
    embedder = Embedder(weights)
    lm = Landmarks.read(lfw / "landmarks.tsv")
    cache = tmp_path / "index.npz"
    index = embedder.index_gallery(gallery, lm, cache=cache)
    assert len(index.paths) == 12 and cache.is_file()
    for name, files in people.items():
        matches = embedder.search(files[0], index, top=3, landmarks=lm)
        assert matches[0].identity == name and [m.rank for m in matches] == [1, 2, 3]
        assert matches[0].score >= matches[1].score >= matches[2].score
        assert len({m.identity for m in matches}) == 3
    calls = []
    original = embedder._embed_batch
    embedder._embed_batch = lambda crops: calls.append(len(crops)) or original(crops)
    again = embedder.index_gallery(gallery, lm, cache=cache)
    assert calls == [] and np.array_equal(again.embeddings, index.embeddings)  # served from the cache
    extra = next(iter(people.values()))[0]
    shutil.copy(extra, gallery / next(iter(people)) / extra.name)
    grown = embedder.index_gallery(gallery, lm, cache=cache)
    assert calls == [1] and len(grown.paths) == 13  # only the new file was embedded


def test_unaligned_images_are_centre_cropped_with_a_warning(weights, people):
    embedder = Embedder(weights)
    files = next(iter(people.values()))
    with pytest.warns(UserWarning, match="centre-cropped"):
        r = embedder.embed(files)
    assert r.alignment == {"landmarks": 0, "as_is": 0, "center_crop": 3}
    np.testing.assert_allclose(np.linalg.norm(r.embeddings, axis=1), 1.0, rtol=1e-5)


def test_embed_cli_reports_a_bad_path_and_writes_the_rest(weights, lfw, people, tmp_path, capsys):
    files = [str(p) for p in next(iter(people.values()))]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    out = tmp_path / "emb.npy"
    args = ["embed", "--model", str(weights), files[0], str(tmp_path / "missing.jpg"), str(broken), *files[1:],
            "--landmarks", str(lfw / "landmarks.tsv"), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "missing.jpg: cannot read" in err and "broken.jpg: cannot decode image" in err
    emb = np.load(out)
    index = json.loads(out.with_suffix(".json").read_text())
    assert emb.shape == (3, 128) and index["paths"] == files
    assert {f["path"] for f in index["failed"]} == {str(tmp_path / "missing.jpg"), str(broken)}
    assert index["alignment"]["landmarks"] == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # aligned: no centre-crop warning
        direct = Embedder(weights).embed(files, lfw / "landmarks.tsv")
    np.testing.assert_allclose(emb, direct.embeddings, atol=1e-6)


def test_compare_and_search_cli(weights, lfw, people, tmp_path, capsys):
    a, b = list(people)[:2]
    lm = str(lfw / "landmarks.tsv")
    assert main(["compare", "--model", str(weights), str(people[a][0]), str(people[b][0]), "--landmarks", lm,
                 "--threshold", "0.3"]) == 0
    assert "different people" in capsys.readouterr().out
    gallery = tmp_path / "g"
    for name in (a, b):
        (gallery / name).mkdir(parents=True)
        shutil.copy(people[name][1], gallery / name)
    assert main(["search", "--model", str(weights), "--gallery", str(gallery), "--probe", str(people[b][0]),
                 "--landmarks", lm, "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("gallery: 2 identities, 2 images") and lines[1].split()[2] == b
    assert (gallery / ".facerec-gallery.npz").is_file()


def test_fit_threshold_matches_brute_force():
    rng = np.random.default_rng(0)
    same = rng.random(400) < 0.5
    scores = np.where(same, rng.normal(0.5, 0.2, 400), rng.normal(0.1, 0.2, 400)).round(3)  # with ties
    t = fit_threshold(scores, same)
    best = max(np.mean((scores >= c) == same) for c in np.unique(scores))
    assert t.accuracy == pytest.approx(best) and np.mean((scores >= t.cosine) == same) == pytest.approx(best)
    for far in (1e-1, 1e-2):
        f = fit_threshold(scores, same, f"far={far:g}")
        neg = scores[~same]
        assert np.mean(neg >= f.cosine) <= far
        lower = np.max(neg[neg < f.cosine]) if (neg < f.cosine).any() else -np.inf  # one step lower breaks it
        assert np.mean(neg >= lower) > far


def test_eval_stores_a_threshold_that_compare_then_uses(weights, lfw, people, tmp_path, capsys):
    from facerec.data.align import read_landmarks
    from facerec.data.pairs import build_pairs_bin, read_lfw_pairs
    from facerec.models import load_checkpoint

    pairs = read_lfw_pairs(lfw / "pairs.txt")
    subset = pairs[:40] + pairs[300:340]  # fold 1: 40 same, 40 different
    build_pairs_bin(subset, lfw / "images", read_landmarks(lfw / "landmarks.tsv"), tmp_path / "mini.bin")
    out = tmp_path / "with_threshold.safetensors"
    assert main(["eval", "--model", str(weights), "--bench", str(tmp_path / "mini.bin"), "--flip", "sum",
                 "--store-threshold", str(out)]) == 0
    assert "with threshold cosine >= " in capsys.readouterr().out
    model = load_checkpoint(out)
    t = model.threshold
    assert t.criterion == "best_accuracy" and t.benchmark == "mini" and t.flip == "sum" and t.num_pairs == 80
    assert 0.0 < t.cosine < 1.0 and t.accuracy >= 0.9
    a, b = list(people)[:2]
    lm = str(lfw / "landmarks.tsv")
    assert main(["compare", "--model", str(out), str(people[a][0]), str(people[a][1]), "--landmarks", lm]) == 0
    said = capsys.readouterr().out
    assert "same person" in said and "on mini (80 pairs, flip sum)" in said


def test_a_directory_for_an_onnx_model_says_so(tmp_path):
    from facerec.errors import DataError
    from facerec.inference import load_model

    d = tmp_path / "m.onnx"
    d.mkdir()
    with pytest.raises(DataError) as e:
        load_model(d)
    assert str(d) in str(e.value) and "is a directory, not a .onnx model file" in str(e.value)
