"""Procedurally generated CT-like abdominal phantoms, for the benchmark and the tests.

What MR brain data cannot show: Hounsfield-unit intensities (air -1000, fat -100, soft tissue 40, bone 400-1000),
large anisotropic volumes (512 x 512 x 300 at 0.8 x 0.8 x 2.5 mm), and organs whose contrast to their surroundings
ranges from obvious (enhanced kidneys, fat) to subtle (liver 20-35 HU above soft tissue, gallbladder 20-35 below).

A phantom is a body cross-section (skin and subcutaneous fat, abdominal-wall muscle, a lumbar vertebra with discs,
spinal canal, paraspinal muscles, aorta and vena cava) extruded along z, organs placed in it, irregular visceral
fat between them, smooth parenchymal texture and correlated Gaussian noise. Organ shapes are ellipsoids deformed
by a smooth random field (a level set ``|q|^2 - 1 + a * n(x) < 0``, the classic "blob" phantom construction);
organs never overlap each other or the fixed anatomy. Geometry is laid out relative to the field of view, so a
96 x 96 test phantom and a 512 x 512 CT-sized one look alike. Random smooth fields are drawn on a coarse grid
and upsampled linearly, which keeps a 512 x 512 x 300 phantom to ~10 s and ~1.2 GB peak memory on one
core; a 64 x 96 x 96 one takes ~0.05 s.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ContrastiveSegLib.errors import InputError

AIR, FAT, SOFT_TISSUE, MUSCLE = -1000.0, -100.0, 40.0, 55.0


@dataclass(frozen=True)
class OrganTemplate:
    """Where an organ sits and how it looks. Positions and radii are in body units: x and y as fractions of
    the body's semi-axes (x towards the patient's left, y towards the back: LPS), z as a fraction of the
    volume's half-length (at most 200 mm). ``core`` is an inner region (kidney sinus) with its own HU range."""

    name: str
    hu: tuple[float, float]
    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    angle_deg: float = 0.0
    core: tuple[float, float] | None = None
    core_scale: float = 0.45


ORGANS = (
    OrganTemplate("liver", (60.0, 75.0), (-0.45, -0.05, 0.25), (0.40, 0.55, 0.45), angle_deg=-10.0),
    OrganTemplate("kidney_right", (130.0, 170.0), (-0.36, 0.42, -0.15), (0.13, 0.22, 0.28), angle_deg=20.0,
                  core=(0.0, 25.0)),
    OrganTemplate("spleen", (85.0, 105.0), (0.52, 0.20, 0.30), (0.17, 0.32, 0.30), angle_deg=-30.0),
    OrganTemplate("kidney_left", (130.0, 170.0), (0.36, 0.42, -0.20), (0.13, 0.22, 0.28), angle_deg=-20.0,
                  core=(0.0, 25.0)),
    OrganTemplate("pancreas", (70.0, 90.0), (0.10, 0.02, -0.05), (0.35, 0.09, 0.13), angle_deg=-15.0),
    OrganTemplate("gallbladder", (5.0, 20.0), (-0.30, -0.30, -0.35), (0.09, 0.14, 0.16), angle_deg=30.0),
)


@dataclass
class Phantom:
    """A CT-like volume with its organ labels.

    image: (z, y, x) float32 Hounsfield units. labels: (z, y, x) uint8, 0 = background, 1..n = organs.
    spacing, origin: ITK (x, y, z) order, mm. direction: 3x3 row-major. label_names: {label value: organ name}.
    organ_hu: {label value: the organ's mean HU before texture and noise (kidney: cortex)}.
    """

    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    label_names: dict[int, str] = field(default_factory=dict)
    organ_hu: dict[int, float] = field(default_factory=dict)


def _upsample_linear(coarse: np.ndarray, out_shape: tuple[int, int, int], out: np.ndarray | None = None) -> np.ndarray:
    """Separable linear upsampling of a (z, y, x) array; equals ``ndimage.zoom(coarse, ..., order=1,
    mode="nearest", grid_mode=True)``, which takes ~3x longer at 512 x 512 x 300: here x and y are upsampled on
    the few coarse slices, then each output slice is one blend of two of them."""
    def taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        position = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        low = np.floor(position).astype(np.intp)
        return low, np.minimum(low + 1, n_in - 1), (position - low).astype(np.float32)

    array = coarse
    for axis in (2, 1):
        low, high, weight = taps(array.shape[axis], out_shape[axis])
        weight = weight.reshape([-1 if a == axis else 1 for a in range(3)])
        array = np.take(array, low, axis) * (1 - weight) + np.take(array, high, axis) * weight
    low, high, weight = taps(array.shape[0], out_shape[0])
    if out is None:
        out = np.empty(out_shape, np.float32)
    for k in range(out_shape[0]):
        np.multiply(array[low[k]], 1 - weight[k], out=out[k])
        out[k] += weight[k] * array[high[k]]
    return out


def _smooth_field(rng: np.random.Generator, coarse_shape: tuple[int, int, int], sigma: float,
                  out_shape: tuple[int, int, int], out: np.ndarray | None = None) -> np.ndarray:
    """Unit-variance Gaussian random field: white noise on a coarse grid, Gaussian-smoothed there, linearly
    upsampled to ``out_shape`` (cheap: the expensive smoothing never runs at full resolution)."""
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape, dtype=np.float32), sigma, mode="wrap")
    coarse -= coarse.mean()
    coarse /= max(float(coarse.std()), 1e-6)
    return _upsample_linear(coarse, out_shape, out)


def _blur_z(image: np.ndarray, sigma: float) -> None:
    """In-place 3-tap Gaussian along z (edges repeated), slice by slice: ``gaussian_filter1d`` along the
    slowest axis walks memory with a stride of a whole slice and takes ~4x longer on a 512 x 512 x 300 volume."""
    side = float(np.exp(-0.5 / sigma**2))
    centre_weight, side_weight = np.float32(1 / (1 + 2 * side)), np.float32(side / (1 + 2 * side))
    previous = image[0].copy()
    for k in range(image.shape[0]):
        current = image[k].copy()
        following = image[k + 1] if k + 1 < image.shape[0] else current
        image[k] = centre_weight * current + side_weight * (previous + following)
        previous = current


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """Boolean (y, x) mask of an axis-aligned ellipse; x, y are 1D physical coordinates (mm)."""
    return ((x[None, :] - cx) / rx) ** 2 + ((y[:, None] - cy) / ry) ** 2 <= 1.0


def _cross_section(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, ax: float, ay: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed anatomy of one axial slice. Returns (HU (y, x) float32, interior mask where organs may go,
    vertebral-body mask (for the discs), body mask)."""
    hu = np.full((y.size, x.size), AIR, np.float32)
    body = _ellipse(x, y, 0, 0, ax, ay)
    fat_mm = rng.uniform(0.07, 0.15) * ax  # subcutaneous fat, 1-3 cm on an adult abdomen
    wall_mm = 0.04 * ax
    hu[body] = FAT + rng.uniform(-10, 10)
    hu[_ellipse(x, y, 0, 0, ax - fat_mm, ay - fat_mm)] = MUSCLE
    inside = _ellipse(x, y, 0, 0, ax - fat_mm - wall_mm, ay - fat_mm - wall_mm)
    hu[inside] = SOFT_TISSUE
    # Lumbar vertebra: cancellous body with a cortical rim, posterior arch around the canal, muscles beside it.
    rv = 0.11 * ax
    yv = 0.36 * ay
    rc = 0.45 * rv
    yc = yv + 0.9 * rv + 1.3 * rc
    reserved = np.zeros_like(body)
    for side in (-1, 1):
        muscle = _ellipse(x, y, side * 1.5 * rv, yc + 0.2 * rv, 1.1 * rv, 1.0 * rv)
        hu[muscle] = MUSCLE + 5
        reserved |= muscle
    arch = _ellipse(x, y, 0, yc, 1.9 * rc, 1.7 * rc) | _ellipse(x, y, 0, yc + 2.2 * rc, 0.35 * rc, 1.2 * rc)
    hu[arch] = rng.uniform(650, 900)
    hu[_ellipse(x, y, 0, yc, rc, rc)] = rng.uniform(5, 20)  # CSF in the canal
    vertebra = _ellipse(x, y, 0, yv, rv, 0.9 * rv)
    hu[vertebra] = rng.uniform(800, 1000)
    hu[_ellipse(x, y, 0, yv, 0.85 * rv, 0.75 * rv)] = rng.uniform(250, 400)
    # Contrast-filled aorta (patient's left, in front of the spine) and vena cava (right): bright look-alikes.
    aorta = _ellipse(x, y, 0.6 * rv, yv - 1.5 * rv, 0.55 * rv, 0.55 * rv)
    cava = _ellipse(x, y, -1.3 * rv, yv - 1.3 * rv, 0.65 * rv, 0.5 * rv)
    hu[aorta] = rng.uniform(150, 220)
    hu[cava] = rng.uniform(100, 140)
    reserved |= arch | vertebra | aorta | cava
    reserved = ndimage.binary_dilation(reserved, iterations=1)
    return hu, inside & ~reserved, vertebra, body


def _place_organ(rng: np.random.Generator, template: OrganTemplate, coords: tuple[np.ndarray, ...],
                 scale: tuple[float, float, float], spacing_zyx: np.ndarray, allowed: np.ndarray,
                 labels: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
    """Draw one organ shape that fits the free space. Returns (bounding box, organ mask, core mask) in the box."""
    z, y, x = coords
    best: tuple[tuple[slice, ...], np.ndarray, np.ndarray] | None = None
    for _ in range(12):
        jitter = rng.uniform(-1, 1, 3) * (0.08, 0.08, 0.12)
        centre = [(c + j) * s for c, j, s in zip(template.centre, jitter, scale)]  # x, y, z mm
        radii = [r * s * rng.uniform(0.85, 1.15) for r, s in zip(template.radii, scale)]
        angle = np.deg2rad(template.angle_deg + rng.uniform(-20, 20))
        amplitude = rng.uniform(0.3, 0.5)
        reach = np.sqrt(1 + 2.5 * amplitude)  # how far a deformed surface can get, in radii
        half = (max(radii[0], radii[1]) * reach, max(radii[0], radii[1]) * reach, radii[2] * reach)
        box = tuple(slice(int(np.searchsorted(c, m - h)), int(np.searchsorted(c, m + h, side="right")))
                    for c, m, h in zip((z, y, x), centre[::-1], half[::-1]))
        if any(s.stop - s.start < 2 for s in box):
            continue
        u = (x[box[2]] - centre[0])[None, :]
        v = (y[box[1]] - centre[1])[:, None]
        in_plane = ((u * np.cos(angle) + v * np.sin(angle)) / radii[0]) ** 2 \
            + ((-u * np.sin(angle) + v * np.cos(angle)) / radii[1]) ** 2
        q = in_plane[None] + (((z[box[0]] - centre[2]) / radii[2]) ** 2)[:, None, None]
        shape = q.shape
        noise = _smooth_field(rng, (8, 8, 8), 1.2, shape)
        organ = (q - 1 + amplitude * noise < 0) & allowed[box[1:]][None] & (labels[box] == 0)
        pieces, count = ndimage.label(organ)
        if count > 1:  # keep one piece: clipping by neighbours can split a shape
            organ = pieces == 1 + int(np.argmax(ndimage.sum_labels(organ, pieces, range(1, count + 1))))
        core = organ & (q < template.core_scale**2) if template.core else np.zeros(shape, bool)
        volume_ratio = organ.sum() * np.prod(spacing_zyx) / (4 / 3 * np.pi * np.prod(radii))
        if best is None or organ.sum() > best[1].sum():
            best = (box, organ, core)
        if volume_ratio >= 0.6:  # most of the ellipsoid's volume survived clipping: accept
            break
    if best is None or not best[1].any():
        raise InputError(f"the phantom is too small to hold a {template.name}: use at least 16 voxels per axis")
    return best


def _finish(rng: np.random.Generator, image: np.ndarray, labels: np.ndarray, allowed: np.ndarray,
            body: np.ndarray) -> None:
    """In place: visceral fat in the free interior, parenchymal texture, correlated noise and the reconstruction
    kernel's blur (what turns a piecewise-constant label image into a CT-looking one)."""
    shape = image.shape
    nz, ny, nx = shape
    # Visceral fat: the top ~22 % of a smooth field, in the free interior (not over organs or fixed anatomy).
    blobs = _smooth_field(rng, (max(4, nz // 6), 24, 24), 1.5, shape)
    free = (blobs > 0.77) & allowed[None] & (labels == 0)
    image[free] = FAT + rng.uniform(-15, 15)
    del free
    # Parenchymal texture (~6 HU, a few voxels across) inside the body, then correlated noise.
    texture = _smooth_field(rng, (max(4, nz // 3), max(4, ny // 6), max(4, nx // 6)), 1.0, shape, out=blobs)
    texture *= np.float32(6.0) * body[None]
    image += texture
    noise = texture  # reuse the buffer: ~300 MB at 512 x 512 x 300
    noise[:] = rng.standard_normal(shape, dtype=np.float32)
    noise *= np.float32(rng.uniform(32, 48))
    image += noise
    del noise, texture, blobs
    # The reconstruction kernel's blur: correlates the noise (final std ~10-18 HU) and gives partial-volume edges.
    for axis in (2, 1):
        ndimage.gaussian_filter1d(image, 0.8, axis=axis, output=image, truncate=3.0)
    _blur_z(image, 0.4)
    np.clip(image, -1024.0, 3071.0, out=image)


def make_ct_phantom(shape: tuple[int, int, int] = (64, 96, 96), spacing: tuple[float, float, float] = (0.8, 0.8, 2.5),
                    seed: int = 0, num_organs: int = 3) -> Phantom:
    """A CT-like abdominal volume with ``num_organs`` labelled organs (see the module docstring).

    Args:
        shape: (z, y, x) voxels, at least 16 each.
        spacing: (x, y, z) mm (ITK order); anisotropic z is the CT norm.
        seed: everything random follows from it: the same seed gives the same phantom.
        num_organs: 1..6, taken in the order of ``ORGANS`` (liver, right kidney, spleen, left kidney,
            pancreas, gallbladder).
    Returns:
        A :class:`Phantom`; origin puts the volume's centre at (0, 0, 0), direction is the identity (LPS).
    """
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or min(shape) < 16:
        raise InputError(f"phantom shape must be 3 sizes (z, y, x) of at least 16 voxels, got {shape}")
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"phantom spacing must be 3 positive sizes (x, y, z) in mm, got {spacing}")
    if not 1 <= int(num_organs) <= len(ORGANS):
        raise InputError(f"num_organs must be between 1 and {len(ORGANS)}, got {num_organs}")
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    spacing_zyx = np.asarray(spacing[::-1])
    z, y, x = ((np.arange(n, dtype=np.float32) - (n - 1) / 2) * s for n, s in zip(shape, spacing_zyx))
    ax = rng.uniform(0.84, 0.92) * nx * spacing[0] / 2  # body semi-axes (mm): an abdomen is wider than deep
    ay = min(ax * rng.uniform(0.66, 0.76), 0.92 * ny * spacing[1] / 2)
    slice_hu, allowed, vertebra, body = _cross_section(rng, x, y, ax, ay)

    image = np.empty(shape, np.float32)
    image[:] = slice_hu
    period = rng.uniform(28, 34)  # intervertebral discs: ~7 mm of soft tissue every ~30 mm of spine
    disc_slices = np.flatnonzero(((z - rng.uniform(0, period)) % period) < 0.25 * period)
    disc_hu = rng.uniform(70, 100)
    for k in disc_slices:
        image[k][vertebra] = disc_hu

    labels = np.zeros(shape, np.uint8)
    names, organ_hu = {}, {}
    # z in units of the volume's half-length, so organs span many slices of a short test volume, but at most
    # 200 mm, so that they keep adult proportions (liver ~20 cm, kidney ~11 cm tall) in a long CT.
    scale = (ax, ay, min(nz * spacing[2] / 2, 200.0))
    for value, template in enumerate(ORGANS[: int(num_organs)], start=1):
        box, organ, core = _place_organ(rng, template, (z, y, x), scale, spacing_zyx, allowed, labels)
        labels[box][organ] = value
        hu = rng.uniform(*template.hu)
        image[box][organ] = hu
        if template.core:
            image[box][core] = rng.uniform(*template.core)
        names[value], organ_hu[value] = template.name, float(hu)

    _finish(rng, image, labels, allowed, body)
    origin = tuple(float(-(n - 1) / 2 * s) for n, s in zip(shape[::-1], spacing))
    return Phantom(image=image, labels=labels, spacing=spacing, origin=origin, label_names=names,
                   organ_hu=organ_hu)


def phantom_to_sitk(phantom: Phantom) -> tuple[sitk.Image, sitk.Image]:
    """(float32 image, uint8 labels) SimpleITK images carrying the phantom's spacing, origin and direction."""
    import SimpleITK as sitk  # only here: the phantoms themselves are numpy (a benchmark machine may lack ITK)

    images = []
    for array in (phantom.image.astype(np.float32, copy=False), phantom.labels.astype(np.uint8, copy=False)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(phantom.spacing)
        image.SetOrigin(phantom.origin)
        image.SetDirection(phantom.direction)
        images.append(image)
    return images[0], images[1]


SHAPE_STRUCTURES = {1: "organ", 2: "look-alike neighbour", 3: "vessel", 4: "curved organ"}


def _tube(coords: tuple[np.ndarray, ...], centre_line: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Boolean (z, y, x) mask of the voxels within ``radius[i]`` mm of the polyline point ``centre_line[i]``
    ((N, 3) x, y, z mm), for a densely sampled line (points closer than the radius)."""
    from scipy.spatial import cKDTree

    z, y, x = coords
    low = centre_line.min(0) - radius.max()
    high = centre_line.max(0) + radius.max()
    box = tuple(slice(int(np.searchsorted(c, lo)), int(np.searchsorted(c, hi, side="right")))
                for c, lo, hi in zip((z, y, x), low[::-1], high[::-1]))
    mask = np.zeros((z.size, y.size, x.size), bool)
    grid = np.stack(np.meshgrid(x[box[2]], y[box[1]], z[box[0]], indexing="ij"), -1)  # (x, y, z, 3)
    _, nearest = cKDTree(centre_line).query(grid.reshape(-1, 3))
    distance = np.linalg.norm(grid.reshape(-1, 3) - centre_line[nearest], axis=1)
    inside = (distance <= radius[nearest]).reshape(grid.shape[:3])
    mask[box] = inside.transpose(2, 1, 0)
    return mask


def make_shape_phantom(shape: tuple[int, int, int] = (64, 96, 96),
                       spacing: tuple[float, float, float] = (0.8, 0.8, 2.5), seed: int = 0) -> Phantom:
    """A CT-like volume whose structures are told apart by shape more than by intensity.

    Four structures (:data:`SHAPE_STRUCTURES`), each 12-20 HU from what surrounds it, under the same texture and
    noise as :func:`make_ct_phantom` (final noise std 10-18 HU):

    1. an organ (a deformed ellipsoid, 55-65 HU) and 2. a look-alike neighbour 12-18 HU brighter, cut from the
       same blob by a tilted, curved surface: the two touch along an edge that only a 15 HU step shows;
    3. a vessel: a tube of 4.5-6 mm radius, 14-20 HU above soft tissue, along a curve that sweeps 20-40 mm
       across the slices as it runs through them;
    4. a curved organ: a thick arc (a pancreas- or colon-like sausage bent through 100-150 degrees in the axial
       plane while it climbs along z), 12-18 HU above soft tissue.

    Same conventions as :func:`make_ct_phantom` (shape (z, y, x), spacing (x, y, z) mm, LPS, centred).
    """
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or min(shape) < 16:
        raise InputError(f"phantom shape must be 3 sizes (z, y, x) of at least 16 voxels, got {shape}")
    rng = np.random.default_rng(seed)
    spacing_zyx = np.asarray(spacing[::-1])
    coords = tuple((np.arange(n, dtype=np.float32) - (n - 1) / 2) * s for n, s in zip(shape, spacing_zyx))
    z, y, x = coords
    nx = shape[2]
    ax = rng.uniform(0.84, 0.92) * nx * spacing[0] / 2
    ay = min(ax * rng.uniform(0.66, 0.76), 0.92 * shape[1] * spacing[1] / 2)
    slice_hu, allowed, _, body = _cross_section(rng, x, y, ax, ay)
    image = np.empty(shape, np.float32)
    image[:] = slice_hu
    labels = np.zeros(shape, np.uint8)
    half_z = min(shape[0] * spacing[2] / 2, 200.0)

    # 1 + 2: one blob cut in two by a tilted, curved surface.
    template = OrganTemplate("organ", (55.0, 65.0), (-0.40, -0.10, 0.10), (0.32, 0.42, 0.55), angle_deg=-10.0)
    box, blob, _ = _place_organ(rng, template, coords, (ax, ay, half_z), spacing_zyx, allowed, labels)
    zb, yb, xb = np.meshgrid(z[box[0]], y[box[1]], x[box[2]], indexing="ij")
    centre = [float(c[blob].mean()) for c in (zb, yb, xb)]
    normal = rng.normal(size=3) * (0.6, 1.0, 1.0)  # tilted against the slices, never parallel to them
    normal /= np.linalg.norm(normal)
    bend = _smooth_field(rng, (4, 4, 4), 0.8, blob.shape) * 0.15 * max(ax, ay) * 0.3
    side = (zb - centre[0]) * normal[0] + (yb - centre[1]) * normal[1] + (xb - centre[2]) * normal[2] + bend
    base = rng.uniform(55, 65)
    for value, part, hu in ((1, blob & (side < 0), base), (2, blob & (side >= 0), base + rng.uniform(12, 18))):
        labels[box][part] = value
        image[box][part] = hu

    free = allowed[None] & (labels == 0)
    # 3: a vessel along a curve that sweeps across the slices.
    t = np.linspace(0.0, 1.0, 400)
    z_line = (-0.75 + 1.5 * t) * half_z
    sweep = rng.uniform(20, 40)
    x_line = rng.uniform(0.05, 0.25) * ax + sweep * np.sin(np.pi * t + rng.uniform(0, np.pi))
    y_line = rng.uniform(0.0, 0.15) * ay + 0.5 * sweep * np.cos(1.5 * np.pi * t)
    vessel = _tube(coords, np.stack([x_line, y_line, z_line], 1), np.full(t.size, rng.uniform(4.5, 6.0))) & free
    labels[vessel] = 3
    image[vessel] = SOFT_TISSUE + rng.uniform(14, 20)

    # 4: a thick arc that bends in the axial plane while it climbs.
    free &= labels == 0
    sweep_angle = np.deg2rad(rng.uniform(100, 150))
    start = rng.uniform(0, 2 * np.pi)
    arc_radius = rng.uniform(0.28, 0.36) * ay
    angle = start + sweep_angle * t
    cx, cy = rng.uniform(0.25, 0.40) * ax, rng.uniform(-0.30, -0.15) * ay
    line = np.stack([cx + arc_radius * np.cos(angle), cy + arc_radius * np.sin(angle),
                     (-0.55 + 0.9 * t) * half_z], 1)
    thickness = rng.uniform(9, 12) * (0.6 + 0.4 * np.sin(np.pi * t))  # tapered ends
    curved = _tube(coords, line, thickness) & free
    labels[curved] = 4
    image[curved] = SOFT_TISSUE + rng.uniform(12, 18)

    _finish(rng, image, labels, allowed, body)
    origin = tuple(float(-(n - 1) / 2 * s) for n, s in zip(shape[::-1], spacing))
    return Phantom(image=image, labels=labels, spacing=spacing, origin=origin,
                   label_names=dict(SHAPE_STRUCTURES))
