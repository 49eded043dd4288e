import pytest
import torch

from modeconn import data
from modeconn.errors import DatasetNotFoundError


def test_embedded_digits_offline_and_real():
    train, test = data.digits(train=True), data.digits(train=False)
    assert (len(train), len(test)) == (1438, 359)
    x, y = test[0]
    assert x.shape == (1, 32, 32) and 0 <= y < 10
    # real digits, not noise: every class is present, and class means differ clearly
    labels = test.targets
    assert torch.bincount(labels, minlength=10).min() > 30
    means = torch.stack([test.data[labels == c].mean(0).flatten() for c in range(10)])
    assert torch.cdist(means, means).topk(2, largest=False).values[:, 1].min() > 1.0
    # training split is normalized
    assert abs(float(train.data.mean())) < 1e-4 and abs(float(train.data.std()) - 1) < 1e-3


def test_digits_augmentation_only_when_training():
    torch.manual_seed(0)
    train = data.digits(train=True)
    assert not torch.equal(train[0][0], train.data[0])
    test = data.digits(train=False)
    assert torch.equal(test[0][0], test.data[0])
    assert data.digits(train=False, image_size=8)[0][0].shape == (1, 8, 8)


def test_alignment_subset_is_deterministic_per_seed():
    ds = data.digits(train=True, augment=False)
    a = data.alignment_subset(ds, seed=1).indices
    assert a == data.alignment_subset(ds, seed=1).indices
    assert a != data.alignment_subset(ds, seed=2).indices
    assert len(a) == round(0.2 * len(ds)) and len(set(a)) == len(a)
    assert len(data.alignment_subset(ds, num_samples=100).indices) == 100
    with pytest.raises(ValueError, match="between 1 and"):
        data.alignment_subset(ds, num_samples=10**6)


def test_fixed_draws_augment_each_item_the_same_every_time_and_leave_the_callers_rng():
    train = data.digits(train=True)
    fixed = data.FixedDraws(train, seed=3)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = [fixed[i][0] for i in (4, 0, 4)]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(first[0], first[2]) and not torch.equal(first[0], train.data[4])  # augmented
    torch.manual_seed(99)
    assert torch.equal(fixed[0][0], first[1]) and fixed[0][1] == train[0][1]
    assert not torch.equal(data.FixedDraws(train, seed=4)[4][0], first[0]) and len(fixed) == len(train)


def test_missing_dataset_says_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"cifar-10-batches-py.*download=True"):
        data.cifar10(tmp_path)
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "train")):
        data.tiny_imagenet(tmp_path)
    with pytest.raises(ValueError, match="only 'digits' is embedded"):
        data.load_dataset("cifar100")


def test_tiny_imagenet_imagefolder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (64, 64), (10, 20, 30)).save(tmp_path / split / cls / "a.JPEG")
    ds = data.tiny_imagenet(tmp_path, train=False)
    x, y = ds[1]
    assert x.shape == (3, 64, 64) and y == 1


@pytest.mark.cifar
def test_local_cifar10_without_md5_check(cifar_root):
    with pytest.raises(DatasetNotFoundError, match="verify=False"):
        data.cifar10(cifar_root)  # the rebuilt copy fails torchvision's md5 check
    test = data.cifar10(cifar_root, train=False, verify=False)
    assert len(test) == 10_000
    x, y = test[0]
    assert x.shape == (3, 32, 32) and y == 3  # the official first test label: cat
