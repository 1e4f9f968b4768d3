"""RecordIO (`.rec` + `.idx`) as insightface and mxnet write it, read and written without mxnet.

Framing (dmlc-core): every record starts with the magic word 0xced7230a and a length word
`cflag << 29 | length`, then the payload padded to 4 bytes. A payload that contains the magic
word at a 4-byte-aligned offset is split there into parts with cflag 1 (first), 2 (middle)
and 3 (last); the magic itself is dropped and restored by the reader.

Payloads of image records start with an `IfQQ` header (flag, label, id, id2); `flag > 0` means
`flag` float32 labels follow the header. insightface's face sets keep in record 0 the header
label `[num_images + 1, end_of_identity_records]`, store images at keys `1..num_images` and
one record per identity (label `[first_image, end_image)`) after them.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Sequence

import numpy as np

from facerec.errors import DataError, not_a_file_reason

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_HEADER = struct.Struct("<IfQQ")
_LEN_MASK = (1 << 29) - 1
_FRAME = struct.Struct("<II")


@dataclass(frozen=True)
class IRHeader:
    """mxnet's image record header: flag (number of label floats, 0 = scalar), label, id, id2."""

    flag: int
    label: float | np.ndarray
    id: int = 0
    id2: int = 0


def pack(header: IRHeader, payload: bytes) -> bytes:
    """Header + payload bytes; an array label is stored after the header with flag = its length."""
    label = header.label
    if isinstance(label, (int, float, np.integer, np.floating)):
        return _HEADER.pack(0, float(label), header.id, header.id2) + payload
    arr = np.asarray(label, dtype=np.float32).ravel()
    return _HEADER.pack(arr.size, 0.0, header.id, header.id2) + arr.tobytes() + payload


def unpack(record: bytes, where: str = "record") -> tuple[IRHeader, bytes]:
    """Split a record into its header and payload."""
    if len(record) < _HEADER.size:
        raise DataError(f"{where}: {len(record)} bytes, too short for an image record header")
    flag, label, id_, id2 = _HEADER.unpack_from(record)
    body = record[_HEADER.size :]
    if flag > 0:
        if len(body) < 4 * flag:
            raise DataError(f"{where}: header announces {flag} labels but the record is too short")
        arr = np.frombuffer(body, dtype=np.float32, count=flag).copy()
        return IRHeader(flag, arr, id_, id2), body[4 * flag :]
    return IRHeader(0, label, id_, id2), body


def frame(record: bytes) -> bytes:
    """The on-disk bytes of one record (split at embedded magic words, padded to 4 bytes)."""
    out = bytearray()
    n = len(record)
    if n >= 1 << 29:
        raise DataError(f"a RecordIO record is limited to 512 MiB, got {n} bytes")
    start = 0
    view = memoryview(record)
    for i in range(0, n - 3, 4):
        if view[i : i + 4] == _MAGIC_BYTES:
            out += _MAGIC_BYTES + struct.pack("<I", ((1 if start == 0 else 2) << 29) | (i - start))
            out += view[start:i]
            start = i + 4
    rest = n - start
    out += _MAGIC_BYTES + struct.pack("<I", ((3 if start else 0) << 29) | rest)
    out += view[start:]
    out += b"\0" * ((-rest) % 4)
    return bytes(out)


def _read_framed(fh: BinaryIO, offset: int, path: str) -> bytes:
    """Read the record starting at `offset`, joining split parts."""
    fh.seek(offset)
    parts = []
    pos = offset
    while True:
        head = fh.read(8)
        if len(head) < 8:
            raise DataError(f"{path}: truncated record at offset {pos} (file ends inside a record header)")
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise DataError(f"{path}: bad magic 0x{magic:08x} at offset {pos} (expected 0x{MAGIC:08x}); "
                            f"the .idx does not match the .rec or the file is corrupt")
        cflag, length = lrec >> 29, lrec & _LEN_MASK
        data = fh.read(length + ((-length) % 4))
        if len(data) < length:
            raise DataError(f"{path}: truncated record at offset {pos}: {length} bytes announced, "
                            f"{len(data)} present")
        parts.append(data[:length])
        pos += 8 + len(data)
        if cflag in (0, 3):
            break
        parts.append(_MAGIC_BYTES)
    return b"".join(parts)


class RecordIOWriter:
    """Appends records to a `.rec` and their offsets to a `.idx` (`key<TAB>offset` lines)."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        self.rec_path.parent.mkdir(parents=True, exist_ok=True)
        self._rec = open(self.rec_path, "wb")
        self._idx = open(self.idx_path, "w", encoding="ascii")
        self._keys: set[int] = set()

    def write(self, key: int, record: bytes) -> None:
        if key in self._keys:
            raise DataError(f"{self.rec_path}: key {key} written twice")
        self._keys.add(key)
        offset = self._rec.tell()
        self._rec.write(frame(record))
        self._idx.write(f"{key}\t{offset}\n")

    def close(self) -> None:
        for fh in (self._rec, self._idx):
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()

    def __enter__(self) -> "RecordIOWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_index(idx_path: str | Path) -> dict[int, int]:
    """Parse an `.idx` file into {key: offset}."""
    out: dict[int, int] = {}
    p = Path(idx_path)
    if not p.is_file():
        raise DataError(f"index file {str(p)!r} {not_a_file_reason(p, 'RecordIO .idx file')}")
    with open(p, encoding="ascii", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                key, off = line.split("\t")
                out[int(key)] = int(off)
            except ValueError:
                raise DataError(f"{p}:{lineno}: expected 'key<TAB>offset', got {line.strip()!r}") from None
    return out


class RecordIOReader:
    """Random access to a `.rec` through its `.idx` (or a sequential scan without one).

    The file handle is opened lazily and re-opened after a fork/pickle, so each DataLoader
    worker gets its own.
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.rec_path = Path(rec_path)
        if not self.rec_path.is_file():
            raise DataError(f"RecordIO file {str(self.rec_path)!r} {not_a_file_reason(self.rec_path, 'RecordIO .rec file')}")
        self.size = self.rec_path.stat().st_size
        idx = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        self.index = read_index(idx) if idx.is_file() else scan_offsets(self.rec_path)
        for key, off in self.index.items():
            if off < 0 or off + 8 > self.size:
                raise DataError(f"{idx}: offset {off} of key {key} is past the end of {self.rec_path} "
                                f"({self.size} bytes)")
        self.keys = sorted(self.index)
        self._fh: BinaryIO | None = None
        self._pid = -1
        self._mm: mmap.mmap | None = None
        self._mm_pid = -1

    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d["_fh"], d["_pid"], d["_mm"], d["_mm_pid"] = None, -1, None, -1
        return d

    def _handle(self) -> BinaryIO:
        if self._fh is None or self._pid != os.getpid():
            self._fh = open(self.rec_path, "rb")
            self._pid = os.getpid()
        return self._fh

    def __len__(self) -> int:
        return len(self.keys)

    def read(self, key: int) -> bytes:
        if key not in self.index:
            raise DataError(f"{self.rec_path}: no record with key {key}")
        return _read_framed(self._handle(), self.index[key], f"{self.rec_path} (key {key})")

    def read_view(self, key: int) -> memoryview | bytes:
        """The record at `key` without copying it: a view into the memory-mapped file (bytes for
        records split around an embedded magic word, which need joining). What the training
        loader reads; the view is valid while the reader is open."""
        offset = self.index.get(key)
        if offset is None:
            raise DataError(f"{self.rec_path}: no record with key {key}")
        mm = self._mapped()
        if mm is None:
            return self.read(key)
        magic, lrec = _FRAME.unpack_from(mm, offset)
        length = lrec & _LEN_MASK
        if magic != MAGIC or lrec >> 29 != 0 or offset + 8 + length > self.size:
            return self.read(key)  # split, corrupt or truncated: the careful reader joins or explains
        return memoryview(mm)[offset + 8 : offset + 8 + length]

    def _mapped(self) -> mmap.mmap | None:
        if self._mm is None or self._mm_pid != os.getpid():
            if self.size == 0:
                return None
            self._mm = mmap.mmap(self._handle().fileno(), 0, access=mmap.ACCESS_READ)
            self._mm_pid = os.getpid()
        return self._mm

    def close(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # a view handed out is still alive; the map goes with it
                pass
            self._mm = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def scan_offsets(rec_path: str | Path) -> dict[int, int]:
    """Offsets of all records by a sequential scan (for `.rec` files without `.idx`); keys 0..n-1."""
    p = Path(rec_path)
    out: dict[int, int] = {}
    size = p.stat().st_size
    with open(p, "rb") as fh:
        pos = 0
        while pos < size:
            start = pos
            while True:
                fh.seek(pos)
                head = fh.read(8)
                if len(head) < 8:
                    raise DataError(f"{p}: truncated record at offset {pos}")
                magic, lrec = struct.unpack("<II", head)
                if magic != MAGIC:
                    raise DataError(f"{p}: bad magic 0x{magic:08x} at offset {pos}")
                length = lrec & _LEN_MASK
                pos += 8 + length + ((-length) % 4)
                if pos > size:
                    raise DataError(f"{p}: truncated record at offset {start}")
                if lrec >> 29 in (0, 3):
                    break
            out[len(out)] = start
    return out


def write_face_rec(
    rec_path: str | Path, samples: Iterable[tuple[int, bytes]], idx_path: str | Path | None = None
) -> dict[str, int]:
    """Write (label, image bytes) samples in insightface's layout; labels must be 0..C-1 ascending.

    Returns {"num_images", "num_classes"}.
    """
    starts: list[int] = []
    key = 0
    with RecordIOWriter(rec_path, idx_path) as w:
        w.write(0, pack(IRHeader(2, np.zeros(2, np.float32)), b""))  # placeholder, rewritten below
        last = -1
        for label, payload in samples:
            if label != last:
                if label != last + 1:
                    raise DataError(f"{rec_path}: labels must be consecutive and ascending from 0; "
                                    f"got {label} after {last}")
                starts.append(key + 1)
                last = label
            key += 1
            w.write(key, pack(IRHeader(0, float(label), key, 0), payload))
        num_images = key
        bounds = starts + [num_images + 1]
        for c in range(len(starts)):
            key += 1
            w.write(key, pack(IRHeader(2, np.array([bounds[c], bounds[c + 1]], np.float32), key, 0), b""))
    # Record 0 is rewritten in place: same framed size (2 floats), so offsets stay valid.
    head0 = frame(pack(IRHeader(2, np.array([num_images + 1, key + 1], np.float32)), b""))
    with open(rec_path, "r+b") as fh:
        fh.write(head0)
        fh.flush()
        os.fsync(fh.fileno())
    return {"num_images": num_images, "num_classes": len(starts)}


@dataclass(frozen=True)
class FaceRecInfo:
    """What record 0 says: image keys and per-identity ranges (empty for plain im2rec files)."""

    image_keys: np.ndarray
    identity_ranges: Sequence[tuple[int, int]]


def read_face_layout(reader: RecordIOReader) -> FaceRecInfo:
    """Image keys of a face `.rec`: insightface's record-0 layout, or every key for plain files."""
    header, _ = unpack(reader.read(reader.keys[0]), f"{reader.rec_path} (key {reader.keys[0]})")
    if header.flag > 0 and reader.keys[0] == 0:
        n_end, id_end = int(header.label[0]), int(header.label[1])
        ranges = []
        for k in range(n_end, id_end):
            if k in reader.index:
                h, _ = unpack(reader.read(k), f"{reader.rec_path} (key {k})")
                ranges.append((int(h.label[0]), int(h.label[1])))
        return FaceRecInfo(np.arange(1, n_end, dtype=np.int64), ranges)
    return FaceRecInfo(np.asarray(reader.keys, dtype=np.int64), [])


def label_and_payload(record: bytes | memoryview, where: str = "record") -> tuple[int, bytes | memoryview]:
    """The identity label and image bytes of an image record: `record_label(h), payload` of
    `unpack`, without building a header object for the common scalar-label record."""
    if len(record) >= _HEADER.size:
        flag, label, _, _ = _HEADER.unpack_from(record)
        if flag == 0:
            return int(label), record[_HEADER.size :]
    header, payload = unpack(record, where)
    return record_label(header), payload


def record_label(header: IRHeader) -> int:
    """The identity label of an image record (the first value of an array label)."""
    lab = header.label
    return int(lab if header.flag == 0 else np.asarray(lab).ravel()[0])
