"""Frozen networks: the registry, torchvision/timm discovery of taps, pooling, weights, preprocessing."""
