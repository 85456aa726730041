"""Draw the five severity levels of every acquisition artefact on a real slice and a phantom.

    python docs/make_artefact_figures.py [--data-root ../shared/datasets] [--out docs/figures]

Writes ``artefacts_hippocampus.png`` (MSD Task04 Hippocampus, the axial slice of case 001 with the
most foreground, native scanner units, 1 mm spacing) and ``artefacts_phantom.png`` (a 2D phantom,
native units). One row per artefact, columns severity 0 (clean) to 5, each row shown with the clean
image's grey-level window so intensity changes stay visible. The adversarial bias field needs a
model, so its row shows the random ``bias_field`` draws' worst-case bound instead: the five fields
at the severity's coefficient bound with all coefficients at +-bound (the most extreme corner).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medrobust.attacks import ARTEFACTS, build_attack  # noqa: E402
from medrobust.attacks.artefacts import legendre_basis  # noqa: E402
from medrobust.tasks import build_task  # noqa: E402
from medrobust.threat import ThreatModel  # noqa: E402


def hippocampus_slice(root: Path) -> tuple[np.ndarray, tuple[float, float]]:
    import nibabel as nib

    img = nib.load(str(root / "msd_hippocampus" / "imagesTr" / "hippocampus_001.nii.gz"))
    lab = np.asarray(nib.load(str(root / "msd_hippocampus" / "labelsTr" / "hippocampus_001.nii.gz")).dataobj)
    k = int(np.argmax((lab > 0).reshape(-1, lab.shape[-1]).sum(0)))
    sp = img.header.get_zooms()[:2]
    return np.asarray(img.dataobj, dtype=np.float64)[..., k], (float(sp[0]), float(sp[1]))


def phantom_slice() -> tuple[np.ndarray, tuple[float, float]]:
    from medrobust.data.phantoms import make_phantom

    img, _ = make_phantom(3, [64, 64], n_structures=3, seed=0)
    return img.astype(np.float64), (1.0, 1.0)


def grid(image: np.ndarray, spacing: tuple[float, float], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = build_task("segmentation", 2)
    threat = ThreatModel("L2", None)
    x = torch.as_tensor(image, dtype=torch.float32)[None, None]
    batch = {"id": ["figure"], "spacing": torch.tensor([spacing], dtype=torch.float64)}
    names = list(ARTEFACTS)
    vmin, vmax = np.percentile(image, [0.5, 99.5])
    fig, axes = plt.subplots(len(names), 6, figsize=(6 * 1.05, len(names) * 1.05 * image.shape[1] / image.shape[0] + 0.4))
    for r, name in enumerate(names):
        art = build_attack(name, task, threat)
        for s in range(6):
            if name == "adversarial_bias_field" and s > 0:
                b = float(art.level(s))
                basis = legendre_basis(image.shape, art.degree)
                c = torch.full((basis.shape[0],), b, dtype=torch.float64)
                c[0] = 0.0
                c[1::2] *= -1
                out = (x[0, 0].double() * torch.exp(torch.einsum("k...,k->...", basis, c))).numpy()
            else:
                out = art.corrupt(x, s, batch)[0, 0].numpy()
            ax = axes[r][s]
            ax.imshow(out.T, cmap="gray", vmin=vmin, vmax=vmax, origin="lower", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("clean" if s == 0 else f"severity {s}", fontsize=7)
            if s == 0:
                ax.set_ylabel(name.replace("adversarial_bias_field", "adv. bias (bound)"), fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.subplots_adjust(wspace=0.03, hspace=0.08, left=0.08, right=0.99, top=0.95, bottom=0.01)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)
    from PIL import Image

    Image.open(path).convert("L").point(lambda v: v // 4 * 4).save(path, optimize=True)  # 64 grey levels: small files
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "figures"))
    a = ap.parse_args()
    out = Path(a.out)
    grid(*phantom_slice(), "acquisition artefacts on a 2D phantom (severity 0-5, seed 0)", out / "artefacts_phantom.png")
    root = Path(a.data_root)
    if (root / "msd_hippocampus").is_dir():
        grid(*hippocampus_slice(root), "acquisition artefacts on MSD Hippocampus case 001 (axial slice, native units)",
             out / "artefacts_hippocampus.png")
    else:
        print(f"no MSD Hippocampus under {root}; only the phantom figure was drawn")


if __name__ == "__main__":
    main()
