"""Acquisition artefacts at calibrated severities, registered as attacks.

Each artefact is an attack whose budget axis is a *severity* level 0-5 (0 = the clean input,
1-5 = the documented table in ``docs/evaluation.md``). Like white noise it makes ``draws`` random
draws per case and reports the mean, sd and worst draw (``score_mean`` / ``score_sd`` /
``score_worst``); the returned input is the worst draw. Every draw is seeded from
``(seed, artefact family, sample id, severity, draw)``, so a case gets the same artefact whatever
batch it is in and whichever other attacks run.

Units: when the batch carries the preprocessing record (``intensity_scale`` / ``intensity_offset``,
``x_in = scale * x_native + offset``), the artefact is applied to the native (scanner) image
``x_native = (x_in - offset) / scale`` and mapped back with the same record, so a bias field
multiplies scanner intensities, not z-scores (``units: input`` applies it to the model input
instead). The result is clipped to the threat model's bounds (none for z-scored inputs).

| name | source | severity |
|---|---|---|
| ``bias_field`` | MONAI ``RandBiasField`` basis | bound of the Legendre coefficients of ``log(field)`` |
| ``gibbs`` | MONAI ``GibbsNoise`` | fraction of k-space removed (alpha) |
| ``kspace_spike`` | MONAI ``KSpaceSpikeNoise`` | number of spikes and their magnitude relative to the k-space centre |
| ``rician_noise`` | MONAI ``RandRicianNoise`` | noise sd relative to the mean foreground intensity |
| ``gaussian_blur`` | MONAI ``GaussianSmooth`` | sigma in mm (through the spacing) |
| ``contrast`` | MONAI ``AdjustContrast`` | range of log(gamma) around gamma = 1 |
| ``motion`` | TorchIO ``RandomMotion`` | number of movements, rotation (degrees) and translation (mm) |
| ``ghosting`` | TorchIO ``RandomGhosting`` | number of ghosts and their intensity |
| ``low_resolution`` | TorchIO ``RandomAnisotropy`` | down-sampling factor along the slice (largest-spacing) axis |
| ``adversarial_bias_field`` | medrobust | the worst field with coefficients inside the ``bias_field`` bound (projected sign-gradient ascent) |

``attacks: [corruptions]`` (or ``artefacts``) in an evaluation config expands to all ten.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, ClassVar, Literal, Optional, Sequence, Union

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from medrobust.attacks.base import Attack, AttackParams, AttackResult, WorstCase, frozen_params, model_mode, register_attack, worst_of_draws
from medrobust.errors import ConfigError
from medrobust.utils import fork_rng

SEVERITIES = (1, 2, 3, 4, 5)


class ArtefactParams(AttackParams):
    draws: int = Field(5, ge=1, description="random draws per case and severity (deterministic artefacts use 1)")
    severities: list[int] = Field(default_factory=lambda: list(SEVERITIES), description="levels evaluated (0-5)")
    units: Literal["auto", "input"] = Field("auto", description="auto: native units when the preprocessing record is there")

    @field_validator("severities")
    @classmethod
    def _levels(cls, v: list[int]) -> list[int]:
        bad = [s for s in v if not 0 <= int(s) <= 5]
        if bad or not v:
            raise ValueError(f"severities must be a non-empty list of levels between 0 and 5, got {v}")
        return sorted(set(int(s) for s in v))


def case_seed(seed: int, family: str, sample_id: str, severity: int, draw: int) -> int:
    """A 31-bit seed from the attack seed, the artefact family, the sample id, the level and the draw."""
    return zlib.crc32(f"{seed}|{family}|{sample_id}|{severity}|{draw}".encode()) & 0x7FFFFFFF


def _sample_ids(batch: Optional[dict], n: int) -> list[str]:
    if batch is not None and "id" in batch:
        return [str(i) for i in batch["id"]]
    return [str(i) for i in range(n)]


def _spacing(batch: Optional[dict], i: int, nd: int) -> tuple[float, ...]:
    if batch is not None and batch.get("spacing") is not None:
        sp = torch.as_tensor(batch["spacing"], dtype=torch.float64)
        sp = sp[i] if sp.ndim == 2 else sp
        return tuple(float(s) for s in sp.reshape(-1)[:nd])
    return (1.0,) * nd


def _affine(batch: Optional[dict], i: int, c: int) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    if batch is None or batch.get("intensity_scale") is None or batch.get("intensity_offset") is None:
        return None
    s = torch.as_tensor(batch["intensity_scale"], dtype=torch.float64).reshape(len(batch["intensity_scale"]), -1)[i]
    o = torch.as_tensor(batch["intensity_offset"], dtype=torch.float64).reshape(len(batch["intensity_offset"]), -1)[i]
    if s.numel() == 1 and c > 1:
        s, o = s.expand(c), o.expand(c)
    if s.numel() != c or bool((s.abs() < 1e-30).any()):
        return None
    return s, o


def _fg_reference(x: torch.Tensor) -> torch.Tensor:
    """Per-channel mean intensity of voxels brighter than the channel's mean magnitude (a foreground proxy)."""
    a = x.abs().reshape(x.shape[0], -1)
    m = a.mean(1, keepdim=True)
    fg = a > m
    ref = (a * fg).sum(1) / fg.sum(1).clamp_min(1)
    return torch.where(fg.any(1), ref, a.mean(1)).clamp_min(1e-12)


# ============================================================================ bias-field basis
def bias_field_indices(degree: int, nd: int) -> list[tuple[int, ...]]:
    """Legendre degrees of each coefficient, in MONAI ``RandBiasField``'s order (2D: ``tril_indices``)."""
    if nd == 2:
        r, c = np.tril_indices(degree + 1)
        return [(int(a), int(b)) for a, b in zip(r, c)]
    pts = [(i, j, k) for i in range(degree + 1) for j in range(degree + 1 - i) for k in range(degree + 1 - i - j)]
    return pts


def legendre_basis(shape: Sequence[int], degree: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """``(K, *shape)``: products of Legendre polynomials on ``[-1, 1]`` per axis, one per MONAI coefficient."""
    nd = len(shape)
    per_axis = []
    for n in shape:
        t = torch.linspace(-1.0, 1.0, int(n), dtype=dtype, device=device)
        p = [torch.ones_like(t), t]
        for k in range(1, degree):
            p.append(((2 * k + 1) * t * p[k] - k * p[k - 1]) / (k + 1))
        per_axis.append(torch.stack(p[: degree + 1]))
    out = []
    for idx in bias_field_indices(degree, nd):
        b = per_axis[0][idx[0]].reshape(-1, *([1] * (nd - 1)))
        for ax in range(1, nd):
            b = b * per_axis[ax][idx[ax]].reshape(*([1] * ax), -1, *([1] * (nd - ax - 1)))
        out.append(b.expand(*[int(s) for s in shape]))
    return torch.stack(out)


def random_bias_coefficients(bound: float, degree: int, nd: int, seed: int) -> np.ndarray:
    """Coefficients ``U(-bound, bound)``; the constant term is 0 (a global gain is not a bias field)."""
    k = len(bias_field_indices(degree, nd))
    c = np.random.default_rng(seed).uniform(-bound, bound, k)
    c[0] = 0.0
    return c


# ============================================================================ the base class
class Artefact(Attack):
    """Base class of the artefacts: subclasses set ``levels`` (five settings) and implement :meth:`apply_one`.

    Called as ``attack(model, x, y, severity, batch=batch)``; ``batch`` supplies sample ids (for the
    seeds), spacing (mm) and the intensity record. :meth:`corrupt` applies the artefact without a model.
    """

    Params = ArtefactParams
    kind = "artefact"
    family: ClassVar[str] = ""
    levels: ClassVar[tuple[Any, ...]] = ()
    level_doc: ClassVar[str] = ""
    deterministic: ClassVar[bool] = False

    @property
    def family_key(self) -> str:
        return self.family or self.name

    def severity_grid(self) -> list[int]:
        """Levels the sweep evaluates: 0 (clean) then the configured severities."""
        return sorted(set([0] + list(self.params.severities)))

    def level(self, severity: Union[int, float]) -> Any:
        """The setting of a severity level 1-5 (see the class's ``levels`` and ``level_doc``)."""
        s = int(severity)
        if not 1 <= s <= 5 or s != severity:
            raise ConfigError(f"artefact severity {severity} is not a level 1-5; use severities between 0 (clean) and 5.")
        return self.levels[s - 1]

    def n_draws(self) -> int:
        return 1 if self.deterministic else self.params.draws

    def cost(self) -> tuple[float, float]:
        return (float(self.n_draws() + 1), 0.0)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "kind": self.kind, "levels": [str(v) for v in self.levels]}

    # ---- corruption without a model --------------------------------------------------
    def apply_one(self, x: torch.Tensor, level: Any, spacing: tuple[float, ...], seed: int) -> torch.Tensor:
        """Corrupt one sample ``(C, *spatial)`` (native units, float64 CPU) at a level; seeded by ``seed``."""
        raise NotImplementedError

    def corrupt(self, x: torch.Tensor, severity: Union[int, float], batch: Optional[dict] = None, draw: int = 0) -> torch.Tensor:
        """The corrupted batch ``(B, C, *spatial)`` at ``severity`` (0: a copy of ``x``), one draw.

        Args:
            x: model inputs, 2D or 3D, any number of channels.
            severity: level 0-5.
            batch: optional batch dict with ``id``, ``spacing`` and the intensity record.
            draw: draw index (part of each sample's seed).

        Returns:
            A tensor like ``x``, clipped to the threat model's bounds.

        Raises:
            ConfigError: for a level outside 0-5 or an input that is not ``(B, C, H, W[, D])``.
        """
        if x.ndim not in (4, 5):
            raise ConfigError(f"artefacts need inputs shaped (B, C, H, W) or (B, C, H, W, D), got {tuple(x.shape)}; add the batch and channel axes.")
        if severity == 0:
            return x.detach().clone()
        lvl = self.level(severity)
        ids = _sample_ids(batch, x.shape[0])
        out = torch.empty_like(x)
        nd = x.ndim - 2
        for i in range(x.shape[0]):
            xi = x[i].detach().to("cpu", torch.float64)
            rec = _affine(batch, i, x.shape[1]) if self.params.units == "auto" else None
            view = (-1,) + (1,) * nd
            if rec is not None:
                xi = (xi - rec[1].reshape(view)) / rec[0].reshape(view)
            seed = case_seed(self.params.seed or 0, self.family_key, ids[i], int(severity), draw)
            with fork_rng(seed):
                yi = self.apply_one(xi, lvl, _spacing(batch, i, nd), seed)
            if rec is not None:
                yi = yi * rec[0].reshape(view) + rec[1].reshape(view)
            out[i] = yi.to(dtype=x.dtype, device=x.device)
        return self.threat.clip(out, self.threat.limits(x))

    # ---- as an attack ----------------------------------------------------------------
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Union[float, torch.Tensor],
                 batch: Optional[dict] = None) -> AttackResult:
        """Worst of ``draws`` draws at severity ``eps`` (a level 0-5); ``extra`` has the mean / sd / worst score."""
        x = x.detach()
        sev = float(eps.reshape(-1)[0]) if isinstance(eps, torch.Tensor) else float(eps)
        if sev == 0:
            return AttackResult(x.clone())
        self.level(sev)  # a clear error for a level outside 1-5
        with model_mode(model, self.params.model_mode), frozen_params(model):
            return self.run_levels(model, x, y, int(sev), batch)

    def run_levels(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, severity: int, batch: Optional[dict]) -> AttackResult:
        return worst_of_draws(model, x, y, self.task, self.n_draws(), lambda d: self.corrupt(x, severity, batch, d))


# ============================================================================ MONAI artefacts
class BiasField(Artefact):
    name = "bias_field"
    description = "artefact: smooth multiplicative intensity inhomogeneity exp(Legendre polynomial), MONAI RandBiasField basis"
    degree: ClassVar[int] = 3
    levels = (0.05, 0.1, 0.15, 0.2, 0.3)
    level_doc = "coefficient bound c of log(field) (degree 3, no constant term)"

    @classmethod
    def field(cls, shape: Sequence[int], coeffs: np.ndarray) -> torch.Tensor:
        """``exp`` of MONAI ``RandBiasField``'s Legendre series with these coefficients, ``shape``."""
        from monai.transforms import RandBiasField

        f = RandBiasField(degree=cls.degree)._generate_random_field(list(shape), cls.degree, list(coeffs))
        return torch.from_numpy(np.exp(np.asarray(f, dtype=np.float64)))

    def apply_one(self, x, level, spacing, seed):
        c = random_bias_coefficients(float(level), self.degree, x.ndim - 1, seed)
        return x * self.field(x.shape[1:], c).unsqueeze(0)


class Gibbs(Artefact):
    name = "gibbs"
    description = "artefact: Gibbs ringing from truncated k-space (MONAI GibbsNoise)"
    deterministic = True
    levels = (0.2, 0.35, 0.45, 0.55, 0.65)
    level_doc = "alpha: fraction of the k-space radius removed (kept: 1 - alpha)"

    def apply_one(self, x, level, spacing, seed):
        from monai.transforms import GibbsNoise

        return torch.as_tensor(GibbsNoise(alpha=float(level))(x.float()), dtype=torch.float64)


class KSpaceSpike(Artefact):
    name = "kspace_spike"
    description = "artefact: herringbone stripes from k-space spikes (MONAI KSpaceSpikeNoise)"
    levels = ((1, 0.02), (1, 0.04), (2, 0.06), (2, 0.09), (3, 0.12))
    level_doc = "(number of spikes, spike magnitude / k-space centre magnitude); spikes outside the central 10%"

    def apply_one(self, x, level, spacing, seed):
        from monai.transforms import KSpaceSpikeNoise

        n, rel = level
        shape = x.shape[1:]
        rng = np.random.default_rng(seed)
        locs = []
        for _ in range(int(n)):
            while True:
                loc = tuple(int(rng.integers(0, s)) for s in shape)
                if any(abs(l - s // 2) > max(1, s // 10) for l, s in zip(loc, shape)):
                    break
            locs.append(loc)
        out = torch.empty_like(x)
        for c in range(x.shape[0]):
            xc = x[c:c + 1].float()
            k = torch.fft.fftn(xc, dim=tuple(range(1, xc.ndim)))
            val = float(torch.log(k.abs().max() * rel + 1e-10))
            out[c:c + 1] = torch.as_tensor(KSpaceSpikeNoise(loc=locs, k_intensity=[val] * len(locs))(xc), dtype=torch.float64)
        return out


class RicianNoise(Artefact):
    name = "rician_noise"
    description = "artefact: Rician (magnitude) noise, sd relative to the foreground intensity (MONAI RandRicianNoise)"
    levels = (0.02, 0.04, 0.06, 0.09, 0.12)
    level_doc = "noise sd / mean foreground intensity"

    def apply_one(self, x, level, spacing, seed):
        from monai.transforms import RandRicianNoise

        lo = torch.minimum(x.amin(), torch.zeros((), dtype=x.dtype))  # magnitude noise needs non-negative values
        xs = x - lo
        ref = _fg_reference(xs)
        out = torch.empty_like(x)
        for c in range(x.shape[0]):
            t = RandRicianNoise(prob=1.0, std=float(level * ref[c]), sample_std=False, dtype=np.float64)
            t.set_random_state(seed=seed + c)
            out[c:c + 1] = torch.as_tensor(t(xs[c:c + 1]), dtype=torch.float64)
        return out + lo


class GaussianBlur(Artefact):
    name = "gaussian_blur"
    description = "artefact: isotropic Gaussian blur, sigma in mm through the spacing (MONAI GaussianSmooth)"
    deterministic = True
    levels = (0.4, 0.7, 1.0, 1.4, 1.8)
    level_doc = "sigma in mm"

    def apply_one(self, x, level, spacing, seed):
        from monai.transforms import GaussianSmooth

        sig = [float(level) / max(s, 1e-6) for s in spacing]
        return torch.as_tensor(GaussianSmooth(sigma=sig)(x.float()), dtype=torch.float64)


class Contrast(Artefact):
    name = "contrast"
    description = "artefact: gamma contrast change, log(gamma) uniform in [-r, r] (MONAI AdjustContrast)"
    levels = (0.1, 0.2, 0.3, 0.45, 0.6)
    level_doc = "r: log(gamma) drawn from [-r, r] with |log gamma| >= r/2"

    def apply_one(self, x, level, spacing, seed):
        from monai.transforms import AdjustContrast

        rng = np.random.default_rng(seed)
        g = math.exp(float(rng.choice([-1, 1])) * rng.uniform(level / 2, level))
        return torch.as_tensor(AdjustContrast(gamma=g)(x.float()), dtype=torch.float64)


# ============================================================================ TorchIO artefacts
def _torchio():
    try:
        import torchio
    except ImportError:  # pragma: no cover - torchio is a dependency
        raise ConfigError("the motion, ghosting and low_resolution artefacts need TorchIO; install it with pip install torchio.") from None
    return torchio


class _TorchIOArtefact(Artefact):
    def transform(self, level: Any, nd: int, spacing: tuple[float, ...]):
        raise NotImplementedError

    def apply_one(self, x, level, spacing, seed):
        tio = _torchio()
        nd = x.ndim - 1
        t = x.float().unsqueeze(-1) if nd == 2 else x.float()
        sp = list(spacing) + [1.0] * (3 - len(spacing))
        img = tio.ScalarImage(tensor=t, affine=np.diag(sp + [1.0]))
        out = self.transform(level, nd, tuple(spacing))(img).data
        out = out[..., 0] if nd == 2 else out
        return out.to(torch.float64)


def _motion_times(n: int) -> np.ndarray:
    """Movement times: ``n + 1`` k-space segments along the last axis, the unmoved one centred on the k-space centre."""
    w = 1.0 / (n + 1)
    a, b = 0.5 - w / 2, 0.5 + w / 2
    left = (n + 1) // 2
    right = n - left
    return np.array([a * j / left for j in range(1, left + 1)] + [b + (1 - b) * j / right for j in range(right)])


class Motion(_TorchIOArtefact):
    name = "motion"
    description = "artefact: k-space motion from rigid movements during the acquisition (TorchIO RandomMotion)"
    levels = ((1, 1.0, 1.0), (2, 2.0, 2.0), (3, 3.0, 3.5), (4, 4.0, 5.0), (5, 5.0, 7.0))
    level_doc = "(movements, max rotation in degrees, max translation in mm; each in [0.75 max, max], alternating sign, evenly spaced in time)"

    def apply_one(self, x, level, spacing, seed):
        """TorchIO ``Motion`` with RandomMotion's sampling, seeded here.

        TorchIO fills k-space segments along the last axis and keeps the unmoved spectrum at the
        k-space centre; a 2D image is therefore laid out as ``(C, H, 1, W)`` (rotation about the
        singleton axis, in-plane translations), since TorchIO's own 2D layout ``(C, H, W, 1)`` has
        a single k-space column and turns motion into a plain rigid shift of the whole image.
        """
        tio = _torchio()
        n, deg, mm = level
        n = int(n)
        rng = np.random.default_rng(seed)
        nd = x.ndim - 1
        # magnitudes in [0.75 max, max], the sign alternating between movements (back and forth, random
        # start per axis), movements evenly spaced in time: the damage grows with the level rather
        # than with where in k-space a movement happens to fall (TorchIO issue #765)
        alt = (-1.0) ** np.arange(n)[:, None] * rng.choice([-1.0, 1.0], size=(1, 3))
        degrees = rng.uniform(0.75 * deg, deg, size=(n, 3)) * alt
        translation = rng.uniform(0.75 * mm, mm, size=(n, 3)) * alt
        times = _motion_times(n)
        if nd == 2:
            t = x.float().unsqueeze(2)  # (C, H, 1, W)
            degrees[:, [0, 2]] = 0.0
            translation[:, 1] = 0.0
            sp = [spacing[0], 1.0, spacing[1]]
        else:
            t = x.float()
            sp = list(spacing)
        img = tio.ScalarImage(tensor=t, affine=np.diag(sp + [1.0]))
        out = tio.Motion(degrees=degrees, translation=translation, times=times, image_interpolation="linear")(img).data
        return (out[:, :, 0] if nd == 2 else out).to(torch.float64)


class Ghosting(_TorchIOArtefact):
    name = "ghosting"
    description = "artefact: ghosts along the phase-encoding axis (TorchIO RandomGhosting)"
    levels = (((2, 3), (0.15, 0.25)), ((2, 4), (0.3, 0.45)), ((3, 6), (0.45, 0.65)), ((4, 8), (0.65, 0.9)), ((5, 10), (0.9, 1.2)))
    level_doc = "(range of ghost count, range of ghost intensity)"

    def transform(self, level, nd, spacing):
        ghosts, inten = level
        return _torchio().RandomGhosting(num_ghosts=ghosts, axes=tuple(range(nd)), intensity=inten)


class LowResolution(_TorchIOArtefact):
    name = "low_resolution"
    description = "artefact: thicker slices, down-sampled and re-sampled along the slice axis (TorchIO RandomAnisotropy)"
    deterministic = True
    levels = (1.5, 2.0, 3.0, 4.0, 5.0)
    level_doc = "down-sampling factor along the largest-spacing axis (ties: the last axis)"

    def transform(self, level, nd, spacing):
        sp = list(spacing)
        ax = max(range(nd), key=lambda a: (round(sp[a], 6), a))
        return _torchio().RandomAnisotropy(axes=(ax,), downsampling=(float(level), float(level)))


# ============================================================================ the adversarial bias field
class AdversarialBiasFieldParams(ArtefactParams):
    steps: int = Field(20, ge=0, description="sign-gradient steps on the coefficients")
    step_size: float = Field(0.25, gt=0, description="step as a fraction of the coefficient bound")
    loss: Literal["task"] = "task"


class AdversarialBiasField(BiasField):
    """The worst bias field inside the ``bias_field`` bound of a severity.

    The coefficients of ``log(field)`` (the same Legendre basis and bound as ``bias_field``, no
    constant term) are optimised by projected sign-gradient ascent on the task loss, starting from
    the worst of the ``bias_field`` random draws (the same seeds, so the same fields). Every
    candidate (the clean input, each random draw, each step) is offered to a per-sample worst-case
    tracker (lowest score, then highest loss), so the result is never better for the model than
    the clean input nor than the worst random field at the same severity.
    """

    name = "adversarial_bias_field"
    Params = AdversarialBiasFieldParams
    description = "artefact: the worst smooth bias field within the bias_field bound (gradient ascent on its coefficients)"
    family = "bias_field"
    kind = "artefact"

    def cost(self) -> tuple[float, float]:
        return (float(self.params.draws + self.params.steps + 1), float(self.params.steps))

    def run_levels(self, model, x, y, severity, batch):
        bound = float(self.level(severity))
        nd = x.ndim - 2
        ids = _sample_ids(batch, x.shape[0])
        basis = legendre_basis(x.shape[2:], self.degree, dtype=torch.float64, device=x.device)
        k = basis.shape[0]
        # native-unit record: x_in' = (x_in - o) * field + o
        off = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float64, device=x.device)
        if self.params.units == "auto":
            for i in range(x.shape[0]):
                rec = _affine(batch, i, x.shape[1])
                if rec is not None:
                    off[i] = rec[1].to(x.device)
        off = off.reshape(*off.shape, *([1] * nd)).to(x.dtype)
        lim = self.threat.limits(x)
        mask = torch.ones(k, dtype=x.dtype, device=x.device)
        mask[0] = 0.0  # no constant term
        bas = basis.to(x.dtype)

        def make(c: torch.Tensor) -> torch.Tensor:
            f = torch.exp(torch.einsum("bk,k...->b...", c * mask, bas)).unsqueeze(1)
            return self.threat.clip((x - off) * f + off, lim)

        with torch.no_grad():
            logits0 = model(x)
            best = WorstCase(x, self.task.score(logits0, y), self.task.loss(logits0, y))
            coef = torch.zeros(x.shape[0], k, dtype=x.dtype, device=x.device)
            best_c = coef.clone()
            scores = []
            for d in range(self.params.draws):
                c = torch.stack([torch.as_tensor(random_bias_coefficients(bound, self.degree, nd,
                                                                          case_seed(self.params.seed or 0, self.family_key, ids[i], severity, d)),
                                                 dtype=x.dtype, device=x.device) for i in range(x.shape[0])])
                xa = make(c)
                logits = model(xa)
                s, l = self.task.score(logits, y), self.task.loss(logits, y)
                scores.append(s.double())
                better = best.update(xa, s, l)
                best_c[better] = c[better]
        c = best_c.clone()
        step = self.params.step_size * bound
        for _ in range(self.params.steps):
            c = c.detach().requires_grad_(True)
            xa = make(c)
            logits = model(xa)
            loss = self.task.loss(logits, y)
            g, = torch.autograd.grad(loss.sum(), c)
            with torch.no_grad():
                s = self.task.score(logits, y)
                better = best.update(xa, s, loss)
                best_c[better] = c.detach()[better]
                c = (c + step * g.sign()).clamp(-bound, bound)
        with torch.no_grad():
            xa = make(c)
            logits = model(xa)
            best.update(xa, self.task.score(logits, y), self.task.loss(logits, y))
        extra: dict[str, torch.Tensor] = {}
        if scores:
            st = torch.stack(scores, 1)
            extra["random_mean_score"] = st.mean(1).cpu()
            extra["random_worst_score"] = st.min(1).values.cpu()
        return AttackResult(best.x.detach(), extra=extra)


# registered as attacks (family "artefact"); this dict keeps the preset order
ARTEFACTS: dict[str, type[Artefact]] = {a.name: register_attack(a, family="artefact") for a in (BiasField, Gibbs, KSpaceSpike, RicianNoise, GaussianBlur, Contrast,
                                                             Motion, Ghosting, LowResolution, AdversarialBiasField)}

PRESETS: dict[str, list[str]] = {"corruptions": list(ARTEFACTS), "artefacts": list(ARTEFACTS),
                                 "random_artefacts": [n for n in ARTEFACTS if n != "adversarial_bias_field"]}


def expand_presets(specs: Sequence[Union[str, dict[str, Any]]]) -> list[Union[str, dict[str, Any]]]:
    """Replace preset names (``corruptions``, ``artefacts``, ``random_artefacts``) by their attacks.

    A preset given as a mapping (``{name: corruptions, draws: 3}``) passes its other keys to each member.
    """
    out: list[Union[str, dict[str, Any]]] = []
    for s in specs:
        name = s if isinstance(s, str) else (s.get("name") if isinstance(s, dict) else None)
        if name in PRESETS:
            extra = {k: v for k, v in s.items() if k not in ("name", "label")} if isinstance(s, dict) else {}
            out += [({"name": n, **extra} if extra else n) for n in PRESETS[name]]
        else:
            out.append(s)
    return out


def is_artefact(attack: Any) -> bool:
    return isinstance(attack, Artefact)
