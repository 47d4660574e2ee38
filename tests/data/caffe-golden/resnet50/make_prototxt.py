"""Write ``deploy.prototxt``: ResNet-50 as in Kaiming He's Caffe release.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition" (2015), Table 1, 50-layer
column; the layer and blob names, the BatchNorm (``use_global_stats``) + Scale
(``bias_term``) pairs after every convolution, the bias-free convolutions, the stride 2 on the
first 1×1 convolution of stages 3–5 and on the projection shortcut (``branch1``), the
Eltwise sums and the in-place ReLUs follow the release's deploy nets
(github.com/KaimingHe/deep-residual-networks, ``prototxt/``), so the weights of its
``ResNet-50-model.caffemodel`` match these layer names. Input 1×3×224×224.

usage: python make_prototxt.py > deploy.prototxt
"""

STAGES = [  # stage, blocks, bottleneck width, output width, stride of the first block
    (2, "abc", 64, 256, 1),
    (3, "abcd", 128, 512, 2),
    (4, "abcdef", 256, 1024, 2),
    (5, "abc", 512, 2048, 2),
]


def conv(name, bottom, num_output, kernel, stride, pad):
    return (f'layer {{ bottom: "{bottom}" top: "{name}" name: "{name}" type: "Convolution"\n'
            f"  convolution_param {{ num_output: {num_output} kernel_size: {kernel} "
            f"pad: {pad} stride: {stride} bias_term: false }} }}\n")


def bn_scale(blob, suffix):
    return (f'layer {{ bottom: "{blob}" top: "{blob}" name: "bn{suffix}" type: "BatchNorm"\n'
            "  batch_norm_param { use_global_stats: true } }\n"
            f'layer {{ bottom: "{blob}" top: "{blob}" name: "scale{suffix}" type: "Scale"\n'
            "  scale_param { bias_term: true } }\n")


def relu(blob):
    return f'layer {{ bottom: "{blob}" top: "{blob}" name: "{blob}_relu" type: "ReLU" }}\n'


def block(stage, letter, bottom, width, out, stride):
    name = f"res{stage}{letter}"
    text = ""
    shortcut = bottom
    if letter == "a":  # projection shortcut
        shortcut = f"{name}_branch1"
        text += conv(shortcut, bottom, out, 1, stride, 0) + bn_scale(shortcut,
                                                                      f"{stage}a_branch1")
    for part, (n, k, s, p) in zip("abc", [(width, 1, stride, 0), (width, 3, 1, 1),
                                          (out, 1, 1, 0)]):
        blob = f"{name}_branch2{part}"
        text += conv(blob, bottom, n, k, s, p) + bn_scale(blob, f"{stage}{letter}_branch2{part}")
        if part != "c":
            text += relu(blob)
        bottom = blob
    text += (f'layer {{ bottom: "{shortcut}" bottom: "{bottom}" top: "{name}" name: "{name}" '
             'type: "Eltwise" }\n')
    return text + relu(name), name


def main():
    text = ('name: "ResNet-50"\ninput: "data"\n'
            "input_dim: 1\ninput_dim: 3\ninput_dim: 224\ninput_dim: 224\n")
    text += conv("conv1", "data", 64, 7, 2, 3)
    text += ('layer { bottom: "conv1" top: "conv1" name: "bn_conv1" type: "BatchNorm"\n'
             "  batch_norm_param { use_global_stats: true } }\n"
             'layer { bottom: "conv1" top: "conv1" name: "scale_conv1" type: "Scale"\n'
             "  scale_param { bias_term: true } }\n")
    text += 'layer { bottom: "conv1" top: "conv1" name: "conv1_relu" type: "ReLU" }\n'
    text += ('layer { bottom: "conv1" top: "pool1" name: "pool1" type: "Pooling"\n'
             "  pooling_param { kernel_size: 3 stride: 2 pool: MAX } }\n")
    bottom = "pool1"
    for stage, letters, width, out, stride in STAGES:
        for i, letter in enumerate(letters):
            part, bottom = block(stage, letter, bottom, width, out, stride if i == 0 else 1)
            text += part
    text += ('layer { bottom: "res5c" top: "pool5" name: "pool5" type: "Pooling"\n'
             "  pooling_param { kernel_size: 7 stride: 1 pool: AVE } }\n"
             'layer { bottom: "pool5" top: "fc1000" name: "fc1000" type: "InnerProduct"\n'
             "  inner_product_param { num_output: 1000 } }\n"
             'layer { bottom: "fc1000" top: "prob" name: "prob" type: "Softmax" }\n')
    print(text, end="")


if __name__ == "__main__":
    main()
