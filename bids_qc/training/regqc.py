"""Training recipe of RegQC (seeded, resumable, step-budgeted, CPU-friendly).

``python -m bids_qc.training.regqc --steps N --out DIR``

1. A pool of template-space anatomies at 2 mm is built once and cached on disk
   (``--cache``): SynthSeg label maps 1-16 synthesised by :mod:`bids_qc.synth.synthesize`
   (random contrast, random smooth deformation, whole-head and skull-stripped in turn) and
   brought to the template through the engine's per-map affines, plus the real ds002748
   T1w of sub-01..sub-08 registered affinely (:func:`bids_qc.synth.register.register_affine`).
   Evaluation anatomies (maps 17-20, sub-09/10) are refused by the loaders' train split.
2. Each training case pulls one pool volume through a misregistration affine drawn by the
   engine's sampler straight onto the 4 mm model grid (``grid_sample``), no bias field.
   The RMSE target is uniform on [0, 100] mm for half of the cases and on [0, 20] mm for the
   other half, which densifies the range where QC decisions are made. Pool volumes are
   box-averaged to 4 mm once and warped at 4 mm, for CPU speed (see :func:`make_batch`).
3. Adam, MSE on RMSE / 100, one sitting of ``--steps`` steps (:mod:`bids_qc.training.loop`:
   warm start from the shipped weights unless ``--from-scratch``, warm-up and cosine decay of
   the rate over the sitting, checkpoints, pause and resume in ``DIR``); the batch of global
   step ``g`` is a pure function of ``(seed, g)``.
4. Calibration: an intercept and slope mapping the network's output to the RMSE, fitted by
   least squares on :data:`N_CALIBRATION` fresh misregistrations of the *training*
   anatomies (a seed of their own), stored in the weights (``calibration``) at every export.
   A short CPU run leaves the regression compressed towards the mean; this straightens it
   without touching an evaluation anatomy. ``--calibrate-only`` redoes this step on ``DIR``'s
   checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models.regqc import (
    RegQCNet,
    _box_average,
    model_grid,
    normalise,
    sampling_grid,
    template_channels,
)
from ..spatial import TemplateGrid, load_template
from ..synth.metrics import affine_rmse
from ..synth.misregistration import sample_affine
from ..templates_data import get_template
from .common import export_weights, hardware, train_logger
from .loop import (
    SittingConfig,
    add_sitting_arguments,
    load_checkpoint,
    record_from_checkpoint,
    require_steps,
    run_sitting,
    shipped_state,
)

SEED = 20260521
#: Spacing of the cached anatomy pool, mm.
POOL_MM = 2.0
SYNTH_PER_MAP = 4
TRAIN_MAPS = tuple(range(1, 17))
TRAIN_SUBJECTS = tuple(f"{i:02d}" for i in range(1, 9))
#: Coarse grid (every 16 mm) on which the sampler solves for the target RMSE (speed).
_SOLVE_MM = 16.0
#: Fresh training-anatomy cases the output calibration is fitted on.
N_CALIBRATION = 256


def template() -> TemplateGrid:
    """The ICBM 2009c asymmetric template, as the app loads it."""
    return load_template(get_template("MNI152NLin2009cAsym"))


def coarse_grid(grid: TemplateGrid, spacing: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """The template's field of view every ``spacing`` mm (corner voxel kept)."""
    vox = np.linalg.norm(grid.affine[:3, :3], axis=0)
    shape = tuple(int(np.floor((n - 1) * v / spacing)) + 1 for n, v in zip(grid.data.shape, vox))
    affine = grid.affine.copy()
    affine[:3, :3] = affine[:3, :3] / vox * spacing
    return shape, affine  # type: ignore[return-value]


def _to_pool(data: np.ndarray, affine: np.ndarray, world: np.ndarray,
             shape: tuple[int, int, int], pool_affine: np.ndarray) -> np.ndarray:
    """Resample an image to the pool grid; ``world`` maps image world to template world."""
    from ..synth.template import to_template

    out, _ = to_template(data, affine, world, resolution=POOL_MM)
    if out.shape != shape:
        raise ValueError(f"pool grid mismatch: {out.shape} vs {shape}")
    return out.astype(np.float32)


def real_pool_volumes(data_dir: Path, shape: tuple[int, int, int], affine: np.ndarray,
                      cache: Path, log: callable = print) -> tuple[list[np.ndarray], list[dict]]:
    """The IXI people of the **training** part, whole-head, brought to the template.

    Each is registered affinely through its brain (its DLMUSE segmentation) with
    :func:`bids_qc.training.real_register.register_affine` (transforms cached in ``cache``)
    and resampled to the pool grid: real anatomy, real contrast and real skull, which the
    synthetic engine only imitates.
    """
    import nibabel as nib

    from ..templates_data import get_template
    from ..transforms import read_itk_affine
    from .real_register import register_affine
    from .real_sets import RealImage, brain_mask
    from .realdata import ixi_people

    tpl = get_template("MNI152NLin2009cAsym")
    vols, meta = [], []
    for person in ixi_people(data_dir, "training"):
        xfm = cache / "real_xfm" / f"{person.item}.txt"
        if not xfm.is_file():
            image = RealImage("ixi_dlmuse", person.item, person.t1w, person.dlmuse, "muse")
            register_affine(person.t1w, tpl.t1w, xfm, brain=brain_mask(image))
        img = nib.load(str(person.t1w))
        data = np.asarray(img.dataobj, dtype=np.float32)
        vols.append(_to_pool(data, img.affine, read_itk_affine(xfm), shape, affine))
        meta.append({"source": f"ixi_dlmuse:{person.item}", "skull_strip": False})
        log(f"pool: {person.item} registered")
    return vols, meta


def build_pool(cache: Path, grid: TemplateGrid, log: callable = print,
               real_data: Path | None = None) -> np.ndarray:
    """Template-space training anatomies at 2 mm, ``(N, X, Y, Z)`` float16, cached on disk.

    With ``real_data`` (the shared data folder) the IXI training people join the pool
    (:func:`real_pool_volumes`).
    """
    import nibabel as nib

    from ..synth.labelmaps import load_label_map, load_subject_t1
    from ..synth.register import register_affine
    from ..synth.synthesize import synthesize
    from ..synth.template import label_map_to_template

    cache.mkdir(parents=True, exist_ok=True)
    path = cache / "pool.npy"
    if path.is_file():
        return np.load(path)
    shape, affine = coarse_grid(grid, POOL_MM)
    vols: list[np.ndarray] = []
    meta: list[dict] = []
    for i in TRAIN_MAPS:
        lm = load_label_map(i, "train")
        to_mni = label_map_to_template(i)
        for k in range(SYNTH_PER_MAP):
            seed = SEED + 100 * i + k
            case = synthesize(lm.labels, lm.affine, seed, ("t1", "t1_wide")[k % 2],
                              deform=True, affine_aug=False, skull_strip=bool(k % 2),
                              split="train")  # fmt: skip
            vols.append(_to_pool(case.image, case.affine, to_mni, shape, affine))
            meta.append({"source": f"synthseg:{i}", "seed": seed,
                         "skull_strip": case.params["skull_strip"]})  # fmt: skip
        log(f"pool: map {i} done ({len(vols)} volumes)")
    fixed = nib.Nifti1Image(grid.data, grid.affine)
    for sub in TRAIN_SUBJECTS:
        img = load_subject_t1(sub, "train")
        to_mni = register_affine(img, fixed, iterations=(100, 40))
        data = np.asarray(img.dataobj, dtype=np.float32)
        vols.append(_to_pool(data, img.affine, to_mni, shape, affine))
        meta.append({"source": f"ds002748:sub-{sub}", "skull_strip": True})
        log(f"pool: sub-{sub} registered")
    if real_data is not None:
        more, more_meta = real_pool_volumes(Path(real_data), shape, affine, cache, log)
        vols += more
        meta += more_meta
    pool = np.stack([v / max(float(np.percentile(v, 99.5)), 1e-6) for v in vols])
    pool = pool.astype(np.float16)
    np.save(path, pool)
    (cache / "pool.json").write_text(json.dumps({"affine": affine.tolist(), "volumes": meta}))
    return pool


def draw_affine(rng: np.random.Generator, grid: TemplateGrid) -> tuple[np.ndarray, float]:
    """A misregistration and its exact RMSE on the 4 mm model grid of the template's FOV."""
    hi = 100.0 if rng.random() < 0.5 else 20.0
    target = float(rng.uniform(0.0, hi))
    solve_shape, solve_affine = coarse_grid(grid, _SOLVE_MM)
    A = sample_affine(rng, target, solve_shape, solve_affine)
    shape, affine = model_grid(grid)
    return A, affine_rmse(A, shape, affine)


def coarse_pool(pool: torch.Tensor, pool_affine: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """The pool box-averaged as :func:`bids_qc.models.regqc.conform` does (once, for speed)."""
    vols = torch.stack([_box_average(v[None].float(), pool_affine)[0][0] for v in pool])
    return vols.half(), _box_average(pool[:1].float()[None], pool_affine)[1]


def make_batch(
    pool: torch.Tensor, pool_affine: np.ndarray, grid: TemplateGrid, rng: np.random.Generator,
    size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``(B, 2, ...)`` and targets (mm) of one batch, warped on the fly.

    ``pool`` is box-averaged already (:func:`coarse_pool`): warping after the averaging
    rather than before is what makes CPU training affordable; at zero error it is exactly
    the app's path for a 2 mm input.
    """
    shape, m_affine = model_grid(grid)
    tmpl, mask = template_channels(grid)
    xs, ys = [], []
    for _ in range(size):
        vol = pool[int(rng.integers(len(pool)))][None, None].float()
        A, rmse = draw_affine(rng, grid)
        g = sampling_grid(tuple(vol.shape[2:]), pool_affine, shape, m_affine, world=A)
        moving = F.grid_sample(vol, g, mode="bilinear", padding_mode="zeros", align_corners=True)
        xs.append(moving ** float(np.exp(rng.normal(0, 0.2))))  # contrast jitter
        ys.append(rmse)
    x = normalise(torch.cat(xs), tmpl, mask)
    return x, torch.tensor(ys, dtype=torch.float32)


def calibrate(model: RegQCNet, pool: torch.Tensor, pool_affine: np.ndarray,
              grid: TemplateGrid) -> dict[str, float]:
    """Fit ``model.calibration`` (intercept, slope) on fresh cases of the training pool.

    Least squares of the true RMSE on the network's output, in evaluation mode, on
    :data:`N_CALIBRATION` misregistrations drawn as in training from a seed of their own.
    Returns the fit and the MAE on those cases before and after.
    """
    model.eval()
    model.calibration.copy_(torch.tensor([0.0, 1.0]))
    rng = np.random.default_rng(SEED - 1)
    preds, truth = [], []
    with torch.inference_mode():
        for _ in range(N_CALIBRATION // 8):
            x, y = make_batch(pool, pool_affine, grid, rng, 8)
            preds.append(model(x))
            truth.append(y)
    p = torch.cat(preds).double().numpy()
    t = torch.cat(truth).double().numpy()
    slope, intercept = np.polyfit(p, t, 1)
    model.calibration.copy_(torch.tensor([intercept, slope], dtype=torch.float32))
    return {"intercept": float(intercept), "slope": float(slope), "cases": int(len(t)),
            "mae_before": float(np.mean(np.abs(p - t))),
            "mae_after": float(np.mean(np.abs(intercept + slope * p - t)))}


def _load_pool(cache: Path, grid: TemplateGrid, log: callable, real_data: Path | None = None
               ) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    t0 = time.time()
    pool_np = build_pool(cache, grid, log, real_data)
    pool_affine = np.asarray(json.loads((cache / "pool.json").read_text())["affine"])
    log(f"pool: {pool_np.shape} in {time.time() - t0:.0f} s")
    pool, pool_affine = coarse_pool(torch.from_numpy(pool_np), pool_affine)
    return pool_np, pool, pool_affine


def _load_checkpoint(model: RegQCNet, state: dict, path: Path) -> None:
    # Checkpoints written before the calibration buffer existed lack only that entry
    # (and training runs with the identity calibration anyway).
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"calibration"}:
        raise ValueError(f"{path} is not a RegQC checkpoint "
                         f"(missing {missing}, unexpected {unexpected})")
    model.calibration.copy_(torch.tensor([0.0, 1.0]))


def calibrate_only(out: Path, cache: Path) -> dict:
    """Redo the calibration step on ``out``'s checkpoint and export the weights again."""
    torch.set_num_threads(2)
    grid = template()
    _, pool, pool_affine = _load_pool(cache, grid, print)
    saved = load_checkpoint(out / "checkpoint.pt")
    if saved is None:
        raise FileNotFoundError(f"no checkpoint in {out}")
    model = RegQCNet()
    _load_checkpoint(model, saved["model"], out / "checkpoint.pt")
    fit = calibrate(model, pool, pool_affine, grid)
    export_weights(model, out / "regqc.pt", keep_float32=("calibration",))
    info_path = out / "train_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    info["calibration"] = fit
    info_path.write_text(json.dumps(info, indent=1))
    print(f"calibration: {fit}")
    return info


def train(args: argparse.Namespace) -> dict | None:
    """Run (or resume) one sitting (pool building excluded from its budget); returns the
    run's summary, ``train_info.json`` (None if the sitting paused).

    The shipped weights are the start unless ``args.from_scratch``; ``args.real_data`` adds
    the real IXI training people to the pool.
    """
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = train_logger(out)

    grid = template()
    real_data = Path(args.real_data) if args.real_data else None
    pool_np, pool, pool_affine = _load_pool(Path(args.cache), grid, log, real_data)

    torch.manual_seed(args.seed)
    model = RegQCNet()
    warm, warm_sha = "scratch", None  # the weights a warm-started sitting continues
    if not args.from_scratch:
        from ..models.registry import get_spec

        spec = get_spec("regqc")
        state, warm = shipped_state("regqc")
        _load_checkpoint(model, state, spec.weights_path())  # trains uncalibrated
        warm_sha = spec.sha256
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)

    def step(gstep: int) -> dict[str, float]:
        x, y = make_batch(pool, pool_affine, grid, np.random.default_rng([args.seed, gstep]),
                          args.batch_size)  # fmt: skip
        loss = F.mse_loss(model(x) / 100.0, y / 100.0)
        loss.backward()
        return {"rms_err_mm": 100 * float(loss.detach()) ** 0.5, "samples": args.batch_size}

    fits: dict[str, dict] = {}

    def export(path: Path) -> None:
        # The shipped form is calibrated; the training network stays uncalibrated.
        shipped = copy.deepcopy(model)
        fits["last"] = calibrate(shipped, pool, pool_affine, grid)
        export_weights(shipped, path, keep_float32=("calibration",))

    options = {"batch_size": args.batch_size, "pool_volumes": int(len(pool_np)),
               "real_pool": real_data is not None}  # fmt: skip
    config = SittingConfig(model="regqc", out=out, steps=args.steps, lr=args.lr, seed=args.seed,
                           start_step=args.start_step, warm_start=warm, threads=args.threads,
                           options=options)  # fmt: skip
    record = run_sitting(config, model, opt, step, export, weights_name="regqc.pt", log=log,
                         checkpoint_minutes=args.checkpoint_minutes,
                         pause_after_minutes=args.pause_after_minutes)  # fmt: skip
    if record is None:
        return None
    log(f"calibration: {fits['last']}")
    info = {
        "seed": args.seed, "steps": args.steps, "start_step": args.start_step,
        "cases_seen": record["samples"], "batch_size": args.batch_size,
        "train_minutes": record["wall_hours"] * 60, "pool_volumes": int(len(pool_np)),
        "epochs": record["samples"] / len(pool_np), "hardware": hardware(),
        "block_dropout": model.encoder[3].p, "head_dropout": model.head[3].p,
        "calibration": fits["last"], "warm_start": warm != "scratch", "lr": args.lr,
        "real_pool": real_data is not None, "warm_start_sha256": warm_sha,
        "sitting": "sitting.json",
    }  # fmt: skip
    (out / "train_info.json").write_text(json.dumps(info, indent=1))
    log(f"done: {info}")
    return info


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="run folder (log, checkpoint, weights, sitting.json); a checkpoint "
                             "there is resumed")  # fmt: skip
    # Every export fits the calibration (about 30 s on one core): checkpoints are sparser.
    add_sitting_arguments(parser, lr=1e-3, seed=SEED, threads=2, checkpoint_minutes=10.0,
                          steps_required=False)
    parser.add_argument("--calibrate-only", action="store_true",
                        help="only refit the output calibration on DIR's checkpoint")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/regqc_cache"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--real-data", type=Path, default=None,
                        help="shared data folder: add its IXI training people to the pool")
    parser.add_argument("--init-shipped", action="store_true",
                        help="start from the shipped weights: the default now (kept so that "
                             "earlier command lines run); --from-scratch opts out")  # fmt: skip
    args = parser.parse_args(argv)
    if args.calibrate_only:
        calibrate_only(args.out, args.cache)
        return
    if args.record_only:
        grid = template()
        _, pool, pool_affine = _load_pool(args.cache, grid, print, args.real_data)

        def export(state: dict, path: Path) -> None:
            model = RegQCNet()
            _load_checkpoint(model, state, args.out / "checkpoint.pt")
            calibrate(model, pool, pool_affine, grid)
            export_weights(model, path, keep_float32=("calibration",))

        print(json.dumps(record_from_checkpoint(args.out, "regqc.pt", export)))
        return
    require_steps(parser, args)
    if args.init_shipped and args.from_scratch:
        parser.error("--init-shipped and --from-scratch contradict each other")
    train(args)


if __name__ == "__main__":
    main()
