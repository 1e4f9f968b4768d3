"""Mixed precision and the NaN/Inf guard: fp16 with GradScaler (on CPU here), the head in fp32,
skipped steps, the consecutive-bad-steps limit, the loss scale in checkpoints and on resume."""

import contextlib
import io
import json

import pytest
import torch

from facerec.config import load_config
from facerec.train import engine
from facerec.train.engine import TrainingDiverged, train
from facerec.train.runtime import Runtime

# 96 images in batches of 8: 12 steps per epoch; fp16 is emulated on this CPU, so the model is tiny
TINY = [
    "model.input_size=[32, 32]", "model.embedding_size=32", "model.options={width_mult: 0.25}",
    "data.synthetic.identities=12", "data.synthetic.images_per_identity=8", "data.synthetic.val_identities=4",
    "data.synthetic.val_pairs=20", "data.synthetic.image_size=32", "train.batch_size=8", "train.log_every=1",
    "head.s=16.0", "head.m=0.2", "optim.lr=0.05", "optim.schedule=constant", "optim.warmup_epochs=0",
    "eval.every_epochs=0", "train.epochs=0.24",  # 3 steps
]
INIT_SCALE = 1024.0  # below GradScaler's default 65536, which overflows this model's first steps


def _fp16_runtime() -> Runtime:
    return Runtime(torch.device("cpu"), "fp16", scaler=torch.amp.GradScaler("cpu", init_scale=INIT_SCALE))


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _poisoning_builder(real_build, record, bad_calls, kind):
    """A backbone builder whose model makes the loss NaN (`kind="loss"`) or one gradient element
    +inf (`kind="grad"`, an fp16 overflow) on the forward/backward calls numbered in `bad_calls`
    (1-based); `record["weights"][i]` are the parameters at forward call i + 1 (BatchNorm
    statistics change in every training forward, so they are left out)."""

    def build(cfg):
        model = real_build(cfg)
        record["weights"], counts = [], {"forward": 0, "backward": 0}

        def forward_hook(module, inputs, output):
            counts["forward"] += 1
            record["weights"].append({k: v.detach().clone() for k, v in module.named_parameters()})
            if kind == "loss" and counts["forward"] in bad_calls:
                return output * float("nan")
            return None

        def grad_hook(grad):
            counts["backward"] += 1
            if kind == "grad" and counts["backward"] in bad_calls:
                grad = grad.clone()
                grad[(0,) * grad.dim()] = float("inf")
            return grad

        model.register_forward_hook(forward_hook)
        next(model.parameters()).register_hook(grad_hook)
        return model

    return build


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


def _cfg(cache, *extra):
    return load_config(None, [*TINY, f"data.cache_dir={cache}", *extra])


def _poisoned_train(cfg, run_dir, runtime, bad_calls, kind):
    """`train` with the poisoned backbone; returns (result or the exception, weights record, console text)."""
    record, console = {}, io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(console):
        mp.setattr(engine, "build_backbone", _poisoning_builder(engine.build_backbone, record, bad_calls, kind))
        try:
            out = train(cfg, run_dir, runtime=runtime)
        except TrainingDiverged as exc:
            out = exc
    return out, record, console.getvalue()


@pytest.fixture(scope="module")
def fp16_overflow_run(cache, tmp_path_factory):
    """fp16, 3 steps, +inf in a gradient on the 2nd backward (an overflow the scaler must skip)."""
    run = tmp_path_factory.mktemp("fp16") / "run"
    cfg = _cfg(cache, "train.precision=fp16", "train.checkpoint_every=1", "train.keep_last=10")
    runtime = _fp16_runtime()
    result, record, console = _poisoned_train(cfg, run, runtime, {2}, "grad")
    return cfg, run, runtime, result, record, console


@pytest.mark.slow  # the first fp16 training in a process: ~20 s of CPU kernel set-up
def test_fp16_trains_on_cpu_from_the_config(cache, tmp_path):
    """`train.precision: fp16` end to end with GradScaler's defaults: the first steps overflow at
    scale 65536 and are skipped (each halving the scale), then training goes on with finite losses."""
    run = tmp_path / "run"
    result = train(_cfg(cache, "train.precision=fp16"), run, log=False)
    steps = [r for r in _records(run) if "loss" in r]
    assert result.steps == len(steps) == 3 and all(torch.isfinite(torch.tensor([r["loss"] for r in steps])))
    saved = torch.load(result.checkpoint, weights_only=True)["scaler"]
    assert saved["scale"] == steps[-1]["grad_scale"] == 65536.0 / 2 ** result.bad_steps
    assert result.bad_steps == sum(r.get("event") == "bad_step" for r in _records(run))


@pytest.mark.slow  # the first fp16 training in a process: ~20 s of CPU kernel set-up
def test_fp16_overflow_step_is_skipped_the_scale_backs_off_and_it_is_logged(fp16_overflow_run):
    cfg, run, runtime, result, record, console = fp16_overflow_run
    assert result.steps == 3 and result.bad_steps == 1  # 3 real steps; the overflow consumed a 4th batch
    steps = [r for r in _records(run) if "loss" in r]
    bad = [r for r in _records(run) if r.get("event") == "bad_step"]
    assert [r["step"] for r in steps] == [1, 2, 3] and all(torch.isfinite(torch.tensor([r["loss"] for r in steps])))
    assert [(r["step"], r["consecutive"], r["grad_scale"]) for r in bad] == [(1, 1, INIT_SCALE / 2)]
    assert [r["grad_scale"] for r in steps] == [INIT_SCALE, INIT_SCALE / 2, INIT_SCALE / 2]
    # the skipped step left the weights alone (forward 3 sees forward 2's); a real step does not
    w = record["weights"]
    assert any(not torch.equal(w[0][k], w[1][k]) for k in w[0])
    assert all(torch.equal(w[1][k], w[2][k]) for k in w[1])
    # no double step: the schedule advanced once per real step; the scaler state is GradScaler's
    final = torch.load(run / "checkpoints" / "ckpt-00000003.pt", weights_only=True)
    assert final["scheduler"]["last_epoch"] == 3
    assert final["scaler"]["scale"] == INIT_SCALE / 2 and final["scaler"]["_growth_tracker"] == 2
    assert runtime.grad_scale == INIT_SCALE / 2
    # the console shows the loss scale and the skipped step
    assert "step 1/3 loss" in console and f"scale {INIT_SCALE:g} " in console
    assert f"step 1: non-finite gradient (fp16 overflow), step skipped (1 in a row, 1 in total, grad scale now " \
           f"{INIT_SCALE / 2:g})" in console


@pytest.mark.slow  # the first fp16 training in a process: ~20 s of CPU kernel set-up
def test_fp16_resume_restores_the_loss_scale_and_ends_bit_identical(fp16_overflow_run, tmp_path):
    cfg, run, _, full, _, _ = fp16_overflow_run
    runtime = _fp16_runtime()  # a fresh scaler starts at INIT_SCALE
    resumed = train(cfg, tmp_path / "resumed", runtime=runtime, resume=str(run / "checkpoints" / "ckpt-00000002.pt"),
                    log=False)
    assert [r["grad_scale"] for r in _records(tmp_path / "resumed") if "loss" in r] == [INIT_SCALE / 2]
    assert resumed.steps == 3 and resumed.bad_steps == 1
    assert runtime.scaler.state_dict() == torch.load(run / "checkpoints" / "ckpt-00000003.pt",
                                                     weights_only=True)["scaler"]
    for a, b in ((full.model, resumed.model), (full.head, resumed.head)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_nan_loss_is_skipped_reported_and_the_count_resets_after_a_good_step(cache, tmp_path):
    """fp32: NaN losses on forwards 2, 3 and 5 are skipped and logged; with max_bad_steps=3 the run
    goes on, because the good step in between resets the consecutive count."""
    run = tmp_path / "run"
    cfg = _cfg(cache, "train.precision=fp32", "train.max_bad_steps=3")
    result, record, console = _poisoned_train(cfg, run, Runtime(torch.device("cpu")), {2, 3, 5}, "loss")
    assert not isinstance(result, Exception)
    assert result.steps == 3 and result.bad_steps == 3
    bad = [(r["step"], r["consecutive"]) for r in _records(run) if r.get("event") == "bad_step"]
    assert bad == [(1, 1), (1, 2), (2, 1)]
    assert [r["step"] for r in _records(run) if "loss" in r] == [1, 2, 3]
    w = record["weights"]  # forwards 2, 3, 4 all start from step 1's weights; 5, 6 from step 2's
    assert all(torch.equal(w[1][k], w[2][k]) and torch.equal(w[2][k], w[3][k]) for k in w[1])
    assert all(torch.equal(w[4][k], w[5][k]) for k in w[4])
    assert console.count("non-finite loss, step skipped") == 3
    assert "grad scale" not in console  # no loss scaling outside fp16


@pytest.mark.parametrize("precision, kind", [("fp32", "loss"), pytest.param("fp16", "grad", marks=pytest.mark.slow)])
def test_guard_stops_after_max_bad_steps_in_a_row(cache, tmp_path, precision, kind):
    run = tmp_path / "run"
    cfg = _cfg(cache, f"train.precision={precision}", "train.max_bad_steps=3")
    runtime = _fp16_runtime() if precision == "fp16" else Runtime(torch.device("cpu"))
    err, record, _ = _poisoned_train(cfg, run, runtime, set(range(2, 100)), kind)
    assert isinstance(err, TrainingDiverged)
    assert "3 consecutive steps had a NaN/Inf loss or gradient at step 1 (train.max_bad_steps=3" in str(err)
    bad = [r for r in _records(run) if r.get("event") == "bad_step"]
    assert [r["consecutive"] for r in bad] == [1, 2, 3]
    w = record["weights"]
    assert all(torch.equal(w[1][k], w[3][k]) for k in w[1])  # none of the bad steps moved the weights
    if precision == "fp16":  # every skipped overflow halved the scale, once
        assert [r["grad_scale"] for r in bad] == [INIT_SCALE / 2, INIT_SCALE / 4, INIT_SCALE / 8]
        assert runtime.grad_scale == INIT_SCALE / 8 and f"grad scale now {INIT_SCALE / 8:g}" in str(err)


def test_skip_step_backs_the_scale_off_even_where_the_gradients_were_finite():
    """A rank whose own gradients are finite still backs off when the step is skipped (another
    rank's Partial FC shard overflowed): every rank keeps the same loss scale."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    rt = _fp16_runtime()
    for _ in range(2):  # two good steps: the growth tracker counts them
        rt.backward(p.sum())
        rt.unscale(opt)
        rt.step(opt)
        opt.zero_grad()
    assert rt.scaler.state_dict()["_growth_tracker"] == 2
    rt.backward(p.sum())  # finite here; skipped because of another rank
    rt.unscale(opt)
    before = p.detach().clone()
    rt.skip_step()
    state = rt.scaler.state_dict()
    assert state["scale"] == INIT_SCALE / 2 and state["_growth_tracker"] == 0
    assert torch.equal(p.detach(), before)
    rt.backward(p.sum())  # the next iteration runs normally (the skipped one's inf checks are gone)
    rt.unscale(opt)
    rt.step(opt)
    assert rt.scaler.state_dict()["_growth_tracker"] == 1
    fp32 = Runtime(torch.device("cpu"))
    fp32.skip_step()
    assert fp32.grad_scale == 1.0 and not fp32.scaler.is_enabled()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind, margin", [("fc", "arcface"), ("fc", "cosface"), ("fc", "adaface"),
                                          ("partial_fc", "arcface"), ("softmax", "arcface")])
def test_head_logits_and_loss_are_fp32_under_autocast(kind, margin, dtype):
    """Inside an fp16/bf16 autocast region the head still computes logits and loss in fp32,
    bit-equal to the same head run outside autocast on the embeddings cast to fp32."""
    from facerec.heads import build_head, create_margin

    torch.manual_seed(0)
    head = build_head(kind, create_margin(margin, s=32.0, m=0.3), 16, 10)
    emb = torch.randn(6, 16).to(dtype)
    labels = torch.tensor([0, 3, 9, 1, 1, 5])
    seen = []
    for mod in head.modules():
        if mod is not head and not list(mod.children()) and not isinstance(mod, torch.nn.Identity):
            mod.register_forward_hook(lambda m, i, o: seen.append((type(m).__name__, o.dtype)))
    with torch.autocast("cpu", dtype=dtype):
        loss = head(emb, labels)
    assert loss.dtype == torch.float32
    assert seen and all(d == torch.float32 for _, d in seen), seen  # cosines, margin logits, linear
    torch.manual_seed(0)
    ref = build_head(kind, create_margin(margin, s=32.0, m=0.3), 16, 10)(emb.float(), labels)
    assert torch.equal(loss.detach(), ref.detach())
