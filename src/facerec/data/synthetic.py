"""Procedural face-like identities: a real recognition problem that needs no download.

Every identity is a fixed draw of facial parameters (face shape, feature geometry and sizes,
skin/hair/eye/lip colours, skin texture, moles, glasses, hair style); every image of it is
rendered under fresh nuisance factors (pose: rotation, scale, shift and yaw around the
ArcFace 5-point template; expression: mouth opening, smile, blink, brow raise; lighting
direction, intensity and colour; background; partial occlusion; blur; sensor noise).
The nuisance factors are strong enough that raw-pixel cosine similarity fails at
verification, while a CNN trained on other identities learns the identity factors.

Rendering is vectorised numpy on the 112x112 grid (a few hundred images per second per core)
and fully deterministic: image `j` of identity `i` depends only on `(seed, i, j)`.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

# ArcFace 112x112 five-point template (left eye, right eye, nose, left mouth, right mouth).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
IMAGE_SIZE = 112
_CENTER = np.array([56.0, 66.0], dtype=np.float32)  # face centre in template pixels

# Stream tags keep identity, nuisance and pair draws statistically independent.
_ID_STREAM, _IMG_STREAM, _PAIR_STREAM = 1, 2, 3


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]))


@dataclass(frozen=True)
class Identity:
    """The stable parameters of one synthetic person (lengths in template pixels)."""

    skin: np.ndarray  # RGB 0..1
    face_w: float
    face_h: float
    face_p: float  # superellipse exponent: 2 = ellipse, larger = squarer jaw
    face_dy: float
    eye_dx: float  # half the distance between the eyes
    eye_y: float
    eye_w: float
    eye_h: float
    iris: np.ndarray
    iris_r: float
    brow_dy: float
    brow_w: float
    brow_t: float
    brow_tilt: float
    brow_color: np.ndarray
    nose_len: float
    nose_w: float
    nose_shade: float
    mouth_y: float
    mouth_w: float
    lip_t: float
    lip_color: np.ndarray
    hair_color: np.ndarray
    hairline: float
    hair_wave_a: float
    hair_wave_f: float
    hair_wave_p: float
    hair_side: float
    hair_volume: float
    tex_k: np.ndarray  # [T, 2] spatial frequencies of the skin texture
    tex_phase: np.ndarray
    tex_amp: np.ndarray
    moles: np.ndarray  # [M, 3]: u, v, radius
    glasses: bool
    glasses_color: np.ndarray
    cheek: float  # blush strength


def sample_identity(seed: int, index: int) -> Identity:
    """Draw identity `index` of the population defined by `seed`."""
    r = _rng(seed, _ID_STREAM, index)
    u = r.uniform
    tone = u(0.0, 1.0)
    skin = np.array([0.95 - 0.55 * tone, 0.78 - 0.5 * tone, 0.66 - 0.45 * tone]) + r.normal(0, 0.04, 3)
    hair_dark = u(0.0, 1.0) ** 0.7
    hair = np.array([0.75, 0.55, 0.3]) * (1 - hair_dark) + r.normal(0, 0.06, 3) * (1 - hair_dark)
    if r.random() < 0.1:  # grey hair
        hair = np.full(3, u(0.5, 0.85))
    n_moles = int(r.integers(0, 6))
    moles = np.stack(
        [r.uniform(-26, 26, n_moles), r.uniform(-20, 30, n_moles), r.uniform(0.9, 2.0, n_moles)], axis=1
    ) if n_moles else np.zeros((0, 3))
    n_tex = 3
    angle = r.uniform(0, np.pi, n_tex)
    freq = r.uniform(0.15, 0.5, n_tex)
    return Identity(
        skin=np.clip(skin, 0.15, 1.0),
        face_w=u(29, 39),
        face_h=u(40, 50),
        face_p=u(2.0, 3.2),
        face_dy=u(-3, 3),
        eye_dx=u(14.5, 20.5),
        eye_y=u(-18, -11),
        eye_w=u(5.0, 8.5),
        eye_h=u(2.2, 4.0),
        iris=np.clip(r.choice([np.array([0.35, 0.2, 0.1]), np.array([0.2, 0.35, 0.6]), np.array([0.3, 0.45, 0.25]), np.array([0.15, 0.1, 0.05])]) + r.normal(0, 0.05, 3), 0, 1),
        iris_r=u(1.8, 3.0),
        brow_dy=u(6, 11),
        brow_w=u(7, 12),
        brow_t=u(1.2, 3.2),
        brow_tilt=u(-0.25, 0.25),
        brow_color=np.clip(hair * u(0.6, 1.0), 0, 1),
        nose_len=u(12, 22),
        nose_w=u(3.5, 7.5),
        nose_shade=u(0.1, 0.35),
        mouth_y=u(22, 32),
        mouth_w=u(9, 17),
        lip_t=u(1.5, 4.0),
        lip_color=np.clip(skin * np.array([1.0, 0.6, 0.6]) + r.normal(0, 0.05, 3), 0, 1),
        hair_color=np.clip(hair, 0.02, 1),
        hairline=u(-40, -28),
        hair_wave_a=u(0, 6),
        hair_wave_f=u(0.05, 0.25),
        hair_wave_p=u(0, 2 * np.pi),
        hair_side=u(-8, 8),
        hair_volume=u(2, 12),
        tex_k=np.stack([np.cos(angle) * freq, np.sin(angle) * freq], axis=1),
        tex_phase=r.uniform(0, 2 * np.pi, n_tex),
        tex_amp=r.uniform(0.02, 0.12, n_tex),
        moles=moles,
        glasses=bool(r.random() < 0.2),
        glasses_color=np.clip(r.uniform(0, 0.5, 3), 0, 1),
        cheek=u(0, 0.15),
    )


def _soft(d: np.ndarray, soft: float = 0.8) -> np.ndarray:
    """Coverage from a signed distance (negative inside), with an anti-aliased edge."""
    return np.clip(0.5 - d / soft, 0.0, 1.0)


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, a: float, b: float, p: float = 2.0) -> np.ndarray:
    ru = np.abs(u - cu) / a
    rv = np.abs(v - cv) / b
    return _soft((ru**p + rv**p) ** (1.0 / p) - 1.0, 0.9 / min(a, b))


def _blend(img: np.ndarray, mask: np.ndarray, color: np.ndarray | float) -> None:
    img += mask[..., None] * (np.asarray(color, dtype=np.float32) - img)


class _Canvas:
    """The image, its face coordinates (u, v) and the pose, for painting local features.

    A feature centred at face point (cu, cv) with radius `rad` only touches the pixels of its
    bounding box, so features are evaluated on that window alone (5-10x faster than the full
    grid).
    """

    def __init__(self, img: np.ndarray, u: np.ndarray, v: np.ndarray, pose: tuple[float, ...]) -> None:
        self.img, self.u, self.v = img, u, v
        self.size = img.shape[0]
        self.pose = pose  # (cos, sin, scale, cx, cy, face_dy) with pixel = c + scale * R^T (u, v)

    def window(self, cu: float, cv: float, rad: float) -> tuple[slice, slice]:
        c, s, scale, cx, cy, fdy = self.pose
        vv = cv + fdy
        px = cx + scale * (c * cu - s * vv)
        py = cy + scale * (s * cu + c * vv)
        k = self.size / 112.0
        r = (rad * scale + 2.0) * k
        x0, x1 = int(max(0, (px * k) - r)), int(min(self.size, (px * k) + r + 1))
        y0, y1 = int(max(0, (py * k) - r)), int(min(self.size, (py * k) + r + 1))
        return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))

    def ellipse(self, cu: float, cv: float, a: float, b: float, color, alpha: float = 1.0, dv: float = 0.0):
        """Paint an ellipse of half-axes (a, b) at face point (cu, cv); returns (window, mask)."""
        win = self.window(cu, cv, max(a, b))
        u, v = self.u[win], self.v[win]
        ru = (u - cu) / a
        rv = (v - cv - dv) / b
        mask = _soft(np.sqrt(ru * ru + rv * rv) - 1.0, 0.9 / min(a, b))
        if alpha != 1.0:
            mask = mask * alpha
        _blend(self.img[win], mask, color)
        return win, mask


class _Grid:
    """Pixel centres of the output image (cached per process)."""

    _cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def get(cls, size: int) -> tuple[np.ndarray, np.ndarray]:
        if size not in cls._cache:
            ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
            cls._cache[size] = (xs * (112.0 / size), ys * (112.0 / size))
        return cls._cache[size]


def render(identity: Identity, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """Render one image of `identity` under nuisance factors drawn from `rng`: HxWx3 uint8 RGB."""
    r, id_ = rng, identity
    X, Y = _Grid.get(size)
    # Pose: similarity jitter around the template centre, plus a yaw that shifts features.
    rot = r.normal(0, 0.12)
    scale = float(np.exp(r.normal(0, 0.07)))
    tx, ty = r.normal(0, 3.0, 2)
    yaw = float(np.clip(r.normal(0, 0.22), -0.5, 0.5))
    c, s = math.cos(rot), math.sin(rot)
    cx, cy = float(_CENTER[0] + tx), float(_CENTER[1] + ty)
    dx, dy = X - cx, Y - cy
    u = (c * dx + s * dy) / scale
    v = (-s * dx + c * dy) / scale - id_.face_dy  # face coordinates

    # Background: two random colours along a random gradient.
    bg = r.uniform(0.05, 0.95, 3).astype(np.float32)
    bg2 = r.uniform(0.05, 0.95, 3).astype(np.float32)
    ang = r.uniform(0, 2 * np.pi)
    g = np.clip((X * math.cos(ang) + Y * math.sin(ang)) / 112.0 * 0.5 + 0.5, 0, 1)[..., None]
    img = (bg + (bg2 - bg) * g).astype(np.float32)
    cv = _Canvas(img, u, v, (c, s, scale, cx, cy, id_.face_dy))

    shift = yaw * 10.0  # features move towards the turned side
    face_u = u - shift * 0.4
    # Hair behind the head, then the face with its texture.
    hair_back = _ellipse(face_u, v, 0, -6 - id_.hair_volume * 0.3, id_.face_w + id_.hair_volume, id_.face_h + id_.hair_volume * 0.8)
    _blend(img, hair_back * (v < 8 + id_.hair_volume * 2), id_.hair_color)
    face = _ellipse(face_u, v, 0, 0, id_.face_w * (1 - 0.25 * abs(yaw)), id_.face_h, id_.face_p)
    tex = np.ones_like(u)
    for k, ph, a in zip(id_.tex_k, id_.tex_phase, id_.tex_amp):
        tex += np.float32(a) * np.sin(np.float32(k[0]) * u + np.float32(k[1]) * v + np.float32(ph))
    img += face[..., None] * (id_.skin.astype(np.float32) * tex[..., None] - img)
    for side in (-1, 1):  # cheeks
        cv.ellipse(side * (id_.eye_dx + 2) + shift, id_.eye_y + 16, 6, 4, (0.85, 0.3, 0.3), alpha=id_.cheek)
    # Expression.
    blink = 0.15 if r.random() < 0.08 else 1.0
    brow_raise = r.normal(0, 1.2)
    smile = r.normal(0, 0.06)
    mouth_open = max(0.0, r.normal(0, 1.3))
    # Eyes, irises, pupils, brows, glasses.
    for side in (-1, 1):
        eu, ev = side * id_.eye_dx + shift, id_.eye_y
        win, sclera = cv.ellipse(eu, ev, id_.eye_w, id_.eye_h * blink, (0.93, 0.93, 0.9))
        gaze = r.normal(0, 0.8)
        uu, vv = u[win] - eu - gaze, v[win] - ev
        rad = np.sqrt(uu * uu + vv * vv)
        _blend(img[win], _soft(rad - id_.iris_r, 0.9 / id_.iris_r) * sclera, id_.iris)
        _blend(img[win], _soft(rad - id_.iris_r * 0.45, 2.0 / id_.iris_r) * sclera, 0.03)
        bwin = cv.window(eu, ev - id_.brow_dy, id_.brow_w + 3)
        bu = u[bwin] - eu
        bv = v[bwin] - (ev - id_.brow_dy - brow_raise) - side * id_.brow_tilt * bu - 0.02 * bu * bu
        brow = _soft(np.sqrt((bu / id_.brow_w) ** 2 + (bv / (id_.brow_t * 0.5)) ** 2) - 1.0, 0.9 / (id_.brow_t * 0.5))
        _blend(img[bwin], brow, id_.brow_color)
        if id_.glasses:
            gwin = cv.window(eu, ev, max(id_.eye_w, id_.eye_h) + 6)
            gu, gv = (u[gwin] - eu) / (id_.eye_w + 4), (v[gwin] - ev) / (id_.eye_h + 5)
            ring = np.abs(np.sqrt(gu * gu + gv * gv) - 1.0)
            _blend(img[gwin], _soft(ring * 6 - 0.5, 0.8), id_.glasses_color)
    # Nose: a shaded ridge and two nostrils.
    nshift = shift * 1.6
    cv.ellipse(id_.nose_w * 0.3 + nshift, id_.eye_y + id_.nose_len * 0.55, id_.nose_w * 0.35, id_.nose_len * 0.5, 0.0, alpha=id_.nose_shade)
    for side in (-1, 1):
        cv.ellipse(side * id_.nose_w * 0.45 + nshift, id_.eye_y + id_.nose_len, id_.nose_w * 0.28, 1.3, 0.05, alpha=0.7)
    # Mouth: lips curved by the smile; an opening shows a dark interior.
    mshift = shift * 1.1
    mwin = cv.window(mshift, id_.mouth_y, id_.mouth_w + 2)
    mu = u[mwin] - mshift
    mv = v[mwin] - id_.mouth_y + smile * mu * mu * 0.1
    lb = id_.lip_t + mouth_open * 0.5
    _blend(img[mwin], _soft(np.sqrt((mu / id_.mouth_w) ** 2 + (mv / lb) ** 2) - 1.0, 0.9 / lb), id_.lip_color)
    if mouth_open > 0.3:
        ib = mouth_open * 0.6
        inner = _soft(np.sqrt((mu / (id_.mouth_w * 0.75)) ** 2 + (mv / ib) ** 2) - 1.0, 0.9 / ib)
        _blend(img[mwin], inner, (0.25, 0.05, 0.05))
    for mu_, mv_, mr in id_.moles:
        cv.ellipse(mu_ + shift * 0.5, mv_, mr, mr, 0.12)
    # Hair in front: everything above a wavy hairline, inside the hair outline.
    top = slice(0, size)
    line = id_.hairline + id_.hair_wave_a * np.sin(id_.hair_wave_f * u + id_.hair_wave_p) + id_.hair_side * np.tanh(u / 10.0) * 0.5
    fringe = _soft(v - line, 1.0) * _ellipse(face_u, v, 0, -6, id_.face_w + id_.hair_volume, id_.face_h + id_.hair_volume)
    _blend(img[top], fringe, id_.hair_color)

    # Lighting: directional shading, ambient level and colour cast.
    light = r.normal(0, 1, 2)
    light *= r.uniform(0.0, 0.9) / max(float(np.linalg.norm(light)), 1e-6)
    shade = np.clip(1.0 + (float(light[0]) * u + float(light[1]) * v) / 60.0, 0.3, 1.8)
    ambient = r.uniform(0.7, 1.2)
    cast = (np.exp(r.normal(0, 0.08, 3)) * ambient).astype(np.float32)
    img *= shade[..., None] * cast

    # Occlusion: a random bar or blob in a random colour.
    if r.random() < 0.2:
        oc = r.uniform(0, 1, 3)
        if r.random() < 0.5:
            occ = _soft(np.abs(Y - r.uniform(30, 100)) - r.uniform(4, 12), 1.0)
        else:
            occ = _ellipse(X, Y, r.uniform(10, 100), r.uniform(40, 110), r.uniform(8, 22), r.uniform(8, 22))
        _blend(img, occ, oc)
    if r.random() < 0.25:  # blur
        img = _box_blur(img, int(r.integers(1, 3)))
    img += r.standard_normal(img.shape, dtype=np.float32) * np.float32(r.uniform(0.005, 0.04))
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _box_blur(img: np.ndarray, radius: int) -> np.ndarray:
    k = 2 * radius + 1
    pad = np.pad(img, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    c = np.cumsum(np.cumsum(pad, axis=0), axis=1)
    c = np.pad(c, ((1, 0), (1, 0), (0, 0)))
    h, w = img.shape[:2]
    return (c[k : k + h, k : k + w] - c[:h, k : k + w] - c[k : k + h, :w] + c[:h, :w]) / (k * k)


def render_image(seed: int, identity: int, image: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """Image `image` of identity `identity` in population `seed` (deterministic)."""
    return render(sample_identity(seed, identity), _rng(seed, _IMG_STREAM, identity, image), size)


def encode_jpeg(img: np.ndarray, quality: int = 92) -> bytes:
    """JPEG bytes of an HxWx3 uint8 RGB image."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def iter_identity_images(seed: int, identity: int, count: int, size: int = IMAGE_SIZE) -> Iterator[np.ndarray]:
    """The first `count` images of one identity (sharing one identity draw)."""
    ident = sample_identity(seed, identity)
    for j in range(count):
        yield render(ident, _rng(seed, _IMG_STREAM, identity, j), size)


def verification_pairs(seed: int, identities: range, num_pairs: int) -> list[tuple[tuple[int, int], tuple[int, int], bool]]:
    """Balanced pairs ((id_a, img_a), (id_b, img_b), issame) over `identities`, deterministic.

    Pairs alternate same/different; every image index is used once, so no two pairs share an
    image.
    """
    r = _rng(seed, _PAIR_STREAM, identities.start, len(identities))
    ids = np.asarray(identities)
    next_image = {int(i): 0 for i in ids}
    pairs = []
    for k in range(num_pairs):
        same = k % 2 == 0
        if same:
            a = b = int(r.choice(ids))
        else:
            a, b = (int(x) for x in r.choice(ids, size=2, replace=False))
        ia = next_image[a]
        next_image[a] += 1
        ib = next_image[b]
        next_image[b] += 1
        pairs.append(((a, ia), (b, ib), same))
    return pairs
