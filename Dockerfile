# lbtkit on a CUDA PyTorch image: `make image` (docker build -t lbtkit:0.1.0 .).
#
# The base image brings python, torch and torchvision (a CUDA build); lbtkit and its other
# dependencies are installed around them and never replace the base's torch. Any image with
# `python`, `pip`, torch >= 2.4 and torchvision on PATH works as BASE_IMAGE (make image-test
# builds this file on a base made locally and runs it on the CPU).
#
#   --build-arg BAKE_WEIGHTS=1  fetch the ImageNet MobileNetV2 weights into the image (needs
#                               internet at build time) for compute nodes without internet
#   --build-arg LBTKIT_UID=N    uid of the non-root user (default 1000)
ARG BASE_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="lbtkit" \
      org.opencontainers.image.description="The large-batch training kit" \
      org.opencontainers.image.licenses="MIT"

# HF_HOME inside the image: a default Accelerate config in a host ~/.cache/huggingface (Apptainer
# mounts $HOME) can never leak into launches. TORCH_HOME holds baked weights; point it at a
# shared cache (docker run -e / APPTAINERENV_TORCH_HOME) to use weights fetched elsewhere.
ENV HF_HOME=/opt/lbtkit/hf \
    TORCH_HOME=/opt/lbtkit/torch \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /opt/lbtkit/src

# Dependency layer, rebuilt only when pyproject.toml changes: install lbtkit's requirements
# against a stub package (and a stub README), with the base's torch and torchvision pinned as
# constraints (pip fails rather than replacing them), then drop the stub.
COPY pyproject.toml ./
RUN python -c 'import importlib.metadata as m, torchvision; [print(f"{p}=={m.version(p)}") for p in ("torch", "torchvision")]' \
        > /opt/lbtkit/base-torch.txt \
    && mkdir lbtkit && touch lbtkit/__init__.py README.md \
    && python -m pip install --no-cache-dir --constraint /opt/lbtkit/base-torch.txt . \
    && python -m pip uninstall --yes lbtkit \
    && rm -rf lbtkit build ./*.egg-info README.md

COPY README.md ./
COPY lbtkit ./lbtkit
RUN python -m pip install --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info \
    && lbtkit --help > /dev/null

# Build arguments are declared where they are used, so changing one rebuilds only from there.
ARG LBTKIT_UID=1000
RUN useradd --create-home --shell /bin/bash --uid "${LBTKIT_UID}" --non-unique lbtkit \
    && mkdir -p /opt/lbtkit/hf /opt/lbtkit/torch /work \
    && chown lbtkit:lbtkit /opt/lbtkit/hf /opt/lbtkit/torch /work

USER lbtkit
WORKDIR /work

ARG BAKE_WEIGHTS=0
RUN if [ "${BAKE_WEIGHTS}" = "1" ]; then lbtkit fetch weights; fi

ENTRYPOINT ["lbtkit"]
CMD ["--help"]
