"""XCAT-lite lung 4D CT: breathing thorax in Hounsfield units with exact ground truth.

Anatomy (static reference = end-exhale) is the :class:`~.thorax.Torso` plus lungs with texture
and a gravity gradient, two space-filling pulmonary vessel trees, 1-3 nodules in named lobes,
heart, liver, spleen and stomach. Motion is an analytic displacement ``U(p, phase)`` of every
point *inside the cavity* (lungs and their contents, mediastinum, abdomen); the chest wall, ribs,
sternum and spine never move, so the lungs slide along the pleura:

* SI: ``-A s(phase) g(d)`` with ``A`` the diaphragm excursion (drawn 10-30 mm), ``s`` the
  Lujan ``cos^(2n)`` inhale fraction and ``g`` a profile of the normalised height ``d`` above
  the diaphragm (1 at the diaphragm, ``exp(-d / 0.49)`` above, 0 at the apex) that puts lower-lobe
  nodules at ~12 mm and upper-lobe nodules at ~5-6 mm for a 20 mm diaphragm (KNOWLEDGE section 4);
  below the diaphragm the abdomen follows with a slow decay;
* AP (anterior on inhale) ``ap_ratio`` (0.3-0.6) and LR (outwards) ``lr_ratio`` times the same
  profile (capped at 0.75), driven by a breathing curve whose peak lags (hysteresis loop);
* the heart region moves with 0.6 x the diaphragm excursion (blended over ~30 mm);
* sliding: within ``WALL_ZONE`` of the chest wall the component normal to the wall fades out, so
  tissue slides along the wall and none enters or leaves the cavity.

Frame ``t`` is rendered by evaluating the reference anatomy at ``p = phi_t^-1(x)`` (fixed-point
iterations ``p <- x - U(p)``, which converge because the field is smooth and ``|grad U| < 1``;
checked up to the largest allowed amplitude). Lung parenchyma follows mass conservation,
``HU' = (HU + 1000) / det(J) - 1000``; everything else keeps its value and is carried by the
motion, so warping frame-0 labels with ``motion`` reproduces every frame's labels. Landmarks are
mapped forward exactly.
"""

from __future__ import annotations

import numpy as np

from ..volume import Geometry
from . import waveforms
from .grids import THORAX_CENTER_RAS
from .shapes import Canvas, GridSampler, coverage, ellipsoid, rasterise_tubes, rotation_matrix, smooth_noise, smoothstep
from .thorax import Z_APEX, Z_SHOULDER, Torso, TorsoShape
from .frames import run_frames
from .vessels import grow_tree

LABELS = {
    1: "body", 2: "lung_right", 3: "lung_left", 4: "airways", 5: "vessels", 6: "heart", 7: "aorta",
    8: "liver", 9: "spleen", 10: "stomach", 11: "ribs", 12: "spine", 13: "sternum",
}
NODULE_LABEL0 = 20  # nodule i (1-based) has label 20 + i
BODY, LUNG_R, LUNG_L, AIRWAYS, VESSELS, HEART, AORTA, LIVER, SPLEEN, STOMACH, RIBS, SPINE, STERNUM = range(1, 14)

#: Allowed range of the diaphragm SI excursion (mm) when given explicitly; drawn ones are 10-30 mm.
AMPLITUDE_RANGE = (0.0, 40.0)
DRAWN_AMPLITUDE_RANGE = (10.0, 30.0)
#: Decay length of the SI profile above the diaphragm, in units of the diaphragm-to-apex height.
SI_DECAY = 0.49
#: Width of the zone (fraction of the cavity's elliptic radius) where motion turns tangential.
WALL_ZONE = 0.5
#: Largest AP/LR profile value (the SI profile reaches 1 at the diaphragm).
AP_CAP = 0.75
#: Heart SI motion as a fraction of the diaphragm excursion.
HEART_FRACTION = 0.6
#: The landmark whose S coordinate is the breathing trace (the top of the right diaphragm dome).
TRACE_LANDMARK = "diaphragm_right"
TRACE_DEFINITION = (
    "S (RAS, mm) of the top of the right diaphragm dome (landmark diaphragm_right, the highest point "
    "of the diaphragm surface, outside the heart-weighted region) carried by the true motion, per frame; "
    "it falls on inhale; descent = trace[0] - trace"
)

LOBES = ("RUL", "RML", "RLL", "LUL", "LLL")
_LOBE_D_RANGE = {"upper": (0.46, 0.60), "middle": (0.32, 0.44), "lower": (0.16, 0.32)}


def _lobe_kind(lobe: str) -> str:
    return {"UL": "upper", "ML": "middle", "LL": "lower"}[lobe[1:]]


class LungModel:
    """One drawn lung patient: anatomy, breathing parameters and the motion model."""

    def __init__(self, seed: int, amplitude: float | None = None):
        streams = np.random.SeedSequence(seed).spawn(5)
        rng_anat, rng_breath, rng_nod, rng_vessel, self._rng_texture = (np.random.default_rng(s) for s in streams)
        self.seed = int(seed)
        self.torso = Torso(TorsoShape.draw(rng_anat))
        drawn_amplitude = float(rng_breath.uniform(*DRAWN_AMPLITUDE_RANGE))
        self.amplitude = drawn_amplitude if amplitude is None else float(amplitude)
        self.period_s = float(rng_breath.uniform(3.0, 6.0))
        self.n = int(rng_breath.integers(1, 4))
        self.inhale_fraction = float(rng_breath.uniform(0.35, 0.5))
        self.hysteresis_lag = float(rng_breath.uniform(0.04, 0.10))
        self.ap_ratio = float(rng_breath.uniform(0.3, 0.6))
        self.lr_ratio = float(rng_breath.uniform(0.08, 0.18))
        self.drawn_amplitude = drawn_amplitude
        self._heart_weight_setup()
        self.nodules = self._draw_nodules(rng_nod)
        self.trees = self._grow_trees(rng_vessel)

    # -- motion ---------------------------------------------------------------------------------
    def _heart_weight_setup(self) -> None:
        t = self.torso
        ext = np.sqrt(np.sum((t.heart_axes * t.heart_radii[None, :]) ** 2, axis=1))  # x, y, z half-extents
        # plain Python floats: numpy float64 scalars would promote the float32 point arrays
        self._hw_center = (float(t.heart_center[0]), float(t.heart_center[1]))
        self._hw_axes = (0.8 * float(ext[0]), 0.8 * float(ext[1]))
        self._hw_blend = 30.0
        self._hw_top = float(t.heart_center[2] + ext[2])

    def heart_weight(self, x, y, z):
        """1 in and below the heart (the central tendon moves with it), 0 beyond a ~30 mm blend."""
        (cx, cy), (ax, ay) = self._hw_center, self._hw_axes
        rho = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)
        foot = 1.0 - smoothstep((rho - 1.0) * min(ax, ay) / self._hw_blend)
        return foot * (1.0 - smoothstep((z - self._hw_top) / 30.0))

    def profiles(self, x, y, z):
        """(g_si, g_ap, w_heart): spatial profiles of the SI and AP/LR motion and the heart weight."""
        zd = self.torso.diaphragm_z(x, y)
        h = z - zd
        d = np.clip(h / (Z_APEX - zd), 0.0, 1.0)
        d2 = d * d
        g_above = np.exp(d * (-1.0 / SI_DECAY)) * (1.0 - d2 * d2 * d2)
        g_si = np.where(h >= 0, g_above, 1.0 - 0.3 * smoothstep(-h / 150.0))
        # AP/LR: the same profile, capped near the diaphragm (where the lungs meet the chest wall in
        # the costophrenic recesses, a full-size AP shift would crush tissue against the wall)
        g_ap = np.minimum(np.where(h >= 0, g_above, 1.0 - 0.6 * smoothstep(-h / 100.0)), AP_CAP)
        return g_si, g_ap, self.heart_weight(x, y, z)

    def curves(self, phase):
        """(s, s_lag): inhale fraction of the SI and of the (lagging) AP/LR components."""
        s = float(waveforms.breathing(phase, self.n, self.inhale_fraction))
        s_lag = float(waveforms.breathing_lagged(phase, self.n, self.inhale_fraction, self.hysteresis_lag))
        return s, s_lag

    def displacement(self, p: np.ndarray, phase: float) -> np.ndarray:
        """Displacement (mm, thorax-local = RAS axes) of reference points ``p`` (N, 3) at ``phase``.

        Defined for every point as if it were inside the cavity (the smooth field); the caller
        applies the sliding mask.
        """
        s, s_lag = self.curves(phase)
        out = np.zeros(p.shape, dtype=np.float32)
        if self.amplitude == 0.0 or (s == 0.0 and s_lag == 0.0):
            return out
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        g_si, g_ap, wh = self.profiles(x, y, z)
        a = np.float32(self.amplitude)
        uz = -a * s * ((1.0 - wh) * g_si + wh * HEART_FRACTION)
        uy = a * self.ap_ratio * s_lag * ((1.0 - wh) * g_ap + wh * HEART_FRACTION)
        ux = a * self.lr_ratio * s_lag * (1.0 - wh) * g_ap * np.tanh((x + 4.0) / 25.0)
        # sliding: near the chest wall remove the component normal to it (the wall does not move,
        # so tissue can only slide along it; no tissue enters or leaves the cavity)
        t = self.torso
        zc = np.maximum(z - Z_SHOULDER, 0.0)
        ia, ib, ic = 1.0 / t.cav_a, 1.0 / t.cav_b, 1.0 / (Z_APEX - Z_SHOULDER)
        yy = y - t.cav_y0
        rho = np.sqrt((x * ia) ** 2 + (yy * ib) ** 2 + (zc * ic) ** 2)
        nx, ny, nz = x * (ia * ia), yy * (ib * ib), zc * (ic * ic)
        norm = np.sqrt(nx * nx + ny * ny + nz * nz) + 1e-12
        nx, ny, nz = nx / norm, ny / norm, nz / norm
        taper = smoothstep((rho - (1.0 - WALL_ZONE)) / WALL_ZONE)
        un = taper * (ux * nx + uy * ny + uz * nz)
        out[:, 0] = ux - un * nx
        out[:, 1] = uy - un * ny
        out[:, 2] = uz - un * nz
        return out

    def inverse(self, x: np.ndarray, phase: float, tol_mm: float = 1e-3, max_iter: int = 60) -> np.ndarray:
        """Reference points ``p`` with ``p + U(p) = x`` (fixed-point iteration, vectorised)."""
        p = x.copy()
        for _ in range(max_iter):
            new = x - self.displacement(p, phase)
            change = float(np.max(np.abs(new - p))) if len(p) else 0.0
            p = new
            if change < tol_mm:
                break
        return p

    def jacobian(self, p: np.ndarray, phase: float, h: float = 0.5) -> np.ndarray:
        """J = I + dU/dp at reference points ``p``, shape (N, 3, 3) float32 (forward differences)."""
        u0 = self.displacement(p, phase)
        j = np.empty((len(p), 3, 3), dtype=np.float32)
        for axis in range(3):
            q = p.copy()
            q[:, axis] += h
            j[:, :, axis] = (self.displacement(q, phase) - u0) / h
        j[:, 0, 0] += 1.0
        j[:, 1, 1] += 1.0
        j[:, 2, 2] += 1.0
        return j

    @staticmethod
    def det3(j: np.ndarray) -> np.ndarray:
        """Determinants of a stack of 3x3 matrices (N, 3, 3), written out (float32)."""
        return (j[:, 0, 0] * (j[:, 1, 1] * j[:, 2, 2] - j[:, 1, 2] * j[:, 2, 1])
                - j[:, 0, 1] * (j[:, 1, 0] * j[:, 2, 2] - j[:, 1, 2] * j[:, 2, 0])
                + j[:, 0, 2] * (j[:, 1, 0] * j[:, 2, 1] - j[:, 1, 1] * j[:, 2, 0]))

    def jacobian_det(self, p: np.ndarray, phase: float) -> np.ndarray:
        """det(I + dU/dp) at reference points ``p``."""
        return self.det3(self.jacobian(p, phase))

    @staticmethod
    def normal_stretch(j: np.ndarray, det: np.ndarray, axis: int) -> np.ndarray:
        """How much a distance measured along reference axis ``axis`` (the normal of a surface
        facing that axis) grows in the frame: ``1 / |J^-T e_axis|``."""
        # row ``axis`` of J^-1 = (cofactors of column ``axis``) / det
        a, b = [(1, 2), (0, 2), (0, 1)][axis]
        cof = np.stack([
            j[:, a, 1] * j[:, b, 2] - j[:, a, 2] * j[:, b, 1],
            j[:, a, 2] * j[:, b, 0] - j[:, a, 0] * j[:, b, 2],
            j[:, a, 0] * j[:, b, 1] - j[:, a, 1] * j[:, b, 0],
        ], axis=1)
        return np.abs(det) / np.sqrt(np.sum(cof * cof, axis=1))

    # -- anatomy drawing ---------------------------------------------------------------------------
    def lobe_of(self, x, y, z) -> np.ndarray:
        """Lobe name of points in the lungs (oblique fissure, and the horizontal one on the right)."""
        t = self.torso
        d = t.normalised_height(x, y, z)
        eta = np.clip((y - t.cav_y0) / t.cav_b, -1.0, 1.0)
        lower = d < 0.5 - 0.35 * eta
        right = t.lung_side(x) > 0
        return np.where(lower, np.where(right, "RLL", "LLL"),
                        np.where(right, np.where(d < 0.55, "RML", "RUL"), "LUL"))

    def _inside_lung(self, p: np.ndarray, margin: float) -> np.ndarray:
        t = self.torso
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        return ((t.cavity(x, y, z) < -margin) & (z - t.diaphragm_z(x, y) > margin)
                & (t.mediastinum(x, y, z) > margin) & (t.heart(x, y, z) > margin + 4.0)
                & (t.tube("aorta", x, y, z) > margin) & (t.tube("airway", x, y, z) > margin))

    def _draw_nodules(self, rng: np.random.Generator) -> list[dict]:
        """1-3 nodules, each in a drawn lobe at a lobe-typical height, clear of walls, mediastinum,
        heart, fissures and each other (a lobe without room is replaced by another draw)."""
        t = self.torso
        count = int(rng.integers(1, 4))
        nodules: list[dict] = []
        for _ in range(count):
            for _attempt in range(8):
                lobe = str(rng.choice(LOBES, p=[0.22, 0.08, 0.28, 0.18, 0.24]))
                radius = float(rng.uniform(4.0, 11.0))
                centre = self._place_nodule(rng, lobe, radius, nodules)
                if centre is not None:
                    break
            else:
                continue
            radii = radius * rng.uniform(0.85, 1.15, 3)
            angles = rng.uniform(-np.pi, np.pi, 3)
            lobulation = rng.uniform(0.0, 2 * np.pi, 3)
            nodules.append({
                "name": f"nodule_{len(nodules) + 1}", "lobe": lobe, "lobe_kind": _lobe_kind(lobe),
                "center_local": [float(v) for v in centre], "radius_mm": radius,
                "radii_mm": [float(v) for v in radii], "angles_rad": [float(v) for v in angles],
                "lobulation_phase": [float(v) for v in lobulation],
                "hu": float(rng.uniform(15.0, 45.0)),
                "normalised_height": float(t.normalised_height(centre[0], centre[1], centre[2])),
            })
        return nodules

    def _place_nodule(self, rng: np.random.Generator, lobe: str, radius: float, others: list[dict]):
        t = self.torso
        d_lo, d_hi = _LOBE_D_RANGE[_lobe_kind(lobe)]
        side = 1.0 if lobe[0] == "R" else -1.0
        n = 4000
        cands = np.stack([
            side * rng.uniform(25.0, 125.0, n) * t.shape.scale,
            rng.uniform(-80.0, 90.0, n) * t.shape.scale,
            rng.uniform(-110.0, 110.0, n),
        ], axis=1).astype(np.float32)
        x, y, z = cands.T
        d = t.normalised_height(x, y, z)
        ok = self._inside_lung(cands, radius + 8.0) & (d >= d_lo) & (d <= d_hi)
        ok &= self.heart_weight(x, y, z) < 0.02  # not in lung tissue that moves with the heart
        ok &= self.lobe_of(x, y, z) == lobe
        for other in others:
            ok &= np.linalg.norm(cands - np.asarray(other["center_local"]), axis=1) > radius + other["radius_mm"] + 10
        # fissures: stay clear of the lobe boundary (re-test with shifted heights)
        for shift in (-0.04, 0.04):
            ok &= self.lobe_of(x, y, z + shift * (Z_APEX - t.diaphragm_z(x, y))) == lobe
        good = np.flatnonzero(ok)
        return cands[good[0]].astype(float) if len(good) else None

    def _grow_trees(self, rng: np.random.Generator) -> list:
        t = self.torso
        trees = []
        for root, side in ((t.hilum_artery_r, 1.0), (t.hilum_artery_l, -1.0)):
            pts = np.stack([
                side * rng.uniform(5.0, 135.0, 12000) * t.shape.scale,
                rng.uniform(-90.0, 95.0, 12000) * t.shape.scale,
                rng.uniform(-115.0, 112.0, 12000),
            ], axis=1).astype(np.float32)
            pts = pts[self._inside_lung(pts, 4.0) & (np.sign(pts[:, 0] + 4.0) == side)][:2500]
            trees.append(grow_tree(root, pts.astype(float), 9.0, rng))
        return trees

    def landmarks_reference(self) -> dict[str, np.ndarray]:
        """Landmark positions (thorax-local mm) in the reference (end-exhale) anatomy."""
        t = self.torso
        out: dict[str, np.ndarray] = {}
        for nod in self.nodules:
            out[nod["name"]] = np.asarray(nod["center_local"], float)
        count = 0
        for tree in self.trees:
            taken = 0
            for point, radius in tree.bifurcations:
                if radius < 2.0 or taken >= 6:
                    continue
                if not self._inside_lung(point[None, :].astype(np.float32), 3.0)[0]:
                    continue
                count += 1
                taken += 1
                out[f"bifurcation_{count}"] = np.asarray(point, float)
        for name, xy in ((TRACE_LANDMARK, t.dome_r_xy), ("diaphragm_left", t.dome_l_xy)):
            out[name] = self._on_diaphragm(xy)
        out["carina"] = np.asarray(t.carina, float)
        out["heart_center"] = np.asarray(t.heart_center, float)
        return out

    def _on_diaphragm(self, xy: tuple[float, float]) -> np.ndarray:
        x, y = xy
        return np.array([x, y, float(self.torso.diaphragm_z(np.array(x), np.array(y)))])

    def diaphragm_trace(self, phases) -> np.ndarray:
        """The true breathing trace: S (RAS mm) of the right dome top carried by the motion, per phase.

        Its heart weight is 0 and its sliding taper ~0, so ``trace[phase 0] - trace`` is
        ``amplitude * s(phase)`` (the full excursion at peak inhale).
        """
        ref = self._on_diaphragm(self.torso.dome_r_xy).astype(np.float32)[None, :]
        z = [float(ref[0, 2]) + float(self.displacement(ref, float(ph))[0, 2]) for ph in np.atleast_1d(phases)]
        return np.asarray(z, dtype=float) + float(THORAX_CENTER_RAS[2])

    def params(self) -> dict:
        def ras(local):
            return [round(float(v), 4) for v in np.asarray(local) + THORAX_CENTER_RAS]
        nodules = []
        for nod in self.nodules:
            entry = {k: v for k, v in nod.items() if k != "center_local"}
            entry["center_ras"] = ras(nod["center_local"])
            nodules.append(entry)
        return {
            "seed": self.seed,
            "amplitude": float(self.amplitude),
            "diaphragm_si_excursion_mm": float(self.amplitude),
            "drawn_amplitude": float(self.drawn_amplitude),
            "period_s": self.period_s,
            "waveform_n": self.n,
            "inhale_fraction": self.inhale_fraction,
            "hysteresis_phase_lag": self.hysteresis_lag,
            "ap_ratio": self.ap_ratio,
            "lr_ratio": self.lr_ratio,
            "heart_fraction": HEART_FRACTION,
            "si_decay": SI_DECAY,
            "torso": self.torso.shape.to_dict(),
            "thorax_center_ras": [float(v) for v in THORAX_CENTER_RAS],
            "nodules": nodules,
            "num_vessel_segments": int(sum(len(tr.segments) for tr in self.trees)),
        }


class LungRenderer:
    """Renders a :class:`LungModel` on a grid: static wall once, moving contents per frame.

    Expensive parts of the reference anatomy (texture, vessel trees, airways, aorta, oesophagus,
    heart) are turned once into smooth fields on the grid (noise, clamped signed distances) and
    interpolated at the backward-mapped points of each frame; distance fields interpolate
    accurately, so edges stay sharp and partial-volume correct in every frame.
    """

    def __init__(self, model: LungModel, geometry: Geometry):
        self.model = model
        self.geometry = geometry
        t = model.torso
        self.width = float(np.prod(geometry.spacing) ** (1.0 / 3.0))
        centers = geometry.voxel_centers_ras().astype(np.float32) - THORAX_CENTER_RAS.astype(np.float32)
        self.centers = centers.reshape(-1, 3)
        sigma = 3.5 / np.asarray(geometry.spacing)[::-1]  # 3.5 mm correlation, (k, j, i) order
        fields = {"texture": smooth_noise(geometry.shape_kji, sigma, model._rng_texture)}
        to_index = geometry.ras_to_ijk() @ _translation(THORAX_CENTER_RAS)

        def points_of_index(kk, jj, ii):
            ijk = np.stack([ii, jj, kk], axis=-1).astype(float)
            return geometry.ijk_to_ras_points(ijk) - THORAX_CENTER_RAS

        vessel_tubes = [tube for tree in model.trees for tube in tree.tubes()]
        fields["vessel"] = rasterise_tubes(vessel_tubes, points_of_index, geometry.shape_kji, to_index)
        for name, tubes in t.tubes().items():
            fields[name] = rasterise_tubes(tubes, points_of_index, geometry.shape_kji, to_index, margin_mm=8.0)
        x, y, z = self.centers.T
        fields["heart"] = np.clip(t.heart(x, y, z), -10.0, 10.0).reshape(geometry.shape_kji)
        self.sampler = GridSampler(
            fields, origin=np.asarray(geometry.origin_ras) - THORAX_CENTER_RAS,
            spacing=np.asarray(geometry.spacing), axes=geometry.direction,
        )
        cav = t.cavity(x, y, z)
        self.cavity_alpha = coverage(cav, self.width)
        self.content_index = np.flatnonzero(self.cavity_alpha > 0)  # voxels that show moving contents
        self.inside = cav < 0  # voxel centres in the moving domain (labels and motion)
        self.wall_hu, self.wall_label = self._wall()

    def _wall(self) -> tuple[np.ndarray, np.ndarray]:
        t = self.model.torso
        x, y, z = self.centers.T
        tex = self.sampler.field("texture")
        w = self.width
        canvas = Canvas(np.full(x.shape, -1000.0, dtype=np.float32), np.zeros(x.shape, dtype=np.uint8), w)

        canvas.paint(t.body(x, y), -100.0 + 10.0 * tex, BODY)
        canvas.paint(t.muscle(x, y), 45.0 + 8.0 * tex, BODY)
        vb = t.vertebral_body(x, y)
        disc = t.disc(z)
        canvas.paint(vb, np.where(disc, 90.0, 1100.0), SPINE)
        canvas.paint(vb + 1.5, np.where(disc, 90.0, 740.0 + 30.0 * tex), None)
        canvas.paint(t.posterior_arch(x, y, z), 950.0, SPINE)
        canvas.paint(t.canal(x, y), 30.0, BODY)
        rib, cartilage = t.ribs(x, y, z)
        canvas.paint(cartilage, 140.0 + 10.0 * tex, BODY)
        canvas.paint(rib, 1150.0, RIBS)
        canvas.paint(rib + 1.3, 760.0 + 30.0 * tex, None)
        canvas.paint(t.sternum(x, y, z), 850.0, STERNUM)
        canvas.paint(self.sampler.field("oesophagus"), 40.0, BODY)
        airway = self.sampler.field("airway")
        canvas.paint(airway, 40.0, BODY)
        canvas.paint(airway + 2.0, -1000.0, AIRWAYS)
        return canvas.values, canvas.labels

    def content(self, p: np.ndarray, phase: float) -> tuple[np.ndarray, np.ndarray]:
        """HU and labels of the moving contents whose reference positions are ``p`` (N, 3), at ``phase``.

        Everything is the reference anatomy carried by the motion (so labels warped with ``motion``
        reproduce the frame's labels); only the lung parenchyma changes its value, following mass
        conservation, and partial-volume edges keep a width of one voxel in the frame.
        """
        m = self.model
        t = m.torso
        w = self.width
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        f = self.sampler.sample(p)
        tex = f["texture"]
        zd = t.diaphragm_z(x, y)
        canvas = Canvas(35.0 + 8.0 * tex, np.full(len(p), BODY, dtype=np.uint8), w)
        lab = canvas.labels  # painted in place; some labels are set directly below

        canvas.paint(t.liver(x, y, z, zd=zd), 62.0 + 6.0 * tex, LIVER)
        canvas.paint(t.spleen(x, y, z, zd=zd), 48.0 + 6.0 * tex, SPLEEN)
        stomach, gas = t.stomach(x, y, z, zd=zd)
        canvas.paint(stomach, 38.0 + 6.0 * tex, STOMACH)
        canvas.paint(gas, -950.0, None)
        above = zd - z
        # lung parenchyma: gravity gradient + texture, density scaled by the local volume change
        lung_hu = -850.0 + 30.0 * np.clip(-(y - t.cav_y0) / t.cav_b, -1.0, 1.0) + 22.0 * tex
        vessel = f["vessel"]
        medi = t.mediastinum(x, y, z, zd=zd)
        # partial-volume edges are ramps of one voxel in the *frame*: rescale reference distances
        # by the stretch across the surface (diaphragm ~ z, mediastinum ~ x), vessels isotropically
        above_pv, medi_pv = above, medi
        lungs = np.flatnonzero(above < 2.0 * w)
        s, s_lag = m.curves(phase)
        if len(lungs) and m.amplitude > 0 and (s > 0 or s_lag > 0):
            jac = m.jacobian(p[lungs], phase)
            det = m.det3(jac)
            lung_hu[lungs] = (lung_hu[lungs] + 1000.0) / det - 1000.0
            vessel = vessel.copy()
            vessel[lungs] *= np.cbrt(det)  # edge width only; the sign (the label) is unchanged
            above_pv, medi_pv = above.copy(), medi.copy()
            above_pv[lungs] *= m.normal_stretch(jac, det, 2)
            medi_pv[lungs] *= m.normal_stretch(jac, det, 0)
        side = t.lung_side(x)
        canvas.paint(above_pv, lung_hu, None)
        lab[(above < 0) & (side > 0)] = LUNG_R
        lab[(above < 0) & (side < 0)] = LUNG_L
        canvas.paint(medi_pv, -95.0 + 8.0 * tex, None)
        lab[medi < 0] = BODY
        canvas.paint(f["oesophagus"], 40.0 + 5.0 * tex, BODY)
        canvas.paint(f["aorta"], 42.0 + 4.0 * tex, AORTA)
        canvas.paint(f["airway"], 40.0, BODY)
        canvas.paint(f["airway"] + 2.0, -1000.0, AIRWAYS)
        canvas.paint(np.maximum(vessel, above), 40.0 + 4.0 * tex, VESSELS)
        canvas.paint(f["heart"] - 4.0, -95.0 + 8.0 * tex, BODY)
        canvas.paint(f["heart"], 38.0 + 5.0 * tex, HEART)
        hu = canvas.values  # nodules are painted in place, only near each one
        for i, nod in enumerate(m.nodules, start=1):
            c = np.asarray(nod["center_local"], np.float32)
            reach = max(nod["radii_mm"]) * 1.3 + w
            near = np.flatnonzero((np.abs(x - c[0]) < reach) & (np.abs(y - c[1]) < reach) & (np.abs(z - c[2]) < reach))
            if len(near) == 0:
                continue
            sd = nodule_sdf(p[near] - c, nod)
            a = coverage(sd, w)
            hu[near] = hu[near] + a * (nod["hu"] + 12.0 * tex[near] - hu[near])
            lab[near[sd < 0]] = NODULE_LABEL0 + i
        return hu.astype(np.float32), lab

    def render(self, phases: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(frames, labels, motion) for the given frame phases; frame 0 defines the motion origin."""
        m = self.model
        shape = self.geometry.shape_kji
        n_vox = int(np.prod(shape))
        idx = self.content_index
        xc = self.centers[idx]
        inside_in_content = self.inside[idx]
        alpha = self.cavity_alpha[idx]
        frames = np.empty((len(phases),) + shape, dtype=np.float32)
        labels = np.empty((len(phases),) + shape, dtype=np.uint8)
        motion = np.zeros((len(phases),) + shape + (3,), dtype=np.float32)
        moving, p0 = self._frame0_points(phases[0])

        def one_frame(t: int) -> None:
            phase = float(phases[t])
            p = xc if phase == 0.0 else m.inverse(xc, phase)
            hu_c, lab_c = self.content(p, phase)
            hu = self.wall_hu.copy()
            hu[idx] = self.wall_hu[idx] * (1.0 - alpha) + hu_c * alpha
            lab = self.wall_label.copy()
            lab[idx[inside_in_content]] = lab_c[inside_in_content]
            frames[t] = hu.reshape(shape)
            labels[t] = lab.reshape(shape)
            if t > 0:
                motion[t].reshape(n_vox, 3)[moving] = self._displacement(moving, p0, phase)

        run_frames(one_frame, len(phases))
        return frames, labels, motion

    def _frame0_points(self, phase0: float) -> tuple[np.ndarray, np.ndarray]:
        """(moving voxel indices, reference positions of what frame 0 shows there)."""
        moving = np.flatnonzero(self.inside)
        p0 = self.model.inverse(self.centers[moving], phase0) if phase0 != 0.0 else self.centers[moving]
        return moving, p0

    def _displacement(self, moving: np.ndarray, p0: np.ndarray, phase: float) -> np.ndarray:
        # thorax-local axes are the RAS axes: displacements need no rotation
        return (p0 + self.model.displacement(p0, phase)) - self.centers[moving]

    def motion(self, phases: np.ndarray) -> np.ndarray:
        """(P, K, J, I, 3) displacement from phase ``phases[0]`` without rendering any image."""
        n_vox = int(np.prod(self.geometry.shape_kji))
        out = np.zeros((len(phases),) + self.geometry.shape_kji + (3,), dtype=np.float32)
        moving, p0 = self._frame0_points(float(phases[0]))
        for t in range(1, len(phases)):
            out[t].reshape(n_vox, 3)[moving] = self._displacement(moving, p0, float(phases[t]))
        return out

    def landmarks(self, phases: np.ndarray) -> dict[str, np.ndarray]:
        """Landmarks in every frame, RAS mm (forward map of the reference positions)."""
        out = {}
        for name, p in self.model.landmarks_reference().items():
            ref = np.asarray(p, np.float32)[None, :]
            track = [ref[0].astype(float) + self.model.displacement(ref, ph)[0] for ph in phases]
            out[name] = np.asarray(track, dtype=float) + THORAX_CENTER_RAS
        return out


def nodule_sdf(local: np.ndarray, nodule: dict) -> np.ndarray:
    """Signed distance (approximate) to a lobulated, rotated ellipsoidal nodule."""
    rot = rotation_matrix(tuple(nodule["angles_rad"])).astype(np.float32)
    q = local @ rot
    base = ellipsoid(q, np.asarray(nodule["radii_mm"], np.float32))
    r = np.sqrt(np.sum(q * q, axis=1)) + 1e-6
    u = q / r[:, None]
    a, b, c = nodule["lobulation_phase"]
    bumps = np.sin(3.0 * u[:, 0] + a) * np.sin(3.0 * u[:, 1] + b) * np.sin(3.0 * u[:, 2] + c)
    return base - 0.12 * nodule["radius_mm"] * bumps


def _translation(offset: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = offset
    return m
