"""The torso shared by both phantoms: analytic geometry only, no intensities.

Coordinates are *thorax-local* millimetres ``(x, y, z)`` = (right, anterior, superior) relative
to the thorax centre, i.e. RAS shifted by a constant; every method takes coordinate arrays of any
(equal) shape and returns signed distances in mm (negative inside, see :mod:`.shapes`).

Parts:
  * static wall (never moves with breathing): body outline, subcutaneous fat, chest-wall muscle,
    ribs (+ costal cartilage), sternum, spine (vertebral bodies, discs, posterior arch, canal);
  * the thoraco-abdominal *cavity*, a fixed surface at the inner chest wall (the pleura):
    everything inside it (lungs, mediastinum, heart, airways, great vessels, abdomen below the
    diaphragm) moves, so the lungs slide along the wall;
  * cavity contents: diaphragm domes, mediastinum, heart, aorta, airways, oesophagus, liver,
    spleen, stomach.

Tubes (airways, aorta, oesophagus) are described by :meth:`Torso.tubes` so that renderers can
rasterise their distance fields once and interpolate them per frame.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .shapes import capsule, ellipse2d, ellipsoid, rotation_matrix, smooth_max, smoothstep

#: Height (mm, thorax-local) of the top of the cavity, i.e. of the lung apices.
Z_APEX = 112.0
#: Cavity cross-section starts to close into the apical dome above this height.
Z_SHOULDER = 0.0


@dataclass(frozen=True)
class TorsoShape:
    """Drawn size parameters of one torso (JSON-serialisable via :meth:`to_dict`)."""

    scale: float = 1.0           # in-plane size of body and cavity
    dome_right_z: float = -55.0  # height of the right diaphragm dome top (mm, thorax-local)
    dome_drop_left: float = 15.0  # the left dome is this much lower
    heart_scale: float = 1.0
    heart_angle_deg: float = 0.0  # extra rotation of the heart about SI

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "TorsoShape":
        return cls(
            scale=float(rng.uniform(0.93, 1.05)),
            dome_right_z=float(rng.uniform(-62.0, -48.0)),
            dome_drop_left=float(rng.uniform(10.0, 20.0)),
            heart_scale=float(rng.uniform(0.92, 1.08)),
            heart_angle_deg=float(rng.uniform(-8.0, 8.0)),
        )

    def to_dict(self) -> dict:
        return {k: round(float(v), 4) for k, v in asdict(self).items()}


def _box(x, y, x0, x1, y0, y1):
    """Signed distance (approximate, Chebyshev) to an axis-aligned rectangle in the xy plane."""
    return np.maximum(np.maximum(x0 - x, x - x1), np.maximum(y0 - y, y - y1))


class Torso:
    """Geometry of one torso; see the module docstring for the coordinate convention."""

    def __init__(self, shape: TorsoShape):
        s = shape.scale
        self.shape = shape
        # body outline and layers
        self.body_a, self.body_b = 160.0 * s, 118.0 * s
        self.fat_mm = 13.0
        # cavity (inner chest wall)
        self.cav_y0, self.cav_a, self.cav_b = 6.0 * s, 128.0 * s, 82.0 * s
        # spine (fixed size, placed against the posterior cavity wall)
        self.y_vb = self.cav_y0 - self.cav_b + 18.0
        self.y_canal = self.y_vb - 28.0
        self.spinous_tip = max(self.y_canal - 26.0, -self.body_b + self.fat_mm + 6.0)
        # diaphragm
        self.z_dome_r = shape.dome_right_z
        self.z_dome_l = shape.dome_right_z - shape.dome_drop_left
        self.dome_r_xy = (62.0 * s, 12.0)
        self.dome_l_xy = (-66.0 * s, 8.0)
        # airways and hila
        self.z_carina = self.z_dome_r + 85.0
        self.carina = np.array([0.0, 8.0, self.z_carina])
        self.trachea_top = np.array([0.0, 14.0, 260.0])
        self.hilum_bronchus_r = np.array([40.0 * s, 8.0, self.z_carina - 22.0])
        self.hilum_bronchus_l = np.array([-38.0 * s, 4.0, self.z_carina - 30.0])
        self.hilum_artery_r = np.array([34.0 * s, 20.0, self.z_carina - 32.0])
        self.hilum_artery_l = np.array([-32.0 * s, 22.0, self.z_carina - 20.0])
        # heart: rotated ellipsoid resting on the central diaphragm
        hs = shape.heart_scale
        self.heart_radii = np.array([62.0, 47.0, 42.0]) * hs
        long_axis = np.array([-0.60, 0.50, -0.62])
        long_axis /= np.linalg.norm(long_axis)
        extra = rotation_matrix((0.0, 0.0, np.deg2rad(shape.heart_angle_deg)))
        long_axis = extra @ long_axis
        a2 = np.cross(long_axis, [0.0, 0.0, 1.0])
        a2 /= np.linalg.norm(a2)
        a3 = np.cross(long_axis, a2)
        self.heart_axes = np.stack([long_axis, a2, a3], axis=1)  # columns: local axes in thorax coords
        hx, hy = -22.0 * s, 26.0 * s
        z_extent = float(np.sqrt(np.sum((self.heart_axes[2, :] * self.heart_radii) ** 2)))
        z_floor = float(self.diaphragm_z(np.array(hx), np.array(hy)))
        self.heart_center = np.array([hx, hy, z_floor + z_extent + 2.0])
        self.heart_apex = self.heart_center + self.heart_axes[:, 0] * self.heart_radii[0]
        # great vessels
        hc = self.heart_center
        self.aorta_path = np.array([
            [hc[0] + 24.0, hc[1] + 4.0, hc[2] + 22.0],
            [6.0, 24.0, self.z_carina - 4.0],
            [-10.0, 2.0, self.z_carina + 14.0],
            [-26.0, -30.0 * s, self.z_carina - 2.0],
            [-26.0, -30.0 * s, -300.0],
        ])
        self.esophagus = (np.array([-3.0, self.y_vb + 34.0, 300.0]), np.array([-12.0, self.y_vb + 40.0, -300.0]))
        # abdomen
        self.spleen_center = np.array([-84.0 * s, -44.0 * s, self.z_dome_l - 45.0])
        self.stomach_center = np.array([-50.0 * s, 26.0 * s, self.z_dome_l - 38.0])
        # ribs
        self.rib_pitch, self.rib_drop, self.rib_z0, self.num_ribs = 25.0, 55.0, -115.0, 10
        self.rib_offset, self.rib_half_radial, self.rib_half_vertical = 9.5, 4.0, 6.5

    # -- static wall ------------------------------------------------------------------------------
    def body(self, x, y):
        return ellipse2d(x, y, self.body_a, self.body_b, power=2.3)

    def muscle(self, x, y):
        """Inside of the subcutaneous fat layer (chest-wall and back muscles, and all deeper)."""
        return self.body(x, y) + self.fat_mm

    def _cavity_shell(self, x, y, z):
        """Cavity without the spine notch: elliptic cylinder closing into a dome above Z_SHOULDER."""
        yy = y - self.cav_y0
        cyl = ellipse2d(x, yy, self.cav_a, self.cav_b)
        p = np.stack([x, yy, np.maximum(z - Z_SHOULDER, 0.0)], axis=-1)
        dome = ellipsoid(p, np.array([self.cav_a, self.cav_b, Z_APEX - Z_SHOULDER], dtype=p.dtype))
        return np.where(z > Z_SHOULDER, dome, cyl)

    def spine_notch(self, x, y):
        """Region around the vertebrae that the cavity leaves out (paravertebral tissue)."""
        return np.minimum(ellipse2d(x, y - self.y_vb, 26.0, 23.0), _box(x, y, -17.0, 17.0, -400.0, self.y_vb))

    def cavity(self, x, y, z):
        """The moving domain: inside the inner chest wall and outside the spine notch."""
        return np.maximum(self._cavity_shell(x, y, z), -self.spine_notch(x, y))

    def vertebral_body(self, x, y):
        return ellipse2d(x, y - self.y_vb, 21.0, 17.0)

    def disc(self, z):
        """True between vertebral bodies (intervertebral discs, 6 mm every 27 mm)."""
        return np.abs(np.mod(z + 4.0, 27.0) - 13.5) > 10.5

    def canal(self, x, y):
        return ellipse2d(x, y - self.y_canal, 8.0, 8.0)

    def posterior_arch(self, x, y, z):
        """Lamina (continuous), and per vertebra the pedicles, transverse and spinous processes."""
        r = np.sqrt(x * x + (y - self.y_canal) ** 2)
        lamina = np.maximum(np.maximum(r - 13.5, 8.5 - r), y - (self.y_canal + 2.0))
        # processes occupy the middle 16 mm of each 27 mm level (spinous ones sloping caudally)
        level = np.abs(np.mod(z + 4.0, 27.0) - 13.5) - 8.0
        level_low = np.abs(np.mod(z + 12.0, 27.0) - 13.5) - 8.0
        spinous = np.maximum(_box(x, y, -4.0, 4.0, self.spinous_tip, self.y_canal - 10.0), level_low)
        transverse = np.maximum(_box(np.abs(x), y, 8.0, 32.0, self.y_canal - 3.0, self.y_canal + 7.0), level)
        pedicle = np.maximum(_box(np.abs(x), y, 7.0, 13.0, self.y_canal, self.y_vb - 14.0), level)
        return np.minimum(np.minimum(lamina, spinous), np.minimum(transverse, pedicle))

    def ribs(self, x, y, z):
        """(bone, cartilage) signed distances: ten obliquely descending rib pairs and their cartilage.

        Each rib runs at ``rib_offset`` mm outside the cavity surface, from near the spine round to
        the front, dropping ``rib_drop`` mm on the way; its cross-section is an ellipse (4 x 6.5 mm
        half-axes). Costal cartilage continues it to near the sternum.
        """
        yy = y - self.cav_y0
        theta = np.arctan2(yy / self.cav_b, x / self.cav_a)
        from_back = np.abs(np.mod(theta + np.pi / 2 + np.pi, 2 * np.pi) - np.pi) / np.pi  # 0 back .. 1 front
        drop = self.rib_drop * from_back**1.5
        k = np.clip(np.round((z + drop - self.rib_z0) / self.rib_pitch), 0, self.num_ribs - 1)
        dz = z - (self.rib_z0 + k * self.rib_pitch - drop)
        n = self._cavity_shell(x, y, z) - self.rib_offset
        cross = ellipse2d(n, dz, self.rib_half_radial, self.rib_half_vertical)
        r_local = np.sqrt(x * x + yy * yy)
        end = np.where(k < 2, 0.42, np.where(k < 4, 0.66, 0.74))  # lower ribs are shorter
        bone_len = np.maximum(0.12 - from_back, from_back - end) * np.pi * r_local
        cart_len = np.maximum(end - from_back, from_back - 0.9) * np.pi * r_local
        cartilage = np.where(k >= 3, np.maximum(cross, cart_len), np.inf)
        return np.maximum(cross, bone_len), cartilage

    def sternum(self, x, y, z):
        y_front = self.cav_y0 + self.cav_b
        plate = _box(x, y, -15.0, 15.0, y_front + 5.0, y_front + 16.0)
        return np.maximum(plate, np.maximum(-45.0 - z, z - 85.0))

    def tubes(self) -> dict[str, list[tuple[np.ndarray, np.ndarray, float, float]]]:
        """Tubular structures as ``(start, end, r_start, r_end)`` lists: outer airway wall, aorta,
        oesophagus (the airway lumen is the outer wall shrunk by 2 mm)."""
        path = self.aorta_path
        aorta = [(path[i], path[i + 1], 14.0, 14.0) for i in range(2)]
        aorta += [(path[i], path[i + 1], 11.5, 11.5) for i in range(2, len(path) - 1)]
        return {
            "airway": [(self.trachea_top, self.carina, 9.5, 9.5),
                       (self.carina, self.hilum_bronchus_r, 7.5, 6.0),
                       (self.carina, self.hilum_bronchus_l, 7.0, 5.5)],
            "aorta": aorta,
            "oesophagus": [(self.esophagus[0], self.esophagus[1], 7.0, 7.0)],
        }

    def tube(self, name: str, x, y, z):
        """Signed distance to one of :meth:`tubes` (analytic; renderers use rasterised copies)."""
        p = np.stack([x, y, z], axis=-1)
        out = None
        for a, b, r0, r1 in self.tubes()[name]:
            sd = capsule(p, a, b, r0, r1)
            out = sd if out is None else np.minimum(out, sd)
        return out

    # -- cavity contents -------------------------------------------------------------------------
    def diaphragm_z(self, x, y):
        """Height of the diaphragm surface (two paraboloid domes, smoothly joined)."""
        (xr, yr), (xl, yl) = self.dome_r_xy, self.dome_l_xy
        s = self.shape.scale
        rx, ry = 2.0 * 95.0 * s, 2.0 * 80.0 * s
        dome_r = self.z_dome_r - ((x - xr) ** 2 / rx + (y - yr) ** 2 / ry)
        dome_l = self.z_dome_l - ((x - xl) ** 2 / rx + (y - yl) ** 2 / ry)
        return smooth_max(dome_r, dome_l, 6.0)

    def mediastinum(self, x, y, z, zd=None):
        """Central septum between the lungs (above the diaphragm), wider low and posteriorly.

        ``zd``: the diaphragm height at (x, y) where the caller has it already.
        """
        zd = self.diaphragm_z(x, y) if zd is None else zd
        low = 1.0 - smoothstep((z - float(self.heart_center[2]) - 20.0) / 60.0)
        back = np.clip((self.cav_y0 - y) / self.cav_b, 0.0, 1.0)
        half_width = 13.0 + 9.0 * low + 6.0 * back
        return np.maximum(np.abs(x + 4.0) - half_width, zd - z)

    def heart(self, x, y, z):
        p = np.stack([x, y, z], axis=-1) - self.heart_center.astype(np.float32)
        local = p @ self.heart_axes.astype(np.float32)
        return ellipsoid(local, self.heart_radii)

    def below_diaphragm(self, x, y, z, gap: float = 4.0, zd=None):
        """Abdomen: ``gap`` mm (the diaphragm muscle) below the diaphragm surface."""
        zd = self.diaphragm_z(x, y) if zd is None else zd
        return z - (zd - gap)

    def liver(self, x, y, z, zd=None):
        left_edge = (-18.0 + 0.35 * (y - self.cav_y0)) - x
        return np.maximum(self.below_diaphragm(x, y, z, zd=zd), left_edge)

    def spleen(self, x, y, z, zd=None):
        p = np.stack([x, y, z], axis=-1) - self.spleen_center.astype(np.float32)
        return np.maximum(ellipsoid(p, np.array([22.0, 40.0, 45.0])), self.below_diaphragm(x, y, z, zd=zd))

    def stomach(self, x, y, z, zd=None):
        """(stomach, gas bubble) signed distances."""
        p = np.stack([x, y, z], axis=-1) - self.stomach_center.astype(np.float32)
        wall = np.maximum(ellipsoid(p, np.array([40.0, 34.0, 34.0])), self.below_diaphragm(x, y, z, 6.0, zd=zd))
        gas = np.maximum(wall + 3.0, (self.stomach_center[2] + 14.0) - z)
        return wall, gas

    def lung_side(self, x):
        """+1 for the right lung side, -1 for the left (split at the mediastinum centre)."""
        return np.where(x > -4.0, 1, -1)

    def normalised_height(self, x, y, z):
        """d: 0 at the diaphragm surface, 1 at the apex height (can be < 0 below, > 1 above)."""
        zd = self.diaphragm_z(x, y)
        return (z - zd) / (Z_APEX - zd)
