"""Architectures: a small CNN for the digits, torchvision ResNets for DomainBed images."""
from __future__ import annotations

from torch import nn

from .._util import FlatlensError
from .small_cnn import SmallCNN, TinyMLP


_ALLOWED_FACTORIES: set[str] = set()


def allow_factory(spec: str) -> None:
    """Let `module` checkpoints built by `spec` ("package.module:callable") run that code in this process.
    Only a user's explicit --model (or this call) does so: a file that names a factory runs nothing by itself."""
    mod, sep, name = str(spec).partition(":")
    if not sep or not mod or not name.isidentifier():
        raise FlatlensError(f"--model must be package.module:callable; got {spec!r}")
    _ALLOWED_FACTORIES.add(spec)


def _from_factory(factory: str, **_) -> nn.Module:
    import importlib
    if factory not in _ALLOWED_FACTORIES:
        raise FlatlensError(f"the checkpoint is built by Python code ({factory}); pass --model {factory} to allow "
                            "running it")
    mod, _, name = factory.partition(":")
    # the user's code: whatever it raises (its own SystemExit and KeyboardInterrupt too) is the user's code failing,
    # reported in one line, never flatlens's exit status or a traceback
    try:
        fn = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as e:
        raise FlatlensError(f"--model {factory}: cannot import it ({type(e).__name__}: {e})") from None
    except BaseException as e:  # noqa: BLE001  (a module that raises on import, a syntax error, sys.exit)
        raise FlatlensError(f"--model {factory}: importing your module failed ({type(e).__name__}: "
                            f"{str(e)[:120]})") from None
    try:
        model = fn()
    except BaseException as e:  # noqa: BLE001
        raise FlatlensError(f"--model {factory}: your factory failed ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(model, nn.Module):
        raise FlatlensError(f"--model {factory} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


RESNETS = ("resnet18", "resnet50")  # torchvision's, built lazily (torchvision is an optional extra)

# name -> (builder, {kwarg: (type, lowest, highest)}): the one list of architectures a checkpoint may name, with
# the sane range of every constructor argument (a tampered width of 10^6 is refused, not allocated)
ARCHS = {
    "small_cnn": (lambda **k: SmallCNN(**k), {"in_channels": (int, 1, 64), "num_classes": (int, 2, 100_000),
                                            "width": (int, 1, 1024)}),
    "tiny_mlp": (lambda **k: TinyMLP(**k), {"in_features": (int, 1, 100_000), "hidden": (int, 1, 10_000),
                                          "num_classes": (int, 2, 100_000)}),
    **{n: (None, {"num_classes": (int, 2, 100_000), "pretrained": (bool, False, True)}) for n in RESNETS},
    "module": (_from_factory, {"factory": (str, None, None)}),   # a user's own model (--model pkg.mod:make)
}


def check_arch(name, kwargs) -> None:
    """One FlatlensError unless `name` is a known architecture and `kwargs` its known arguments in range."""
    if not isinstance(name, str) or name not in ARCHS:
        raise FlatlensError(f"unknown architecture {name!r} ({', '.join(ARCHS)})")
    if not isinstance(kwargs, dict):
        raise FlatlensError(f"architecture arguments must be a mapping; got {type(kwargs).__name__}")
    spec = ARCHS[name][1]
    for k, v in kwargs.items():
        if k not in spec:
            raise FlatlensError(f"{name} takes no argument {k!r} (known: {', '.join(spec)})")
        tp, lo, hi = spec[k]
        if tp is str and not isinstance(v, str):
            raise FlatlensError(f"{name} argument {k} must be a string; got {v!r}")
        if tp is int and (isinstance(v, bool) or not isinstance(v, int)) or tp is bool and not isinstance(v, bool):
            raise FlatlensError(f"{name} argument {k} must be {tp.__name__}; got {v!r}")
        if tp is int and not lo <= v <= hi:
            raise FlatlensError(f"{name} argument {k} = {v} is outside [{lo}, {hi}]")


def build(name: str, **kwargs) -> nn.Module:
    """Build an architecture by name with its kwargs (what a checkpoint's `arch` records)."""
    check_arch(name, kwargs)
    if name in RESNETS:
        from .resnet import resnet
        return resnet(name, **kwargs)
    return ARCHS[name][0](**kwargs)


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Keep every BatchNorm in eval mode (running statistics, no updates) even under model.train(),
    as DomainBed's ResNet does; the affine parameters still train."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.eval()
        m.train = lambda mode=True, _m=m: _m  # noqa: E731  stays in eval
    return model


__all__ = ["SmallCNN", "TinyMLP", "ARCHS", "RESNETS", "allow_factory", "build", "check_arch", "freeze_batchnorm"]
