"""A real installed plugin: a distribution built and installed by pip into a site directory."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN_SRC = '''
import torch
import torch.nn.functional as F

from harness.algorithms.base import Algorithm
from harness.hparams import HP, log_uniform


class LabelSmoothERM(Algorithm):
    """ERM with label smoothing: a third-party algorithm living outside the harness."""

    HPARAMS = {"smoothing": HP(0.1, log_uniform(-3, -1))}

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=hparams["lr"])

    def update(self, minibatches):
        x = torch.cat([x for x, _ in minibatches]); y = torch.cat([y for _, y in minibatches])
        loss = F.cross_entropy(self.predict(x), y, label_smoothing=self.hparams["smoothing"])
        self.optimizer.zero_grad(); loss.backward(); self.optimizer.step()
        return {"loss": loss.item()}
'''

SETUP_CFG = '''
[metadata]
name = harness-plugin-demo
version = 0.1

[options]
py_modules = harness_plugin_demo, harness_plugin_broken

[options.entry_points]
harness.algorithms =
    LabelSmoothERM = harness_plugin_demo:LabelSmoothERM
    Broken = harness_plugin_broken:Broken
'''


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("plugin_src")
    (src / "harness_plugin_demo.py").write_text(PLUGIN_SRC)
    (src / "harness_plugin_broken.py").write_text("raise ImportError('this plugin is broken on purpose')\n")
    (src / "setup.cfg").write_text(SETUP_CFG)
    (src / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n')
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(src)], check=True, capture_output=True, text=True)
    assert list(site.glob("harness_plugin_demo-0.1.dist-info/entry_points.txt"))
    return site


def test_plugin_is_listed_and_broken_one_reported(cli, plugin_site):
    proc = cli("harness.list", "algorithms", env={"PYTHONPATH": str(plugin_site)})
    lines = proc.stdout.splitlines()
    assert "  LabelSmoothERM  (plugin)" in lines
    assert "  ERM" in lines
    assert any("Broken" in l and "failed to import" in l for l in lines)
    assert "broken on purpose" in proc.stderr


def test_plugin_trains_through_harness_train(cli, plugin_site, tmp_path):
    out = tmp_path / "run"
    cli("harness.train", "--dataset", "SyntheticLinear", "--algorithm", "LabelSmoothERM", "--steps", "30",
        "--checkpoint_freq", "30", "--output_dir", str(out), "--hparams", '{"smoothing": 0.2}',
        env={"PYTHONPATH": str(plugin_site)})
    records = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 30 and records[-1]["hparams"]["smoothing"] == 0.2
    assert records[-1]["env0_out_acc"] > 0.6
    assert (out / "done").exists()
