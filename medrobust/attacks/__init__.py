"""Attacks written against the task contract: FGSM, PGD, APGD, random search, white noise,
AutoAttack (classifiers, reference package) and AutoAttack-style ensembles (segmentation).

``build_attack("pgd", task, threat)`` or ``build_attack({"name": "apgd", "loss": "dlr"}, ...)``.
"""

from __future__ import annotations

import difflib
from typing import Any, Union

from medrobust.attacks.apgd import APGD
from medrobust.attacks.artefacts import ARTEFACTS, Artefact, expand_presets
from medrobust.attacks.autoattack import AutoAttack
from medrobust.attacks.base import Attack, AttackParams, AttackResult, WorstCase, model_mode
from medrobust.attacks.ensemble import Ensemble, IMAAutoAttack, SegEnsemble
from medrobust.attacks.noise import WhiteNoise
from medrobust.attacks.pgd import FGSM, PGD
from medrobust.attacks.square import RandomSearch
from medrobust.config import check_params, plugin_spec
from medrobust.errors import ConfigError

ATTACKS: dict[str, type[Attack]] = {a.name: a for a in (FGSM, PGD, APGD, RandomSearch, WhiteNoise, AutoAttack,
                                                        Ensemble, SegEnsemble, IMAAutoAttack)}
ATTACKS.update(ARTEFACTS)  # acquisition artefacts (issue #12): severity levels 0-5 instead of budgets


def build_attack(spec: Union[str, dict[str, Any]], task, threat) -> Attack:
    name, params = plugin_spec(spec, "attack")
    if name not in ATTACKS:
        close = difflib.get_close_matches(name, ATTACKS.keys(), n=1, cutoff=0.4)
        hint = f"did you mean '{close[0]}'?" if close else f"choose one of {', '.join(sorted(ATTACKS))}."
        raise ConfigError(f"unknown attack '{name}'; {hint}")
    cls = ATTACKS[name]
    p = check_params(cls.Params, params, f"attack '{name}'")
    return cls(p, task, threat)


__all__ = ["APGD", "ARTEFACTS", "ATTACKS", "Artefact", "Attack", "AttackParams", "AttackResult", "AutoAttack", "Ensemble", "FGSM", "IMAAutoAttack",
           "PGD", "RandomSearch", "SegEnsemble", "WhiteNoise", "WorstCase", "build_attack", "expand_presets", "model_mode"]
