"""4D data sets: public cardiac and lung cines, folders of 4D files, and on-the-fly phantoms.

Every loader is a plain sequence of :class:`Case4D` records (frames in input units on their own
RAS grid, labels and landmarks where the source has them), scanned and validated at
construction, with voxels read per item. One module per source:

* :mod:`.phantom` -- :class:`PhantomDataset`, seeds split by :data:`PHANTOM_SEEDS`
* :mod:`.acdc` -- :class:`ACDCDataset` (cine MR, ED->ES, ED/ES labels)
* :mod:`.lung4d` -- :class:`Lung4DDataset` (TCIA 4D-Lung DICOM, gated phases)
* :mod:`.dirlab` -- :class:`DirLabDataset` (raw 4DCT + landmarks)
* :mod:`.folder` -- :class:`Folder4DDataset` (4D NIfTI / ``.seq.nrrd`` files)
* :mod:`.spec` -- :func:`open_dataset` (``"phantom:lung:20"``, ``"acdc:/path"``, a bare folder)

Preprocessing (crop, resample, intensity window) is not applied here; it belongs to the model
config (:mod:`MoDiffLib.preprocess`).
"""

from .acdc import ACDC_LABEL_NAMES, ACDC_SPLITS, ACDCDataset
from .base import PHASE_SELECTIONS, Case4D, CaseDataset, frames_ed_to_es, phase_percentages
from .dirlab import DIRLAB_4DCT_GEOMETRY, DIRLAB_HU_OFFSET, DirLabDataset, dirlab_geometry
from .folder import Folder4DDataset
from .lung4d import Lung4DDataset
from .phantom import PHANTOM_SEEDS, PhantomDataset, phantom_split_of
from .spec import SPEC_FORMS, detect_layout, open_dataset

__all__ = [
    "ACDCDataset",
    "ACDC_LABEL_NAMES",
    "ACDC_SPLITS",
    "Case4D",
    "CaseDataset",
    "DIRLAB_4DCT_GEOMETRY",
    "DIRLAB_HU_OFFSET",
    "DirLabDataset",
    "Folder4DDataset",
    "Lung4DDataset",
    "PHANTOM_SEEDS",
    "PHASE_SELECTIONS",
    "PhantomDataset",
    "SPEC_FORMS",
    "detect_layout",
    "dirlab_geometry",
    "frames_ed_to_es",
    "open_dataset",
    "phantom_split_of",
    "phase_percentages",
]
