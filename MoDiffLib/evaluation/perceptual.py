"""Whether the perceptual metrics of the peers (LPIPS, FVD) can be computed here, and if not, why.

Both need pretrained networks that MoDiff does not ship and that cannot be downloaded on an
offline machine (KNOWLEDGE section 6):

* **LPIPS** (2D AlexNet on every slice of all three axes, x100) needs the ``lpips`` package (its
  linear calibration weights), ``torchvision`` (AlexNet) and the ImageNet AlexNet weights in the
  torch hub cache (``checkpoints/alexnet-owt-*.pth``).
* **FVD** needs the Kinetics-400 I3D network weights (``i3d*.pt`` in the torch hub cache).

:func:`perceptual_status` looks for each requirement and says which are missing. This evaluation
does not compute either metric; where every requirement is present it says so instead of
reporting a number. A Frechet distance on MoDiff's own encoder would be an internal metric, not
FVD, and is not reported under that name.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def _hub_dir() -> Path:
    import torch

    return Path(torch.hub.get_dir())


def _hub_files(pattern: str) -> list[Path]:
    folder = _hub_dir() / "checkpoints"
    return sorted(folder.glob(pattern)) if folder.is_dir() else []


def perceptual_status() -> dict[str, str]:
    """``{"lpips": reason, "fvd": reason}``: why each metric is not in the report."""
    missing = []
    if importlib.util.find_spec("lpips") is None:
        missing.append("the lpips package (LPIPS linear weights)")
    if importlib.util.find_spec("torchvision") is None:
        missing.append("torchvision (AlexNet)")
    alexnet = _hub_files("alexnet-owt-*.pth")
    if not alexnet:
        missing.append(f"the ImageNet AlexNet weights ({_hub_dir() / 'checkpoints'}/alexnet-owt-*.pth)")
    if missing:
        lpips = ("unavailable: pretrained weights are not available offline; missing " + "; ".join(missing))
    else:
        lpips = (f"not computed: the weights are present ({alexnet[0]}) but this version of modiff evaluate "
                 "does not compute LPIPS")
    i3d = _hub_files("i3d*.pt*")
    if not i3d:
        fvd = ("unavailable: pretrained weights are not available offline; FVD needs the Kinetics-400 I3D weights "
               f"(looked for {_hub_dir() / 'checkpoints'}/i3d*.pt)")
    else:
        fvd = f"not computed: I3D weights are present ({i3d[0]}) but this version of modiff evaluate does not compute FVD"
    return {"lpips": lpips, "fvd": fvd}
