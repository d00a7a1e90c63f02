"""Container images of this project (built by ``make image`` from docker/).

A registry and tag are fixed here so compiled pipelines are reproducible; push
the images to your registry under these names, or change them and recompile.
"""

# CPU image: every pipeline step (and the TFJob launcher) runs in it.
WAVENET_IMAGE = "ghcr.io/wavenet-pipelines/wavenet:0.1.0"
# GPU image (TensorFlow with CUDA): the TFJob's training pods.
WAVENET_GPU_IMAGE = "ghcr.io/wavenet-pipelines/wavenet-gpu:0.1.0"
