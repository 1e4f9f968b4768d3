"""TensorBoard scalars and visdom live plots (against a real local visdom server)."""

import json
import socket
import subprocess
import sys
import time

import pytest

from facerec.config import load_config
from facerec.train.engine import train

TINY = [
    "model.input_size=[32, 32]", "model.embedding_size=32", "model.options={width_mult: 0.25}",
    "data.synthetic.identities=12", "data.synthetic.images_per_identity=8", "data.synthetic.val_identities=10",
    "data.synthetic.val_pairs=40", "train.batch_size=16", "train.log_every=1", "train.precision=fp32",
    "head.s=16.0", "head.m=0.2", "optim.lr=0.05", "optim.schedule=constant", "optim.warmup_epochs=0",
    "eval.every_epochs=0.5", "train.epochs=1",
]


def _cfg(tmp_path, *extra):
    return load_config(None, [*TINY, f"data.cache_dir={tmp_path / 'cache'}", *extra])


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_scalars_equal_the_metrics_file(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(_cfg(tmp_path, "train.tensorboard=true"), run, log=False)
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/lr", "val/synthetic_val/accuracy"} <= set(tags)
    losses = [(r["step"], r["loss"]) for r in _records(run) if "loss" in r]
    logged = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [s for s, _ in logged] == [s for s, _ in losses]
    assert all(abs(a - b) < 1e-5 for (_, a), (_, b) in zip(logged, losses))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_visdom_plots_on_a_live_local_server(tmp_path):
    visdom = pytest.importorskip("visdom")
    port = _port()
    # `python -m visdom.server` first downloads the browser UI's scripts from a CDN and exits
    # without a network; the server proper (what the client talks to) starts without them.
    start = ("import sys; from visdom.server.run_server import main; "
             f"sys.argv = ['visdom', '-port', '{port}', '-bind_local', '-env_path', "
             f"{str(tmp_path / 'visdom_env')!r}]; main()")
    server = subprocess.Popen([sys.executable, "-c", start], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = visdom.Visdom(server="http://127.0.0.1", port=port, env="facerec-test", use_incoming_socket=False,
                               raise_exceptions=False)
        deadline = time.time() + 90
        while not client.check_connection(timeout_seconds=1) and time.time() < deadline:
            assert server.poll() is None, "visdom server exited"
            time.sleep(0.5)
        assert client.check_connection(timeout_seconds=5), "visdom server did not come up"
        run = tmp_path / "run"
        train(_cfg(tmp_path, "train.visdom=true", f"train.visdom_port={port}", "train.visdom_env=facerec-test"),
              run, log=False)
        loss = json.loads(client.get_window_data(win="loss", env="facerec-test"))
        trace = loss["content"]["data"][0]
        records = [r for r in _records(run) if "loss" in r]
        assert trace["x"] == [r["step"] for r in records]
        assert trace["y"] == pytest.approx([r["loss"] for r in records], rel=1e-6)
        acc = json.loads(client.get_window_data(win="accuracy", env="facerec-test"))
        assert acc["content"]["data"][0]["name"] == "synthetic_val"
        assert len(acc["content"]["data"][0]["y"]) == sum(1 for r in _records(run) if r.get("event") == "val")
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_unreachable_visdom_server_does_not_stop_training(tmp_path, capsys):
    pytest.importorskip("visdom")
    result = train(_cfg(tmp_path, "train.visdom=true", f"train.visdom_port={_port()}", "train.epochs=0.5"),
                   tmp_path / "run")
    assert result.steps == 3
    assert "not reachable" in capsys.readouterr().err
