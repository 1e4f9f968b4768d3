import json

import numpy as np
import pytest

from facerec.cli import main
from facerec.data.bins import read_pairs, read_pairs_npz, write_bin, write_pairs_npz
from facerec.data.synthetic import encode_jpeg, render_image
from facerec.errors import DataError


def images(n):
    return [encode_jpeg(render_image(2, i // 2 if i % 4 < 2 else i, i, size=32)) for i in range(2 * n)]


def test_npz_round_trip_with_folds(tmp_path):
    imgs = images(6)
    write_pairs_npz(tmp_path / "p.npz", imgs, [1, 0, 1, 0, 1, 0], folds=[0, 0, 1, 1, 2, 2])
    got, same, folds = read_pairs_npz(tmp_path / "p.npz")
    assert got == imgs and same.tolist() == [True, False] * 3 and folds.tolist() == [0, 0, 1, 1, 2, 2]


def test_convert_bin_to_npz_and_read_by_suffix(tmp_path, capsys):
    imgs = images(4)
    write_bin(tmp_path / "v.bin", imgs, [True, False, True, False])
    assert main(["data", "convert", str(tmp_path / "v.bin"), "--out", str(tmp_path / "v.npz")]) == 0
    a, b = read_pairs(tmp_path / "v.bin"), read_pairs(tmp_path / "v.npz")
    assert a[0] == b[0] and np.array_equal(a[1], b[1]) and b[2] is None


def test_npz_with_a_pickled_object_is_refused(tmp_path):
    np.savez(tmp_path / "evil.npz", data=np.array([object()], dtype=object), offsets=np.zeros(1), issame=np.zeros(0))
    with pytest.raises(DataError, match="evil.npz"):
        read_pairs_npz(tmp_path / "evil.npz")


def test_pairs_csv_folds_reach_the_evaluation(tmp_path, capsys):
    from facerec.models import create_model, save_model

    root = tmp_path / "img"
    root.mkdir()
    rows, lms = [], ["# image\tx1\ty1\tx2\ty2\tx3\ty3\tx4\ty4\tx5\ty5"]
    template = "38.29\t51.70\t73.53\t51.50\t56.03\t71.74\t41.55\t92.37\t70.73\t92.20"
    for k in range(20):
        for side in "ab":
            name = f"{k}{side}.jpg"
            ident = k if side == "a" or k % 2 == 0 else k + 50
            (root / name).write_bytes(encode_jpeg(render_image(3, ident, side == "b")))
            lms.append(f"{name}\t{template}")
        rows.append(f"{k}a.jpg,{k}b.jpg,{int(k % 2 == 0)},{k % 4}")
    (tmp_path / "pairs.csv").write_text("path1,path2,issame,fold\n" + "\n".join(rows) + "\n")
    (tmp_path / "lm.tsv").write_text("\n".join(lms) + "\n")
    assert main(["data", "pairs2bin", "--pairs", str(tmp_path / "pairs.csv"), "--images", str(root),
                 "--landmarks", str(tmp_path / "lm.tsv"), "--out", str(tmp_path / "own.npz")]) == 0
    capsys.readouterr()
    assert main(["data", "info", str(tmp_path / "own.npz"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_pairs"] == 20 and info["num_same"] == 10 and info["num_folds"] == 4
    save_model(create_model("mobilefacenet", embedding_size=16, input_size=(112, 112), width_mult=0.25),
               tmp_path / "m.pt")
    assert main(["eval", "--model", str(tmp_path / "m.pt"), "--bench", str(tmp_path / "own.npz"),
                 "--json", str(tmp_path / "r.json")]) == 0
    row = json.loads((tmp_path / "r.json").read_text())["results"][0]
    assert row["num_folds"] == 4 and row["num_pairs"] == 20


@pytest.mark.parametrize("name", ["v.bin", "v.npz"])
def test_a_directory_for_a_pair_set_says_so(tmp_path, name):
    d = tmp_path / name
    d.mkdir()
    with pytest.raises(DataError) as e:
        read_pairs(d)
    assert str(d) in str(e.value) and f"is a directory, not a {d.suffix} verification file" in str(e.value)
