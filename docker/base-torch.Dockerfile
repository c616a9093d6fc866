# A stand-in for the pytorch/pytorch base, for `make image-test` where registry images cannot be
# pulled: python (a venv on PATH, as the real image has conda's python), torch, torchvision.
# Built by docker/image-test.sh from a root file system made with debootstrap. The wheels come
# from a wheel directory that the script serves on the host's loopback (build with
# --network=host), so they leave no copy in a layer; the context holds only the host's CA bundle.
ARG ROOTFS_IMAGE=lbtkit-local/debian:bookworm
FROM ${ROOTFS_IMAGE}

ARG WHEELS_URL
ARG TORCH_REQUIREMENTS="torch torchvision"

# The host's CA bundle, so that pip in builds on top of this base (the real Dockerfile's) trusts
# what the host's pip trusts (e.g. a site's TLS-inspecting proxy).
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# TORCH_REQUIREMENTS is a pinned list (word splitting intended) that hadolint cannot see.
# hadolint ignore=DL3013,SC2086
RUN python3 -m venv /opt/venv \
    && python -m pip install --no-cache-dir --no-index --find-links "${WHEELS_URL}" \
        ${TORCH_REQUIREMENTS} \
    && python -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)"
