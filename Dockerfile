# bids_qc BIDS-App image.
#   docker build -t bids_qc:$(python -c "import bids_qc;print(bids_qc.__version__)")-cpu .
#   docker run --rm -v /data:/data:ro -v /out:/out bids_qc /data /out participant
# Build arguments: BASE_IMAGE (a Python 3.10+ image, or a Debian base with python3-venv),
# TORCH_SPEC (the torch requirement: the CPU build by default, a CUDA build for GPU hosts).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG TORCH_SPEC="torch==2.13.0"
ARG PIP_EXTRA_ARGS=""
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY . /src
RUN pip install ${PIP_EXTRA_ARGS} wheel setuptools \
 && pip install ${PIP_EXTRA_ARGS} "${TORCH_SPEC}" \
 && pip wheel ${PIP_EXTRA_ARGS} --no-deps -w /wheels /src \
 && pip install ${PIP_EXTRA_ARGS} /wheels/bids_qc-*.whl

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="bids_qc" \
      org.opencontainers.image.version="${VERSION}-${TORCH_VARIANT}" \
      org.opencontainers.image.source="https://example.org/bids_qc" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/venv /opt/venv
# Caches (matplotlib, torch, nipype) go to /tmp: the image runs with a read-only root,
# an unwritable HOME and any -u UID.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    TORCH_HOME=/tmp/torch \
    NIPYPE_NO_ET=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BIDS_QC_CONTAINER_TYPE=docker \
    BIDS_QC_CONTAINER_TAG="bids_qc:${VERSION}-${TORCH_VARIANT}"
RUN useradd --create-home --uid 1000 bidsqc 2>/dev/null || adduser --disabled-password --uid 1000 bidsqc
USER bidsqc
WORKDIR /tmp
ENTRYPOINT ["bids_qc"]
