"""qrm-hf: Quantile Reward Models for the Hugging Face ecosystem.

Importing this package registers `QRMConfig` and `QRMForSequenceClassification` with `AutoConfig`,
`AutoModel` and `AutoModelForSequenceClassification` (model type ``"qrm"``): at once when transformers is
already imported, else the moment transformers is imported, before any of its Auto classes can be used.
So `import qrm_hf` itself imports neither torch nor transformers, and `qrm --help` (whose module
`qrm_hf.cli` lives in this package) starts without them. The public names below are imported on first
access; the training and RL parts are imported when used.
"""

import importlib
import importlib.abc
import importlib.util
import os
import sys

__version__ = "0.1.0"

# public name -> submodule that defines it, imported on first access (PEP 562)
_PUBLIC = {
    "QRMConfig": ".modeling.configuration_qrm",
    "QRMForSequenceClassification": ".modeling.modeling_qrm",
    "QRMOutput": ".modeling.modeling_qrm",
    "convert_released_checkpoint": ".convert",
}


def _register_auto_classes() -> None:
    """Register the QRM classes with transformers' Auto classes and for `save_pretrained`'s `auto_map`."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    from .modeling.configuration_qrm import QRMConfig
    from .modeling.modeling_qrm import QRMForSequenceClassification

    # QRM_HF_REMOTE_CODE_ONLY=1 leaves the Auto classes alone, so that `trust_remote_code=True` loads the
    # code saved with a model even in a process that imports qrm_hf (the demo checks saved models that way).
    if os.environ.get("QRM_HF_REMOTE_CODE_ONLY") != "1":
        AutoConfig.register(QRMConfig.model_type, QRMConfig, exist_ok=True)
        AutoModel.register(QRMConfig, QRMForSequenceClassification, exist_ok=True)
        AutoModelForSequenceClassification.register(QRMConfig, QRMForSequenceClassification, exist_ok=True)
    # save_pretrained then copies the two modeling/ files next to the weights and writes `auto_map`.
    QRMConfig.register_for_auto_class()
    QRMForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")


class _RegisterWhenTransformersLoads(importlib.abc.MetaPathFinder):
    """Finds `transformers` on its first import and hands it a loader that registers the QRM classes right
    after transformers' own `__init__` ran, before the importer gets the module back. Python has no
    post-import hook; this is the documented meta path protocol (importlib.abc.MetaPathFinder)."""

    def __init__(self):
        self._finding = False

    def find_spec(self, name, path=None, target=None):
        if name != "transformers" or self._finding:
            return None
        self._finding = True  # importlib.util.find_spec below walks sys.meta_path again
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._finding = False
        if spec is not None and spec.loader is not None:
            spec.loader = _LoadThenRegister(spec.loader, self)
        return spec


class _LoadThenRegister(importlib.abc.Loader):
    """transformers' own loader, followed by `_register_auto_classes`."""

    def __init__(self, loader, finder):
        self._loader, self._finder = loader, finder

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        if self._finder in sys.meta_path:
            sys.meta_path.remove(self._finder)
        _register_auto_classes()

    def __getattr__(self, name):  # get_source, get_resource_reader, ...: transformers' loader answers
        return getattr(self._loader, name)


if "transformers" in sys.modules:
    _register_auto_classes()
else:
    sys.meta_path.insert(0, _RegisterWhenTransformersLoads())


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    if name == "risk":
        return importlib.import_module(".risk", __name__)
    raise AttributeError(f"module 'qrm_hf' has no attribute {name!r}")


__all__ = ["QRMConfig", "QRMForSequenceClassification", "QRMOutput", "risk", "convert_released_checkpoint"]
