"""XCAT-lite cardiac cine MR: a beating LV + RV in a short-axis stack, with exact ground truth.

Intensities mimic a bSSFP cine on a 0..1000 scale: blood ~860, fat ~720, myocardium ~230,
liver ~330, lung ~45, air ~3 (a fixed coil-sensitivity shading of +-15 % multiplies everything).

Geometry lives in the *heart frame* ``(a, b, c)`` mm: ``c`` along the LV long axis (apex -> base,
the grid's k axis), polar ``(r, theta)`` in the short-axis plane. Every heart layer is a radius
function ``R_k(theta, c)`` at end-diastole (ED):

    R1 endocardium (LV blood inside; above the mitral plane ``c_base``: left atrium)
    R2 epicardium  (LV myocardium, ~10 mm)
    R3 RV blood    (a crescent over the septum: a cos^2 bump in theta; right atrium above the base)
    R4 RV free wall (3.5 mm)
    R5 pericardial fat (thicker in the AV groove)
    R6 blend band (22 mm of surrounding tissue that follows the heart partially)

Motion (contraction state ``kappa`` from :func:`.waveforms.cardiac_contraction`) composes three
exactly invertible maps:

1. radial, per (theta, c): ``r^2`` is mapped piecewise linearly between the ED and the contracted
   interface radii. The cavity scales by ``sigma`` with ``sigma^2 = (1 - EF kappa)/(1 - eps kappa)``
   so the LV volume is ``EDV (1 - EF kappa)``; myocardium, RV wall and fat keep their volume
   (``R'^2 - R'^2_in = (R^2 - R^2_in) / lambda``, ``lambda = 1 - eps kappa`` the longitudinal
   stretch), which thickens the wall; the RV ejects with its own EF; beyond R6 nothing moves.
2. longitudinal: the base descends towards the static apex by ``kappa D`` (D = 10-15 mm), the
   atria above stretch, weighted to 0 outside the heart;
3. twist: rotation ``kappa T (2/3 - xi)`` (``xi`` 0 at the apex, 1 at the base), so the apex and
   base counter-rotate by a net torsion ``T`` (10-15 deg), weighted to 0 outside the LV.

Frames are rendered by the analytic inverse of this map (no iteration). The cavity EF of the
labels on the actual grid is calibrated to the requested EF by bisection on the model EF, so
``(EDV - ESV) / EDV`` measured from the rendered labels matches ``params["amplitude"]``.
"""

from __future__ import annotations

import math

import numpy as np

from ..volume import Geometry
from . import waveforms
from .frames import run_frames
from .grids import CARDIAC_AXIS_POINT_LOCAL, THORAX_CENTER_RAS, cardiac_frame
from .shapes import Canvas, apply_matrix, coverage, smooth_noise, smoothstep
from .thorax import Torso, TorsoShape

LABELS = {
    1: "rv_blood", 2: "myocardium", 3: "lv_blood", 4: "rv_myocardium", 5: "la_blood", 6: "ra_blood",
    7: "body", 8: "lung", 9: "liver", 10: "spine", 11: "aorta",
}
RV_BLOOD, MYO, LV_BLOOD, RV_MYO, LA_BLOOD, RA_BLOOD, BODY, LUNG, LIVER, SPINE, AORTA = range(1, 12)

#: Allowed ejection fraction (%) when given explicitly; drawn ones are 25-65 %.
EF_RANGE = (15.0, 80.0)
DRAWN_EF_RANGE = (25.0, 65.0)

C_BASE = 38.0            # mitral plane height in the heart frame (mm)
STRETCH_ABOVE = 40.0     # the atria stretch over this height above the base
BLEND_MM = 22.0          # surrounding tissue band that follows the heart partially
TWIST_BAND = (2.0, 30.0)  # twist weight falls from 1 to 0 between epicardium+2 and +30 mm

BLOOD, MYOCARDIUM, FAT = 860.0, 230.0, 720.0


class CardiacModel:
    """One drawn heart: geometry, contraction parameters and the exact motion map."""

    def __init__(self, seed: int, amplitude: float | None = None):
        streams = np.random.SeedSequence(seed).spawn(4)
        rng_anat, rng_motion, self._rng_texture, rng_torso = (np.random.default_rng(s) for s in streams)
        self.seed = int(seed)
        self.torso = Torso(TorsoShape.draw(rng_torso))
        self.frame = cardiac_frame()
        self.axis_point = CARDIAC_AXIS_POINT_LOCAL.astype(float)
        drawn_ef = float(rng_motion.uniform(*DRAWN_EF_RANGE))
        self.drawn_ef = drawn_ef
        self.ef = (drawn_ef if amplitude is None else float(amplitude)) / 100.0
        self.ef_model = self.ef  # calibrated by the renderer against the labels of its grid
        dilated = float(np.clip((45.0 - 100.0 * self.ef) / 20.0, 0.0, 1.0))
        self.edv_ml = float(rng_anat.uniform(100.0, 150.0)) * (1.0 + 0.3 * dilated)
        self.length = float(rng_anat.uniform(78.0, 90.0))       # endocardial apex to base, mm
        self.radius = float(np.sqrt(3.0 * self.edv_ml * 1000.0 / (2.0 * np.pi * self.length)))
        self.wall = float(rng_anat.uniform(9.0, 11.0)) * (1.0 - 0.15 * dilated)
        self.apex_wall = 0.8 * self.wall
        self.c_apex = C_BASE - self.length - self.apex_wall        # epicardial apex (static)
        self.base_descent = float(rng_motion.uniform(10.0, 15.0))
        self.torsion_deg = float(rng_motion.uniform(10.0, 15.0))
        self.systole_fraction = float(rng_motion.uniform(0.32, 0.38))
        self.atrial_kick = float(rng_motion.uniform(0.05, 0.09))
        self.heart_rate_bpm = float(rng_motion.uniform(55.0, 85.0))
        self.period_s = 60.0 / self.heart_rate_bpm
        self.rv_ef = float(np.clip(self.ef * rng_motion.uniform(0.85, 1.05), 0.10, 0.85))
        self.rv_height = float(rng_anat.uniform(27.0, 33.0))
        self.rv_halfwidth = math.radians(float(rng_anat.uniform(80.0, 95.0)))
        self.rv_length = 0.8 * (self.length + self.apex_wall)
        # RV direction: the patient's right-anterior, projected onto the short-axis plane
        toward = np.array([1.0, 0.6, 0.0]) @ self.frame
        self.theta_rv = float(np.arctan2(toward[1], toward[0]))
        self.papillary = [float(self.theta_rv + np.pi + d) for d in np.deg2rad(rng_anat.uniform([-70, 45], [-45, 70]))]
        self.eps = self.base_descent / (C_BASE - self.c_apex)
        self._blend_table()

    # -- geometry -----------------------------------------------------------------------------
    def _bump(self, theta):
        d = np.mod(theta - self.theta_rv + np.pi, 2.0 * np.pi) - np.pi
        return np.where(np.abs(d) < self.rv_halfwidth, np.cos(0.5 * np.pi * d / self.rv_halfwidth) ** 2, 0.0)

    def radii(self, theta, c) -> list[np.ndarray]:
        """ED interface radii [R0=0, R1 .. R6] (mm) at (theta, c)."""
        c = np.asarray(c)
        above = c > C_BASE
        u = np.maximum(c - C_BASE, 0.0)
        depth = np.maximum(C_BASE - c, 0.0)
        r1_lv = self.radius * np.sqrt(np.maximum(1.0 - (depth / self.length) ** 2, 0.0))
        r1_la = self.radius * np.sqrt(np.maximum(1.0 - (u / 35.0) ** 2, 0.0))
        r1 = np.where(above, r1_la, r1_lv)
        r2_lv = (self.radius + self.wall) * np.sqrt(np.maximum(1.0 - (depth / (self.length + self.apex_wall)) ** 2, 0.0))
        groove = smoothstep(u / 8.0)
        atrial_wall = (2.0 + (self.wall - 2.0) * (1.0 - groove)) * np.minimum(r1 / 5.0, 1.0)
        r2 = np.where(above, r1 + atrial_wall, r2_lv)
        h_c = np.where(above, np.sqrt(np.maximum(1.0 - (u / 30.0) ** 2, 0.0)),
                       np.sqrt(np.maximum(1.0 - (depth / self.rv_length) ** 2, 0.0)))
        bump = self._bump(theta)
        r3 = r2 + self.rv_height * h_c * bump
        r4 = r3 + 3.5 * np.sqrt(bump * h_c)
        fat = (2.5 + 5.0 * np.exp(-((c - C_BASE) / 8.0) ** 2)) * np.minimum(r2 / 10.0, 1.0)
        r5 = r4 + fat
        r6 = r5 + BLEND_MM
        zero = np.zeros_like(r1)
        return [zero, r1, r2, r3, r4, r5, r6]

    def contracted_radii(self, radii, c, kappa: float, ef: float | None = None) -> list[np.ndarray]:
        """Interface radii after the radial step at contraction ``kappa`` (same (theta, c))."""
        ef = self.ef_model if ef is None else ef
        c = np.asarray(c)
        # the ventricle shortens, the atria stretch; blend the two over +-6 mm at the mitral plane
        # so that the radial targets stay continuous across it
        lam_v, lam_a = 1.0 - self.eps * kappa, 1.0 + kappa * self.base_descent / STRETCH_ABOVE
        lam = lam_v + (lam_a - lam_v) * smoothstep((c - C_BASE + 6.0) / 12.0)
        sigma2 = (1.0 - ef * kappa) / (1.0 - self.eps * kappa)
        below = 1.0 - smoothstep((c - C_BASE) / 10.0)  # the atria do not eject
        s2 = 1.0 + (sigma2 - 1.0) * below
        rv_keep = 1.0 - self.rv_ef * kappa * below
        r0, r1, r2, r3, r4, r5, r6 = radii
        q1 = s2 * r1**2
        q2 = q1 + (r2**2 - r1**2) / lam
        q3 = q2 + (r3**2 - r2**2) * rv_keep / lam
        q4 = q3 + (r4**2 - r3**2) / lam
        q5 = q4 + (r5**2 - r4**2) / lam
        return [r0, np.sqrt(q1), np.sqrt(q2), np.sqrt(q3), np.sqrt(q4), np.sqrt(q5), r6]

    def _blend_table(self) -> None:
        """Per-angle radius inside which the heart moves fully along its axis (and beyond which,
        after a 25 mm blend, nothing does); largest over heights and over ED / ES."""
        theta = np.linspace(-np.pi, np.pi, 361)
        c = np.linspace(self.c_apex, C_BASE + 30.0, 120)
        tt, cc = np.meshgrid(theta, c, indexing="ij")
        radii = self.radii(tt, cc)
        es = self.contracted_radii(radii, cc, 1.0, ef=0.0)
        outer = np.maximum(radii[5], es[5]).max(axis=1) + 2.0
        self._blend_theta, self._blend_r0 = theta, outer
        self.lv_outer = float(np.max(radii[2]))

    def weight_long(self, r1, theta0):
        r_a = np.interp(theta0, self._blend_theta, self._blend_r0, period=2.0 * np.pi).astype(r1.dtype)
        return 1.0 - smoothstep((r1 - r_a) / 25.0)

    def weight_twist(self, r1):
        lo, hi = self.lv_outer + TWIST_BAND[0], self.lv_outer + TWIST_BAND[1]
        return 1.0 - smoothstep((r1 - lo) / (hi - lo))

    def shift(self, c0, kappa: float):
        """Longitudinal displacement of heart tissue at ED height ``c0`` (negative: towards the apex)."""
        c0 = np.asarray(c0)
        d = kappa * self.base_descent
        ventricle = -d * (c0 - self.c_apex) / (C_BASE - self.c_apex)
        atria = -d * (1.0 - (c0 - C_BASE) / STRETCH_ABOVE)
        return np.where(c0 <= self.c_apex, 0.0, np.where(c0 <= C_BASE, ventricle,
                        np.where(c0 <= C_BASE + STRETCH_ABOVE, atria, 0.0)))

    def twist(self, c2, kappa: float):
        """Rotation angle (rad) at current height ``c2``: apex +2T/3, base -T/3, fading to 0 over
        15 mm below the apex and above the atria."""
        top = C_BASE - kappa * self.base_descent
        xi = np.clip((c2 - self.c_apex) / (top - self.c_apex), 0.0, 1.0)
        window = (1.0 - smoothstep((self.c_apex - c2) / 15.0)) * (1.0 - smoothstep((c2 - C_BASE - 25.0) / 15.0))
        return kappa * math.radians(self.torsion_deg) * (2.0 / 3.0 - xi) * window

    # -- the map --------------------------------------------------------------------------------
    @staticmethod
    def _piecewise(r, src, dst):
        """Map radius ``r`` piecewise linearly in r^2 from interfaces ``src`` to ``dst``."""
        r2 = r * r
        out = r2.copy()
        for k in range(len(src) - 1):
            lo, hi = src[k] ** 2, src[k + 1] ** 2
            sel = (r2 >= lo) & (r2 < hi)
            dlo, dhi = dst[k] ** 2, dst[k + 1] ** 2
            val = dlo + (r2 - lo) * (dhi - dlo) / np.maximum(hi - lo, 1e-9)
            out = np.where(sel, val, out)
        return np.sqrt(out)

    def forward(self, local: np.ndarray, kappa: float) -> np.ndarray:
        """Positions at contraction ``kappa`` of ED points ``local`` (N, 3), heart frame mm."""
        if kappa == 0.0:
            return local.copy()
        a, b, c0 = local[:, 0], local[:, 1], local[:, 2]
        r0, th0 = np.hypot(a, b), np.arctan2(b, a)
        radii = self.radii(th0, c0)
        r1 = self._piecewise(r0, radii, self.contracted_radii(radii, c0, kappa))
        c2 = c0 + self.weight_long(r1, th0) * self.shift(c0, kappa)
        th3 = th0 + self.weight_twist(r1) * self.twist(c2, kappa)
        return np.stack([r1 * np.cos(th3), r1 * np.sin(th3), c2], axis=1)

    def inverse(self, local: np.ndarray, kappa: float):
        """ED points (heart frame) of points ``local`` at contraction ``kappa`` (exact inverse).

        Returns ``(ed_points, r1, radii_ed, radii_now, theta0, c0)`` so that renderers can reuse
        the interface radii (for labels and partial-volume edges) without recomputing them.
        """
        a, b, c2 = local[:, 0], local[:, 1], local[:, 2]
        r1, th3 = np.hypot(a, b), np.arctan2(b, a)
        th0 = th3 - self.weight_twist(r1) * self.twist(c2, kappa)
        w = self.weight_long(r1, th0)
        d = kappa * self.base_descent
        f_base = C_BASE - w * d  # image of the mitral plane
        top = C_BASE + STRETCH_ABOVE
        c0 = np.where(
            c2 <= self.c_apex, c2,
            np.where(c2 <= f_base, self.c_apex + (c2 - self.c_apex) * (C_BASE - self.c_apex) / (f_base - self.c_apex),
                     np.where(c2 <= top, C_BASE + (c2 - f_base) * STRETCH_ABOVE / (top - f_base), c2)))
        radii = self.radii(th0, c0)
        now = self.contracted_radii(radii, c0, kappa) if kappa != 0.0 else radii
        r0 = self._piecewise(r1, now, radii) if kappa != 0.0 else r1
        ed = np.stack([r0 * np.cos(th0), r0 * np.sin(th0), c0], axis=1)
        return ed, r1, radii, now, th0, c0

    def lv_volume_ml(self, kappa: float, ef: float | None = None) -> float:
        """Model LV cavity volume (continuous, mL) at contraction ``kappa``."""
        ef = self.ef_model if ef is None else ef
        edv = 2.0 / 3.0 * np.pi * self.radius**2 * self.length / 1000.0
        return float(edv * (1.0 - ef * kappa))

    def wall_thickening(self) -> float:
        """Mid-ventricular wall thickening ES vs ED (fraction) of the model."""
        c = np.array([C_BASE - 0.5 * self.length])
        radii = self.radii(np.array([self.theta_rv + np.pi]), c)
        es = self.contracted_radii(radii, c, 1.0)
        return float((es[2] - es[1])[0] / (radii[2] - radii[1])[0] - 1.0)

    # -- frames ---------------------------------------------------------------------------------
    def to_local(self, ras: np.ndarray) -> np.ndarray:
        """Heart-frame coordinates of RAS points."""
        return (np.asarray(ras, float) - (THORAX_CENTER_RAS + self.axis_point)) @ self.frame

    def to_ras(self, local: np.ndarray) -> np.ndarray:
        """RAS points of heart-frame coordinates."""
        return np.asarray(local, float) @ np.ascontiguousarray(self.frame.T) + (THORAX_CENTER_RAS + self.axis_point)

    def vectors_to_ras(self, local: np.ndarray) -> np.ndarray:
        """RAS components of heart-frame displacement vectors (float32)."""
        return apply_matrix(local.astype(np.float32), self.frame.T)

    def kappa(self, phase) -> float:
        return float(waveforms.cardiac_contraction(phase, self.systole_fraction, atrial_kick=self.atrial_kick))

    def landmarks_ed(self) -> dict[str, np.ndarray]:
        """Landmarks at end-diastole, heart frame mm."""
        lateral = self.theta_rv + np.pi
        c_mid = C_BASE - 0.5 * self.length
        out = {
            "lv_apex": np.array([0.0, 0.0, self.c_apex]),
            "mitral_center": np.array([0.0, 0.0, C_BASE]),
        }
        for name, th in (("mitral_septal", self.theta_rv), ("mitral_lateral", lateral)):
            out[name] = np.array([self.radius * np.cos(th), self.radius * np.sin(th), C_BASE])
        for name, th in (("rv_insertion_anterior", self.theta_rv + self.rv_halfwidth),
                         ("rv_insertion_inferior", self.theta_rv - self.rv_halfwidth)):
            r2 = float(self.radii(np.array([th]), np.array([c_mid]))[2][0])
            out[name] = np.array([r2 * np.cos(th), r2 * np.sin(th), c_mid])
        # mid-wall points near the base and near the apex (10 % of the LV height above the apex)
        for name, c in (("lv_basal_lateral", C_BASE - 10.0), ("lv_apical_lateral", self.c_apex + 0.1 * (C_BASE - self.c_apex))):
            rr = self.radii(np.array([lateral]), np.array([c]))
            mid = 0.5 * float(rr[1][0] + rr[2][0])
            out[name] = np.array([mid * np.cos(lateral), mid * np.sin(lateral), c])
        return out


class CardiacRenderer:
    """Renders a :class:`CardiacModel` on a grid (through-plane supersampled thick slices)."""

    SUBSAMPLES = (-0.4, -0.2, 0.0, 0.2, 0.4)

    def __init__(self, model: CardiacModel, geometry: Geometry):
        self.model = model
        self.geometry = geometry
        m = model
        self.width = float(min(geometry.spacing[:2]))
        centers = geometry.voxel_centers_ras().reshape(-1, 3)
        self.local = m.to_local(centers).astype(np.float32)
        self.n_vox = len(self.local)
        # through-plane sub-samples along the heart axis (the grid's k axis for the default grids)
        k_axis = geometry.direction[:, 2] * geometry.spacing[2]
        k_local = (k_axis @ m.frame).astype(np.float32)
        self.sub = [self.local + np.float32(f) * k_local for f in self.SUBSAMPLES]
        # moving region: inside the largest blend radius and within the heart's height (+ margin)
        reach = float(np.max(m._blend_r0)) + 25.0
        self.moving = [np.flatnonzero((np.hypot(s[:, 0], s[:, 1]) < reach)
                                      & (s[:, 2] > m.c_apex - 30.0) & (s[:, 2] < C_BASE + STRETCH_ABOVE + 30.0))
                       for s in self.sub]
        sigma = 3.0 / np.asarray(geometry.spacing)[::-1]
        tex = smooth_noise(geometry.shape_kji, sigma, m._rng_texture).ravel()
        self.texture = tex
        # coil sensitivity: brighter anteriorly (surface coil), fixed in space
        ras = centers - THORAX_CENTER_RAS
        self.bias = (1.0 + 0.15 * np.tanh(ras[:, 1] / 80.0) + 0.04 * np.tanh(-ras[:, 0] / 100.0)).astype(np.float32)
        self._z_base_thorax = float((m.axis_point + C_BASE * m.frame[:, 2])[2])
        self.static = [self.surroundings(s, tex) for s in self.sub]
        self.calibration = self._calibrate()

    # -- surroundings (thorax at rest) -----------------------------------------------------------
    def surroundings(self, local: np.ndarray, tex: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Intensity and label of the thorax (everything but the heart) at heart-frame points."""
        t = self.model.torso
        q = self.model.axis_point.astype(np.float32) + apply_matrix(local.astype(np.float32), self.model.frame.T)
        x, y, z = q[:, 0], q[:, 1], q[:, 2]
        w = self.width
        canvas = Canvas(np.full(len(q), 3.0, dtype=np.float32), np.zeros(len(q), dtype=np.uint8), w)

        cavity = t.cavity(x, y, z)
        wall = np.flatnonzero(cavity > -w)  # the chest wall only shows outside the cavity
        if len(wall):
            wv, wl = self._chest_wall(x[wall], y[wall], z[wall], tex[wall])
            canvas.values[wall], canvas.labels[wall] = wv, wl
        zd = t.diaphragm_z(x, y)
        canvas.paint(cavity, 700.0 + 20.0 * tex, BODY)  # mediastinal / abdominal fat as the background
        canvas.paint(np.maximum(cavity, zd - z), 45.0 + 15.0 * tex, LUNG)
        canvas.paint(np.maximum(cavity, t.liver(x, y, z, zd=zd)), 330.0 + 12.0 * tex, LIVER)
        stomach, gas = t.stomach(x, y, z, zd=zd)
        canvas.paint(np.maximum(cavity, stomach), 300.0 + 10.0 * tex, BODY)
        canvas.paint(np.maximum(cavity, gas), 5.0, BODY)
        # the septum between the lungs above the heart (around the heart the lungs reach the pericardium)
        septum = np.maximum(np.maximum(np.abs(x + 4.0) - 12.0, self._z_base_thorax - z), zd - z)
        canvas.paint(np.maximum(cavity, septum), 700.0 + 20.0 * tex, BODY)
        (e0, e1), a0 = t.esophagus, t.aorta_path[3]
        canvas.paint(np.maximum(cavity, _vertical_tube(x, y, z, e0, e1, 7.0)), 260.0, BODY)
        aorta = _vertical_tube(x, y, z, a0, t.aorta_path[4], 11.5)  # descending aorta only
        canvas.paint(np.maximum(cavity, aorta), 820.0, AORTA)
        return canvas.values, canvas.labels

    def _chest_wall(self, x, y, z, tex) -> tuple[np.ndarray, np.ndarray]:
        """Intensity and label of air, body wall, ribs and spine (outside the cavity)."""
        t = self.model.torso
        w = self.width
        canvas = Canvas(np.full(len(x), 3.0, dtype=np.float32), np.zeros(len(x), dtype=np.uint8), w)

        canvas.paint(t.body(x, y), 750.0 + 25.0 * tex, BODY)
        canvas.paint(t.muscle(x, y), 240.0 + 12.0 * tex, BODY)
        rib, cartilage = t.ribs(x, y, z)
        canvas.paint(cartilage, 200.0, BODY)
        canvas.paint(rib, 60.0, BODY)
        canvas.paint(rib + 1.3, 430.0 + 15.0 * tex, BODY)
        canvas.paint(t.sternum(x, y, z), 430.0, BODY)
        vb = t.vertebral_body(x, y)
        disc = t.disc(z)
        canvas.paint(vb, 80.0, SPINE)
        canvas.paint(vb + 1.5, np.where(disc, 380.0, 500.0 + 20.0 * tex), SPINE)
        canvas.paint(t.posterior_arch(x, y, z), 420.0, SPINE)
        canvas.paint(t.canal(x, y), 880.0, BODY)
        canvas.paint(t.canal(x, y) + 3.5, 300.0, BODY)
        return canvas.values, canvas.labels

    # -- heart layers ------------------------------------------------------------------------------
    def heart(self, r1, radii_ed, radii_now, theta0, c0, tex) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(intensity, coverage of the heart, label) from the layer radii at the points."""
        m = self.model
        w = self.width
        above = c0 > C_BASE
        n = len(r1)
        val = np.zeros(n, dtype=np.float32)
        lab = np.zeros(n, dtype=np.uint8)

        def cov(k):
            rad = radii_now[k]
            # thin cores (near the apex) only cover a fraction of a voxel
            return coverage(r1 - rad, w) * np.clip(rad / (0.5 * w), 0.0, 1.0).astype(np.float32)

        layer_vals = [
            None,
            np.full(n, BLOOD, np.float32) + 12.0 * tex,                       # LV / LA blood
            np.where(above, 260.0, MYOCARDIUM).astype(np.float32) + 8.0 * tex,  # LV wall / atrial wall
            np.full(n, BLOOD - 20.0, np.float32) + 12.0 * tex,                # RV / RA blood
            np.full(n, MYOCARDIUM + 10.0, np.float32) + 8.0 * tex,            # RV free wall
            np.full(n, FAT, np.float32) + 20.0 * tex,                         # pericardial fat
        ]
        layer_labels = [None, np.where(above, LA_BLOOD, LV_BLOOD), np.where(above, BODY, MYO),
                        np.where(above, RA_BLOOD, RV_BLOOD), np.where(above, BODY, RV_MYO), np.full(n, BODY)]
        alpha = np.zeros(n, dtype=np.float32)
        for k in (5, 4, 3, 2, 1):
            a = cov(k)
            val = val + a * (layer_vals[k] - val)
            alpha = np.maximum(alpha, a)
            inside = r1 < radii_now[k]
            lab[inside] = layer_labels[k][inside]
        # papillary muscles: columns in the mid/apical LV cavity, moving with the blood
        r_ed_rel = np.where(radii_ed[1] > 0, r0_ed_rel(r1, radii_ed, radii_now), 0.0)
        c_lo = m.c_apex + m.apex_wall + 0.2 * m.length
        c_hi = C_BASE - 0.3 * m.length
        for th in m.papillary:
            dth = np.mod(theta0 - th + np.pi, 2.0 * np.pi) - np.pi
            dist = np.hypot((r_ed_rel - 0.72) * radii_ed[1], 0.72 * radii_ed[1] * dth)
            sd = np.maximum(dist - 4.5, np.maximum(c_lo - c0, c0 - c_hi))
            a = coverage(sd * (radii_now[1] / np.maximum(radii_ed[1], 1e-6)), w) * (r1 < radii_now[1])
            val = val + a * (240.0 + 8.0 * tex - val)
        return val, alpha, lab

    def _frame_points(self, s: int, kappa: float):
        idx = self.moving[s]
        pts = self.sub[s][idx]
        return idx, self.model.inverse(pts, kappa)

    def render_frame(self, kappa: float):
        """(image, label) at contraction ``kappa`` (flat arrays over the grid voxels)."""
        m = self.model
        tex = self.texture
        acc = np.zeros(self.n_vox, dtype=np.float32)
        centre_label = None
        for s, frac in enumerate(self.SUBSAMPLES):
            val, lab = self.static[s][0].copy(), self.static[s][1].copy()
            idx, (ed, r1, radii, now, th0, c0) = self._frame_points(s, kappa)
            hv, ha, hl = self.heart(r1, radii, now, th0, c0, tex[idx])
            sv, sl = val[idx], lab[idx]
            if kappa != 0.0:  # the thorax where it shows and has moved (elsewhere: at rest)
                moved = np.max(np.abs(ed - self.sub[s][idx]), axis=1) > 1e-3
                redo = np.flatnonzero(moved & (ha < 1.0))
                sv_r, sl_r = self.surroundings(ed[redo], tex[idx[redo]])
                sv, sl = sv.copy(), sl.copy()
                sv[redo], sl[redo] = sv_r, sl_r
            val[idx] = sv + ha * (hv - sv)
            lab[idx] = np.where(hl > 0, hl, sl)
            acc += val
            if frac == 0.0:
                centre_label = lab
        image = np.maximum(acc / float(len(self.SUBSAMPLES)) * self.bias, 0.0)  # magnitude images
        return image.astype(np.float32), centre_label

    def _lv_volume_labels(self, kappa: float, ef: float) -> float:
        """LV blood volume (mL) of the labels this renderer draws at ``kappa`` for a model EF."""
        m = self.model
        if not hasattr(self, "_lv_candidates"):
            # the cavity never leaves the end-diastolic LV cylinder (it shrinks and descends)
            pts = self.sub[self.SUBSAMPLES.index(0.0)]
            r = np.hypot(pts[:, 0], pts[:, 1])
            self._lv_candidates = pts[(r < 1.1 * m.radius + 2.0) & (pts[:, 2] > m.c_apex - 1.0) & (pts[:, 2] < C_BASE + 1.0)]
        saved = m.ef_model
        m.ef_model = ef
        try:
            _, r1, _, now, _, c0 = m.inverse(self._lv_candidates, kappa)
        finally:
            m.ef_model = saved
        count = int(np.count_nonzero((r1 < now[1]) & (c0 <= C_BASE)))
        return count * float(np.prod(self.geometry.spacing)) / 1000.0

    def _calibrate(self) -> dict:
        """Bisection on the model EF so that the label-derived EF on this grid equals the target."""
        m = self.model
        target = m.ef
        edv = self._lv_volume_labels(0.0, target)
        lo, hi = max(target - 0.2, 0.0), min(target + 0.2, 0.97)
        ef_model = target
        for _ in range(30):
            ef_model = 0.5 * (lo + hi)
            esv = self._lv_volume_labels(1.0, ef_model)
            got = (edv - esv) / edv
            if abs(got - target) < 2e-4:
                break
            if got < target:
                lo = ef_model
            else:
                hi = ef_model
        m.ef_model = ef_model
        esv = self._lv_volume_labels(1.0, ef_model)
        return {"edv_label_ml": edv, "esv_label_ml": esv, "ef_label": (edv - esv) / edv, "ef_model": ef_model}

    def render(self, phases: np.ndarray):
        m = self.model
        shape = self.geometry.shape_kji
        frames = np.empty((len(phases),) + shape, dtype=np.float32)
        labels = np.empty((len(phases),) + shape, dtype=np.uint8)
        motion = np.zeros((len(phases),) + shape + (3,), dtype=np.float32)
        kappas = [m.kappa(p) for p in phases]
        idx, pts, ed0 = self._frame0_points(kappas[0])

        def one_frame(t: int) -> None:
            image, lab = self.render_frame(kappas[t])
            frames[t] = image.reshape(shape)
            labels[t] = lab.reshape(shape)
            if t > 0:
                motion[t].reshape(-1, 3)[idx] = m.vectors_to_ras(m.forward(ed0, kappas[t]) - pts)

        run_frames(one_frame, len(phases))
        return frames, labels, motion

    def _frame0_points(self, kappa0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(moving voxel indices, their heart-frame points, the end-diastolic points frame 0 shows)."""
        centre = self.SUBSAMPLES.index(0.0)
        idx = self.moving[centre]
        pts = self.sub[centre][idx]
        ed0 = self.model.inverse(pts, kappa0)[0] if kappa0 != 0.0 else pts
        return idx, pts, ed0

    def motion(self, phases: np.ndarray) -> np.ndarray:
        """(P, K, J, I, 3) displacement from phase ``phases[0]`` without rendering any image."""
        m = self.model
        out = np.zeros((len(phases),) + self.geometry.shape_kji + (3,), dtype=np.float32)
        kappas = [m.kappa(p) for p in phases]
        idx, pts, ed0 = self._frame0_points(kappas[0])
        for t in range(1, len(phases)):
            out[t].reshape(-1, 3)[idx] = m.vectors_to_ras(m.forward(ed0, kappas[t]) - pts)
        return out

    def landmarks(self, phases: np.ndarray) -> dict[str, np.ndarray]:
        m = self.model
        out = {}
        for name, p in m.landmarks_ed().items():
            track = [m.forward(p[None, :], m.kappa(ph))[0] for ph in phases]
            out[name] = m.to_ras(np.asarray(track))
        return out

    def params(self) -> dict:
        m = self.model
        cal = self.calibration
        return {
            "seed": m.seed,
            "amplitude": round(100.0 * m.ef, 6),
            "ef_percent": round(100.0 * m.ef, 6),
            "drawn_ef_percent": m.drawn_ef,
            "ef_label_percent": 100.0 * cal["ef_label"],
            "ef_model_percent": 100.0 * cal["ef_model"],
            "edv_ml": m.lv_volume_ml(0.0),
            "esv_ml": m.lv_volume_ml(1.0),
            "edv_label_ml": cal["edv_label_ml"],
            "esv_label_ml": cal["esv_label_ml"],
            "rv_ef_percent": 100.0 * m.rv_ef,
            "lv_long_axis_mm": m.length,
            "lv_radius_mm": m.radius,
            "wall_thickness_mm": m.wall,
            "wall_thickening_percent": 100.0 * m.wall_thickening(),
            "base_descent_mm": m.base_descent,
            "torsion_deg": m.torsion_deg,
            "systole_fraction": m.systole_fraction,
            "atrial_kick": m.atrial_kick,
            "heart_rate_bpm": m.heart_rate_bpm,
            "period_s": m.period_s,
            "rv_height_mm": m.rv_height,
            "rv_halfwidth_deg": float(np.rad2deg(m.rv_halfwidth)),
            "torso": m.torso.shape.to_dict(),
            "heart_frame_axes_ras": [[float(v) for v in col] for col in m.frame.T],
            "heart_origin_ras": [float(v) for v in THORAX_CENTER_RAS + m.axis_point],
            "intensity_scale": "bSSFP-like 0..1000: blood ~860, fat ~720, myocardium ~230, lung ~45, air ~3",
        }


def _vertical_tube(x, y, z, top: np.ndarray, bottom: np.ndarray, radius: float):
    """Signed distance to a nearly vertical tube (in-plane distance to its axis at height z)."""
    f = np.clip((z - float(bottom[2])) / float(top[2] - bottom[2]), 0.0, 1.0)
    ax = float(bottom[0]) + f * float(top[0] - bottom[0])
    ay = float(bottom[1]) + f * float(top[1] - bottom[1])
    return np.hypot(x - ax, y - ay) - radius


def r0_ed_rel(r1, radii_ed, radii_now):
    """Relative ED radius r0 / R1 of points inside the (scaled) LV cavity."""
    scale = radii_ed[1] / np.maximum(radii_now[1], 1e-6)
    return r1 * scale / np.maximum(radii_ed[1], 1e-6)
