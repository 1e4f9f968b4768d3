import numpy as np
import pytest

from facerec.data.align import (
    ARCFACE_112, SPHEREFACE_112x96, align_face, read_landmarks, similarity_transform, template_points, warp_affine,
)
from facerec.data.pairs import Pair, build_pairs_bin, read_lfw_pairs, read_pairs_csv
from facerec.errors import DataError


def umeyama_reference(src, dst):
    """Independent closed form: minimise sum |a*R*src + t - dst|^2 via complex least squares."""
    zs = src[:, 0] + 1j * src[:, 1]
    zd = dst[:, 0] + 1j * dst[:, 1]
    ms, md = zs.mean(), zd.mean()
    a = np.sum(np.conj(zs - ms) * (zd - md)) / np.sum(np.abs(zs - ms) ** 2)
    t = md - a * ms
    return np.array([[a.real, -a.imag, t.real], [a.imag, a.real, t.imag]])


def test_similarity_recovers_known_transform():
    rng = np.random.default_rng(0)
    src = rng.random((5, 2)) * 100
    ang, s, t = 0.3, 1.7, np.array([5.0, -3.0])
    r = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    dst = s * src @ r.T + t
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], s * r, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-9)


def test_templates_differ_by_8px():
    np.testing.assert_allclose(ARCFACE_112 - SPHEREFACE_112x96, [[8, 0]] * 5)
    np.testing.assert_allclose(template_points("arcface", (224, 224)), ARCFACE_112 * 2)


def test_warp_integer_shift_is_exact():
    img = (np.random.default_rng(1).random((20, 30, 3)) * 255).astype(np.uint8)
    out = warp_affine(img, np.array([[1, 0, 3], [0, 1, 2.0]]), (20, 30))
    assert np.array_equal(out[2:, 3:], img[:-2, :-3])


@pytest.mark.shared_data
def test_lfw_alignment_is_least_squares_and_residual_small(shared_data):
    lms = read_landmarks(shared_data / "lfw" / "landmarks.tsv")
    assert len(lms) == 7701 and sum(v is None for v in lms.values()) == 1
    dst = ARCFACE_112
    residuals = []
    for name, lm in list(lms.items())[:400]:
        if lm is None:
            continue
        m = similarity_transform(lm, dst)
        np.testing.assert_allclose(m, umeyama_reference(lm, dst), atol=1e-6)
        mapped = lm @ m[:, :2].T + m[:, 2]
        residuals.append(np.linalg.norm(mapped - dst, axis=1).mean())
    mean_res = float(np.mean(residuals))
    assert mean_res < 3.0, mean_res  # pixels at 112x112
    from PIL import Image

    name = next(n for n, v in lms.items() if v is not None)
    img = np.asarray(Image.open(shared_data / "lfw" / "images" / name).convert("RGB"))
    crop = align_face(img, lms[name])
    assert crop.shape == (112, 112, 3)


@pytest.mark.shared_data
def test_lfw_pairs_file(shared_data):
    pairs = read_lfw_pairs(shared_data / "lfw" / "pairs.txt")
    assert len(pairs) == 6000 and sum(p.issame for p in pairs) == 3000
    assert [sum(p.fold == f for p in pairs) for f in range(10)] == [600] * 10
    assert pairs[0].path1 == "Abel_Pacheco/Abel_Pacheco_0001.jpg" and pairs[0].issame


def test_align_command_writes_the_tree_and_applies_the_missing_policy(shared_data, tmp_path, capsys):
    import shutil

    from facerec.cli import main
    from facerec.data.align import align_face, read_landmarks
    from facerec.data.decode import decode_image

    src = shared_data / "lfw" / "images"
    lm_all = read_landmarks(shared_data / "lfw" / "landmarks.tsv")
    root = tmp_path / "photos"
    people = sorted(src.iterdir())[:3]
    for d in people:
        shutil.copytree(d, root / d.name)
    (root / "stranger").mkdir()
    shutil.copy(next(people[0].glob("*.jpg")), root / "stranger" / "unlisted.jpg")  # no landmarks
    n = sum(1 for _ in root.rglob("*.jpg"))
    out = tmp_path / "aligned"
    assert main(["data", "align", "--images", str(root), "--landmarks", str(shared_data / "lfw" / "landmarks.tsv"),
                 "--out", str(out), "--template", "sphereface"]) == 0
    said = capsys.readouterr().out
    assert f"aligned {n - 1} image(s)" in said and "1 skipped" in said
    written = sorted(out.rglob("*.jpg"))
    assert len(written) == n - 1 and not (out / "stranger").exists()
    rel = written[0].relative_to(out).as_posix()
    img = decode_image(written[0].read_bytes())
    ref = align_face(decode_image((root / rel).read_bytes()), lm_all[rel], "sphereface", (112, 96))
    assert img.shape == (112, 96, 3) and np.abs(img.astype(int) - ref.astype(int)).mean() < 3  # JPEG q95
    assert main(["data", "align", "--images", str(root), "--landmarks", str(shared_data / "lfw" / "landmarks.tsv"),
                 "--out", str(tmp_path / "a2"), "--missing", "center"]) == 0
    assert "1 centre-cropped" in capsys.readouterr().out
    assert main(["data", "align", "--images", str(root), "--landmarks", str(shared_data / "lfw" / "landmarks.tsv"),
                 "--out", str(tmp_path / "a3"), "--missing", "error"]) == 2
    assert "unlisted.jpg: no landmarks" in capsys.readouterr().err


@pytest.mark.parametrize("read, kind", [
    (read_landmarks, "landmarks TSV file"),
    (read_lfw_pairs, "pairs.txt file"),
    (read_pairs_csv, "pairs CSV file"),
    (lambda d: build_pairs_bin([Pair("", "a.jpg", True, 0)], d, {}, d / "out.bin"), "face image file"),
], ids=["landmarks", "lfw_pairs", "pairs_csv", "pair_image"])
def test_a_directory_for_a_file_says_so(tmp_path, read, kind):
    """A directory where a file is expected is named as such, not "does not exist"."""
    with pytest.raises(DataError) as e:
        read(tmp_path)
    assert str(tmp_path) in str(e.value) and f"is a directory, not a {kind}" in str(e.value)
