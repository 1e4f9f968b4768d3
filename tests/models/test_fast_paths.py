"""Every backbone under channels_last and bf16 autocast; torch.compile; gradient checkpointing."""

import os

import pytest
import torch

from facerec.models import create_model, list_models

SMALL = (32, 32)  # every family accepts it (the embedding layer follows the input size)


def small_model(calibrate, name, **kw):
    torch.manual_seed(0)
    return calibrate(create_model(name, input_size=SMALL, embedding_size=64, **kw), SMALL, passes=2, batch=8)


@pytest.mark.parametrize("name", list_models())
def test_every_backbone_shape_and_determinism_at_a_small_input(name, calibrate):
    m = small_model(calibrate, name)
    x = torch.randn(2, 3, *SMALL)
    with torch.no_grad():
        y1, y2 = m(x), m(x)
        y3 = m.forward_head(m.forward_features(x))
    assert y1.shape == (2, 64) and torch.equal(y1, y2) and torch.equal(y1, y3)


@pytest.mark.parametrize("name", list_models())
def test_channels_last_and_bf16_autocast_match_fp32(name, calibrate):
    m = small_model(calibrate, name)
    x = torch.randn(2, 3, *SMALL)
    with torch.no_grad():
        ref = m(x)
        cl = m.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(cl, ref, atol=1e-4 * float(ref.abs().max()), rtol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m(x.contiguous(memory_format=torch.channels_last))
    assert torch.isfinite(low.float()).all()
    cos = torch.nn.functional.cosine_similarity(low.float(), ref, dim=1)
    assert cos.min() > 0.98, cos  # bf16 keeps ~3 significant digits through the whole network


@pytest.mark.parametrize("name", ["iresnet18", "ir_se50"])
def test_gradient_checkpointing_gives_the_same_gradients(name, calibrate):
    x = torch.randn(2, 3, *SMALL)
    grads = []
    for ckpt in (False, True):
        m = small_model(calibrate, name, grad_checkpointing=ckpt).train()
        m(x).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mbf", "r50"])
def test_torch_compile(name, calibrate):
    if os.environ.get("FACEREC_SKIP_COMPILE"):
        pytest.skip("FACEREC_SKIP_COMPILE is set")
    m = small_model(calibrate, name)
    x = torch.randn(2, 3, *SMALL)
    compiled = torch.compile(m)
    with torch.no_grad():
        ref, got = m(x), compiled(x)
    torch.testing.assert_close(got, ref, atol=1e-4 * float(ref.abs().max()), rtol=1e-3)


@pytest.mark.parametrize("name", list_models())
def test_every_backbone_round_trips_through_checkpoint_and_safetensors(name, calibrate, tmp_path):
    from facerec.export import save_safetensors
    from facerec.models import load_checkpoint, save_model

    m = small_model(calibrate, name)
    x = torch.randn(2, 3, *SMALL)
    with torch.no_grad():
        ref = m(x)
    for path in (tmp_path / "m.pt", tmp_path / "m.safetensors"):
        (save_model if path.suffix == ".pt" else save_safetensors)(m, path)
        back = load_checkpoint(path)
        assert back.arch == m.arch and back.preprocess == m.preprocess
        with torch.no_grad():
            assert torch.equal(back(x), ref)
        path.unlink()
