"""Short fits on the real data sets in ../shared/data (beside the clone, as in CI): the files, the readers, the
normalisation and the model wiring together, on the images users train on. Skipped where the data is absent."""

from __future__ import annotations

import re

import pytest

import proj.fit
from conftest import CONFIGS, ROOT

pytestmark = pytest.mark.slow

SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.mark.parametrize(
    ("config", "folder", "at_least"),
    [
        ("cnn.yaml", "MNIST", 0.95),
        ("fashion_cnn.yaml", "FashionMNIST", 0.80),
        ("fashion_mlp.yaml", "FashionMNIST", 0.78),
    ],
)
def test_short_fit_on_real_data_learns(tmp_path, capsys, config, folder, at_least):
    if not (SHARED_DATA / folder / "raw").is_dir():
        pytest.skip(f"no {folder} in {SHARED_DATA}")
    logs = tmp_path / "logs"
    flags = ["--config", str(CONFIGS / config), "--data.data_dir", str(SHARED_DATA), "--trainer.max_epochs", "1"]
    flags += ["--trainer.limit_train_batches", "150", "--trainer.limit_val_batches", "10"]
    flags += ["--trainer.logger.init_args.save_dir", str(logs), "--trainer.enable_progress_bar", "false"]
    proj.fit.main(flags)
    out = capsys.readouterr().out
    match = re.search(r"Test accuracy: (\d+\.\d\d)%", out)
    assert match, out[-2000:]
    assert float(match[1]) / 100 >= at_least  # on the whole official test set, after 150 batches
    assert re.search(r"class +accuracy +images", out)  # the per-class table, with the data set's class names
