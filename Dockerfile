# bids_qc BIDS-App image.
#
#   V=$(python3 -c "import bids_qc; print(bids_qc.__version__)")
#   docker build --build-arg VERSION=$V --build-arg TORCH_VARIANT=cpu -t bids_qc:$V-cpu .
#   docker run --rm --read-only --tmpfs /tmp -u $(id -u):$(id -g) \
#       -v /data:/data:ro -v /out:/out bids_qc:$V-cpu /data /out participant
#
# Build arguments
#   BASE_IMAGE       a Python 3.10+ image (default python:3.11-slim), or a Debian/Ubuntu base
#                    with python3 and python3-venv: everything goes into the venv /opt/venv.
#   TORCH_VARIANT    cpu (torch's CPU build) or cuda (PyPI's default Linux build, CUDA
#                    libraries included; run with --gpus all / apptainer --nv).
#   TORCH_VERSION    the torch release (default the one the project is tested with).
#   TORCH_INDEX_URL  where the CPU build comes from; empty: only PyPI and PIP_EXTRA_ARGS
#                    (e.g. --find-links on a mounted wheel folder).
#   PIP_EXTRA_ARGS   extra pip options for every install (--find-links, --cert, --index-url).
#   VERSION, SOURCE  recorded in the OCI labels and in the outputs' dataset_description.json.
#
# Nothing is downloaded at run time: the model weights are package data inside the wheel, and
# templates come from installed packages.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_EXTRA_ARGS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# torch and the dependencies first: this layer is reused while setup.cfg does not change.
COPY setup.cfg /src/setup.cfg
RUN set -eu; \
    python3 -m venv /opt/venv; \
    case "${TORCH_VARIANT}" in \
      cpu) torch="torch==${TORCH_VERSION}+cpu"; \
           index="${TORCH_INDEX_URL:+--extra-index-url ${TORCH_INDEX_URL}}" ;; \
      cuda) torch="torch==${TORCH_VERSION}"; index="" ;; \
      *) echo "TORCH_VARIANT must be cpu or cuda, not ${TORCH_VARIANT}" >&2; exit 2 ;; \
    esac; \
    /opt/venv/bin/pip install -q ${PIP_EXTRA_ARGS} ${index} "${torch}"; \
    /opt/venv/bin/python3 -c "import configparser; c = configparser.ConfigParser(); \
c.read('/src/setup.cfg'); print(c['options']['install_requires'])" > /tmp/requirements.txt; \
    /opt/venv/bin/pip install -q ${PIP_EXTRA_ARGS} -r /tmp/requirements.txt
# The package itself, built into a wheel and installed from it (no source tree in the image).
COPY . /src
RUN set -eu; \
    /opt/venv/bin/pip wheel -q ${PIP_EXTRA_ARGS} --no-deps --wheel-dir /tmp/wheel /src; \
    /opt/venv/bin/pip install -q ${PIP_EXTRA_ARGS} --no-deps /tmp/wheel/bids_qc-*.whl; \
    /opt/venv/bin/pip check; \
    /opt/venv/bin/python3 -c "import torch, bids_qc; print('torch', torch.__version__)"

FROM ${BASE_IMAGE}
ARG VERSION=unknown
ARG TORCH_VARIANT=cpu
ARG SOURCE=https://example.org/bids_qc
# Any UID may run the image (-u $(id -u)) with a read-only root: HOME points at /tmp, and at
# start bids_qc gives matplotlib, torch and nipype a writable cache folder (in TMPDIR, /tmp,
# or the -w work directory), whatever HOME is. Metadata comes before the big COPY: with
# buildah's vfs driver every later step would copy the whole tree again.
# /data, /out and /work: mount points for read-only roots (docker -v, apptainer -B).
RUN useradd --uid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin bidsqc \
 && mkdir -p /data /out /work
LABEL org.opencontainers.image.title="bids_qc" \
      org.opencontainers.image.description="BIDS-App: quality control of structural brain MRI and its derivatives" \
      org.opencontainers.image.version="${VERSION}-${TORCH_VARIANT}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    NIPYPE_NO_ET=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BIDS_QC_CONTAINER_TYPE=docker \
    BIDS_QC_CONTAINER_TAG="bids_qc:${VERSION}-${TORCH_VARIANT}"
WORKDIR /tmp
USER bidsqc
ENTRYPOINT ["bids_qc"]
COPY --from=build /opt/venv /opt/venv
