"""Checkpoints: a dict of plain containers and tensors, written atomically, loaded with
torch.load(weights_only=True) and validated. Nothing here ever unpickles arbitrary objects.

Keys: format, version, arch {name, kwargs}, state_dict (latent weights, original names), quant (None or
{bits, per_channel, start_step, layers, steps}), data {dataset, root, domains, train_domains, test_domains,
split_seed, holdout}, train (config), history (list of eval records), metrics.
"""
from __future__ import annotations

import os
import pickle
import warnings
import zipfile

import torch
from torch import nn

from ._util import FlatlensError, atomic_torch_save, sha256_file

FORMAT = "flatlens-checkpoint"
VERSION = 1
REQUIRED = ("format", "version", "arch", "state_dict", "quant", "data", "train", "history", "metrics")


def save_checkpoint(path, ckpt: dict) -> None:
    ckpt = {"format": FORMAT, "version": VERSION, **ckpt}
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise FlatlensError(f"checkpoint lacks {', '.join(missing)}")
    atomic_torch_save(ckpt, path)


def _safe_load(path):
    """torch.load(weights_only=True) with every failure turned into one clear line."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FlatlensError(f"{path}: no such file")
    if os.path.isdir(path):
        raise FlatlensError(f"{path}: is a directory, not a checkpoint")
    if os.path.getsize(path) == 0:
        raise FlatlensError(f"{path}: empty file, not a checkpoint")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:2] != b"PK" and head[:1] != b"\x80":
        raise FlatlensError(f"{path}: not a checkpoint (neither a torch zip archive nor a pickle)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported" in str(e) or "global" in str(e).lower():
            raise FlatlensError(f"{path}: refused, it holds Python objects that a safe load does not run "
                                "(not a flatlens checkpoint)") from None
        raise FlatlensError(f"{path}: not a checkpoint ({first[:120]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError,
            UnicodeDecodeError, AttributeError, TypeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "zip" in msg.lower() or "archive" in msg.lower() or isinstance(e, EOFError):
            raise FlatlensError(f"{path}: truncated or corrupt checkpoint (incomplete archive)") from None
        raise FlatlensError(f"{path}: not a checkpoint ({msg[:120]})") from None


def load_checkpoint(path) -> dict:
    """Load and validate a flatlens checkpoint; anything else gets a one-line FlatlensError."""
    ckpt = _safe_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise FlatlensError(f"{path}: not a flatlens checkpoint (another format)")
    if ckpt.get("version") != VERSION:
        raise FlatlensError(f"{path}: checkpoint version {ckpt.get('version')!r}, this flatlens reads {VERSION}")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise FlatlensError(f"{path}: checkpoint lacks {', '.join(missing)}")
    if not isinstance(ckpt["state_dict"], dict) or not all(isinstance(v, torch.Tensor)
                                                           for v in ckpt["state_dict"].values()):
        raise FlatlensError(f"{path}: malformed state_dict")
    arch = ckpt["arch"]
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str):
        raise FlatlensError(f"{path}: malformed arch")
    q = ckpt["quant"]
    if q is not None and not (isinstance(q, dict) and isinstance(q.get("steps"), dict) and "bits" in q):
        raise FlatlensError(f"{path}: malformed quant entry")
    ckpt["path"] = os.fspath(path)
    ckpt["sha256"] = sha256_file(path)
    return ckpt


def build_model(ckpt: dict, weights: str = "deployed") -> nn.Module:
    """The plain architecture with the checkpoint's deployed (default) or latent weights, in eval mode."""
    from .models import build
    from .quant import deployed_state_dict

    if weights not in ("deployed", "latent"):
        raise FlatlensError("weights must be 'deployed' or 'latent'")
    model = build(ckpt["arch"]["name"], **ckpt["arch"].get("kwargs", {}))
    sd = ckpt["state_dict"] if weights == "latent" else deployed_state_dict(ckpt["state_dict"], ckpt["quant"])
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise FlatlensError(f"{ckpt.get('path', 'checkpoint')}: weights do not fit {ckpt['arch']['name']} "
                            f"({str(e).splitlines()[0][:100]})") from None
    return model.eval()


def weights_label(ckpt: dict, weights: str = "deployed") -> str:
    """What every output says about which weights were measured."""
    if not ckpt.get("quant"):
        return "full-precision weights"
    q = ckpt["quant"]
    if weights == "latent":
        return f"latent (unquantized) weights of a {q['bits']}-bit model"
    return f"deployed {q['bits']}-bit weights s*round(clip(w/s))"
