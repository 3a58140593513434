"""The packed wire format: one float32 vector per model, lossless for float32 and counters."""

import numpy as np
import pytest
import torch
from torch import nn

from fedshield.common.torch_arrays import model_to_ndarrays, ndarrays_to_model, state_dict_from_ndarrays


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def test_one_vector_carries_every_tensor_and_round_trips_exactly():
    src = _model()
    src[1].num_batches_tracked.fill_(12345)  # an integer buffer travels too
    arrays = model_to_ndarrays(src)
    total = sum(t.numel() for t in src.state_dict().values())
    assert len(arrays) == 1 and arrays[0].shape == (total,) and arrays[0].dtype == np.float32

    dst = _model()
    for p in dst.parameters():
        nn.init.zeros_(p)
    ndarrays_to_model(dst, arrays)
    for (name, a), b in zip(src.state_dict().items(), dst.state_dict().values(), strict=True):
        assert a.dtype == b.dtype, name
        assert torch.equal(a, b), name


def test_weighted_mean_of_packed_vectors_equals_per_tensor_mean():
    a, b = _model(), _model()
    for p in b.parameters():
        nn.init.normal_(p)
    mean = [(3 * model_to_ndarrays(a)[0] + 1 * model_to_ndarrays(b)[0]) / 4]
    state = state_dict_from_ndarrays(a, mean)
    for name, ta in a.state_dict().items():
        if ta.is_floating_point():
            expected = (3 * ta + b.state_dict()[name]) / 4
            assert torch.allclose(state[name], expected, atol=1e-6), name


@pytest.mark.parametrize("arrays, message", [
    ([np.zeros(5, dtype=np.float32)], "update has 5 values"),
    ([np.zeros(3), np.zeros(3)], "one packed vector"),
])
def test_wrong_update_is_refused_loudly(arrays, message):
    with pytest.raises(ValueError, match=message):
        ndarrays_to_model(_model(), arrays)
