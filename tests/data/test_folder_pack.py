import hashlib

import pytest

from facerec.cli import main
from facerec.data.folder import read_list, scan_folder
from facerec.data.synthetic import encode_jpeg, render_image
from facerec.errors import DataError


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "faces"
    for ident in ("bob", "alice", "carol"):
        for j in range(3):
            d = root / ident / ("frontal" if j < 2 else "profile")
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{j:02d}.jpg").write_bytes(encode_jpeg(render_image(5, len(ident) * 7 + j, j, size=48)))
    return root


def digest_tree(root):
    return sorted(hashlib.sha1(p.read_bytes()).hexdigest() for p in root.rglob("*.jpg"))


def test_folder_list_rec_export_round_trip(tree, tmp_path):
    assert main(["data", "list", str(tree), "--out", str(tmp_path / "list.tsv")]) == 0
    entries = read_list(tmp_path / "list.tsv")
    assert {e.path.split("/")[0]: e.label for e in entries} == {"alice": 0, "bob": 1, "carol": 2}
    assert main(["data", "pack", "--list", str(tmp_path / "list.tsv"), "--root", str(tree),
                 "--out", str(tmp_path / "rec" / "train.rec")]) == 0
    assert (tmp_path / "rec" / "property").read_text().strip() == "3,48,48"
    assert main(["data", "export", str(tmp_path / "rec" / "train.rec"), "--out", str(tmp_path / "out")]) == 0
    # identical bytes, and each exported label folder holds exactly one identity's images
    assert digest_tree(tmp_path / "out") == digest_tree(tree)
    for label, ident in enumerate(("alice", "bob", "carol")):
        assert sorted(digest_tree(tmp_path / "out" / str(label))) == sorted(digest_tree(tree / ident))


def test_empty_identity_folder_is_named(tree):
    (tree / "dave").mkdir()
    with pytest.raises(DataError, match="dave"):
        scan_folder(tree)


def test_bad_list_line_names_file_and_line(tmp_path):
    (tmp_path / "l.tsv").write_text("a.jpg\t0\nb.jpg\tx\n")
    with pytest.raises(DataError, match=r"l.tsv:2"):
        read_list(tmp_path / "l.tsv")


@pytest.mark.shared_data
def test_pack_real_faces_aligned_with_landmarks(shared_data, tmp_path):
    from facerec.data.dataset import RecordFaceDataset

    root = shared_data / "cfp_train" / "images"
    lines = [f"{i:03d}/frontal/{j:02d}.jpg\t{i}\n" for i in (1, 2, 3) for j in (1, 2)]
    (tmp_path / "l.tsv").write_text("".join(lines))
    assert main(["data", "pack", "--list", str(tmp_path / "l.tsv"), "--root", str(root),
                 "--landmarks", str(shared_data / "cfp_train" / "landmarks.tsv"),
                 "--out", str(tmp_path / "train.rec")]) == 0
    ds = RecordFaceDataset(tmp_path / "train.rec")
    assert len(ds) == 6 and ds.num_classes == 3
    x, y = ds[0]
    assert tuple(x.shape) == (3, 112, 112) and y == 0


def test_folder_and_list_datasets_equal_the_packed_rec(tree, tmp_path):
    """A folder tree, its list file and the `.rec` packed from it give the same samples."""
    import torch

    from facerec.data.dataset import ImageListDataset, RecordFaceDataset
    from facerec.data.folder import pack_list, write_list

    entries = scan_folder(tree)
    write_list(entries, tree / "train.lst")
    pack_list(entries, tree, tmp_path / "train.rec")
    packed = RecordFaceDataset(tmp_path / "train.rec")
    for ds in (ImageListDataset(tree), ImageListDataset(tree / "train.lst")):
        assert len(ds) == len(packed) == 9 and ds.num_classes == packed.num_classes == 3
        req = [(i, i % 2 == 1) for i in range(9)]
        x, y, skipped = ds.read_batch(req)
        ref_x, ref_y, _ = packed.read_batch(req)
        assert skipped == [] and torch.equal(x, ref_x) and torch.equal(y, ref_y)


def test_list_dataset_labels_are_made_consecutive_and_bad_files_named(tree, tmp_path):
    from facerec.data.dataset import ImageListDataset

    (tmp_path / "l.tsv").write_text(f"{tree}/bob/frontal/00.jpg\t7\n{tree}/alice/frontal/00.jpg\t3\n"
                                    f"{tmp_path}/missing.jpg\t7\n")
    ds = ImageListDataset(tmp_path / "l.tsv", root="/")
    assert ds.labels.tolist() == [1, 0, 1] and ds.num_classes == 2
    with pytest.raises(DataError, match="missing.jpg: cannot read image"):
        ds.read_batch([0, 1, 2])
    skipping = ImageListDataset(tmp_path / "l.tsv", root="/", on_bad="skip")
    x, y, skipped = skipping.read_batch([0, 1, 2])
    assert x.shape[0] == 2 and y.tolist() == [1, 0] and "missing.jpg" in skipped[0]


def test_training_reads_a_folder_tree_directly(tree, tmp_path):
    from facerec.config import load_config
    from facerec.train.engine import train

    cfg = load_config(None, [f"data.train={tree}", "model.input_size=[48, 48]", "model.embedding_size=16",
                             "model.options={width_mult: 0.25}", "train.batch_size=4", "train.epochs=1",
                             "train.precision=fp32", "eval.every_epochs=0"])
    result = train(cfg, tmp_path / "run", log=False)
    assert result.steps == 2


def test_a_directory_for_the_list_file_says_so(tree):
    with pytest.raises(DataError) as e:
        read_list(tree)
    assert str(tree) in str(e.value) and "is a directory, not a path<TAB>label list file" in str(e.value)


def test_a_file_or_a_record_folder_for_the_image_folder_says_so(tmp_path):
    (tmp_path / "train.rec").write_bytes(b"")
    with pytest.raises(DataError, match="is a file, not a folder of identity folders"):
        scan_folder(tmp_path / "train.rec")
    with pytest.raises(DataError, match="does not exist"):
        scan_folder(tmp_path / "missing")
    with pytest.raises(DataError, match="it holds train.rec: give that file's path"):
        scan_folder(tmp_path)
