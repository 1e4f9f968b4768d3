"""Runtime from torchrun's environment and the config's train section."""

from datetime import timedelta

import pytest
import torch

from facerec.config import load_config
from facerec.errors import ConfigError
from facerec.train.runtime import Runtime


@pytest.mark.parametrize("minutes,expected", [(None, None), (90, timedelta(minutes=90)), (0.5, timedelta(seconds=30))])
def test_the_process_group_gets_the_configured_timeout(monkeypatch, minutes, expected):
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kw: seen.update(kw))
    cfg = load_config(None, [f"train.dist_timeout_minutes={'null' if minutes is None else minutes}",
                             "train.precision=fp32"])
    runtime = Runtime.from_config(cfg.train)
    assert (runtime.rank, runtime.world_size) == (1, 2)
    assert seen == {"backend": "gloo", "rank": 1, "world_size": 2, "timeout": expected}


def test_a_non_positive_timeout_names_the_key():
    with pytest.raises(ConfigError, match="train.dist_timeout_minutes"):
        Runtime.from_config(load_config(None, ["train.dist_timeout_minutes=0"]).train)
