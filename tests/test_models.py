"""The model registry: every model builds, and builds where it will train."""

import pytest
import torch

from lmbench.models.registry import MODELS, build_model


@pytest.mark.parametrize("name", list(MODELS))
def test_models_are_built_on_the_target_device(name):
    # Built on the meta device, nothing is allocated or initialised on the CPU: the same path puts a
    # GPU worker's weights straight on the GPU (a CPU init of llama-1b costs about 14 s per worker).
    model = build_model(MODELS[name], attention="sdpa", device=torch.device("meta"))
    tensors = list(model.parameters()) + list(model.buffers())
    assert tensors and {t.device.type for t in tensors} == {"meta"}


def test_default_build_stays_on_the_cpu():
    model = build_model(MODELS["tiny-gpt2"], attention="sdpa")
    assert {p.device.type for p in model.parameters()} == {"cpu"}
