"""The model registry: the only code that reads or writes model versions. Training registers and
promotes; serving and the demo read the champion. Serving imports this package, never training."""

from registry.mlflow_registry import CHAMPION, ModelRegistry, ModelVersion, RegistryConfig, sha256_of

__all__ = ["CHAMPION", "ModelRegistry", "ModelVersion", "RegistryConfig", "sha256_of"]
