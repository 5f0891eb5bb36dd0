"""sanawm-gym: Gymnasium environments over a learned video world model and its reference world."""

__version__ = "0.1.0"
