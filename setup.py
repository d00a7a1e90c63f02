"""Build of the generation kernel (wavenet/generation/_fastgen.c); everything else is in pyproject.toml.

The extension needs a C compiler and Python's headers at install time. It is
compiled for the baseline of the target architecture, never for the build
machine's CPU: the AVX2 kernels inside it are compiled for that target by a
pragma and chosen at import time only on CPUs that have AVX2 and FMA.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "wavenet.generation._fastgen", sources=["wavenet/generation/_fastgen.c"],
    depends=["wavenet/generation/_fastgen_kernels.h"],
    extra_compile_args=["-O3", "-std=c11", "-fno-strict-aliasing"], libraries=["m"],
)])
