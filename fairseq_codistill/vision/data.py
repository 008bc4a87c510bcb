"""Training and validation data: ImageNet in torchvision's ImageFolder layout, or
synthetic images (``--dummy``) for smoke runs and machines without torchvision."""
from __future__ import annotations

import os
from typing import Tuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from fairseq_codistill.vision.models import torchvision_or_none

# ImageNet's per-channel statistics, the usual torchvision normalisation.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DATASET_SEED = 0  # one synthetic "data set" for every model; models differ by sampler seed


class SyntheticImages(Dataset):
    """Gaussian noise images whose class shifts the mean of each channel.

    Learnable (losses fall, accuracies rise), deterministic per index and computed on
    the fly, so an ImageNet-sized dummy set costs no memory.
    """

    def __init__(self, size: int, num_classes: int, image_size: int, split: int = 0):
        self.size, self.num_classes, self.image_size = size, num_classes, image_size
        self.split = split  # train and validation draw different noise, same class means
        g = torch.Generator().manual_seed(DATASET_SEED)
        self.class_means = torch.randn(num_classes, 3, 1, 1, generator=g)  # (C, 3, 1, 1)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed((self.split << 40) + index)
        label = index % self.num_classes
        noise = torch.randn(3, self.image_size, self.image_size, generator=g)
        return self.class_means[label] + noise, label  # (3, S, S)


def require_torchvision(root: str):
    tv = torchvision_or_none()
    if tv is None:
        raise ValueError(f"--data {root} needs torchvision (ImageFolder), which is not "
                         "importable here; install torchvision or train on synthetic data with --dummy")
    return tv


def image_folder(root: str, train: bool, image_size: int) -> Dataset:
    """ImageNet's ``train/`` or ``val/`` with the standard augmentation (pytorch/examples)."""
    tv = require_torchvision(root)
    t = tv.transforms
    if train:
        steps = [t.RandomResizedCrop(image_size), t.RandomHorizontalFlip()]
    else:  # resize to 256 for a 224 crop, as in Goyal et al. and pytorch/examples
        steps = [t.Resize(round(image_size * 256 / 224)), t.CenterCrop(image_size)]
    transform = t.Compose(steps + [t.ToTensor(), t.Normalize(MEAN, STD)])
    return tv.datasets.ImageFolder(os.path.join(root, "train" if train else "val"), transform)


def build_datasets(args) -> Tuple[Dataset, Dataset, int]:
    """(train, val, num_classes); the training set cut to ``--train-fraction``."""
    if args.dummy:
        num_classes = args.num_classes or 1000
        train = SyntheticImages(args.dummy_train_size, num_classes, args.image_size, split=0)
        val = SyntheticImages(args.dummy_val_size, num_classes, args.image_size, split=1)
    else:
        train = image_folder(args.data, True, args.image_size)
        val = image_folder(args.data, False, args.image_size)
        num_classes = len(train.classes)
        if args.num_classes and args.num_classes != num_classes:
            raise ValueError(f"--num-classes {args.num_classes} but {args.data}/train has "
                             f"{num_classes} class folders")
    if args.train_fraction < 1:
        # The same subset for every model and seed: the data set is 1/k of ImageNet.
        g = torch.Generator().manual_seed(DATASET_SEED)
        keep = torch.randperm(len(train), generator=g)[: max(1, round(len(train) * args.train_fraction))]
        train = Subset(train, sorted(keep.tolist()))
    return train, val, num_classes


def train_loader(train: Dataset, batch_size: int, workers: int, seed: int, rank: int, world: int,
                 pin_memory: bool) -> DataLoader:
    """This rank's shard, reshuffled every epoch (``sampler.set_epoch``); ``seed`` sets this
    model's order of batches."""
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True,
                                 seed=seed, drop_last=True)
    return DataLoader(train, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, drop_last=True, persistent_workers=workers > 0)


def val_loader(val: Dataset, batch_size: int, workers: int, rank: int, world: int,
               pin_memory: bool) -> DataLoader:
    """A strided shard per rank, no padding, so that counts summed over ranks are exact."""
    return DataLoader(Subset(val, range(rank, len(val), world)), batch_size=batch_size,
                      shuffle=False, num_workers=workers, pin_memory=pin_memory)
