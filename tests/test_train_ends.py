"""`fne train`'s loose ends: numpy numbers as options, a full disk as the run's files are written.

Random EfficientNet-Lite0 weights at 32x32 on a few digits: the mechanics, not accuracy.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fne.training import checkpoint
from fne.training.train import train

from .conftest import write_digits

pytest.importorskip("efficientnet_lite_pytorch")

ARCH = "efficientnet_lite0"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory):
    """10 digits of each of 2 classes as PNG files."""
    return write_digits(tmp_path_factory.mktemp("ends") / "data", per_class=10, classes=2)


def test_train_takes_numpy_numbers_and_records_python_ones(two_classes, tmp_path):
    """Every numeric option as a numpy number (as `fne.fit` takes them): random.seed refused
    np.int64 and torch's DataLoader np.int64 batch sizes; metrics.json and the checkpoint's
    arguments hold Python numbers (a checkpoint of numpy scalars would not load weights-only)."""
    given = dict(seed=np.int64(4), batch_size=np.int64(8), epochs=np.int64(1), lr=np.float32(0.01),
                 momentum=np.float32(0.5), image_size=np.int32(32), workers=np.int64(0), save_every=np.int64(1),
                 val_fraction=np.float32(0.25))
    m = train(str(two_classes), "scratch", tmp_path / "run", arch=ARCH, progress=False, **given)
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())
    args = checkpoint.read(tmp_path / "run" / checkpoint.CHECKPOINT)["args"]
    for k, v in given.items():
        kind = int if isinstance(v, np.integer) else float
        assert type(args[k]) is kind and args[k] == pytest.approx(float(v)), k
        if k != "save_every":  # the others are in metrics.json, as fit records its options
            assert type(m[k]) is kind and type(recorded[k]) is kind and recorded[k] == pytest.approx(float(v)), k
    assert m["seed"] == 4 and m["batch_size"] == 8 and m["image_size"] == 32 and m["epochs"] == 1
