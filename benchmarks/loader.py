"""Training input throughput from a `.rec` of real 112x112 faces (LFW, aligned with the shared
landmarks): facerec's loader (each image decoded, mirrored by the epoch's coin and normalised
while in cache, in the DataLoader workers, into one shared float32 channels-last batch) with 0,
1 and 2 workers, against two references measured in the same run: the raw JPEG decode rate on
one core (the ceiling) and a straightforward per-sample pipeline (decode -> float tensor -> flip
-> normalise per sample, default collate). Also facerec's uint8 batches (what a GPU run copies,
normalising on the device). Every figure is the median of `--repeats` timed runs; the ceiling
is measured right before each run on that run's images, and each run is compared with its own.

    python benchmarks/loader.py [--shared ../shared/data] [--batch 128] [--batches 40]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def build_rec(shared: Path, out: Path, limit: int) -> Path:
    """LFW images aligned to 112x112, JPEG q95, one label per person, as insightface RecordIO."""
    from facerec.data.align import align_face, read_landmarks
    from facerec.data.decode import decode_image
    from facerec.data.recordio import write_face_rec
    from facerec.data.synthetic import encode_jpeg

    rec = out / "lfw112.rec"
    if rec.is_file():
        return rec
    lm = read_landmarks(shared / "lfw" / "landmarks.tsv")
    names = sorted(k for k, v in lm.items() if v is not None)[:limit]
    people = {n.split("/")[0] for n in names}
    label = {p: i for i, p in enumerate(sorted(people))}
    samples = []
    for n in sorted(names, key=lambda n: label[n.split("/")[0]]):
        img = align_face(decode_image((shared / "lfw" / "images" / n).read_bytes()), lm[n], "arcface", (112, 112))
        samples.append((label[n.split("/")[0]], encode_jpeg(img, quality=95)))
    out.mkdir(parents=True, exist_ok=True)
    write_face_rec(rec, samples)
    return rec


def epoch_payloads(rec: Path, batch: int, batches: int, epoch: int) -> list[bytes]:
    """The JPEG bytes of the images a loader delivers in its timed batches of `epoch` (batches
    1..`batches`: the first is not timed), read into memory."""
    from facerec.data.dataset import RecordFaceDataset
    from facerec.train.data import EpochSampler

    ds = RecordFaceDataset(rec)
    order = EpochSampler(len(ds), batch, seed=0).batches(epoch)[1 : 1 + batches]
    return [bytes(ds._record(i)[1]) for b in order for i in b]


def decode_rate(payloads: list[bytes]) -> float:
    """Images/s of decoding `payloads` alone on one thread: the ceiling."""
    from facerec.data.decode import decode_image

    t0 = time.perf_counter()
    for p in payloads:
        decode_image(p)
    return len(payloads) / (time.perf_counter() - t0)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


class _Straightforward:
    """The per-sample pipeline most projects write: decode, float, flip, normalise, per item."""

    def __init__(self, rec: Path) -> None:
        from facerec.data.dataset import RecordFaceDataset

        self.ds = RecordFaceDataset(rec)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        import random

        import torch

        x, y = self.ds[i]
        x = x.float()
        if random.random() < 0.5:
            x = torch.flip(x, dims=[2])
        x = (x - 127.5) / 127.5
        return x, y


def run_loader(rec: Path, workers: int, batch: int, batches: int, kind: str, repeats: int) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from facerec.contract import Preprocess
    from facerec.data.dataset import RecordFaceDataset
    from facerec.train.data import EpochSampler, TrainData

    torch.set_num_threads(1)
    pre = Preprocess()
    rates, ceilings = [], []
    for epoch in range(repeats):
        ceilings.append(decode_rate(epoch_payloads(rec, batch, batches, epoch)))
        if kind in ("facerec", "facerec_uint8"):
            data = TrainData(train=RecordFaceDataset(rec), num_classes=0, num_workers=workers)
            sampler = EpochSampler(len(data.train), batch, seed=0)
            it = data.loader(sampler, epoch=epoch, preprocess=pre if kind == "facerec" else None)
        else:
            ds = _Straightforward(rec)
            sampler = EpochSampler(len(ds), batch, seed=0)
            it = iter(DataLoader(ds, batch_sampler=sampler.batches(epoch), num_workers=workers))
        x, _ = next(it)  # worker start-up and the first batch are not timed
        assert x.dtype == (torch.uint8 if kind == "facerec_uint8" else torch.float32)
        t0 = time.perf_counter()
        done = 0
        for _ in range(batches):
            try:
                x, _ = next(it)
            except StopIteration:
                break
            done += x.shape[0]
        rates.append(done / (time.perf_counter() - t0))
        del it
    ips = float(np.median(rates))
    ratios = [r / (max(workers, 1) * c) for r, c in zip(rates, ceilings)]
    return {"pipeline": kind, "workers": workers, "batch": batch, "images_per_run": done, "runs": rates,
            "images_per_second": ips, "batches_per_second": ips / batch,
            "ceiling_runs": ceilings, "ceiling_images_per_second": float(np.median(ceilings)),
            "vs_ceiling_runs": ratios, "vs_ceiling": float(np.median(ratios))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--cache", type=Path, default=Path(".cache/facerec/bench_loader"))
    ap.add_argument("--limit", type=int, default=8000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "loader.json")
    args = ap.parse_args(argv)
    rec = build_rec(args.shared, args.cache, args.limit)
    import torch

    torch.set_num_threads(1)
    rows = []
    for kind in ("facerec", "straightforward", "facerec_uint8"):
        for w in (0, 1, 2):
            r = run_loader(rec, w, args.batch, args.batches, kind, args.repeats)
            rows.append(r)
            print(f"{kind:<16} workers {w}: {r['images_per_second']:7.0f} images/s "
                  f"({r['batches_per_second']:.1f} batches/s; decode ceiling {r['ceiling_images_per_second']:.0f}/s "
                  f"per core: {100 * r['vs_ceiling']:.0f}% of {max(w, 1)} x ceiling)", flush=True)
    ceiling = {"images_per_second": float(np.median([c for r in rows for c in r["ceiling_runs"]])),
               "decoder": "simplejpeg" if _has("simplejpeg") else "Pillow",
               "how": "decode_image on the JPEG bytes of each run's images, one thread, right before that run"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "loader", "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
                                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                    "opencv": _has("cv2"), "decode_ceiling": ceiling, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
