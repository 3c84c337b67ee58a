"""Build and run the project's Dockerfile without a Docker engine (buildah + debootstrap).

* :func:`ensure_base_image`: a Debian bookworm base (python3, python3-venv) made with
  ``debootstrap`` and committed into buildah's local storage. The root filesystem tarball
  is cached under :data:`CACHE_DIR`, keyed by the recipe, so later runs skip debootstrap.
* :func:`build_image`: ``buildah build`` of the real ``Dockerfile`` with that base, the
  host's CA bundle and pip's find-links folder (the CPU torch wheel) mounted.
* :func:`run_image`: runs the image's ENTRYPOINT like ``docker run --read-only -u UID -v
  data:/data:ro``: in a private mount namespace the image's root (its folder in buildah's
  vfs storage, :func:`image_rootfs`) is bind-mounted read-only, the given folders are
  bound on top, ``/proc``, ``/dev`` and a ``/dev/shm`` tmpfs are added, and the
  entrypoint runs chrooted as the given UID with only the image's environment.
  (``buildah run`` has no read-only root option, and ``buildah from`` copies the whole
  image with the vfs driver; this is the closest thing to ``docker run --read-only``,
  and costs no copy.)
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = Path(os.environ.get("BIDS_QC_CI_CACHE", "/var/tmp/bids_qc-ci-cache"))
#: buildah with its own storage beside the cache: CI's images never mix with others'.
BUILDAH = ["buildah", "--storage-driver", "vfs", "--root", str(CACHE_DIR / "storage"),
           "--runroot", str(CACHE_DIR / "run")]
MIRROR = "http://deb.debian.org/debian"
#: The base image recipe; its hash names the image and the cached tarball.
BASE_RECIPE = ("debootstrap", "--variant=minbase",
               "--include=python3,python3-venv,ca-certificates", "bookworm")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def buildah(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``buildah ARGS`` with :data:`BUILDAH`'s options (stdout/stderr captured as text)."""
    done = subprocess.run([*BUILDAH, *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)} failed ({done.returncode}):\n"
                           f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def base_image_name() -> str:
    """``localhost/bids_qc-ci-base:<recipe hash>``."""
    key = hashlib.sha256(" ".join((*BASE_RECIPE, MIRROR)).encode()).hexdigest()[:12]
    return f"localhost/bids_qc-ci-base:{key}"


def image_exists(name: str) -> bool:
    return buildah("inspect", "--type", "image", name, check=False).returncode == 0


def ensure_base_image() -> tuple[str, str]:
    """The base image's name, and how it was obtained (store, cache or debootstrap)."""
    name = base_image_name()
    if image_exists(name):
        return name, "already in buildah's storage"
    tarball = CACHE_DIR / f"{name.rsplit(':', 1)[1]}-rootfs.tar"
    how = f"from the cached {tarball}"
    if not tarball.is_file():
        _debootstrap(tarball)
        how = f"debootstrap (rootfs cached as {tarball})"
    ctr = buildah("from", "scratch").stdout.strip()
    try:
        buildah("add", ctr, str(tarball), "/")
        buildah("config", "--cmd", "/bin/bash", "--env", "LANG=C.UTF-8", ctr)
        buildah("commit", "-q", ctr, name)
    finally:
        buildah("rm", ctr, check=False)
    return name, how


def _debootstrap(tarball: Path) -> None:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
        rootfs = Path(tmp) / "rootfs"
        done = subprocess.run([*BASE_RECIPE, str(rootfs), MIRROR], capture_output=True,
                              text=True, timeout=1200)
        if done.returncode != 0:
            raise RuntimeError(f"debootstrap failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            subprocess.run(["find", str(rootfs / junk), "-type", "f", "-delete"], check=False)
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "--one-file-system",
                        "-cf", str(partial), "."], check=True)
        partial.replace(tarball)  # complete or absent: a killed run leaves no bad cache


def pip_find_links() -> list[str]:
    """pip's configured find-links folders (``pip config``), where the CPU torch wheel lies."""
    done = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                          text=True)
    found: list[str] = []
    for line in done.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            found += [v for v in value.strip("'\"").split() if Path(v).is_dir()]
    return list(dict.fromkeys(found))


def image_tag(version: str, variant: str = "cpu") -> str:
    """``bids_qc:<version>-<torch variant>``, the tag the README documents."""
    return f"localhost/bids_qc:{version}-{variant}"


def build_image(base: str, version: str, variant: str = "cpu",
                timeout: float = 900) -> tuple[str, str]:
    """``buildah build`` the repository's Dockerfile; returns the tag and buildah's output."""
    tag = image_tag(version, variant)
    pip_args = []
    volumes = []
    for i, folder in enumerate(pip_find_links()):
        volumes += ["--volume", f"{folder}:/wheels{i}:ro"]
        pip_args += ["--find-links", f"/wheels{i}"]
    if CA_BUNDLE.is_file():  # a proxy's CA may be in the host's bundle only
        volumes += ["--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
        pip_args += ["--cert", str(CA_BUNDLE)]
    done = buildah(
        "build", "--isolation", "chroot", "--pull=never", "-f",
        str(ROOT / "Dockerfile"), "-t", tag,
        "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"TORCH_VARIANT={variant}",
        "--build-arg", "TORCH_INDEX_URL=", "--build-arg", f"VERSION={version}",
        "--build-arg", f"PIP_EXTRA_ARGS={' '.join(pip_args)}", *volumes, str(ROOT),
        timeout=timeout,
    )
    return tag, done.stdout + done.stderr


def image_config(tag: str) -> dict:
    """The image's OCI config (``config`` of ``buildah inspect``: Env, Entrypoint, Labels)."""
    info = json.loads(buildah("inspect", "--type", "image", tag).stdout)
    return info["OCIv1"]["config"]


def image_rootfs(tag: str) -> Path:
    """The image's root filesystem in buildah's storage, read in place (no copy).

    The vfs driver stores each layer as the complete tree of the image up to it, so the
    top layer's folder is the image's root. Only ever mounted read-only.
    """
    image_id = json.loads(buildah("inspect", "--type", "image", tag).stdout)["FromImageID"]
    graph_root = Path(json.loads(buildah("info").stdout)["store"]["GraphRoot"])
    images = json.loads((graph_root / "vfs-images" / "images.json").read_text())
    (layer,) = [image["layer"] for image in images if image["id"] == image_id]
    rootfs = graph_root / "vfs" / "dir" / layer
    if not (rootfs / "opt" / "venv").is_dir():
        raise RuntimeError(f"{rootfs} is not the root of {tag}")
    return rootfs


def run_image(rootfs: Path, config: dict, args: list[str], binds: dict[str, tuple[Path, str]],
              uid: int, gid: int, env: dict[str, str] | None = None,
              entrypoint: list[str] | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the image's ENTRYPOINT with ``args``, root read-only (see the module docstring).

    ``binds`` maps a path in the container to (host path, "ro" or "rw"); its mount point
    must exist in the image (the Dockerfile makes ``/data``, ``/out`` and ``/work``).
    ``env`` adds to or overrides the image's environment; ``entrypoint`` replaces its
    ENTRYPOINT.
    """
    with tempfile.TemporaryDirectory() as tmp:
        new_root = Path(tmp) / "root"
        new_root.mkdir()
        lines = ["set -eu", f"R={shlex.quote(str(new_root))}",
                 f'mount --rbind {shlex.quote(str(rootfs))} "$R"',
                 'mount -o remount,bind,ro "$R"',
                 'mount -t proc proc "$R/proc"',
                 'mount --rbind /dev "$R/dev"',
                 'mount -t tmpfs -o size=256m,mode=1777 tmpfs "$R/dev/shm"']
        for inside, (host, mode) in binds.items():
            target = f'"$R"{shlex.quote(inside)}'
            lines.append(f"mount --bind {shlex.quote(str(host))} {target}")
            if mode == "ro":
                lines.append(f"mount -o remount,bind,ro {target}")
        variables = dict(v.split("=", 1) for v in config.get("Env") or [])
        variables.update(env or {})
        env_cmd = ["env", "-i", *(f"{k}={v}" for k, v in variables.items())]
        cmd = [*((config.get("Entrypoint") or []) if entrypoint is None else entrypoint), *args]
        workdir = config.get("WorkingDir") or "/"
        inner = "cd " + shlex.quote(workdir) + ' && exec "$@"'
        argv = ["sh", "-c", inner, "sh", *env_cmd, *cmd]
        lines.append(f'cd "$R"; exec chroot --userspec={uid}:{gid} "$R" '
                     + " ".join(shlex.quote(a) for a in argv))
        script = "\n".join(lines)
        return subprocess.run(["unshare", "--mount", "--fork", "sh", "-c", script],
                              capture_output=True, text=True, timeout=timeout)
