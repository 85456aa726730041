"""Tiny nnU-Net v2 trained-model folders and MONAI bundles, built offline for the model-source tests.

``make_nnunet_folder`` writes an nnU-Net raw dataset of phantom volumes, a hand-written minimal
``plans.json`` (a 3-stage PlainConvUNet, 2d or 3d configuration), ``dataset.json`` and
``dataset_fingerprint.json``, builds the network with nnU-Net's ``get_network_from_plans``, trains
it for a few dozen steps (so its predictions are not trivial) and saves
``fold_0/checkpoint_final.pth`` in nnU-Net's own format (NumPy scalars included, as nnU-Net writes them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

ARCH_2D = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {"n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.modules.conv.Conv2d",
                    "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]], "n_conv_per_stage": [2, 2, 2],
                    "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
                    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
                    "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}


def arch(dims: int) -> dict:
    a = json.loads(json.dumps(ARCH_2D))
    if dims == 3:
        k = a["arch_kwargs"]
        k["conv_op"] = "torch.nn.modules.conv.Conv3d"
        k["norm_op"] = "torch.nn.modules.instancenorm.InstanceNorm3d"
        k["kernel_sizes"] = [[1, 3, 3], [3, 3, 3], [3, 3, 3]]
        k["strides"] = [[1, 1, 1], [1, 2, 2], [1, 2, 2]]
    return a


def set_nnunet_env(tmp: Path) -> dict[str, str]:
    env = {"nnUNet_raw": str(tmp / "nnUNet_raw"), "nnUNet_preprocessed": str(tmp / "nnUNet_preprocessed"),
           "nnUNet_results": str(tmp / "nnUNet_results"), "nnUNet_n_proc_DA": "0"}
    for k, v in env.items():
        Path(v).mkdir(parents=True, exist_ok=True) if k != "nnUNet_n_proc_DA" else None
        os.environ[k] = v
    return env


def make_nnunet_folder(tmp: Path, configuration: str = "2d", scheme: str = "ZScoreNormalization", steps: int = 40,
                       size=(48, 40, 6), n_cases: int = 4, transpose=(0, 1, 2)) -> tuple[Path, Path]:
    """Returns ``(trained-model folder, raw dataset folder)`` under ``tmp``."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from medrobust.models.sources.nnunet_dataset import write_nnunet_phantoms

    env = set_nnunet_env(tmp)
    raw = write_nnunet_phantoms(env["nnUNet_raw"], 501, "Phantoms", n_cases=n_cases, size=list(size), n_test=0, n_structures=2)
    dj = json.loads((raw / "dataset.json").read_text())
    if scheme == "CTNormalization":
        dj["channel_names"] = {"0": "CT"}
        (raw / "dataset.json").write_text(json.dumps(dj))
    dims = 2 if configuration == "2d" else 3
    from medrobust.data.readers import read_image

    vols = [(read_image(str(raw / "imagesTr" / f"phantom_{i:03d}_0000.nii.gz"))[0].numpy(),
             read_image(str(raw / "labelsTr" / f"phantom_{i:03d}.nii.gz"), as_label=True)[0].numpy()) for i in range(n_cases)]
    allv = np.concatenate([v[0][v[1] > 0] for v in vols])
    fp = {"mean": float(allv.mean()), "std": float(allv.std()), "min": float(allv.min()), "max": float(allv.max()),
          "median": float(np.median(allv)), "percentile_00_5": float(np.percentile(allv, 0.5)),
          "percentile_99_5": float(np.percentile(allv, 99.5))}
    shape_t = [[size[2], size[1], size[0]][a] for a in transpose]  # nnU-Net's (z, y, x), transposed
    patch = [min(32, s // 4 * 4) for s in shape_t[1:]] if dims == 2 else [4, 32, 32]
    cfg = {"data_identifier": f"nnUNetPlans_{configuration}", "preprocessor_name": "DefaultPreprocessor", "batch_size": 4,
           "patch_size": patch, "median_image_size_in_voxels": [size[1], size[0]] if dims == 2 else [size[2], size[1], size[0]],
           "spacing": [1.0, 1.0] if dims == 2 else [1.0, 1.0, 1.0], "normalization_schemes": [scheme], "use_mask_for_norm": [False],
           "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
           "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
           "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
           "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
           "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
           "architecture": arch(dims), "batch_dice": True}
    plans = {"dataset_name": raw.name, "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
             "original_median_shape_after_transp": [size[2], size[1], size[0]], "image_reader_writer": "SimpleITKIO",
             "transpose_forward": list(transpose), "transpose_backward": [list(transpose).index(i) for i in range(3)],
             "configurations": {configuration: cfg}, "experiment_planner_used": "ExperimentPlanner",
             "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {"0": fp}}
    n_out = len(dj["labels"])
    torch.manual_seed(0)
    net = get_network_from_plans(cfg["architecture"]["network_class_name"], cfg["architecture"]["arch_kwargs"],
                                 cfg["architecture"]["_kw_requires_import"], 1, n_out, deep_supervision=False)
    # a few training steps on nnU-Net-normalised data in nnU-Net's axis order ((z, y, x), transposed)
    xs, ys = [], []
    for img, lab in vols:
        if scheme == "CTNormalization":
            a = (np.clip(img, fp["percentile_00_5"], fp["percentile_99_5"]) - fp["mean"]) / fp["std"]
        else:
            a = (img - img.mean()) / img.std()
        a, lab = a.T.transpose(transpose), lab.T.transpose(transpose)
        xs.append(torch.as_tensor(a, dtype=torch.float32))
        ys.append(torch.as_tensor(lab, dtype=torch.long))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        i = int(torch.randint(len(xs), (1,), generator=g))
        x, y = xs[i], ys[i]
        if dims == 2:
            z = int(torch.randint(x.shape[0], (1,), generator=g))
            x, y = x[z], y[z]
        starts = [int(torch.randint(s - p + 1, (1,), generator=g)) for s, p in zip(x.shape, patch)]
        sl = tuple(slice(s, s + p) for s, p in zip(starts, patch))
        loss = torch.nn.functional.cross_entropy(net(x[sl][None, None]), y[sl][None])
        opt.zero_grad()
        loss.backward()
        opt.step()
    folder = Path(env["nnUNet_results"]) / raw.name / f"nnUNetTrainer__nnUNetPlans__{configuration}"
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dj, indent=1))
    (folder / "dataset_fingerprint.json").write_text(json.dumps({"foreground_intensity_properties_per_channel": {"0": fp}}))
    ck = {"network_weights": net.state_dict(), "optimizer_state": opt.state_dict(), "grad_scaler_state": None,
          "logging": {"train_losses": [np.float32(loss.item())], "ema_fg_dice": [np.float32(0.5)]}, "_best_ema": np.float32(0.5),
          "current_epoch": 1, "init_args": {"plans": plans, "configuration": configuration, "fold": 0, "dataset_json": dj,
                                            "device": torch.device("cpu")},
          "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": tuple(range(dims))}
    torch.save(ck, folder / "fold_0" / "checkpoint_final.pth")
    return folder, raw


def nnunet_predict(folder: Path, image_files: list[str], mirroring: bool = True, folds=(0,)) -> list[tuple[np.ndarray, np.ndarray]]:
    """nnU-Net's own predictor (``nnUNetPredictor``) on raw image files: (label map, probabilities) in (x, y, z) order."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring, perform_everything_on_device=False,
                           device=torch.device("cpu"), verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(folder), use_folds=tuple(folds), checkpoint_name="checkpoint_final.pth")
    out = []
    for f in image_files:
        img, props = SimpleITKIO().read_images([f])
        seg, prob = pred.predict_single_npy_array(img, props, None, None, True)
        prob = np.asarray(prob)  # (K, z, y, x)
        out.append((np.asarray(seg).T, prob.transpose(0, *range(prob.ndim - 1, 0, -1))))  # -> (x, y, z)
    return out


def medrobust_predict(model, data_cfg: dict, label_map: dict[int, str]) -> dict[str, np.ndarray]:
    """medrobust's clean softmax probabilities ``(K, x, y, z)`` (whole cases through the data chain and the model), by case id."""
    from medrobust.config import DataConfig, parse_config
    from medrobust.data.datasets import DataModule
    from medrobust.inference import predict_case

    cfg = parse_config(DataConfig, data_cfg, "test data")
    dm = DataModule(cfg, "segmentation", label_map=label_map)
    out = {}
    for c in dm.prepared("all"):
        logits = predict_case(model, c.image, int(cfg.dims or c.image.ndim - 1), cfg.slice_axis, batch_size=8)
        out[c.case_id] = torch.softmax(logits, 0).numpy()
    return out


# ============================================================================ MONAI bundle
def make_bundle(tmp: Path, n_cases: int = 3, expression: bool = False) -> tuple[Path, Path]:
    """A tiny 2D MONAI bundle (UNet, window preprocessing, sliding-window inferer) and an MSD phantom dataset.

    Returns ``(bundle folder, dataset.json)``.
    """
    from monai.networks.nets import UNet

    from medrobust.data.phantoms import write_phantom_dataset

    ds = Path(write_phantom_dataset(str(tmp / "phantoms2d"), n_cases, [48, 40], n_structures=2))
    b = tmp / "bundle"
    (b / "configs").mkdir(parents=True, exist_ok=True)
    (b / "models").mkdir(parents=True, exist_ok=True)
    net_def = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 3,
               "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1, "norm": "instance"}
    cfg = {
        "bundle_root": ".",
        "device": "cpu",
        "network_def": net_def,
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image", "channel_dim": "no_channel"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": 0.0, "a_max": 1000.0, "b_min": 0.0, "b_max": 1.0, "clip": True},
            {"_target_": "EnsureTyped", "keys": "image"}]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32], "sw_batch_size": 2, "overlap": 0.25, "mode": "gaussian"},
    }
    if expression:
        cfg["device"] = "$torch.device('cpu')"
    (b / "configs" / "inference.json").write_text(json.dumps(cfg, indent=1))
    meta = {"version": "0.1.0", "changelog": {"0.1.0": "tiny test bundle"},
            "network_data_format": {"inputs": {"image": {"num_channels": 1}},
                                    "outputs": {"pred": {"channel_def": {"0": "background", "1": "organ_a", "2": "organ_b"}}}}}
    (b / "configs" / "metadata.json").write_text(json.dumps(meta, indent=1))
    torch.manual_seed(0)
    net = UNet(**{k: v for k, v in net_def.items() if k != "_target_"})
    torch.save(net.state_dict(), b / "models" / "model.pt")
    return b, ds


def bundle_predict(bundle: Path, image_files: list[str]) -> list[np.ndarray]:
    """The bundle's own inference config (preprocessing + network + inferer): softmax ``(K, x, y)`` per image."""
    from monai.bundle import ConfigParser

    p = ConfigParser()
    p.read_config(str(bundle / "configs" / "inference.json"))
    p["bundle_root"] = str(bundle)
    net = p.get_parsed_content("network_def", lazy=False)
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    net.eval()
    pre = p.get_parsed_content("preprocessing", lazy=False)
    inferer = p.get_parsed_content("inferer", lazy=False)
    out = []
    with torch.no_grad():
        for f in image_files:
            x = pre({"image": f})["image"]
            y = inferer(torch.as_tensor(x)[None].float(), net)[0]
            out.append(torch.softmax(torch.as_tensor(y), 0).numpy())
    return out
