import numpy as np
import pytest

from facerec.data import synthetic as syn


def test_render_shape_dtype_and_determinism():
    a = syn.render_image(3, 5, 0)
    b = syn.render_image(3, 5, 0)
    assert a.shape == (112, 112, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)


def test_images_of_an_identity_vary_and_identities_differ():
    same = [syn.render_image(0, 1, j).astype(np.float32) for j in range(2)]
    other = syn.render_image(0, 2, 0).astype(np.float32)
    assert np.abs(same[0] - same[1]).mean() > 5.0  # nuisance factors change the picture
    assert np.abs(same[0] - other).mean() > 5.0
    assert not np.allclose(syn.sample_identity(0, 1).skin, syn.sample_identity(1, 1).skin)


def test_iter_identity_images_matches_render_image():
    imgs = list(syn.iter_identity_images(4, 9, 3))
    for j, img in enumerate(imgs):
        assert np.array_equal(img, syn.render_image(4, 9, j))


def test_other_sizes_render():
    assert syn.render_image(0, 0, 0, size=64).shape == (64, 64, 3)


def test_verification_pairs_balanced_disjoint_images():
    pairs = syn.verification_pairs(0, range(100, 130), 200)
    assert len(pairs) == 200
    assert sum(p[2] for p in pairs) == 100
    images = [p[0] for p in pairs] + [p[1] for p in pairs]
    assert len(set(images)) == len(images)  # no image used twice
    for (a, _), (b, _), same in pairs:
        assert 100 <= a < 130 and 100 <= b < 130
        assert (a == b) == same
    assert pairs == syn.verification_pairs(0, range(100, 130), 200)


def test_box_blur_matches_naive():
    rng = np.random.default_rng(0)
    img = rng.random((9, 11, 3)).astype(np.float32)
    out = syn._box_blur(img, 1)
    pad = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    ref = np.zeros_like(img)
    for dy in range(3):
        for dx in range(3):
            ref += pad[dy : dy + 9, dx : dx + 11]
    np.testing.assert_allclose(out, ref / 9, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_raw_pixels_do_not_solve_verification():
    """The generator is a real recognition problem: raw-pixel cosine is far from perfect."""
    from facerec.eval.verification import evaluate

    pairs = syn.verification_pairs(1, range(10_000, 10_100), 600)
    imgs = []
    for (a, ia), (b, ib), _ in pairs:
        imgs += [syn.render_image(1, a, ia, size=56), syn.render_image(1, b, ib, size=56)]
    emb = np.stack(imgs).reshape(len(imgs), -1).astype(np.float32)
    res = evaluate(emb, np.array([p[2] for p in pairs]), nfolds=10, protocol="insightface")
    assert res.accuracy_mean < 0.75
