"""docs/config_reference.md is generated from the config schemas and must not go stale."""

from __future__ import annotations

from medrobust import config_reference as ref


def test_config_reference_is_up_to_date():
    assert ref.DOC_PATH.is_file(), "docs/config_reference.md is missing; run python -m medrobust.config_reference"
    assert ref.DOC_PATH.read_text() == ref.render(), \
        "docs/config_reference.md is stale; run python -m medrobust.config_reference and commit the result"


def test_every_key_has_a_description_and_appears():
    assert ref.undocumented() == [], "add Field(description=...) or an entry in medrobust/config_reference.DESCRIPTIONS"
    text = ref.render()
    for key in ("data.preprocess.resize", "data.label_map", "iterations_per_epoch", "val_every", "inference.sliding_window",
                "data.label_threshold", "nsd_tolerance_mm"):
        assert f"`{key}`" in text, key


def test_reference_changes_when_a_schema_changes(monkeypatch):
    from medrobust.config import OptimConfig

    before = ref.render()
    monkeypatch.setitem(ref.DESCRIPTIONS, "OptimConfig.lr", "a different line")
    assert "a different line" in ref.render() and ref.render() != before
    assert "OptimConfig" in ref.render() and OptimConfig.model_fields["lr"].default == 1e-3
