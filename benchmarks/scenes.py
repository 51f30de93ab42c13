"""
The fusion benchmark's scenes: three families, each a development set and a held-out set.

HELD-OUT RULE. Every scene is generated from (family, seed). Seeds ``DEV_SEEDS`` (0-39) are
the development set: the simulated network is calibrated on them (``sim_network.calibrate``)
and aligner changes are tuned on them. Seeds ``HELDOUT_SEEDS`` (1000-1029, 30 scenes per
family) are the held-out set: the goals and the report use them, and nothing is tuned on them.
The two ranges are disjoint, and so are the random streams they seed: a scene's world, camera
path, stereo noise, network errors, and for Middlebury its crop, scale, flip and photometric
changes all come from its own seed.

Families:

* ``middlebury``: the real Middlebury 2014 Motorcycle pair that scikit-image ships (the only
  real stereo pair with ground truth available offline), one view per seed: a crop (55-100 %
  of each side) at a scale of 0.6-1.0, flipped upside down for half the seeds (rows stay
  epipolar lines), with its own exposure, gamma, blur and sensor noise on each image; the real
  SGBM of ``core/stereo.py`` (as the demo computes it) on that view. All views are of one
  scene: the family measures the stereo and the network's errors, not scene diversity.
* ``road``: synthetic ZED-like driving (HD720, fx 530 px, 12 cm baseline): a road with
  parked and moving cars and poles at 5-200 m, sky; ego-motion 0.5 m per frame. The road is
  not a plane: a grade of 0-3 % under the car, then one or two vertical curves (20-60 m long,
  the first 15-60 m ahead) to grades within 6 % (changes of up to 6 %: crests where the road
  falls away, sags where it rises; ``RoadProfile``); the car pitches with the road under it,
  the camera is mounted with its own pitch and roll (0.5 deg, 1 sigma) and the suspension
  adds 0.1 deg per frame. Stereo with
  disparity noise (depth noise grows as z^2: 7 % at 10 m, 14 % at 20 m), edge fattening,
  occlusions, dropouts, 1 % gross outliers, +inf beyond 20 m and on the sky. Every third scene
  ends with a frame with 0.3 % of its stereo and one with none.
* ``indoor``: synthetic rooms (walls, floor, ceiling, tables on thin legs, cabinets, lamps
  on thin poles, bright windows and lamps), a camera moving slowly, the same stereo model at
  640 x 360 (ZED VGA-like); nothing beyond the room.

Each frame is a dict: ``rel`` (the simulated DA-V2 output, computed at 518 px wide and
upsampled to the image size as depth_node publishes it: ``core.preprocess.restore_output``),
``stereo``,
``confidence``, ``bgr``, ``gt`` (+inf sky, NaN unknown), ``sky``, ``road`` (ground pixels,
road only), ``camera``, ``baseline_m``, ``disparity_noise_px``, ``family``, ``seed``,
``index``, ``full_stereo`` (False for the frames with little or no stereo), ``ids`` (the
object ids the network's per-object biases use: the raycast's surfaces for road and indoor,
``_depth_layers``' connected log-depth layers for Middlebury; a bound's knowledge, never the
aligner's).
"""
from __future__ import annotations

import cv2
from depth_ros.core.camera import PinholeCamera
from depth_ros.core.preprocess import restore_output
import numpy as np
from sim_network import FAMILY_ERRORS, SimNetwork

DEV_SEEDS = tuple(range(0, 40))
HELDOUT_SEEDS = tuple(range(1000, 1030))
assert not set(DEV_SEEDS) & set(HELDOUT_SEEDS)
FAMILIES = ('middlebury', 'road', 'indoor')
FAMILY_CODE = {'middlebury': 1, 'road': 2, 'indoor': 3}
DEFAULT_WIDTH = {'road': 1280, 'indoor': 640}
DEFAULT_FRAMES = {'middlebury': 3, 'road': 6, 'indoor': 4}

ZED_BASELINE_M = 0.12
CAMERA_HEIGHT_M = 1.3
STEREO_MAX_M = 20.0          # the ZED's default maximum range: beyond it depth is +inf


def scene_rng(family, seed, salt):
    """Return the random stream ``salt`` of one scene (disjoint per family and seed)."""
    return np.random.RandomState((FAMILY_CODE[family] * 1000003 + seed * 101 + salt) % 2 ** 31)


def zed_camera(width):
    """ZED2-like intrinsics (fx 530 px at 1280 px wide), principal point at the centre."""
    height = int(round(width * 9 / 16.0))
    f = 530.0 * width / 1280.0
    return PinholeCamera(f, f, (width - 1) / 2.0, (height - 1) / 2.0, width, height)


# ---------------------------------------------------------------------------- ray casting

def _rays(camera, rot=None):
    """Ray directions [3, H, W] (float64) with camera-z component 1, in the world frame."""
    u = (np.arange(camera.width, dtype=np.float64) - camera.cx) / camera.fx
    v = (np.arange(camera.height, dtype=np.float64) - camera.cy) / camera.fy
    d = np.stack([np.broadcast_to(u[None, :], (camera.height, camera.width)),
                  np.broadcast_to(v[:, None], (camera.height, camera.width)),
                  np.ones((camera.height, camera.width))])
    if rot is not None:
        d = np.einsum('ij,jhw->ihw', rot, d)
    return d


def _window(camera, rot, origin, box):
    """Image rows/cols a box can cover (slices), None when behind, full when it straddles."""
    x0, x1, y0, y1, z0, z1 = box
    corners = np.array([[x, y, z] for x in (x0, x1) for y in (y0, y1) for z in (z0, z1)])
    pc = corners - origin
    if rot is not None:
        pc = pc @ rot            # rot.T @ p for each row
    if (pc[:, 2] <= 0.05).all():
        return None
    if (pc[:, 2] <= 0.05).any():
        return slice(None), slice(None)
    u = camera.fx * pc[:, 0] / pc[:, 2] + camera.cx
    v = camera.fy * pc[:, 1] / pc[:, 2] + camera.cy
    c0, c1 = int(np.floor(u.min())) - 1, int(np.ceil(u.max())) + 2
    r0, r1 = int(np.floor(v.min())) - 1, int(np.ceil(v.max())) + 2
    c0, r0 = max(c0, 0), max(r0, 0)
    c1, r1 = min(c1, camera.width), min(r1, camera.height)
    if c0 >= c1 or r0 >= r1:
        return None
    return slice(r0, r1), slice(c0, c1)


def _slab_entry(d, origin, box):
    """Entry parameter t of rays ``origin + t d`` into an axis-aligned box; inf where missed."""
    near = np.zeros(d.shape[1:])
    far = np.full(d.shape[1:], np.inf)
    for axis in range(3):
        lo, hi = box[2 * axis] - origin[axis], box[2 * axis + 1] - origin[axis]
        da = d[axis]
        with np.errstate(divide='ignore', invalid='ignore'):
            t0, t1 = lo / da, hi / da
        tn, tf = np.minimum(t0, t1), np.maximum(t0, t1)
        par = da == 0
        if par.any():
            inside = lo <= 0 <= hi
            tn = np.where(par, -np.inf if inside else np.inf, tn)
            tf = np.where(par, np.inf if inside else -np.inf, tf)
        near = np.maximum(near, tn)
        far = np.minimum(far, tf)
    return np.where((near <= far) & (near > 1e-6), near, np.inf)


def raycast(camera, boxes, origin=(0.0, 0.0, 0.0), rot=None, ground_y=None, room=None,
            ground=None):
    """
    Depth (camera z, +inf where nothing is hit) and ids of the nearest surface per pixel.

    ``boxes``: (x0, x1, y0, y1, z0, z1) in the world frame (y down); id = index. ``ground_y``:
    a ground plane (id -1); ``ground``: a road's height along z instead (``RoadProfile``
    segments, id -1). ``room``: a box the camera is inside (the walls: id 1000 + face). Sky
    (nothing hit) is id -2.
    """
    origin = np.asarray(origin, np.float64)
    d = _rays(camera, rot)
    depth = np.full((camera.height, camera.width), np.inf)
    ids = np.full((camera.height, camera.width), -2, np.int32)
    if ground_y is not None:
        with np.errstate(divide='ignore', invalid='ignore'):
            t = np.where(d[1] > 0, (ground_y - origin[1]) / d[1], np.inf)
        depth = np.where(t > 0, t, np.inf)
        ids[np.isfinite(depth)] = -1
    if ground is not None:
        depth = _profile_hit(d, origin, ground)
        ids[np.isfinite(depth)] = -1
    if room is not None:
        exits = []
        for axis in range(3):
            lo, hi = room[2 * axis] - origin[axis], room[2 * axis + 1] - origin[axis]
            with np.errstate(divide='ignore', invalid='ignore'):
                exits.append(np.where(d[axis] > 0, hi / d[axis],
                                      np.where(d[axis] < 0, lo / d[axis], np.inf)))
                exits.append(np.where(d[axis] > 0, 2 * axis + 1, 2 * axis))
        t = np.stack(exits[0::2])
        face = np.stack(exits[1::2])
        k = np.argmin(t, axis=0)
        tmin = np.take_along_axis(t, k[None], 0)[0]
        fid = np.take_along_axis(face, k[None], 0)[0]
        closer = tmin < depth
        depth[closer] = tmin[closer]
        ids[closer] = 1000 + fid[closer]
    for n, box in enumerate(boxes):
        win = _window(camera, rot, origin, box)
        if win is None:
            continue
        t = _slab_entry(d[(slice(None),) + win], origin, box)
        sub, subids = depth[win], ids[win]
        closer = t < sub
        sub[closer] = t[closer]
        subids[closer] = n
    return depth, ids


def _profile_hit(d, origin, segments):
    """
    Return the ray parameter of the first hit of rays ``origin + t d`` with a road.

    The road's height is piecewise quadratic, ``y(z) = y0 + g (z - z0) + c (z - z0)^2`` on
    ``[z0, z1)`` (``segments``: tuples ``(z0, z1, y0, g, c)``, y down; the road spans all x);
    +inf where no segment is hit.
    """
    best = np.full(d.shape[1:], np.inf)
    oy, oz = origin[1], origin[2]
    dy, dz = d[1], d[2]
    for z0, z1, y0, g, c in segments:
        w = oz - z0
        a = c * dz * dz
        b = 2.0 * c * w * dz + g * dz - dy
        cc = c * w * w + g * w + y0 - oy
        with np.errstate(divide='ignore', invalid='ignore'):
            if c == 0.0:
                roots = (-cc / b,)
            else:
                disc = np.sqrt(np.maximum(b * b - 4.0 * a * cc, 0.0))
                disc = np.where(b * b - 4.0 * a * cc >= 0, disc, np.nan)
                # The numerically stable pair of roots.
                q = -0.5 * (b + np.where(b >= 0, disc, -disc))
                roots = (q / a, cc / q)
            for t in roots:
                z = oz + t * dz
                ok = (t > 1e-6) & (z >= z0) & (z < z1) & (t < best)
                best = np.where(ok, t, best)
    return best


class RoadProfile(object):
    """
    A road's height along the direction of travel: grades and vertical curves, seeded.

    World y (down) of the road at distance z: a grade ``g0`` (uphill positive) from the start,
    then one or two vertical curves (parabolic, 20-60 m long, as highway design lays them) to
    new grades; grades within 6 %, the first change 15-60 m ahead, a change of grade of up to
    6 % each (a crest where the road falls away, a sag where it rises). ``segments`` are
    ``(z0, z1, y0, g, c)``: ``y = y0 + g (z - z0) + c (z - z0)^2`` on ``[z0, z1)``, ``g``
    being dy/dz (the negated grade).
    """

    def __init__(self, rng, y_start=CAMERA_HEIGHT_M, length_m=2000.0):
        grades = [rng.uniform(-0.03, 0.03)]
        z = rng.uniform(15.0, 60.0)
        breaks = []
        for _ in range(1 + int(rng.rand() < 0.5)):
            length = rng.uniform(20.0, 60.0)
            grades.append(float(np.clip(grades[-1] + rng.uniform(-0.06, 0.06), -0.06, 0.06)))
            breaks.append((z, z + length))
            z += length + rng.uniform(30.0, 80.0)
        segs, y, z = [], y_start, -50.0
        for (za, zb), g_in, g_out in zip(breaks, grades[:-1], grades[1:]):
            segs.append((z, za, y, -g_in, 0.0))
            y += -g_in * (za - z)
            c = (-g_out + g_in) / (2.0 * (zb - za))
            segs.append((za, zb, y, -g_in, c))
            y += -g_in * (zb - za) + c * (zb - za) ** 2
            z = zb
        segs.append((z, length_m, y, -grades[-1], 0.0))
        self.segments = segs
        self.grades = grades
        self.breaks = breaks

    def y(self, z):
        """Return the road's world height (y, down) at ``z`` (scalar or array)."""
        z = np.asarray(z, np.float64)
        out = np.zeros(z.shape)
        for z0, z1, y0, g, c in self.segments:
            m = (z >= z0) & (z < z1)
            out = np.where(m, y0 + g * (z - z0) + c * (z - z0) ** 2, out)
        return out if out.ndim else float(out)

    def grade(self, z):
        """Return the road's uphill slope (-dy/dz) at ``z``."""
        for z0, z1, y0, g, c in self.segments:
            if z0 <= z < z1:
                return -(g + 2.0 * c * (z - z0))
        return -self.segments[-1][3]

    def shifted(self, dz):
        """Return the segments with z measured from ``dz`` (the camera's position)."""
        return [(z0 - dz, z1 - dz, y0, g, c) for z0, z1, y0, g, c in self.segments]


def _rotation_pitch_roll(pitch, roll):
    """World-from-camera rotation: roll about the optical axis, then pitch (up positive)."""
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rx @ rz


# ---------------------------------------------------------------------------- images

def _texture(shape, rng, scale):
    n = rng.randn(*shape).astype(np.float32)
    return cv2.GaussianBlur(n, (0, 0), scale) * (scale * 2.0)


def shade(ids, colours, rng, texture=None, extra=None):
    """Shade a BGR image: a flat colour per id (dict id -> BGR), times ``texture``, noise."""
    hgt, wid = ids.shape
    lut_ids = np.unique(ids)
    img = np.zeros((hgt, wid, 3), np.float32)
    for i in lut_ids:
        img[ids == i] = colours.get(int(i), (128, 128, 128))
    if texture is not None:
        img *= texture[..., None]
    if extra is not None:
        mask, colour = extra
        img[mask] = colour
    img += rng.randn(hgt, wid, 3).astype(np.float32) * 3.0
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------- stereo

def simulate_stereo(gt, ids, camera, rng, baseline_m, disparity_noise_px, keep=1.0,
                    max_range=STEREO_MAX_M):
    """
    ZED-like depth and confidence from ground truth.

    Disparity noise (correlated over ~2 px, scaled by the confidence), occlusions at the left
    of foreground objects, 2 px edge fattening, low-texture dropouts, 1 % gross outliers,
    +inf beyond ``max_range`` and on the sky, NaN where matching fails. ``keep`` < 1 leaves
    only that random fraction of the valid pixels (a frame with too little stereo).
    """
    hgt, wid = gt.shape
    fb = camera.fx * baseline_m
    with np.errstate(divide='ignore'):
        disp = np.where(np.isfinite(gt), fb / gt, 0.0)
    # Edge fattening: block matching carries the nearer (larger) disparity 2 px across edges.
    fat = cv2.dilate(disp.astype(np.float32), np.ones((1, 5), np.uint8)).astype(np.float64)
    jump = fat > disp * 1.05 + 0.5
    d = np.where(jump & (rng.rand(hgt, wid) < 0.7), fat, disp)
    # Confidence: higher (less reliable) on low texture, near edges, and at random.
    tex = np.abs(_texture((hgt, wid), rng, 6.0))
    edge = cv2.dilate((np.abs(cv2.Laplacian(disp.astype(np.float32), cv2.CV_32F)) > 0.5)
                      .astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    conf = 5.0 + 25.0 * np.clip(1.0 - tex, 0, 1) + 30.0 * edge + 12.0 * rng.rand(hgt, wid)
    conf = np.clip(conf, 1.0, 100.0)
    # Noise in disparity (so depth noise grows as z^2), more where confidence is worse.
    noise = _texture((hgt, wid), rng, 1.0)
    noise /= max(float(noise.std()), 1e-9)
    sigma = disparity_noise_px * np.sqrt(0.5 + 1.5 * conf / 100.0)
    d = d + noise * sigma
    # Occlusion: the right camera cannot see background just left of a nearer object, i.e.
    # some x' > x has disp[x'] - (x' - x) > disp[x] + 0.5 (a running maximum from the right).
    cols = np.arange(wid, dtype=np.float64)[None, :]
    g = disp - cols
    suffix = np.maximum.accumulate(g[:, ::-1], axis=1)[:, ::-1]
    right = np.full_like(g, -np.inf)
    right[:, :-1] = suffix[:, 1:]
    occluded = right + cols > disp + 0.5
    valid = (d > 0) & np.isfinite(gt) & ~occluded
    # Low-texture dropouts (blobs) and sparse failures.
    blobs = _texture((hgt, wid), rng, 12.0)
    valid &= ~(blobs > np.percentile(blobs, 92)) & (rng.rand(hgt, wid) > 0.03)
    with np.errstate(divide='ignore'):
        depth = np.where(valid, fb / np.maximum(d, 1e-6), np.nan)
    bad = valid & (rng.rand(hgt, wid) < 0.01)
    depth[bad] = rng.uniform(1.0, max_range, int(bad.sum()))
    with np.errstate(invalid='ignore'):
        depth[valid & (depth > max_range)] = np.inf
    depth[ids == -2] = np.inf
    if keep < 1.0:
        depth[rng.rand(hgt, wid) > keep] = np.nan
    conf[~np.isfinite(depth)] = 100.0
    return depth.astype(np.float32), conf.astype(np.float32)


def _network(net, inv, ids, bgr, k, frng):
    """Return the network's output at the image size (as depth_node publishes it), affine."""
    rel, affine = net(inv, ids, bgr, k, frng)
    return restore_output(rel, inv.shape[0], inv.shape[1]), affine


def _inverse(gt):
    with np.errstate(divide='ignore'):
        return np.where(np.isfinite(gt), 1.0 / gt, 0.0)


# ---------------------------------------------------------------------------- road

class DrivingWorld(object):
    """A straight road with parked and moving cars and poles, in world metres (z forward)."""

    def __init__(self, rng, length_m=200.0):
        self.boxes = []        # (x0, x1, y0, y1, z0, z1, vz, colour)
        h = CAMERA_HEIGHT_M
        z = rng.uniform(4.0, 9.0)
        while z < length_m:
            lane = rng.choice([-3.5, 3.5, 0.0, -6.5, 6.5], p=[0.3, 0.3, 0.15, 0.125, 0.125])
            width, height, depth = rng.uniform(1.7, 2.0), rng.uniform(1.4, 1.8), \
                rng.uniform(3.8, 4.8)
            x = lane + rng.uniform(-0.4, 0.4)
            moving = lane in (0.0, -3.5) and rng.rand() < 0.5
            vz = rng.uniform(-0.3, 0.3) if moving else 0.0     # m per frame relative to world
            self.boxes.append((x - width / 2, x + width / 2, h - height, h, z, z + depth, vz,
                               tuple(int(c) for c in rng.randint(30, 250, 3))))
            z += rng.uniform(6.0, 16.0)
        z = rng.uniform(4.0, 10.0)
        while z < length_m:                                  # poles along both kerbs
            for side in (-1, 1):
                if rng.rand() < 0.6:
                    x = side * rng.uniform(8.0, 9.5)
                    self.boxes.append((x - 0.12, x + 0.12, h - rng.uniform(4.5, 7.0), h, z,
                                       z + 0.24, 0.0, (40, 40, 45)))
            z += rng.uniform(10.0, 20.0)
        # Buildings behind the kerbs for some worlds (a far range that is not sky).
        if rng.rand() < 0.5:
            z = rng.uniform(15.0, 40.0)
            while z < length_m:
                side = rng.choice([-1, 1])
                x = side * rng.uniform(12.0, 16.0)
                self.boxes.append((min(x, x + side * 8.0), max(x, x + side * 8.0),
                                   h - rng.uniform(6.0, 15.0), h, z, z + rng.uniform(8, 25),
                                   0.0, tuple(int(c) for c in rng.randint(60, 200, 3))))
                z += rng.uniform(10.0, 30.0)

    def at(self, ego_z, frame, profile=None):
        """
        Return the boxes of this frame, z from the camera (``ego_z``).

        On the road's ``profile`` (RoadProfile) when given: each box's base at the road's lower
        end under it.
        """
        out = []
        for b in self.boxes:
            z0 = b[4] + b[6] * frame - ego_z
            z1 = b[5] + b[6] * frame - ego_z
            if z1 <= 0.5 or z0 > 400.0:
                out.append((0, 0, 0, 0, -2, -1))       # behind: never hit
            else:
                lift = 0.0 if profile is None else \
                    max(profile.y(z0 + ego_z), profile.y(z1 + ego_z)) - CAMERA_HEIGHT_M
                out.append((b[0], b[1], b[2] + lift, b[3] + lift, max(z0, 0.5), z1))
        return out


def _road_image(world, camera, depth, ids, ego_z, rng, rot=None):
    hgt, wid = depth.shape
    d = _rays(camera, rot)
    colours = {i: b[7] for i, b in enumerate(world.boxes)}
    colours[-2] = (235, 200, 150)
    colours[-1] = (100, 100, 100)
    img = shade(ids, colours, rng)
    ground = ids == -1
    xw = np.where(ground, d[0] * depth, 0.0)
    zw = np.where(ground, d[2] * depth + ego_z, 0.0)
    road = 100.0 + 10.0 * _texture((hgt, wid), rng, 1.0)
    lane = (np.abs(np.abs(xw) - 1.75) < 0.08) & ((zw % 6.0) < 3.0)
    road = np.where(lane, 205.0, road)
    road = np.where(np.abs(xw) > 7.5, 80.0 + 12.0 * _texture((hgt, wid), rng, 1.5), road)
    img[ground] = np.clip(np.stack([road] * 3, -1)[ground], 0, 255).astype(np.uint8)
    sky = ids == -2
    grad = np.clip(1.0 - np.maximum(-d[1], 0) * 2.0, 0, 1)[..., None]
    img[sky] = np.clip(np.array([235.0, 200.0, 150.0]) * (0.8 + 0.2 * grad), 0, 255)[sky]
    return img


def road_scene(seed, n_frames=6, width=1280, errors=None, speed_m=0.5):
    """One seeded driving sequence (see the module docstring)."""
    camera = zed_camera(width)
    noise_px = 0.45 * width / 1280.0
    world = DrivingWorld(scene_rng('road', seed, 1))
    net = SimNetwork(errors or FAMILY_ERRORS['road'], scene_rng('road', seed, 2).randint(2 ** 30))
    # The road's grades ahead and the camera's mounting: its own stream (the world, the
    # stereo and the network's errors are those of a flat road's scene of the same seed).
    grng = scene_rng('road', seed, 3)
    profile = RoadProfile(grng)
    pitch0 = np.radians(grng.normal(0.0, 0.5))
    roll0 = np.radians(grng.normal(0.0, 0.5))
    degraded = seed % 3 == 0 and n_frames >= 4
    frames = []
    for k in range(n_frames):
        frng = scene_rng('road', seed, 100 + k)
        ego = speed_m * k
        # The car pitches with the road under it; the suspension adds 0.1 deg per frame.
        pitch = np.arctan(profile.grade(ego)) + pitch0 + np.radians(grng.normal(0.0, 0.1))
        rot = _rotation_pitch_roll(pitch, roll0 + np.radians(grng.normal(0.0, 0.1)))
        origin = (0.0, profile.y(ego) - CAMERA_HEIGHT_M, 0.0)
        gt, ids = raycast(camera, world.at(ego, k, profile), origin=origin, rot=rot,
                          ground=profile.shifted(ego))
        bgr = _road_image(world, camera, gt, ids, ego, frng, rot)
        keep, empty = 1.0, False
        if degraded and k == n_frames - 2:
            keep = 0.003
        if degraded and k == n_frames - 1:
            empty = True
        stereo, conf = simulate_stereo(gt, ids, camera, frng, ZED_BASELINE_M, noise_px,
                                       keep=keep)
        if empty:
            stereo[...] = np.nan
            conf[...] = 100.0
        rel, affine = _network(net, _inverse(gt), ids, bgr, k, frng)
        frames.append(dict(rel=rel, stereo=stereo, confidence=conf, bgr=bgr, gt=gt,
                           sky=ids == -2, road=ids == -1, ids=ids, camera=camera,
                           baseline_m=ZED_BASELINE_M, disparity_noise_px=noise_px,
                           family='road', seed=seed, index=k, affine=affine,
                           full_stereo=keep == 1.0 and not empty))
    return frames


# ---------------------------------------------------------------------------- indoor

def _rotation(yaw, pitch):
    """World-from-camera rotation: yaw about y (down), then pitch about x."""
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    return ry @ rx


class Room(object):
    """A room (x across, y down, z forward; floor at y = 0) with furniture."""

    def __init__(self, rng):
        self.w = rng.uniform(3.5, 7.0)
        self.d = rng.uniform(4.5, 9.0)
        self.h = rng.uniform(2.4, 3.2)
        self.box = (-self.w / 2, self.w / 2, -self.h, 0.0, 0.0, self.d)
        self.boxes, self.colours = [], {}
        wall = tuple(int(c) for c in rng.randint(150, 225, 3))
        for f in range(6):
            self.colours[1000 + f] = wall
        self.colours[1003] = tuple(int(c) for c in rng.randint(60, 140, 3))     # floor
        self.colours[1002] = (212, 212, 212)                                     # ceiling
        for _ in range(rng.randint(3, 7)):
            kind = rng.choice(['table', 'cabinet', 'lamp', 'chair'], p=[0.35, 0.3, 0.15, 0.2])
            x = rng.uniform(-self.w / 2 + 0.5, self.w / 2 - 0.5)
            z = rng.uniform(1.8, self.d - 0.4)
            colour = tuple(int(c) for c in rng.randint(40, 230, 3))
            if kind == 'table':
                tw, td, th = rng.uniform(0.8, 1.6), rng.uniform(0.6, 1.0), rng.uniform(0.7, 0.8)
                self._add((x - tw / 2, x + tw / 2, -th, -th + 0.04, z, z + td), colour)
                for lx in (x - tw / 2 + 0.02, x + tw / 2 - 0.06):
                    for lz in (z + 0.02, z + td - 0.06):
                        self._add((lx, lx + 0.04, -th + 0.04, 0.0, lz, lz + 0.04), colour)
            elif kind == 'chair':
                s = 0.45
                self._add((x, x + s, -0.46, -0.42, z, z + s), colour)
                self._add((x, x + s, -0.95, -0.46, z + s - 0.04, z + s), colour)
                for lx in (x, x + s - 0.03):
                    for lz in (z, z + s - 0.03):
                        self._add((lx, lx + 0.03, -0.42, 0.0, lz, lz + 0.03), colour)
            elif kind == 'cabinet':
                cw, cd, ch = rng.uniform(0.5, 1.5), rng.uniform(0.4, 0.6), rng.uniform(0.8, 2.0)
                side = rng.choice([-1, 1])
                x = side * (self.w / 2 - cd / 2 - 0.02) if rng.rand() < 0.6 else x
                self._add((x - cw / 2, x + cw / 2, -ch, 0.0, z, z + cd), colour)
            else:
                ph = rng.uniform(1.4, 1.8)
                self._add((x - 0.015, x + 0.015, -ph, 0.0, z, z + 0.03), (50, 50, 50))
                self._add((x - 0.18, x + 0.18, -ph - 0.3, -ph, z - 0.15, z + 0.18),
                          (250, 250, 245))
        # Windows on the side and back walls: bright rectangles (the wall's depth).
        self.windows = []
        for _ in range(rng.randint(0, 3)):
            face = rng.choice([0, 1, 5])
            u0 = rng.uniform(0.2, 0.6)
            v0 = rng.uniform(0.2, 0.4)
            self.windows.append((face, u0, u0 + rng.uniform(0.15, 0.35), v0,
                                 v0 + rng.uniform(0.25, 0.4)))

    def _add(self, box, colour):
        self.colours[len(self.boxes)] = colour
        self.boxes.append(box)


def _indoor_image(room, camera, depth, ids, origin, rot, rng):
    colours = dict(room.colours)
    d = _rays(camera, rot)
    p = origin[:, None, None] + d * depth[None]
    hgt, wid = depth.shape
    tex = 1.0 + 0.08 * _texture((hgt, wid), rng, 2.0)
    img = shade(ids, colours, rng, texture=tex)
    for face, u0, u1, v0, v1 in room.windows:
        on = ids == 1000 + face
        if face in (0, 1):       # side walls: u along z, v along y
            u = p[2] / room.d
        else:                    # back wall: u along x
            u = p[0] / room.w + 0.5
        v = -p[1] / room.h
        win = on & (u > u0) & (u < u1) & (v > v0) & (v < v1)
        img[win] = np.clip(240 + rng.randn(int(win.sum()), 3) * 4, 0, 255).astype(np.uint8)
    return img


def indoor_scene(seed, n_frames=4, width=640, errors=None):
    """One seeded indoor sequence: a room, a camera moving 3 cm and 0.4 deg per frame."""
    camera = zed_camera(width)
    noise_px = 0.45 * width / 1280.0
    rng = scene_rng('indoor', seed, 1)
    room = Room(rng)
    net = SimNetwork(errors or FAMILY_ERRORS['indoor'],
                     scene_rng('indoor', seed, 2).randint(2 ** 30))
    x0 = rng.uniform(-room.w / 4, room.w / 4)
    z0 = rng.uniform(0.2, 0.8)
    y0 = -rng.uniform(0.9, 1.5)
    yaw0 = rng.uniform(-0.35, 0.35)
    pitch = rng.uniform(-0.25, 0.05)
    frames = []
    for k in range(n_frames):
        frng = scene_rng('indoor', seed, 100 + k)
        origin = np.array([x0, y0, z0 + 0.03 * k])
        rot = _rotation(yaw0 + 0.007 * k, pitch)
        gt, ids = raycast(camera, room.boxes, origin=origin, rot=rot, room=room.box)
        bgr = _indoor_image(room, camera, gt, ids, origin, rot, frng)
        stereo, conf = simulate_stereo(gt, ids, camera, frng, ZED_BASELINE_M, noise_px)
        rel, affine = _network(net, _inverse(gt), ids, bgr, k, frng)
        frames.append(dict(rel=rel, stereo=stereo, confidence=conf, bgr=bgr, gt=gt,
                           sky=ids == -2, road=None, ids=ids, camera=camera,
                           baseline_m=ZED_BASELINE_M, disparity_noise_px=noise_px,
                           family='indoor', seed=seed, index=k, affine=affine,
                           full_stereo=True))
    return frames


# ---------------------------------------------------------------------------- Middlebury

def _fill_holes(inv):
    """Fill NaN in a float map by repeated normalised convolution from the known pixels."""
    known = np.isfinite(inv)
    val = np.where(known, inv, 0.0).astype(np.float32)
    wgt = known.astype(np.float32)
    out = val.copy()
    filled = known.copy()
    for sigma in (2, 4, 8, 16, 32, 64):
        num = cv2.GaussianBlur(val, (0, 0), sigma)
        den = cv2.GaussianBlur(wgt, (0, 0), sigma)
        take = ~filled & (den > 1e-3)
        out[take] = num[take] / den[take]
        filled |= take
        if filled.all():
            break
    return out


def _depth_layers(gt_inv, rng):
    """Object ids for the network's biases: connected regions of log-depth layers."""
    logd = -np.log(np.maximum(gt_inv, 1e-6))
    step = np.log(rng.uniform(1.12, 1.25))
    layer = np.floor((logd - logd.min()) / step + rng.uniform(0, 1)).astype(np.int32)
    ids = np.zeros(layer.shape, np.int32)
    nxt = 2000                  # object ids, apart from the layout's (sim_network.LAYOUT_IDS)
    for lv in np.unique(layer):
        n, lab = cv2.connectedComponents((layer == lv).astype(np.uint8), connectivity=4)
        m = lab > 0
        ids[m] = lab[m] + nxt
        nxt += n
    return ids


def _photometric(img, rng):
    x = img.astype(np.float32) / 255.0
    x = np.power(np.clip(x * rng.uniform(0.75, 1.25), 0, 1), rng.uniform(0.8, 1.25))
    x = x * 255.0
    if rng.rand() < 0.3:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.4, 0.9))
    x += rng.randn(*x.shape).astype(np.float32) * rng.uniform(0.5, 3.0)
    return np.clip(x, 0, 255).astype(np.uint8)


def middlebury_view(seed):
    """One augmented view of the real pair with its real SGBM stereo (see the docstring)."""
    from depth_ros.core.stereo import sgbm_depth
    from depth_ros.sources.sample import load_sample, NUM_DISPARITIES

    s = load_sample()
    rng = scene_rng('middlebury', seed, 1)
    hgt, wid = s.gt_depth.shape
    scale = rng.uniform(0.6, 1.0)
    cw = int(wid * rng.uniform(0.55, 1.0))
    ch = int(hgt * rng.uniform(0.55, 1.0))
    c0 = rng.randint(0, wid - cw + 1)
    r0 = rng.randint(0, hgt - ch + 1)
    crop = (slice(r0, r0 + ch), slice(c0, c0 + cw))
    left, right, gt = s.left[crop], s.right[crop], s.gt_depth[crop]
    cam = s.camera
    fx, cx, cy = cam.fx, cam.cx - c0, cam.cy - r0
    nw, nh = max(int(round(cw * scale)), 160), max(int(round(ch * scale)), 120)
    sx, sy = nw / float(cw), nh / float(ch)
    left = cv2.resize(left, (nw, nh), interpolation=cv2.INTER_AREA)
    right = cv2.resize(right, (nw, nh), interpolation=cv2.INTER_AREA)
    gt = cv2.resize(gt, (nw, nh), interpolation=cv2.INTER_NEAREST)
    fx, cx, cy, doffs = fx * sx, (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5, s.doffs * sx
    if rng.rand() < 0.5:         # upside down: rows stay the epipolar lines
        left, right, gt = left[::-1].copy(), right[::-1].copy(), gt[::-1].copy()
        cy = nh - 1 - cy
    left = _photometric(left, rng)
    right = _photometric(right, rng)
    camera = PinholeCamera(fx, fx * sy / sx, cx, cy, nw, nh)
    num = max(16, int(np.ceil(NUM_DISPARITIES * sx / 16.0)) * 16)
    stereo, conf = sgbm_depth(left, right, camera, s.baseline_m, doffs=doffs,
                              num_disparities=num)
    return left, stereo, conf, gt.astype(np.float64), camera, s.baseline_m


def middlebury_scene(seed, n_frames=3, errors=None):
    """One view (static camera) and ``n_frames`` network outputs of it (flicker, drift)."""
    bgr, stereo, conf, gt, camera, baseline = middlebury_view(seed)
    inv = _fill_holes((1.0 / gt).astype(np.float32)).astype(np.float64)
    ids = _depth_layers(inv, scene_rng('middlebury', seed, 3))
    net = SimNetwork(errors or FAMILY_ERRORS['middlebury'],
                     scene_rng('middlebury', seed, 2).randint(2 ** 30))
    frames = []
    for k in range(n_frames):
        frng = scene_rng('middlebury', seed, 100 + k)
        rel, affine = _network(net, inv, ids, bgr, k, frng)
        frames.append(dict(rel=rel, stereo=stereo.copy(), confidence=conf.copy(), bgr=bgr,
                           gt=gt, sky=np.zeros(gt.shape, bool), road=None, ids=ids,
                           camera=camera,
                           baseline_m=baseline, disparity_noise_px=0.26,
                           family='middlebury', seed=seed, index=k, affine=affine,
                           full_stereo=True))
    return frames


def make_scene(family, seed, n_frames=None, width=None, errors=None):
    """Return the frames of one scene of ``family`` (see the module docstring)."""
    n = n_frames or DEFAULT_FRAMES[family]
    if family == 'road':
        return road_scene(seed, n, width or DEFAULT_WIDTH['road'], errors)
    if family == 'indoor':
        return indoor_scene(seed, n, width or DEFAULT_WIDTH['indoor'], errors)
    if family == 'middlebury':
        return middlebury_scene(seed, n, errors)
    raise ValueError('`family` must be one of {}, got {!r}'.format(FAMILIES, family))
