"""Scan a `.rec` or `.bin` and report every bad record instead of stopping at the first."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from facerec.errors import DataError


@dataclass
class VerifyReport:
    path: str
    checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_rec(path: str | Path, decode: bool = True) -> VerifyReport:
    """Read (and decode) every record of a face `.rec`; collect framing, header and image errors."""
    from facerec.data.decode import decode_image
    from facerec.data.recordio import RecordIOReader, read_face_layout, record_label, unpack

    report = VerifyReport(str(path))
    try:
        reader = RecordIOReader(path)
        keys = read_face_layout(reader).image_keys
    except DataError as exc:
        report.problems.append(str(exc))
        return report
    shapes: dict[tuple[int, ...], int] = {}
    for key in keys:
        report.checked += 1
        where = f"{path} (key {int(key)})"
        try:
            header, payload = unpack(reader.read(int(key)), where)
            record_label(header)
            if decode:
                shape = decode_image(payload, where=where).shape
                shapes[shape] = shapes.get(shape, 0) + 1
        except DataError as exc:
            report.problems.append(str(exc))
    if len(shapes) > 1:
        common = max(shapes, key=shapes.get)
        report.problems.append(f"{path}: images of several sizes {sorted(shapes)}; most are {common}")
    return report


def verify_bin(path: str | Path) -> VerifyReport:
    """Load a `.bin` (safely) or `.npz` pair set and decode every image; collect the failures."""
    from facerec.data.bins import read_pairs
    from facerec.data.decode import decode_image

    report = VerifyReport(str(path))
    try:
        images, _, _ = read_pairs(path)
    except DataError as exc:
        report.problems.append(str(exc))
        return report
    for i, data in enumerate(images):
        report.checked += 1
        try:
            decode_image(data, where=f"{path} (image {i}, pair {i // 2})")
        except DataError as exc:
            report.problems.append(str(exc))
    return report
