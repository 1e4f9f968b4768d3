from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout (real faces); tests using it skip where it is absent."""
    if not (SHARED / "README.md").is_file():
        pytest.skip("../shared/data is not beside the checkout")
    return SHARED


def _calibrate_batchnorm(model, input_size, passes: int = 3, batch: int = 16):
    """Set BatchNorm running statistics from a few train-mode passes of random input, then eval.

    A freshly initialised deep network in eval mode uses mean 0 / var 1 statistics that do not
    match its activations; through ~100 residual blocks they overflow (IResNet-100 gives NaN), so
    eval-mode comparisons of random models need this first."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the passes
    with torch.no_grad():
        model.train()
        for _ in range(passes):
            model(torch.randn(batch, 3, *input_size))
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


@pytest.fixture
def calibrate():
    return _calibrate_batchnorm
