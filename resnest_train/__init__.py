"""resnest-train: train the ResNeSt family (Split-Attention Networks, Zhang et al.) on ImageNet.

``config`` (schema and loading) -> builders (``models``, ``data``, ``optim``) -> the training
run (``engine.run``). The version below is the package's one source (``pyproject.toml`` reads it).
"""

__version__ = "0.2.0.dev0"
