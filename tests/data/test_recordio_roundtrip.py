import struct

import numpy as np
import pytest

from facerec.data import recordio as rio
from facerec.data.bins import read_bin, write_bin
from facerec.data.dataset import RecordFaceDataset
from facerec.data.synthetic import encode_jpeg, render_image
from facerec.errors import DataError


def _naive_read_all(path):
    """Reference reader written straight from the dmlc framing description."""
    data = open(path, "rb").read()
    out, pos, cur = [], 0, b""
    while pos < len(data):
        magic, lrec = struct.unpack_from("<II", data, pos)
        assert magic == rio.MAGIC
        cflag, n = lrec >> 29, lrec & ((1 << 29) - 1)
        cur += data[pos + 8 : pos + 8 + n]
        pos += 8 + n + (-n % 4)
        if cflag in (0, 3):
            out.append(cur)
            cur = b""
        else:
            cur += struct.pack("<I", rio.MAGIC)
    return out


def test_header_pack_unpack_scalar_and_array():
    h, p = rio.unpack(rio.pack(rio.IRHeader(0, 7.0, 3, 4), b"xyz"))
    assert (h.flag, h.label, h.id, h.id2, p) == (0, 7.0, 3, 4, b"xyz")
    h, p = rio.unpack(rio.pack(rio.IRHeader(0, np.array([1.0, 2.5, 3.0])), b"abc"))
    assert h.flag == 3 and np.array_equal(h.label, [1.0, 2.5, 3.0]) and p == b"abc"


@pytest.mark.parametrize("payload", [
    b"", b"a", b"abcd", b"abcdefg",
    struct.pack("<I", rio.MAGIC),  # the magic word is the whole payload
    b"1234" + struct.pack("<I", rio.MAGIC) + b"56789" + struct.pack("<I", rio.MAGIC) * 2 + b"x",
])
def test_records_with_embedded_magic_survive(tmp_path, payload):
    rec = tmp_path / "a.rec"
    records = [payload, b"plain", payload + b"tail"]
    with rio.RecordIOWriter(rec) as w:
        for i, r in enumerate(records):
            w.write(i, r)
    reader = rio.RecordIOReader(rec)
    assert [reader.read(i) for i in range(3)] == records
    assert _naive_read_all(rec) == records
    assert rio.scan_offsets(rec) == reader.index


def test_face_rec_round_trip_bytes_and_labels(tmp_path):
    samples = [(label, encode_jpeg(render_image(0, label, j))) for label in range(4) for j in range(3)]
    info = rio.write_face_rec(tmp_path / "train.rec", samples)
    assert info == {"num_images": 12, "num_classes": 4}
    reader = rio.RecordIOReader(tmp_path / "train.rec")
    layout = rio.read_face_layout(reader)
    assert layout.image_keys.tolist() == list(range(1, 13))
    assert layout.identity_ranges == [(1, 4), (4, 7), (7, 10), (10, 13)]
    for key, (label, jpeg) in zip(layout.image_keys, samples):
        h, payload = rio.unpack(reader.read(int(key)))
        assert payload == jpeg and rio.record_label(h) == label
    ds = RecordFaceDataset(tmp_path / "train.rec")
    assert len(ds) == 12 and ds.num_classes == 4
    x, y = ds[5]
    assert x.shape == (3, 112, 112) and x.dtype.is_floating_point is False and y == 1


def test_labels_must_be_grouped(tmp_path):
    with pytest.raises(DataError, match="consecutive"):
        rio.write_face_rec(tmp_path / "t.rec", [(0, b"a"), (2, b"b")])


def test_truncated_rec_names_file_and_offset(tmp_path):
    rec = tmp_path / "t.rec"
    samples = [(label, encode_jpeg(render_image(0, label, 0))) for label in range(3)]
    rio.write_face_rec(rec, samples)
    data = rec.read_bytes()
    rec.write_bytes(data[: len(data) - 300])
    with pytest.raises(DataError) as e:
        ds = RecordFaceDataset(rec)
        for i in range(len(ds)):
            ds[i]
    assert "t.rec" in str(e.value) and ("offset" in str(e.value) or "past the end" in str(e.value))


def test_bad_magic_and_missing_files(tmp_path):
    rec = tmp_path / "x.rec"
    with rio.RecordIOWriter(rec) as w:
        w.write(0, b"hello world")
    raw = bytearray(rec.read_bytes())
    raw[0] ^= 0xFF
    rec.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="bad magic"):
        rio.RecordIOReader(rec).read(0)
    with pytest.raises(DataError, match="does not exist"):
        rio.RecordIOReader(tmp_path / "nope.rec")


def test_bin_round_trip(tmp_path):
    imgs = [encode_jpeg(render_image(1, i, 0)) for i in range(6)]
    write_bin(tmp_path / "v.bin", imgs, [True, False, True])
    got, same = read_bin(tmp_path / "v.bin")
    assert got == imgs and same.tolist() == [True, False, True]


def test_malicious_bin_is_refused_and_runs_nothing(tmp_path):
    import os
    import pickle

    target = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {target}",))

    (tmp_path / "evil.bin").write_bytes(pickle.dumps(([b"a", b"b"], [Evil()])))
    with pytest.raises(DataError, match="refusing"):
        read_bin(tmp_path / "evil.bin")
    assert not target.exists()


@pytest.mark.parametrize("read, kind", [
    (rio.read_index, "RecordIO .idx file"),
    (rio.RecordIOReader, "RecordIO .rec file"),
], ids=["idx", "rec"])
def test_a_directory_for_a_recordio_file_says_so(tmp_path, read, kind):
    """The usual slip (the dataset folder for the .rec in it) is named, not "does not exist"."""
    with pytest.raises(DataError) as e:
        read(tmp_path)
    assert str(tmp_path) in str(e.value) and f"is a directory, not a {kind}" in str(e.value)
