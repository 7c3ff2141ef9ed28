"""edgekd: federated learning by knowledge distillation on Flower."""

__version__ = "0.1.0"
