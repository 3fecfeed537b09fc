from __future__ import annotations

import torch

from model.net import Net


def test_tutorial_net_has_6882_float32_parameters() -> None:
    net = Net()
    params = list(net.parameters())
    assert sum(p.numel() for p in params) == 6882
    assert all(p.dtype == torch.float32 for p in params)
    assert sum(p.numel() * p.element_size() for p in params) == 27_528


def test_layer_shapes_match_the_tutorial() -> None:
    net = Net()
    shapes = {name: tuple(p.shape) for name, p in net.named_parameters()}
    assert shapes == {
        "conv1.weight": (6, 3, 5, 5),
        "conv1.bias": (6,),
        "conv2.weight": (16, 6, 5, 5),
        "conv2.bias": (16,),
        "lin1.weight": (10, 400),
        "lin1.bias": (10,),
    }
    assert net(torch.zeros(4, 3, 32, 32)).shape == (4, 10)
