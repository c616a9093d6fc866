"""--dataset imagefolder:PATH: the user's own images in torchvision's ImageFolder layout."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from lbtkit.data import dataset_info, load_dataset
from lbtkit.errors import ConfigError, DataNotFoundError

from helpers import assert_user_error, invoke_cli

CLASSES = ("cat", "dog", "emu")


def write_image(path, image: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = image.permute(1, 2, 0).numpy()
    Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(path, quality=95)


def make_folder(root, *, per_class=(4, 2), val_name="val"):
    """Class c's images are filled with the value 40 * (c + 1): labels can be read back from
    pixels. Sizes, channels and formats vary as real folders do."""
    for split, count in zip(("train", val_name), per_class, strict=True):
        for label, name in enumerate(CLASSES):
            for i in range(count):
                channels = 1 if i == 1 else 3
                height, width = (20 + 4 * i, 30)  # not square, not the target size
                image = torch.full((channels, height, width), 40 * (label + 1), dtype=torch.uint8)
                suffix = ".jpg" if i == 2 else ".png"
                write_image(root / split / name / f"{i}{suffix}", image)
    return root


def test_reads_both_splits_as_square_rgb_with_sorted_class_labels(tmp_path):
    name = f"imagefolder:{make_folder(tmp_path / 'pets')}"
    info = dataset_info(name)
    assert (info.num_classes, info.channels) == (3, 3)
    data = load_dataset(name, "unused", image_size=16)
    assert data.train_images.shape == (12, 3, 16, 16) and data.val_images.shape == (6, 3, 16, 16)
    assert data.train_images.dtype == torch.uint8 and data.info.image_size == 16
    assert data.train_labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # Each image is its class's flat colour (JPEG may be off by a few levels).
    for images, labels in ((data.train_images, data.train_labels),
                           (data.val_images, data.val_labels)):
        centre = images[:, :, 8, 8].float()
        expected = (40 * (labels + 1)).float()[:, None].expand_as(centre)
        assert torch.allclose(centre, expected, atol=3)


def test_test_folder_serves_as_validation_split(tmp_path):
    name = f"imagefolder:{make_folder(tmp_path / 'pets', val_name='test')}"
    assert load_dataset(name, "unused", image_size=8).val_labels.shape == (6,)


@pytest.mark.parametrize("breakage,error,needle", [
    (lambda root: (root / "val" / "emu").rename(root / "val" / "yak"), ConfigError, "yak"),
    (lambda root: (root / "val").rename(root / "elsewhere"), ConfigError, "validation split"),
    (lambda root: (root / "train" / "cat" / "0.png").write_bytes(b"not a png"),
     DataNotFoundError, "0.png"),
])
def test_broken_folders_are_named(tmp_path, breakage, error, needle):
    root = make_folder(tmp_path / "pets")
    breakage(root)
    with pytest.raises(error, match=needle):
        load_dataset(f"imagefolder:{root}", "unused", image_size=8)


def test_missing_folder_is_one_line_through_the_cli(tmp_path):
    assert_user_error(invoke_cli("run", "--preset", "smoke", "--dataset",
                                 f"imagefolder:{tmp_path / 'nowhere'}", "--output",
                                 tmp_path / "run", tmp_path=tmp_path), "nowhere")


def test_trains_on_an_image_folder_through_the_cli(tmp_path):
    root = make_folder(tmp_path / "pets", per_class=(8, 2))
    run_dir = tmp_path / "run"
    invoke_cli("run", "--preset", "smoke", "--dataset", f"imagefolder:{root}", "--image-size",
               "16", "--batch-size", "8", "--epochs", "2", "--no-progress", "--output", run_dir,
               tmp_path=tmp_path, check=0)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["config"]["num_classes"] == 3
