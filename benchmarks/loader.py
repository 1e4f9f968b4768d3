"""Training input throughput from a `.rec` of real 112x112 faces (LFW, aligned with the shared
landmarks): facerec's loader (each image decoded, mirrored by the epoch's coin and normalised
while in cache, in the DataLoader workers, into one shared float32 channels-last batch, yielded
without a copy) with 0, 1 and 2 workers, against references measured in the same run: the raw
JPEG decode rate on one core (the ceiling: facerec's decoder, simplejpeg, and, as the issue
quotes it, Pillow), the rate of all N cores decoding at once (N workers' true ceiling on a VM),
and a straightforward per-sample pipeline (decode -> float tensor -> flip -> normalise per
sample, default collate). Also facerec's uint8 batches (what a GPU run copies, normalising on
the device). Every figure is the median of `--repeats` timed runs; the references are measured
right before each run on that run's images (the ceiling also right after: their mean), and each
run is compared with its own.

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


def decode_rate(payloads: list[bytes], decoder: str = "facerec") -> float:
    """Images/s of decoding `payloads` alone on one thread: the ceiling. `decoder`: facerec's
    (`decode_image`: simplejpeg when installed) or "pillow" (`Image.open` + `np.asarray`, the
    issue's reference decoder)."""
    if decoder == "pillow":
        import io

        from PIL import Image

        def decode(p: bytes) -> np.ndarray:
            return np.asarray(Image.open(io.BytesIO(p)).convert("RGB"))
    else:
        from facerec.data.decode import decode_image as decode

    t0 = time.perf_counter()
    for p in payloads:
        decode(p)
    return len(payloads) / (time.perf_counter() - t0)


def concurrent_decode_rate(payloads: list[bytes], processes: int) -> float:
    """Images/s of `processes` processes each decoding all of `payloads` at the same time: what
    the cores deliver together when all decode (on a VM, less than `processes` x one core)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    start, results = ctx.Barrier(processes + 1), ctx.Queue()
    procs = [ctx.Process(target=_decode_worker, args=(payloads, start, results)) for _ in range(processes)]
    for p in procs:
        p.start()
    start.wait()
    spans = [results.get() for _ in procs]
    for p in procs:
        p.join()
    t0, t1 = min(s[0] for s in spans), max(s[1] for s in spans)
    return processes * len(payloads) / (t1 - t0)


def _decode_worker(payloads: list[bytes], start, results) -> None:
    start.wait()
    t0 = time.perf_counter()
    decode_rate(payloads)
    results.put((t0, time.perf_counter()))


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
    rates, ceilings, pillow, together = [], [], [], []
    for epoch in range(repeats):
        payloads = epoch_payloads(rec, batch, batches, epoch)
        before = decode_rate(payloads)
        pillow.append(decode_rate(payloads, "pillow"))
        if workers > 1:
            together.append(concurrent_decode_rate(payloads, workers))
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
        ceilings.append((before + decode_rate(payloads)) / 2)  # the VM drifts: bracket the run
        del payloads
    ips = float(np.median(rates))
    n = max(workers, 1)
    ratios = [r / (n * c) for r, c in zip(rates, ceilings)]
    row = {"pipeline": kind, "workers": workers, "batch": batch, "images_per_run": done, "runs": rates,
           "images_per_second": ips, "batches_per_second": ips / batch,
           "ceiling_runs": ceilings, "ceiling_images_per_second": float(np.median(ceilings)),
           "vs_ceiling_runs": ratios, "vs_ceiling": float(np.median(ratios)),
           "pillow_ceiling_runs": pillow, "pillow_ceiling_images_per_second": float(np.median(pillow)),
           "vs_pillow_ceiling": float(np.median([r / (n * c) for r, c in zip(rates, pillow)]))}
    if together:
        row.update({"concurrent_decode_runs": together,
                    "concurrent_decode_images_per_second": float(np.median(together)),
                    "vs_concurrent_decode": float(np.median([r / c for r, c in zip(rates, together)]))})
    return row


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
            together = (f", {100 * r['vs_concurrent_decode']:.0f}% of {w} cores decoding at once"
                        if "vs_concurrent_decode" in r else "")
            print(f"{kind:<16} workers {w}: {r['images_per_second']:7.0f} images/s "
                  f"({r['batches_per_second']:.1f} batches/s; decode ceiling {r['ceiling_images_per_second']:.0f}/s "
                  f"per core: {100 * r['vs_ceiling']:.0f}% of {max(w, 1)} x ceiling, "
                  f"{100 * r['vs_pillow_ceiling']:.0f}% of {max(w, 1)} x Pillow's{together})", flush=True)
    ceiling = {"images_per_second": float(np.median([c for r in rows for c in r["ceiling_runs"]])),
               "decoder": "simplejpeg" if _has("simplejpeg") else "Pillow",
               "how": "decode_image on the JPEG bytes of each run's images, one thread, mean of right before and right after that run",
               "pillow_images_per_second": float(np.median([c for r in rows for c in r["pillow_ceiling_runs"]])),
               "pillow_how": "np.asarray(Image.open(...).convert('RGB')) on the same bytes, one thread"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "loader", "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
                                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                    "opencv": _has("cv2"), "decode_ceiling": ceiling, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
