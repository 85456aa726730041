"""The one Registry (medrobust/registry.py) and its instances: attacks, methods, models, losses."""

import pytest

from medrobust.errors import ConfigError
from medrobust.registry import Registry, did_you_mean, look_up


def test_register_lookup_duplicate_and_filter():
    reg: Registry = Registry("widget")

    @reg.register(name="alpha", tasks=("segmentation",), dims=(2, 3))
    def alpha():
        return 1

    class Beta:
        name = "beta"

    reg.register(Beta, tasks=("segmentation", "classification"), dims=(2,))
    assert reg.lookup("alpha") is alpha and reg["beta"] is Beta and len(reg) == 2
    assert reg.names() == ["alpha", "beta"]
    assert reg.names(dims=3) == ["alpha"]
    assert reg.names(tasks="classification") == ["beta"]
    assert reg.names("b*") == ["beta"] and reg.names(dims=None) == ["alpha", "beta"]
    assert reg.meta("alpha") == {"tasks": ("segmentation",), "dims": (2, 3)}
    reg.register(Beta)  # the same object again (a re-import) is not a duplicate
    with pytest.raises(ConfigError, match=r"widget 'alpha' is registered twice .*give the new one another name"):
        reg.add("alpha", lambda: 2)
    with pytest.raises(ConfigError, match=r"unknown widget 'alpah'; did you mean 'alpha'\?"):
        reg.lookup("alpah")
    with pytest.raises(ConfigError, match=r"unknown widget 'zzz'; choose one of alpha, beta\."):
        reg.lookup("zzz")
    with pytest.raises(ConfigError, match="non-empty name"):
        reg.register(type("Nameless", (), {"name": ""}))


def test_helpers_cutoff():
    assert did_you_mean("trian", ["train", "eval"], "use one of train, eval.") == "did you mean 'train'?"
    assert did_you_mean("xyz", ["train"], "use one of train.") == "use one of train."
    with pytest.raises(ConfigError, match="unknown thing 'b'"):
        look_up("b", {"a": 1}, "thing")


def test_project_registries_refuse_duplicates_and_keep_metadata():
    from medrobust.attacks import ARTEFACTS, ATTACKS, PGD, register_attack
    from medrobust.attacks.losses import LOSSES, SEG_ONLY
    from medrobust.models import MODELS, list_models, required_multiple
    from medrobust.training import METHODS, register_method

    with pytest.raises(ConfigError, match="attack 'pgd' is registered twice"):
        register_attack(type("PGD2", (PGD,), {}))
    with pytest.raises(ConfigError, match="training method 'trades' is registered twice"):
        register_method(type("T2", (METHODS["trades"],), {}))
    assert set(ATTACKS.names(family="artefact")) == set(ARTEFACTS)
    assert "pgd" in ATTACKS.names(family="adversarial", tasks="classification")
    assert "autoattack" not in ATTACKS.names(tasks="segmentation")
    assert list_models("classification") == MODELS.names(task="classification") and "small_cnn" in list_models(pattern="small*")
    assert "smp_unet" not in MODELS.names(dims=3) and "unet" in MODELS.names(dims=3)
    assert SEG_ONLY == {"dice", "segpgd", "cospgd", "masked_ce", "masked_ce_bal", "js", "fg_to_bg"}
    assert set(LOSSES) - SEG_ONLY == {"ce", "dice_ce", "slm", "margin", "dlr"}
    # required input multiples now live with each model's registration
    assert required_multiple({"name": "unet", "params": {"strides": [2, 2, 2, 2]}}) == 16
    assert required_multiple({"name": "smp_unet", "params": {"encoder_depth": 4}}) == 16
    assert required_multiple({"name": "basic_unet"}) == 16 and required_multiple({"name": "small_cnn"}) == 1
    assert required_multiple({"name": "segresnet", "params": {"blocks_down": [1, 2, 2]}}) == 4
    assert required_multiple({"name": "dynunet", "params": {"levels": 5}}) == 16
    assert required_multiple({"name": "not_registered"}) == 1
