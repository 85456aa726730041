"""Model registry: :func:`create_model` builds any model by name; specs travel in checkpoints."""

from medrobust.models.registry import (
    MODELS,
    SmallCNN,
    build_model,
    check_input_size,
    count_parameters,
    create_model,
    list_models,
    load_state_checked,
    register_model,
    required_multiple,
    resolve_spec,
)

__all__ = ["MODELS", "SmallCNN", "build_model", "check_input_size", "count_parameters", "create_model", "list_models",
           "load_state_checked", "register_model", "required_multiple", "resolve_spec"]
