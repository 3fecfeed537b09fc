"""The workload being measured: the PyTorch CIFAR-10 tutorial's network, data and loops."""
