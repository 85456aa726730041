"""Attacks written against the task contract: FGSM, PGD, APGD, random search, white noise,
AutoAttack (classifiers, reference package) and AutoAttack-style ensembles (segmentation).

``build_attack("pgd", task, threat)`` or ``build_attack({"name": "apgd", "loss": "dlr"}, ...)``.
"""

from __future__ import annotations

from typing import Any, Union

from medrobust.attacks.apgd import APGD
from medrobust.attacks.artefacts import ARTEFACTS, Artefact, expand_presets
from medrobust.attacks.autoattack import AutoAttack
from medrobust.attacks.base import ATTACKS, Attack, AttackParams, AttackResult, WorstCase, model_mode, register_attack
from medrobust.attacks.ensemble import Ensemble, IMAAutoAttack, SegEnsemble
from medrobust.attacks.noise import WhiteNoise
from medrobust.attacks.pgd import FGSM, PGD
from medrobust.attacks.square import RandomSearch
from medrobust.config import check_params, plugin_spec

# ATTACKS (medrobust.registry.Registry) is filled by @register_attack in the modules imported above;
# acquisition artefacts (issue #12, severity levels 0-5 instead of budgets) register with family "artefact".


def build_attack(spec: Union[str, dict[str, Any]], task, threat) -> Attack:
    name, params = plugin_spec(spec, "attack")
    cls = ATTACKS.lookup(name)  # ConfigError "unknown attack 'x'; did you mean 'y'?"
    p = check_params(cls.Params, params, f"attack '{name}'")
    return cls(p, task, threat)


__all__ = ["APGD", "ARTEFACTS", "ATTACKS", "Artefact", "Attack", "AttackParams", "AttackResult", "AutoAttack", "Ensemble", "FGSM", "IMAAutoAttack",
           "PGD", "RandomSearch", "SegEnsemble", "WhiteNoise", "WorstCase", "build_attack", "expand_presets", "model_mode", "register_attack"]
