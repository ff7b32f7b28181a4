"""Temperature calibration (zoo/calibrate.py): the fit finds the temperature that generated the
data, folding it into the weights divides the logits by it, and what cannot be folded is refused."""

import math

import pytest
import torch
from torch import nn

from zoo.calibrate import calibrate_image_model, fit_temperature, fold_temperature, temperature_nll
from zoo.data.pixels import PixelDataModule
from zoo.models.image_transformer import image_transformer_tiny


def test_the_fit_recovers_the_temperature_that_sharpened_the_logits():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 16, generator=g) * 2
    targets = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(-1)  # drawn from softmax(z)
    t = fit_temperature(2.5 * z, targets)  # an over-confident model: logits 2.5 times too large
    assert abs(t - 2.5) < 0.1
    best = temperature_nll(2.5 * z, targets, t)
    assert best < temperature_nll(2.5 * z, targets, 1.0)
    assert best <= min(temperature_nll(2.5 * z, targets, t * f) for f in (0.98, 1.02))


def test_an_under_confident_model_gets_a_temperature_below_one():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5000, 8, generator=g) * 3
    targets = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(-1)
    t = fit_temperature(z / 2, targets, chunk=1000)
    assert t < 0.6 and abs(t - fit_temperature(z / 2, targets)) < 1e-6  # chunked sums give the same fit


def test_folding_divides_the_networks_logits_by_the_temperature():
    net = image_transformer_tiny().eval()
    tokens = torch.randint(0, 17, (2, 64), generator=torch.Generator().manual_seed(0))
    before = net(tokens)
    fold_temperature(net, 1.3)
    torch.testing.assert_close(net(tokens), before / 1.3, atol=1e-5, rtol=1e-5)


def test_what_cannot_be_calibrated_is_refused_in_one_line():
    with pytest.raises(ValueError, match="only a softmax output"):
        fold_temperature(image_transformer_tiny(output="dmol"), 1.1)

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.out_proj = nn.Linear(4, 10)
            self.out_proj.weight = self.embed.weight

    with pytest.raises(ValueError, match="tied to embed.weight"):
        fold_temperature(Tied(), 1.1)
    with pytest.raises(ValueError, match="positive number"):
        fold_temperature(image_transformer_tiny(), -1.0)
    with pytest.raises(ValueError, match=r"logits \(N, K\) and targets \(N,\)"):
        fit_temperature(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))
    assert math.isfinite(temperature_nll(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long), 1.0))


def test_a_run_that_trained_on_its_validation_images_folds_a_given_temperature_instead():
    class Task:  # what calibrate_image_model reads of an ImageTask
        net = image_transformer_tiny().eval()

    dm = PixelDataModule(source="digits", train_on_val=True)
    with pytest.raises(ValueError, match="trained on its validation images.*--temperature T"):
        calibrate_image_model(Task, dm)
    tokens = torch.randint(0, 17, (2, 64), generator=torch.Generator().manual_seed(0))
    before = Task.net(tokens)
    assert calibrate_image_model(Task, dm, temperature=1.25) == {"temperature": 1.25, "fitted_on": "given"}
    torch.testing.assert_close(Task.net(tokens), before / 1.25, atol=1e-5, rtol=1e-5)
