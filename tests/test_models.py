"""Model registry: every model in 2D and 3D, the no-download default, input sizes, foreign checkpoints."""

from __future__ import annotations

import pytest
import torch

from medrobust.errors import CheckpointError, ConfigError
from medrobust.models import MODELS, build_model, check_input_size, create_model, load_state_checked, resolve_spec


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("dims", [2, 3])
def test_every_model_builds_and_runs(name, dims):
    entry = MODELS[name]
    if dims not in entry.dims:
        with pytest.raises(ConfigError, match="supports"):
            create_model(name, dims, 1, 3)
        return
    m = create_model(name, dims, 2, 3).eval()
    x = torch.randn(1, 2, *([32] * dims))
    with torch.no_grad():
        y = m(x)
    assert y.shape == ((1, 3, *([32] * dims)) if entry.task == "segmentation" else (1, 3))


def test_smp_models_do_not_download_weights_by_default():
    spec = resolve_spec("smp_unet", 2, 1, 2, "segmentation")
    assert spec["params"]["encoder_weights"] is None


def test_unknown_model_and_bad_params():
    with pytest.raises(ConfigError, match="did you mean 'unet'"):
        create_model("uent", 2, 1, 2)
    with pytest.raises(ConfigError, match="does not take the parameter 'wat'"):
        create_model("unet", 2, 1, 2, wat=3)
    with pytest.raises(ConfigError, match="classification model but the task is segmentation"):
        resolve_spec("small_cnn", 2, 1, 2, "segmentation")


def test_input_size_must_fit_downsampling():
    spec = resolve_spec("unet", 2, 1, 2, "segmentation")
    check_input_size(spec, [64, 48])
    with pytest.raises(ConfigError, match=r"divisible by 8.*\[40, 48\]"):
        check_input_size(spec, [36, 48])


def test_checkpoint_of_another_model_is_named():
    a = create_model("unet", 2, 1, 3)
    b = create_model("unet", 2, 1, 4)
    with pytest.raises(CheckpointError, match="different model"):
        load_state_checked(b, a.state_dict(), "a.pt")
    c = build_model(resolve_spec("unet", 2, 1, 3, "segmentation"))
    load_state_checked(c, a.state_dict(), "a.pt")
