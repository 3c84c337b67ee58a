"""Training recipe of VINN, one sitting of the shared loop (:mod:`bids_qc.training.loop`)::

    python -m bids_qc.training.vinn --steps N --start-step S --out DIR \
        --real-data ../shared/data --bf16 [--pause-after-minutes M]

A sitting warm-starts from the shipped weights (``--from-scratch`` to opt out), trains ``N``
steps from global step ``S`` (the earlier sittings' total, from the card's ledger), resumes a
checkpoint in ``DIR`` and writes ``sitting.json``; ``--record-only`` records a sitting
stopped between checkpoints (e.g. when the session ended) so its weights can be evaluated.

Synthetic data, from the engine on training label maps 1-16 only (17-20 held out):
a pool of synthesized cases (contrasts ``t1``, ``t1_wide`` and ``random``, the last SynthSeg's
domain randomisation with a random mean per label; random resolution 0.7-1.6 mm,
anisotropic half of the time, random deformation and skull stripping), reoriented to RAS,
intensity-normalised as at inference (:func:`bids_qc.models.vinn.normalise_intensity`) and
cached on disk. The pool starts with :data:`INITIAL_POOL` cases and grows by one new case
every ``--grow-every`` steps, so the stream sees more anatomy and contrast draws over time.

Each step trains the three views on one batch each of 2D patches (:data:`PATCH_MM` mm
square at the case's voxel size, 5 neighbouring slices as channels; half of the patches are
centred on a subcortical voxel). The resolution normalisation gets the case's in-plane
voxel size jittered by a Gaussian of sigma :data:`bids_qc.models.vinn.SCALE_SIGMA` (VINN's
internal scale augmentation).

Loss: pixel-weighted logistic loss plus soft Dice. Pixel weights as in FastSurfer /
QuickNAT: the median-frequency weight of the pixel's class (class frequencies of the initial
pool, kept between :data:`MIN_CLASS_WEIGHT` and :data:`MAX_CLASS_WEIGHT`) plus
:data:`BOUNDARY_WEIGHT` on label boundaries.

Real data (``--real-data``): the training part's IXI people (real whole-head T1w at 2 mm,
their DLMUSE labels mapped to FreeSurfer codes, the non-brain background) in a share of the
batches (``--real-share``).

Every batch is a pure function of ``(seed, global step, view)`` and every pool case of
``(seed, index)``, so a resumed sitting continues the same stream and a later sitting
(a larger ``--start-step``) a new part of it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from bids_qc.models.vinn import (
    CLASS_CODES,
    FULL_TO_SAGITTAL,
    N_CLASSES,
    N_SAGITTAL,
    N_SLICES,
    SCALE_SIGMA,
    VIEW_AXIS,
    VIEWS,
    VINN,
    code_to_class,
    model_from_file,
    normalise_intensity,
    to_ras,
)
from bids_qc.structures import SUBCORTICAL
from bids_qc.synth.labelmaps import TRAIN_MAPS, check_training_maps, load_label_map
from bids_qc.synth.synthesize import synthesize
from bids_qc.training.common import export_state, export_weights, train_logger
from bids_qc.training.loop import (
    SittingConfig,
    add_sitting_arguments,
    record_from_checkpoint,
    require_native_bf16,
    require_steps,
    run_sitting,
    shipped_state,
)

#: Contrast families of the pool, in turn. ``random`` makes the network read shapes, not one
#: contrast's ordering: trained on ``t1``/``t1_wide`` only (1.0.0), it called most of bert's
#: putamen, pallidum and amygdala white matter.
CONTRASTS: tuple[str, ...] = ("t1", "t1_wide", "random")
DEFAULT_SEED = 20261121
#: Cases synthesized before the first step (maps 1-8; later cases cycle through all 16).
INITIAL_POOL = 8
#: Most cases kept in memory (the oldest drop out as new ones arrive).
MAX_POOL_IN_MEMORY = 16
#: Side of a training patch, mm: most of a slice, for context (with 96 mm patches centred
#: on subcortical voxels 70% of the time, 1.0.0 rarely saw the cerebellum and brainstem
#: whole and called them cortex, CSF or background).
PATCH_MM = 128.0
#: Bounds of the median-frequency class weight, and the extra weight of boundary pixels.
#: Unbounded below, the weights of background, white matter and cortex fell to 0.001-0.02
#: (the median class is small), so their errors barely counted: 1.0.0 grew small structures
#: into them (e.g. the brainstem called thalamus). The floor lets weights only raise a class.
MIN_CLASS_WEIGHT = 1.0
MAX_CLASS_WEIGHT = 10.0
BOUNDARY_WEIGHT = 5.0
#: Standard deviation of the log of the random gamma of each patch. The engine's ``t1``
#: family has more grey/white contrast than real T1w images (normalised, cortex about 0.3
#: of a 0-1 scale against bert's 0.68, white matter 0.7-0.8 against 0.9), and the
#: 1.0.0 network called real grey matter white matter; gammas of about 0.4-0.6 close the gap.
GAMMA_STD = 0.4
#: Share of patches centred on a subcortical voxel (the others on any brain voxel).
SUBCORTICAL_SHARE = 0.5
_SUBCORTICAL_CLASSES = np.array(
    [CLASS_CODES.index(c) for s in SUBCORTICAL for c in s.codes], dtype=np.int64
)


def case_key(index: int, seed: int) -> tuple[int, str, int]:
    """(map, contrast, synthesis seed) of pool case ``index``."""
    maps = list(TRAIN_MAPS)
    contrast = CONTRASTS[(index + index // len(maps)) % len(CONTRASTS)]
    return maps[index % len(maps)], contrast, seed * 1000 + index


def make_case(index: int, seed: int, cache: Path, log: Any = print) -> Path:
    """Synthesize (or find cached) pool case ``index``; returns its file."""
    m, contrast, s = case_key(index, seed)
    check_training_maps([m])
    path = cache / f"case{index:04d}_map{m:02d}_{contrast}_{s}.npz"
    if path.is_file():
        return path
    t0 = time.time()
    lm = load_label_map(m, "train")
    case = synthesize(lm.labels, lm.affine, s, contrast, split="train")
    image, vox, _ = to_ras(case.image, case.affine)
    labels, _, _ = to_ras(code_to_class(case.labels).astype(np.uint8), case.affine)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, image=normalise_intensity(image).astype(np.float16),
                        labels=labels, vox=vox)  # fmt: skip
    os.replace(tmp, path)
    log(f"case {path.name} shape={image.shape} vox={np.round(vox, 2).tolist()} "
        f"{time.time() - t0:.1f}s")  # fmt: skip
    return path


class Case:
    """A pool case in memory (float16 image, uint8 classes) with voxels to centre on."""

    def __init__(self, path: Path, seed: int) -> None:
        with np.load(path) as z:
            self.image, self.labels, self.vox = z["image"], z["labels"], z["vox"]
        rng = np.random.default_rng(seed)
        self.sub = np.argwhere(np.isin(self.labels, _SUBCORTICAL_CLASSES))
        fg = np.argwhere(self.labels > 0)
        self.fg = fg[rng.choice(len(fg), min(len(fg), 200_000), replace=False)]


def class_weights(label_sets: list[np.ndarray], n: int, fold: np.ndarray | None = None
                  ) -> np.ndarray:  # fmt: skip
    """Median-frequency weights ``median(f) / f_c`` of ``n`` classes, bounded.

    ``fold`` maps full classes to ``n`` merged ones (the sagittal view's); without it the
    labels hold ``n`` classes.
    """
    counts = np.zeros(n)
    for lab in label_sets:
        m = N_CLASSES if fold is not None else n
        c = np.bincount(lab.ravel(), minlength=m)[:m].astype(float)
        if fold is not None:
            c = np.bincount(fold, weights=c, minlength=n)
        counts += c
    freq = counts / counts.sum()
    present = freq > 0
    w = np.ones(n)
    w[present] = np.median(freq[present]) / freq[present]
    return np.clip(w, MIN_CLASS_WEIGHT, MAX_CLASS_WEIGHT)


def boundary(labels: torch.Tensor) -> torch.Tensor:
    """Pixels of ``(B, H, W)`` labels whose 4-neighbourhood holds another label."""
    b = torch.zeros_like(labels, dtype=torch.bool)
    b[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    b[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    b[:, :, 1:] |= labels[:, :, 1:] != labels[:, :, :-1]
    b[:, :, :-1] |= labels[:, :, 1:] != labels[:, :, :-1]
    return b


def make_batch(cases: list[Case], view: str, batch: int, rng: np.random.Generator,
               gamma_std: float = 0.0
               ) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float]]:  # fmt: skip
    """A batch of 2.5D patches of one view from one case (one voxel size per batch), each
    patch with its own random gamma (log-normal, ``gamma_std``; none at 0)."""
    case = cases[int(rng.integers(len(cases)))]
    image, labels, vox = case.image, case.labels, case.vox
    axis = VIEW_AXIS[view]
    inplane = [a for a in range(3) if a != axis]
    size = [max(16, int(round(PATCH_MM / vox[a]))) for a in inplane]
    r = N_SLICES // 2
    xs, ys = [], []
    for _ in range(batch):
        pool = case.sub if (rng.random() < SUBCORTICAL_SHARE and len(case.sub)) else case.fg
        centre = [int(c) for c in pool[int(rng.integers(len(pool)))]]
        sl = [np.clip(np.arange(centre[axis] - r, centre[axis] + r + 1), 0,
                      image.shape[axis] - 1)]  # fmt: skip
        x = np.take(image, sl[0], axis=axis)
        y = np.take(labels, [centre[axis]], axis=axis)
        x, y = np.moveaxis(x, axis, 0), np.moveaxis(y, axis, 0)[0]
        crops = []
        for d, a in enumerate(inplane):
            lo = centre[a] - size[d] // 2 + int(rng.integers(-size[d] // 4, size[d] // 4 + 1))
            crops.append(lo)
        xp = np.zeros((N_SLICES, *size), np.float32)
        yp = np.zeros(size, np.uint8)
        src = [slice(max(0, c), min(n, c + s)) for c, s, n in zip(crops, size, y.shape)]
        dst = [slice(s.start - c, s.stop - c) for s, c in zip(src, crops)]
        xp[:, dst[0], dst[1]] = x[:, src[0], src[1]]
        yp[dst[0], dst[1]] = y[src[0], src[1]]
        xs.append(xp)
        ys.append(yp)
    jitter = rng.normal(0.0, SCALE_SIGMA, 2)
    scale = tuple(float(max(0.3, vox[a] + j)) for a, j in zip(inplane, jitter))
    x = np.stack(xs)
    if gamma_std > 0:
        gammas = np.exp(rng.normal(0.0, gamma_std, batch)).astype(np.float32)
        x = np.power(np.clip(x, 0.0, None), gammas[:, None, None, None])
    return torch.from_numpy(x), torch.from_numpy(np.stack(ys)).long(), scale


def loss_fn(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Median-frequency and boundary weighted logistic loss plus soft Dice."""
    pixel_w = weights[target] + BOUNDARY_WEIGHT * boundary(target).float()
    ce = (F.cross_entropy(logits, target, reduction="none") * pixel_w).mean()
    prob = torch.softmax(logits, 1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
    inter = (prob * onehot).sum((0, 2, 3))
    denom = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    present = onehot.sum((0, 2, 3)) > 0
    dice = (2 * inter + 1) / (denom + 1)
    return ce + (1 - dice[present]).mean()


def real_cases(data_dir: Path, cache: Path, log: Any = print) -> list[Path]:
    """The training part's IXI people as pool cases (cached): real whole-head T1w with their
    DLMUSE segmentations mapped to FreeSurfer codes, everything outside the brain background."""
    from bids_qc.training.realdata import ixi_people, muse_to_freesurfer

    files = []
    for person in ixi_people(data_dir, "training"):
        path = cache / f"real_{person.item}.npz"
        if not path.is_file():
            img, seg = nib.load(person.t1w), nib.load(person.dlmuse)
            if img.shape != seg.shape or not np.allclose(img.affine, seg.affine, atol=1e-3):
                raise ValueError(f"{person.dlmuse} is not on the grid of {person.t1w}")
            image, vox, _ = to_ras(np.asarray(img.dataobj, np.float32), img.affine)
            codes = muse_to_freesurfer(np.asarray(seg.dataobj))
            labels, _, _ = to_ras(code_to_class(codes).astype(np.uint8), seg.affine)
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, image=normalise_intensity(image).astype(np.float16),
                                labels=labels, vox=vox)  # fmt: skip
            os.replace(tmp, path)
        files.append(path)
    log(f"{len(files)} real training people (IXI, DLMUSE labels) in the pool")
    return files


class Pool:
    """The synthetic pool at a global step: cases ``[n - MAX_POOL_IN_MEMORY, n)`` with
    ``n = INITIAL_POOL + step // grow_every``, synthesized on demand and cached on disk, so
    the pool is a function of the step (a resumed sitting sees the same cases)."""

    def __init__(self, seed: int, cache: Path, grow_every: int, log: Any = print) -> None:
        self.seed, self.cache, self.grow_every, self.log = seed, cache, grow_every, log
        self.loaded: dict[int, Case] = {}

    def size(self, step: int) -> int:
        """Pool cases made by ``step``."""
        return INITIAL_POOL + (step // self.grow_every if self.grow_every else 0)

    def cases(self, step: int) -> list[Case]:
        """The cases in memory at ``step``, oldest first."""
        n = self.size(step)
        want = range(max(0, n - MAX_POOL_IN_MEMORY), n)
        for i in want:
            if i not in self.loaded:
                self.loaded[i] = Case(make_case(i, self.seed, self.cache, self.log), self.seed)
        for i in [i for i in self.loaded if i not in want]:
            del self.loaded[i]
        return [self.loaded[i] for i in want]


def train(args: argparse.Namespace) -> dict[str, Any] | None:
    """Run (or resume) one sitting; returns its record (None if it paused)."""
    out, cache = Path(args.out), Path(args.cache)
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    log = train_logger(out)
    torch.manual_seed(args.seed)
    net = VINN()
    warm = "scratch"
    if args.init_from:
        from bids_qc.training.loop import sha256_file

        net.load_state_dict(model_from_file(args.init_from).state_dict())
        warm = f"{args.init_from} sha256 {sha256_file(Path(args.init_from))}"
    elif not args.from_scratch:
        state, warm = shipped_state("vinn")
        net.load_state_dict(state)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    pool = Pool(args.seed, cache, args.grow_every, log)
    real = [Case(f, args.seed) for f in real_cases(Path(args.real_data), cache, log)
            ] if args.real_data else []  # fmt: skip
    # Class weights from the first synthetic cases (fixed: they do not follow the stream).
    init = [np.load(make_case(i, args.seed, cache, log))["labels"] for i in range(INITIAL_POOL)]
    w_full = torch.as_tensor(class_weights(init, N_CLASSES), dtype=torch.float32)
    w_sag = torch.as_tensor(class_weights(init, N_SAGITTAL, FULL_TO_SAGITTAL),
                            dtype=torch.float32)  # fmt: skip
    del init
    fold = torch.as_tensor(FULL_TO_SAGITTAL)

    def step(gstep: int) -> dict[str, float]:
        synth = pool.cases(gstep)
        losses: dict[str, float] = {"samples": args.batch * len(VIEWS)}
        for v, view in enumerate(VIEWS):
            rng = np.random.default_rng([args.seed, gstep, v])
            cases = real if real and rng.random() < args.real_share else synth
            x, y, scale = make_batch(cases, view, args.batch, rng, args.gamma_std)
            if view == "sagittal":
                y = fold[y]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                logits = net.views[view](x, scale)
            loss = loss_fn(logits.float(), y, w_sag if view == "sagittal" else w_full)
            loss.backward()
            losses[view] = float(loss.detach())
        return losses

    options = {"batch": args.batch, "grow_every": args.grow_every, "gamma_std": args.gamma_std,
               "real_data": bool(args.real_data), "real_people": len(real),
               "real_share": args.real_share if real else 0.0, "bf16": args.bf16,
               "patch_mm": PATCH_MM, "contrasts": list(CONTRASTS), "maps": list(TRAIN_MAPS),
               "class_weight_bounds": [MIN_CLASS_WEIGHT, MAX_CLASS_WEIGHT],
               "boundary_weight": BOUNDARY_WEIGHT, "subcortical_share": SUBCORTICAL_SHARE}
    config = SittingConfig(model="vinn", out=out, steps=args.steps, lr=args.lr, seed=args.seed,
                           start_step=args.start_step, warm_start=warm, threads=args.threads,
                           options=options)  # fmt: skip
    record = run_sitting(config, net, opt, step, lambda p: export_weights(net, p),
                         weights_name="vinn.pt", log=log,
                         checkpoint_minutes=args.checkpoint_minutes,
                         pause_after_minutes=args.pause_after_minutes)  # fmt: skip
    if record is not None:
        record["pool_cases"] = pool.size(args.start_step + args.steps)
        (out / "sitting.json").write_text(json.dumps(record, indent=1))
    return record


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sitting_arguments(p, lr=3e-3, seed=DEFAULT_SEED, steps_required=False)
    p.add_argument("--out", required=True,
                   help="output folder (log, checkpoint, weights, sitting.json); a checkpoint "
                        "there is resumed")  # fmt: skip
    p.add_argument("--init-from", default="",
                   help="start from these weights (e.g. an earlier sitting's) instead of the "
                        "shipped ones")
    p.add_argument("--real-data", default="",
                   help="shared data folder: add the IXI training people to the pool")
    p.add_argument("--real-share", type=float, default=0.5,
                   help="share of batches drawn from the real people")
    p.add_argument("--cache", default="/tmp/vinn_cache", help="pool cache folder")
    p.add_argument("--grow-every", type=int, default=100, help="steps between new pool cases")
    p.add_argument("--batch", type=int, default=4, help="patches per view and step")
    p.add_argument("--gamma-std", type=float, default=GAMMA_STD,
                   help="sigma of the log of each patch's random gamma (0: none)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast of the networks")
    args = p.parse_args(argv)
    if args.record_only:
        print(json.dumps(record_from_checkpoint(Path(args.out), "vinn.pt", export_state)))
        return
    require_steps(p, args)
    require_native_bf16(p, args.bf16)
    if args.batch < 1:
        p.error("--batch must be positive")
    print(json.dumps(train(args)))


if __name__ == "__main__":
    main()
