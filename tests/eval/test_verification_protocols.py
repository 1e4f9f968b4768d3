import numpy as np
import pytest

from facerec.errors import DataError
from facerec.eval.verification import evaluate, kfold_indices


def naive_insightface(emb, issame, nfolds=10):
    """Straight transcription of insightface's verification.calculate_roc accuracy path."""
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    dist = np.sum((e[0::2] - e[1::2]) ** 2, 1)
    thresholds = np.arange(0, 4, 0.01)
    n = len(issame)
    accs, ths = [], []
    for test in kfold_indices(n, nfolds):
        train = np.array([i for i in range(n) if i not in set(test)])
        acc_train = []
        for t in thresholds:
            pred = dist[train] < t
            acc_train.append(np.mean(pred == issame[train]))
        best = thresholds[int(np.argmax(acc_train))]
        accs.append(np.mean((dist[test] < best) == issame[test]))
        ths.append(best)
    return np.array(accs), np.array(ths)


def naive_sphereface(emb, issame, nfolds=10):
    """The seed's LFW evaluation: mean-subtract on training folds, cosine, mean of best thresholds."""
    L, R = emb[0::2], emb[1::2]
    n = len(issame)
    thresholds = np.arange(-1, 1, 1e-4)
    accs, ths = [], []
    for test in kfold_indices(n, nfolds):
        train = np.setdiff1d(np.arange(n), test)
        mu = np.mean(np.concatenate([L[train], R[train]]), 0)
        l = L - mu
        r = R - mu
        l = l / np.linalg.norm(l, axis=1, keepdims=True)
        r = r / np.linalg.norm(r, axis=1, keepdims=True)
        s = np.sum(l * r, 1)
        st, ft = s[train], issame[train]
        acc = np.array([((st[ft] > t).sum() + (st[~ft] < t).sum()) / len(st) for t in thresholds])
        t = np.mean(thresholds[acc == acc.max()])
        sv, fv = s[test], issame[test]
        accs.append(((sv[fv] > t).sum() + (sv[~fv] < t).sum()) / len(sv))
        ths.append(t)
    return np.array(accs), np.array(ths)


def make_pairs(n, d, sep, seed):
    rng = np.random.default_rng(seed)
    issame = rng.random(n) < 0.5
    a = rng.normal(size=(n, d))
    b = np.where(issame[:, None], a + rng.normal(scale=sep, size=(n, d)), rng.normal(size=(n, d)))
    emb = np.empty((2 * n, d))
    emb[0::2], emb[1::2] = a, b
    return emb, issame


@pytest.mark.parametrize("seed,sep", [(0, 0.8), (1, 1.2), (2, 2.0)])
def test_insightface_matches_naive(seed, sep):
    emb, issame = make_pairs(300, 16, sep, seed)
    res = evaluate(emb, issame, protocol="insightface")
    accs, ths = naive_insightface(emb, issame)
    np.testing.assert_allclose(res.fold_accuracies, accs)
    np.testing.assert_allclose(res.fold_thresholds, ths)
    assert res.accuracy_mean == pytest.approx(accs.mean())


@pytest.mark.slow
@pytest.mark.parametrize("seed,sep", [(3, 1.0), (4, 1.5)])
def test_sphereface_matches_naive(seed, sep):
    emb, issame = make_pairs(200, 8, sep, seed)
    res = evaluate(emb, issame, protocol="sphereface")
    accs, ths = naive_sphereface(emb, issame)
    np.testing.assert_allclose(res.fold_accuracies, accs)
    np.testing.assert_allclose(res.fold_thresholds, ths, atol=1e-12)


def test_known_embeddings_give_known_accuracy():
    # identical pairs are 'same', orthogonal pairs 'different' -> perfect separation
    n = 100
    issame = np.arange(n) % 2 == 0
    emb = np.zeros((2 * n, 4))
    emb[0::2, 0] = 1
    emb[1::2] = np.where(issame[:, None], [1, 0, 0, 0], [0, 1, 0, 0])
    res = evaluate(emb, issame)
    assert res.accuracy_mean == 1.0 and res.accuracy_std == 0.0
    assert res.auc == 1.0 and res.eer == 0.0


def test_folds_from_pairs_file_are_honoured():
    emb, issame = make_pairs(100, 8, 1.0, 5)
    folds = np.repeat(np.arange(5), 20)[::-1]
    res = evaluate(emb, issame, folds=folds)
    assert len(res.fold_accuracies) == 5


def test_nan_embeddings_are_a_clear_error():
    emb, issame = make_pairs(20, 4, 1.0, 0)
    emb[3, 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        evaluate(emb, issame)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(DataError, match=r"\[2N, D\]"):
        evaluate(np.ones((10, 3)), np.ones(4, bool))


def test_kfold_like_sklearn():
    sizes = [len(f) for f in kfold_indices(23, 10)]
    assert sizes == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]


@pytest.mark.parametrize("protocol", ["insightface", "sphereface"])
@pytest.mark.parametrize("case", ["all_same", "all_different", "ties"])
def test_degenerate_pair_sets_give_defined_or_undefined_numbers_not_errors(protocol, case):
    rng = np.random.default_rng(0)
    n = 40
    emb = rng.normal(size=(2 * n, 8))
    same = np.ones(n, bool) if case == "all_same" else np.zeros(n, bool) if case == "all_different" else \
        np.arange(n) % 2 == 0
    if case == "ties":
        emb = np.eye(8)[np.arange(2 * n) // 2 % 8]  # every pair identical one-hot: all scores tie exactly
    r = evaluate(emb, same, nfolds=10, protocol=protocol)
    assert len(r.fold_accuracies) == 10 and np.all((r.fold_accuracies >= 0) & (r.fold_accuracies <= 1))
    if case == "all_same":
        assert r.accuracy_mean > 0.9  # a threshold above the training folds' distances accepts (nearly) all
        assert all(v is None for v in r.tar_at_far.values()) and np.isnan(r.auc)
    if case == "all_different":
        assert r.accuracy_mean == 1.0 and all(v is None for v in r.tar_at_far.values())
    if case == "ties":
        assert r.auc == pytest.approx(0.5) and r.accuracy_mean == pytest.approx(0.5, abs=0.15)
