"""LeNet-5, AlexNet and VGG-16 on fastconv's ops.

AlexNet and VGG-16 are torchvision's (built by its constructors; state dicts load
strictly). On fastconv ops:
  - LeNet-5: both 2x2/2 average pools (SAME-equal on its even sizes);
  - AlexNet: the classifier's two Linear + ReLU pairs (1x1 convs over a 1x1 image);
    its 3x3/2 max pools have no padding on odd sizes (VALID, not SAME) and stay PyTorch's;
  - VGG-16: the classifier's two Linear + ReLU pairs and the five 2x2/2 max pools
    (SAME-equal on even sizes; PyTorch's kernel otherwise).
Their 3x3/5x5/11x11 convolutions are PyTorch's: none of them is 1x1.
"""
from torch import nn
from torchvision.models import VGG, AlexNet
from torchvision.models import vgg as tv_vgg

from fastconv.nn import FusedAvgPool2d, FusedMaxPool2d, LinearReLU


def lenet5(num_classes=10):
    """LeNet-5 as in d2l (61,706 parameters with 10 classes): 28x28x1 input, sigmoid."""
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(), FusedAvgPool2d(2, 2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(), FusedAvgPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.Sigmoid(),
        nn.Linear(84, num_classes))


def _fuse_linear_relu(seq):
    """In an nn.Sequential, each Linear directly followed by ReLU becomes a LinearReLU at the
    Linear's index (parameter names unchanged) and the ReLU an Identity."""
    for i in range(len(seq) - 1):
        if type(seq[i]) is nn.Linear and isinstance(seq[i + 1], nn.ReLU):
            lin = seq[i]
            fused = LinearReLU(lin.in_features, lin.out_features, bias=lin.bias is not None)
            fused.load_state_dict(lin.state_dict())
            seq[i], seq[i + 1] = fused, nn.Identity()


def alexnet(num_classes=1000):
    model = AlexNet(num_classes=num_classes)
    _fuse_linear_relu(model.classifier)
    return model


def vgg16(num_classes=1000):
    model = VGG(tv_vgg.make_layers(tv_vgg.cfgs["D"]), num_classes=num_classes)
    for i, layer in enumerate(model.features):
        if isinstance(layer, nn.MaxPool2d):
            model.features[i] = FusedMaxPool2d(2, 2)
    _fuse_linear_relu(model.classifier)
    return model
