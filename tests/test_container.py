"""The Docker image, really built and run here (buildah, no Docker engine), and its SIF recipe.

The module fixture builds the repository's ``Dockerfile`` with buildah on a Debian bookworm
base made by debootstrap (cached, see :mod:`tests.container_tools`), with the CPU torch
wheel from pip's find-links folder. Then, inside the built image, like ``docker run
--read-only -u 12345:12345 -v data:/data:ro``: ``--version``, participant level on a small
dataset (input read-only, root read-only, ``/tmp`` read-only too, HOME missing), group
level, and the outputs are checked against the same run outside the container. The image
is then saved with ``buildah push ... docker-archive:``, the archive the ``singularity``
recipe names.

Runs under ``CI=true`` (a missing tool fails it) or locally with
``BIDS_QC_SYSTEM_TESTS=1``: it needs root, apt-get and several minutes. Locally,
``BIDS_QC_CONTAINER_IMAGE=<tag>`` reuses an image built before instead of building.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from bids_qc import __version__
from tests import container_tools as ct
from tests.fakebids import add_freesurfer, make_raw
from tests.system_tools import apt_install, require_system_tests, say, unavailable, under_ci

SUBJECTS = ("01", "02")
UID = GID = 12345  # no passwd entry in the image, like docker run -u $(id -u)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image(pytestconfig):
    """The built image's tag (``localhost/bids_qc:<version>-cpu``); removed afterwards.

    Each run builds afresh (``--layers`` caching copies the whole tree per step with the
    vfs driver: slower than a clean build), so a kept image would only pile up in the
    cache's storage. Only the base image stays cached.
    """
    require_system_tests("the container build test")
    if os.geteuid() != 0:
        unavailable("the container build test needs root (buildah with the vfs driver)")
    took = apt_install(["buildah", "debootstrap"], ["buildah", "debootstrap", "unshare"])
    if took:
        say(pytestconfig, f"buildah and debootstrap install took {took:.1f} s")
    started = time.perf_counter()
    base, how = ct.ensure_base_image()
    say(pytestconfig, f"base image {base}: {how}, {time.perf_counter() - started:.1f} s")
    reuse = os.environ.get("BIDS_QC_CONTAINER_IMAGE")  # local iteration: skip the build
    if reuse and not under_ci():
        yield reuse
        return
    started = time.perf_counter()
    tag, _ = ct.build_image(base, __version__, "cpu", timeout=1800)
    say(pytestconfig, f"buildah build of {tag}: {time.perf_counter() - started:.1f} s")
    yield tag
    ct.buildah("rmi", "-f", tag, check=False)


@pytest.fixture(scope="module")
def rootfs(image) -> Path:
    return ct.image_rootfs(image)


@pytest.fixture(scope="module")
def config(image) -> dict:
    return ct.image_config(image)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = make_raw(tmp_path_factory.mktemp("container_ds") / "ds", SUBJECTS)
    for s in SUBJECTS:
        add_freesurfer(root, s)
    return root


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def _writable_by_all(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)  # the container's UID owns nothing on the host
    return path


def test_image_config_entrypoint_user_labels(config):
    assert config["Entrypoint"] == ["bids_qc"]
    assert config["User"] == "bidsqc"
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == f"{__version__}-cpu"
    assert labels["org.opencontainers.image.source"].startswith("https://")
    env = dict(v.split("=", 1) for v in config["Env"])
    assert env["BIDS_QC_CONTAINER_TAG"] == f"bids_qc:{__version__}-cpu"
    assert env["PATH"].startswith("/opt/venv/bin")


def test_version(rootfs, config):
    done = ct.run_image(rootfs, config, ["--version"], {}, UID, GID)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"bids_qc {__version__}"


def test_root_is_read_only_and_torch_is_the_cpu_build(rootfs, config):
    probe = ("touch /opt/venv/probe 2>/dev/null && echo root-writable; "
             "touch /tmp/probe 2>/dev/null && echo tmp-writable; "
             "id -u; python3 -c 'import torch; print(torch.__version__)'")
    done = ct.run_image(rootfs, config, [], {}, UID, GID,
                        entrypoint=["/bin/sh", "-c", probe])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(UID), "2.13.0+cpu"]


@pytest.fixture(scope="module")
def container_run(rootfs, config, dataset, tmp_path_factory, pytestconfig):
    """Participant then group level inside the image: read-only root and input, any UID."""
    base = tmp_path_factory.mktemp("container_run")
    out, work = _writable_by_all(base / "out"), _writable_by_all(base / "work")
    before = _tree(dataset)
    binds = {"/data": (dataset, "ro"), "/out": (out, "rw"), "/work": (work, "rw")}
    # HOME missing and /tmp read-only: caches must find the work directory by themselves.
    env = {"HOME": "/nonexistent"}
    started = time.perf_counter()
    part = ct.run_image(rootfs, config, ["/data", "/out", "participant", "-w", "/work",
                                          "--nprocs", "2"], binds, UID, GID, env=env)
    took = time.perf_counter() - started
    group = ct.run_image(rootfs, config, ["/data", "/out", "group", "-w", "/work"], binds,
                         UID, GID, env=env)
    say(pytestconfig, f"in the image: participant level ({len(SUBJECTS)} images) {took:.1f} s")
    return part, group, out, before


def test_participant_and_group_level_in_the_image(container_run, dataset):
    part, group, out, before = container_run
    assert part.returncode == 0, part.stderr[-4000:]
    assert group.returncode == 0, group.stderr[-4000:]
    assert _tree(dataset) == before, "the container wrote into the read-only input"
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["GeneratedBy"][0]["Container"] == {"Type": "docker",
                                                  "Tag": f"bids_qc:{__version__}-cpu"}
    for s in SUBJECTS:
        result = out / f"sub-{s}" / "anat" / f"sub-{s}_T1w.json"
        assert result.stat().st_uid == UID
        data = json.loads(result.read_text())
        assert data["qc_error"] == "" and data["provenance"]["device"] == "cpu"
        assert data["provenance"]["inputs"]["t1w"]["path"].startswith("/data/")
        assert (out / f"sub-{s}_T1w.html").stat().st_size > 0
    rows = (out / "group_T1w.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows[1:]] == [f"sub-{s}_T1w" for s in SUBJECTS]
    assert (out / "group_T1w.html").is_file()
    assert "Traceback" not in part.stderr + group.stderr


def test_image_results_equal_those_outside_it(container_run, dataset, tmp_path):
    _, _, out, _ = container_run
    host_out = tmp_path / "host"
    done = subprocess.run([sys.executable, "-m", "bids_qc.cli", str(dataset), str(host_out),
                           "participant", "--nprocs", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for s in SUBJECTS:
        name = f"sub-{s}/anat/sub-{s}_T1w.json"
        inside = json.loads((out / name).read_text())["metrics"]
        outside = json.loads((host_out / name).read_text())["metrics"]
        assert inside.keys() == outside.keys()
        for key, value in outside.items():
            if value is None:  # a metric that does not apply (e.g. etiv_mm3 without stats)
                assert inside[key] is None, key
            else:
                assert inside[key] == pytest.approx(value, rel=1e-4, abs=1e-4), key


def test_singularity_recipe_builds_from_the_archive_the_build_wrote(image, tmp_path):
    spython = pytest.importorskip("spython.main.parse.parsers",
                                  reason="spython (a test extra) is not installed")
    recipe_path = ct.ROOT / "singularity"
    recipe = spython.SingularityParser(str(recipe_path)).recipe["spython-base"]
    assert re.search(r"^Bootstrap:\s*docker-archive\s*$", recipe_path.read_text(), re.M)
    assert recipe.cmd.strip() == 'exec bids_qc "$@"'
    archive_name = f"bids_qc-{__version__}-cpu.tar"
    assert recipe.fromHeader == archive_name
    archive = tmp_path / archive_name
    short_tag = f"bids_qc:{__version__}-cpu"
    ct.buildah("push", "-q", image, f"docker-archive:{archive}:{short_tag}")
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        (entry,) = manifest
        assert any(t == short_tag or t.endswith(f"/{short_tag}") for t in entry["RepoTags"])
        info = json.loads(ct.buildah("inspect", "--type", "image", image).stdout)
        assert entry["Config"].split(".")[0].removeprefix("sha256:") == info["FromImageID"]
        assert len(entry["Layers"]) >= 1
