"""resq-torchrl: ResQ, ResZ and the value-factorization methods they are compared with."""

__version__ = "0.1.0"
