"""The batched training input path equals the straightforward per-sample one, bit for bit."""

import numpy as np
import pytest
import torch

from facerec.contract import Preprocess
from facerec.data.dataset import RecordFaceDataset
from facerec.data.decode import decode_into
from facerec.data.recordio import write_face_rec
from facerec.data.synthetic import encode_jpeg, render_image
from facerec.data.transforms import to_model_input
from facerec.errors import DataError
from facerec.train.data import EpochSampler, TrainData


@pytest.fixture
def rec(tmp_path):
    samples = [(i // 4, encode_jpeg(render_image(0, i // 4, i % 4, size=40))) for i in range(24)]
    write_face_rec(tmp_path / "t.rec", samples)
    return tmp_path / "t.rec"


def test_getitems_decodes_flips_and_labels_like_getitem(rec):
    ds = RecordFaceDataset(rec)
    req = [(5, True), (0, False), (17, True), (9, False)]
    x, y, skipped = ds.__getitems__(req)
    assert skipped == []
    assert x.shape == (4, 40, 40, 3) and x.dtype == torch.uint8
    for j, (i, flip) in enumerate(req):
        img, label = ds[i]
        ref = img.permute(1, 2, 0)
        assert torch.equal(x[j], ref.flip(1) if flip else ref) and y[j] == label


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_batches_equal_the_per_sample_pipeline(rec, workers):
    pre = Preprocess(input_size=(40, 40), mean=(127.5, 120.0, 110.0), std=(128.0, 127.0, 126.0))
    data = TrainData(train=RecordFaceDataset(rec), num_classes=6, num_workers=workers, seed=3)
    sampler = EpochSampler(len(data.train), 8, seed=3)
    for epoch in (0, 1):
        batches = sampler.batches(epoch)
        for b, (x, y) in zip(batches, data.loader(sampler, epoch)):
            got = data.to_input(x, pre, train=True)
            flips = data.flip_mask(epoch, torch.tensor(b))
            imgs = torch.stack([data.train[i][0] for i in b])
            ref = to_model_input(imgs, pre.mean, pre.std, flip_mask=flips)
            assert torch.equal(got, ref) and torch.equal(y, torch.tensor([data.train[i][1] for i in b]))
            assert got.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_and_nchw_inputs_normalise_identically():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (5, 3, 7, 9), dtype=torch.uint8, generator=g)
    mask = torch.tensor([True, False, True, True, False])
    for mean, std in (((127.5,) * 3, (128.0,) * 3), ((120.0, 110.0, 100.0), (60.0, 61.0, 62.0))):
        a = to_model_input(x, mean, std, flip_mask=mask)
        b = to_model_input(x.contiguous(memory_format=torch.channels_last), mean, std, flip_mask=mask)
        naive = (torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x).float() - torch.tensor(mean).view(1, 3, 1, 1)) \
            / torch.tensor(std).view(1, 3, 1, 1)
        assert torch.equal(a, naive) and torch.equal(b, naive)


def test_decode_into_rejects_another_image_size():
    jpeg = encode_jpeg(render_image(0, 0, 0, size=40))
    out = np.empty((32, 32, 3), np.uint8)
    with pytest.raises(DataError, match="a data set must hold one image size"):
        decode_into(jpeg, out, where="x.rec (key 3)")
    good = np.empty((40, 40, 3), np.uint8)
    decode_into(jpeg, good)
    from facerec.data.decode import decode_image

    assert np.array_equal(good, decode_image(jpeg))


def _corrupt_one_record(rec, key=5):
    """Overwrite the JPEG payload of one record in place (framing intact): undecodable image."""
    from facerec.data.recordio import RecordIOReader

    offset = RecordIOReader(rec).index[key]
    data = bytearray(rec.read_bytes())
    jpeg_start = data.index(b"\xff\xd8", offset)
    data[jpeg_start + 2 : jpeg_start + 300] = b"\x00" * 298
    rec.write_bytes(bytes(data))


def test_bad_records_are_errors_by_default_and_skipped_on_request(rec, tmp_path):
    from facerec.config import load_config
    from facerec.train.engine import train

    _corrupt_one_record(rec, key=5)
    with pytest.raises(DataError, match=r"t\.rec \(key 5\)"):
        RecordFaceDataset(rec).__getitems__(list(range(8)))
    x, y, skipped = RecordFaceDataset(rec, on_bad="skip").__getitems__(list(range(8)))
    assert x.shape[0] == 7 and len(skipped) == 1 and "key 5" in skipped[0]
    cfg = load_config(None, [f"data.train={rec}", "data.bad_records=skip", "model.input_size=[32, 32]",
                             "model.embedding_size=16", "model.options={width_mult: 0.25}", "train.batch_size=8",
                             "train.epochs=1", "train.precision=fp32", "eval.every_epochs=0", "train.log_every=1"])
    run = tmp_path / "run"
    result = train(cfg, run, log=False)
    assert result.steps == 3
    events = [line for line in (run / "metrics.jsonl").read_text().splitlines() if "bad_record" in line]
    assert len(events) == 1 and "key 5" in events[0]


CONTRACTS = [
    Preprocess(input_size=(40, 40)),
    Preprocess(input_size=(40, 40), mean=(127.5, 120.0, 110.0), std=(128.0, 127.0, 126.0)),
    Preprocess(input_size=(40, 40), color="BGR", mean=(127.5,) * 3, std=(128.0,) * 3),
    Preprocess(input_size=(112, 96), template="sphereface"),  # the central columns of 112x112 crops
    Preprocess(input_size=(32, 32)),  # needs a resize: converted on the whole batch instead
]


@pytest.mark.parametrize("opencv", [True, False], ids=["opencv", "no-opencv"])
@pytest.mark.parametrize("pre", CONTRACTS, ids=["default", "per-channel", "bgr", "sphereface-crop", "resize"])
@pytest.mark.parametrize("workers", [0, 1])
def test_model_ready_batches_equal_the_uint8_batches_converted_after(rec, pre, workers, opencv, monkeypatch):
    import facerec.data.transforms as transforms_mod

    if not opencv:
        monkeypatch.setattr(transforms_mod, "_opencv", lambda: None)  # every OpenCV use goes through it
    elif transforms_mod._opencv() is None:
        pytest.skip("OpenCV is not installed")
    if pre.input_size == (112, 96):
        samples = [(i // 4, encode_jpeg(render_image(0, i // 4, i % 4, size=112))) for i in range(12)]
        write_face_rec(rec, samples)
    data = TrainData(train=RecordFaceDataset(rec), num_classes=6, num_workers=workers, seed=5)
    sampler = EpochSampler(len(data.train), 4, seed=5)
    ref_data = TrainData(train=RecordFaceDataset(rec), num_classes=6, num_workers=0, seed=5)
    refs = [(ref_data.to_input(u, pre, train=True), v) for u, v in ref_data.loader(sampler, 1)]
    converted_after = []
    original = TrainData.to_input
    monkeypatch.setattr(TrainData, "to_input", lambda *a, **k: converted_after.append(1) or original(*a, **k))
    n = 0
    for (x, y), (ref, v) in zip(data.loader(sampler, 1, preprocess=pre), refs):
        assert x.dtype == torch.float32 and x.shape == ref.shape == (4, 3, *pre.input_size)
        assert torch.equal(x, ref) and torch.equal(y, v)
        assert x.is_contiguous(memory_format=torch.channels_last)
        n += 1
    assert n == sampler.batches_per_epoch
    needs_resize = pre.input_size == (32, 32)
    assert bool(converted_after) == needs_resize  # else every image was converted while decoded


def test_mirroring_in_the_converter_is_a_left_right_flip(monkeypatch):
    import facerec.data.transforms as transforms_mod
    from facerec.data.transforms import InputFormat, PixelConverter

    img = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    for cv in (transforms_mod._opencv(), None):
        monkeypatch.setattr(transforms_mod, "_opencv", lambda cv=cv: cv)
        conv = PixelConverter(InputFormat("RGB", (0.0,) * 3, (1.0,) * 3))
        assert np.array_equal(conv.mirror(img), img[:, ::-1])
        out = np.empty((6, 7, 3), np.float32)
        conv.convert(img, out)
        assert np.array_equal(out, img.astype(np.float32))


def test_record_views_equal_copies_also_for_split_records(tmp_path):
    from facerec.data.recordio import MAGIC, RecordIOReader, RecordIOWriter

    magic = MAGIC.to_bytes(4, "little")
    payloads = [b"abcd" * 5, b"wxyz" + magic + b"1234" + magic, b"tail"]
    with RecordIOWriter(tmp_path / "r.rec") as w:
        for k, p in enumerate(payloads):
            w.write(k, p)
    r = RecordIOReader(tmp_path / "r.rec")
    for k, p in enumerate(payloads):
        assert bytes(r.read_view(k)) == r.read(k) == p
    with pytest.raises(DataError, match="no record with key 9"):
        r.read_view(9)


@pytest.mark.parametrize("preprocess", [None, Preprocess(input_size=(40, 40))], ids=["uint8", "float"])
def test_batches_kept_by_the_caller_stay_intact_with_reused_worker_buffers(rec, preprocess):
    """The workers' shared buffers are reused; what the loader yields must never be one of them."""
    data = TrainData(train=RecordFaceDataset(rec), num_classes=6, num_workers=1, seed=2)
    sampler = EpochSampler(len(data.train), 2, seed=2)  # 12 batches: more than the pool holds
    kept = list(data.loader(sampler, 0, preprocess=preprocess))
    ref = TrainData(train=RecordFaceDataset(rec), num_classes=6, num_workers=0, seed=2)
    expected = list(ref.loader(sampler, 0, preprocess=preprocess))
    assert len(kept) == len(expected) == 12
    for (x, y), (u, v) in zip(kept, expected):
        assert torch.equal(x, u) and torch.equal(y, v)


@pytest.mark.parametrize("preprocess", [None, Preprocess(input_size=(40, 40))], ids=["uint8", "float"])
def test_worker_batches_arrive_without_a_copy_and_their_buffers_come_back(rec, preprocess):
    """Batches are yielded in the workers' buffers: a dropped batch's buffer is filled again
    (a handful of distinct buffers for 12 batches), while a kept view of one keeps it busy."""
    data = TrainData(train=RecordFaceDataset(rec), num_classes=6, num_workers=1, seed=2)
    sampler = EpochSampler(len(data.train), 2, seed=2)
    ref = list(TrainData(train=RecordFaceDataset(rec), num_classes=6, num_workers=0, seed=2)
               .loader(sampler, 0, preprocess=preprocess))
    addresses, kept = set(), []
    for i, (x, _) in enumerate(data.loader(sampler, 0, preprocess=preprocess)):
        assert x.is_contiguous(memory_format=torch.channels_last)
        addresses.add(x.data_ptr())
        if i == 3:
            kept.append((i, x[1]))  # a view: the whole buffer must stay this batch's
        del x
    assert len(addresses) <= 6  # the worker's pool of 4 (+ fresh ones while all were busy)
    for i, view in kept:
        assert torch.equal(view, ref[i][0][1])
