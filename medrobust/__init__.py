"""medrobust: adversarial robustness of medical image segmentation and classification.

The public entry points are the CLI (``medrobust --help``) and the library modules:

- :mod:`medrobust.config`: typed configs (YAML in, one-sentence errors out)
- :mod:`medrobust.data`: readers, manifests, MONAI transform chains, phantoms, splits
- :mod:`medrobust.models`: one registry, :func:`medrobust.models.create_model`
- :mod:`medrobust.tasks`: the per-sample contract shared by attacks, trainers and margins
- :mod:`medrobust.threat`: norms, budgets, intensity bounds and units
- :mod:`medrobust.attacks`: PGD, APGD, random search, white noise, AutoAttack, the segmentation ensemble
- :mod:`medrobust.training`: the engine and one module per robust-training method
- :mod:`medrobust.evaluation`: metrics, sweeps, reports
"""

from medrobust.errors import MedrobustError

__version__ = "0.1.0"
__all__ = ["MedrobustError", "__version__"]
