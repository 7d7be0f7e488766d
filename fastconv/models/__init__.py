"""The reference architectures of the CNN case studies, on fastconv's fused ops.

Where torchvision has the model, its architecture and parameter names are kept
exactly, so `model.load_state_dict(torchvision_model.state_dict())` works strictly.
Each builder's module docstring says which layers run on fastconv ops.
"""
import importlib.util

if importlib.util.find_spec("torchvision") is None:  # an extra: no other fastconv module imports it
    raise ImportError("fastconv.models builds on torchvision's model classes, which is not installed: "
                      "pip install 'fastconv[models]' (or torchvision)", name="torchvision")

from fastconv.models.classic import alexnet, lenet5, vgg16  # noqa: E402
from fastconv.models.googlenet import Inception, googlenet  # noqa: E402
from fastconv.models.resnet import plain18, plain34, resnet18, resnet34, resnet50, resnet101, resnet152  # noqa: E402

__all__ = ["lenet5", "alexnet", "vgg16", "resnet18", "resnet34", "resnet50", "resnet101",
           "resnet152", "plain18", "plain34", "googlenet", "Inception"]
