"""VGGs as other frameworks build and store them, written independently of minivgg.convert.

    torchvision_vgg("D")     torchvision's VGG from torch.nn layers: features (conv, ReLU,
                             max-pool), AdaptiveAvgPool2d, classifier (Linear, ReLU, Dropout)
    TimmVGG(tv_model)        timm's: the same features, fc6/fc7 as convs (pre_logits), fc8 as
                             head.fc after a global average pool: dense evaluation built in
    timm_state_dict(model)   what timm's checkpoint filter makes of torchvision's weights
    write_keras_h5(...)      keras.applications' VGG16/VGG19 HDF5 layout, written with h5py
    keras_forward(path, x)   that file's net run channels-last in NumPy from the stored
                             arrays (HWIO kernels, (h, w, c) flatten): Keras's own semantics
    photo()                  a real photograph (matplotlib's sample Grace Hopper)

Reduced widths keep them fast; the layouts are what is under test. Weights are random
with non-zero biases, so a bias put in the wrong place shows.
"""
import numpy as np

torch = __import__("pytest").importorskip("torch")
nn = torch.nn

CFGS = {"A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
        "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
        "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"]}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


class TorchvisionVGG(nn.Module):
    """torchvision.models.VGG without batch norm (its layer order and attribute names)."""

    def __init__(self, cfg, width, fc, classes, side):
        super().__init__()
        layers, c = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                k = max(1, round(v * width))
                layers += [nn.Conv2d(c, k, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                c = k
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((side, side))
        self.classifier = nn.Sequential(
            nn.Linear(c * side * side, fc), nn.ReLU(True), nn.Dropout(),
            nn.Linear(fc, fc), nn.ReLU(True), nn.Dropout(), nn.Linear(fc, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def torchvision_vgg(config="D", width=1 / 16, fc=64, classes=1000, side=7, seed=0):
    """Random He-initialised weights, random biases (N(0, 0.1)), eval mode."""
    torch.manual_seed(seed)
    model = TorchvisionVGG(CFGS[config], width, fc, classes, side)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.normal_(m.bias, 0, 0.1)
    return model.eval()


class TimmVGG(nn.Module):
    """timm's VGG (timm/models/vgg.py): pre_logits = ConvMlp(fc1 7x7 conv, fc2 1x1 conv),
    head = global average pool + fc. At any input size this is dense evaluation."""

    def __init__(self, tv):
        super().__init__()
        self.features = tv.features
        fc6, fc7, fc8 = tv.classifier[0], tv.classifier[3], tv.classifier[6]
        C, side = tv.features[-3].out_channels, tv.avgpool.output_size[0]
        self.pre_logits = nn.Module()
        self.pre_logits.fc1 = nn.Conv2d(C, fc6.out_features, side)
        self.pre_logits.fc2 = nn.Conv2d(fc7.in_features, fc7.out_features, 1)
        self.head = nn.Module()
        self.head.fc = fc8
        with torch.no_grad():  # timm's _filter_fn: the reshape of torchvision's weights
            self.pre_logits.fc1.weight.copy_(fc6.weight.reshape(-1, C, side, side))
            self.pre_logits.fc1.bias.copy_(fc6.bias)
            self.pre_logits.fc2.weight.copy_(fc7.weight.reshape(-1, fc7.in_features, 1, 1))
            self.pre_logits.fc2.bias.copy_(fc7.bias)
        self.eval()

    def forward(self, x):
        x = torch.relu(self.pre_logits.fc1(self.features(x)))
        x = torch.relu(self.pre_logits.fc2(x))
        return self.head.fc(x.mean(dim=(2, 3)))


def state_dict(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def to_torch_input(img_rgb_uint8, convention="torchvision"):
    """(1, 3, H, W) float32: torchvision's ToTensor + Normalize, or Caffe's BGR - mean."""
    x = torch.from_numpy(np.array(img_rgb_uint8, copy=True)).permute(2, 0, 1).float()
    if convention == "torchvision":
        x = (x / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]) / \
            torch.tensor(IMAGENET_STD)[:, None, None]
    else:
        x = x.flip(0) - torch.tensor(CAFFE_MEAN_BGR)[:, None, None]
    return x[None].contiguous()


def logits(model, img, convention="torchvision"):
    with torch.no_grad():
        return model(to_torch_input(img, convention)).numpy()[0].astype(np.float64)


# -- Keras -----------------------------------------------------------------------------------
def keras_layers(tv, config):
    """[(Keras layer name, [arrays])] of keras.applications' VGG16/19 for the torch model."""
    convs = [m for m in tv.features if isinstance(m, nn.Conv2d)]
    out, block, i, k = [("input_1", [])], 1, 0, 0
    for v in CFGS[config]:
        if v == "M":
            out.append((f"block{block}_pool", []))
            block, i = block + 1, 0
            continue
        i, conv = i + 1, convs[k]
        k += 1
        w = conv.weight.detach().numpy().transpose(2, 3, 1, 0)  # (K, C, R, S) -> (R, S, C, K)
        out.append((f"block{block}_conv{i}", [w, conv.bias.detach().numpy()]))
    fc6, fc7, fc8 = tv.classifier[0], tv.classifier[3], tv.classifier[6]
    C, s = convs[-1].out_channels, tv.avgpool.output_size[0]
    w6 = fc6.weight.detach().numpy().reshape(-1, C, s, s)  # (out, c, h, w) -> ((h, w, c), out)
    w6 = w6.transpose(2, 3, 1, 0).reshape(-1, fc6.out_features)
    out += [("flatten", []), ("fc1", [w6, fc6.bias.detach().numpy()]),
            ("fc2", [fc7.weight.detach().numpy().T, fc7.bias.detach().numpy()]),
            ("predictions", [fc8.weight.detach().numpy().T, fc8.bias.detach().numpy()])]
    return out


def write_keras_h5(path, layers, style="release"):
    """HDF5 as Keras 2 writes it. style 'release': save_weights with Keras 1 weight names
    (block1_conv1_W_1:0), like vgg16_weights_tf_dim_ordering_tf_kernels.h5; 'model':
    model.save, everything under model_weights, names layer/kernel:0."""
    import h5py
    with h5py.File(path, "w") as f:
        f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.2.4"
        g = f.create_group("model_weights") if style == "model" else f
        g.attrs["layer_names"] = np.array([n.encode() for n, _ in layers])
        for name, arrays in layers:
            lg = g.create_group(name)
            names = ([f"{name}_W_1:0", f"{name}_b_1:0"] if style == "release" else
                     [f"{name}/kernel:0", f"{name}/bias:0"])[:len(arrays)]
            names += [f"{name}_extra_{i}:0" for i in range(len(names), len(arrays))]
            lg.attrs["weight_names"] = np.array([n.encode() for n in names])
            for n, a in zip(names, arrays):
                lg.create_dataset(n, data=np.asarray(a, np.float32))


def keras_forward(path, img_rgb_uint8):
    """Logits of the Keras file's net: BGR - mean, NHWC convs with HWIO kernels (a
    correlation, 'same' padding), 2x2 max-pools, flatten channels-last, x @ kernel + b."""
    import h5py
    from numpy.lib.stride_tricks import sliding_window_view
    x = img_rgb_uint8[..., ::-1].astype(np.float64) - np.array(CAFFE_MEAN_BGR)
    with h5py.File(path, "r") as f:
        g = f["model_weights"] if "model_weights" in f else f
        for name in (n.decode() for n in g.attrs["layer_names"]):
            w = [np.asarray(g[name][n.decode()][()], np.float64)
                 for n in g[name].attrs["weight_names"]]
            if name.endswith("_pool"):
                H, W, C = x.shape
                x = x[:H // 2 * 2, :W // 2 * 2].reshape(H // 2, 2, W // 2, 2, C).max(axis=(1, 3))
            elif name == "flatten":
                x = x.reshape(-1)
            elif w and w[0].ndim == 4:
                windows = sliding_window_view(np.pad(x, ((1, 1), (1, 1), (0, 0))), (3, 3), (0, 1))
                x = np.maximum(np.einsum("hwcij,ijck->hwk", windows, w[0]) + w[1], 0)
            elif w:
                x = x @ w[0] + w[1]
                if name != "predictions":
                    x = np.maximum(x, 0)
    return x


# -- a real photograph -----------------------------------------------------------------------
def photo():
    """Grace Hopper (matplotlib's sample data), RGB uint8, 600 x 512."""
    import matplotlib.cbook as cbook
    from PIL import Image
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))
