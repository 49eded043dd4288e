"""What the CIFAR-10 experiment scripts share: data arguments and the subsets they train on."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

import modeconn
from modeconn import DatasetNotFoundError, data

OUT = Path(__file__).resolve().parent / "out"  # the scripts' outputs, wherever they are run from


def add_data_args(p: argparse.ArgumentParser, *, train_size: int, test_size: int) -> None:
    p.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument(
        "--verify", action="store_true", help="check torchvision's md5s (off: the local copy is rebuilt)"
    )
    p.add_argument("--train-size", type=int, default=train_size)
    p.add_argument("--test-size", type=int, default=test_size)


@dataclass
class CifarSubsets:
    train: Subset  # augmented, for training
    align: Subset  # not augmented, 20% of the training subset, for alignment
    bn: DataLoader  # not augmented, 2,000 training images, for BatchNorm recomputation
    test: DataLoader


def cifar_subsets(args: argparse.Namespace, normalize: bool = True) -> CifarSubsets:
    """The fixed training subset (augmented), its alignment and BatchNorm parts, and the test
    subset; ``normalize=False`` keeps pixels in [0, 1] (for models that normalize inside)."""
    kw = dict(verify=args.verify, normalize=normalize)
    try:
        full_train = data.cifar10(args.root, train=True, **kw)
    except DatasetNotFoundError as e:  # an experiment without its data is skipped, not failed
        print(f"skipped: {e}", file=sys.stderr)
        raise SystemExit(0) from None
    plain_train = data.cifar10(args.root, train=True, augment=False, **kw)
    test = data.cifar10(args.root, train=False, **kw)
    idx = data.alignment_subset(full_train, num_samples=args.train_size, seed=0).indices
    return CifarSubsets(
        train=Subset(full_train, idx),
        align=data.alignment_subset(Subset(plain_train, idx), fraction=0.2, seed=0),
        bn=DataLoader(Subset(plain_train, idx[:2000]), batch_size=256),
        test=DataLoader(Subset(test, range(args.test_size)), batch_size=256),
    )


def quiet() -> dict:
    """Training options that print one line per epoch instead of a progress bar."""
    return dict(progress=False, callbacks=[lambda s: print(f"  {s.history[-1]}", flush=True)])


def trained_end_point(
    args: argparse.Namespace,
    sets: CifarSubsets,
    model: str,
    seed: int,
    checkpoint: Path,
    *,
    adversary=None,
    **model_options,
):
    """Model ``model`` (with ``model_options``) trained from ``seed`` on ``sets.train`` as
    ``args`` say (``--epochs``, ``--lr``, ``--lr-step``), against ``adversary`` if given,
    resumed from ``checkpoint``."""
    torch.manual_seed(seed)
    net = modeconn.create_model(model, num_classes=10, **model_options)
    modeconn.train_model(
        net,
        sets.train,
        epochs=args.epochs,
        lr=args.lr,
        lr_step=args.lr_step,
        adversary=adversary,
        checkpoint=checkpoint,
        **quiet(),
    )
    return net
