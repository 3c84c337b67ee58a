"""Training recipe of ManifoldQC: ``python -m bids_qc.training.manifoldqc --out DIR --steps N``.

Good pairs only, from the synthetic engine (SynthSeg training label maps 1-16, contrasts
``t1`` and ``t1_wide``, the engine's random deformation, resolution and skull stripping):

1. ``dataset``: SegQC's pool (:func:`bids_qc.training.segqc.build_pool`, same keys and seed),
   each case cut once to the ManifoldQC crop plus a margin (random shifts) and cached in one
   file; validation pairs from maps :data:`VAL_MAPS` (held out of the ablation's training):
   each good pair and one damaged copy (training damage families of the frozen protocol)
   with their exact Dice. Damage only *scores* validation, it is never trained on.
2. ``ablation`` (``--from-scratch`` only): latent size {2, 4, 8, 16} x beta {0, 1e-3, 1e-2,
   1e-1}, one sitting of the same steps each from scratch on maps 1-14
   (``OUT/ablation/<latent>_<beta>/``), scored by the Dice MAE of the latent search on the
   validation pairs; a finished configuration is not retrained.
3. ``final``: one sitting of ``--steps`` (:mod:`bids_qc.training.loop`) on maps 1-16 in
   ``OUT/final``, warm-started from the shipped weights (their latent size, beta ``--beta``)
   or, with ``--from-scratch``, the ablation's best configuration.

Every batch is a pure function of ``(seed, global step)`` (the final sitting's of ``seed +
1``). The shipped weights (recipe 2) came from the earlier time-budgeted recipe:
``--ablation-only --ablation-steps 600 --val-pairs 40``, then the same call without
``--ablation-only`` (45 minutes on the best configuration); the other values the defaults.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bids_qc.models.manifoldqc import (
    CROP_SHAPE,
    N_STRUCT,
    ManifoldVAE,
    crop,
    crop_origin,
    kl_divergence,
    prepare_from_box,
    recon_loss,
    search,
    subcortical_classes,
    to_tensor,
)
from bids_qc.models.segqc import group_index
from bids_qc.synth.damage import DAMAGE_FAMILIES
from bids_qc.synth.labelmaps import TRAIN_MAPS
from bids_qc.training.common import export_weights, hardware, train_logger
from bids_qc.training.eval_protocol import TRAINING_DAMAGE_FAMILIES
from bids_qc.training.loop import (
    SittingConfig,
    add_sitting_arguments,
    record_from_checkpoint,
    require_steps,
    run_sitting,
    shipped_state,
)
from bids_qc.training.segqc import CONTRASTS, DEFAULT_SEED, build_pool, fast_dice, pool_keys

#: Training label maps held out of the ablation's training (its validation anatomies).
VAL_MAPS: tuple[int, ...] = (15, 16)
LATENTS: tuple[int, ...] = (2, 4, 8, 16)
BETAS: tuple[float, ...] = (0.0, 1e-3, 1e-2, 1e-1)
#: Voxels of random shift each side of the crop (training augmentation).
MARGIN = 2
MARGIN_SHAPE = tuple(n + 2 * MARGIN for n in CROP_SHAPE)
DEFAULT_CACHE = "/work/cache/manifoldqc"
#: Learning-rate multiplier of the decoder's template (see :func:`train_config`).
TEMPLATE_LR_SCALE = 10.0
#: Beta of the shipped weights' configuration (recipe 2's ablation chose it): a warm start's.
SHIPPED_BETA = 0.1
#: Version of the network initialisation and loss. 1: PyTorch's default initialisation,
#: ReLUs, cross-entropy + squared error; 2: leaky ReLUs, He initialisation, soft-Dice term,
#: faster template.
#: Stored with every ablation result and in the summary, so the card says when the
#: ablation ran with an earlier recipe.
RECIPE = 2


def build_dataset(cache: Path, per_map: int = 5, seed: int = DEFAULT_SEED,
                  log: Any = print) -> Path:  # fmt: skip
    """Crops of every pool case and the validation pairs, cached in ``cache/dataset.npz``."""
    path = cache / f"dataset_{per_map}_{seed}.npz"
    if path.is_file():
        return path
    files = build_pool(cache / "pool", per_map, seed, log)
    keys = pool_keys(per_map, seed)
    images, classes, maps, contrasts = [], [], [], []
    val_img, val_cls, val_truth, val_kind = [], [], [], []
    for (m, contrast, s), f in zip(keys, files):
        with np.load(f) as z:
            image, labels = z["image"].astype(np.float32), z["labels"].astype(np.int32)
        groups = group_index(labels)
        cls = subcortical_classes(groups)
        origin = crop_origin(cls, MARGIN_SHAPE)
        images.append(crop(image, origin, MARGIN_SHAPE).astype(np.float16))
        classes.append(crop(cls, origin, MARGIN_SHAPE))
        maps.append(m)
        contrasts.append(contrast)
        if m in VAL_MAPS:
            rng = np.random.default_rng([seed, s])
            for k in range(2):
                seg = labels
                kind = "good"
                if k:
                    family = str(rng.choice(TRAINING_DAMAGE_FAMILIES))
                    severity = float(rng.uniform(0.05, 1.0))
                    seg = DAMAGE_FAMILIES[family](labels, np.random.default_rng(
                        int(rng.integers(2**31))), severity, image=image)  # fmt: skip
                    kind = f"{family}:{severity:.2f}"
                seg_groups = group_index(seg)
                truth = fast_dice(groups, seg_groups)[:N_STRUCT]
                prep = prepare_from_box(image, seg_groups)
                val_img.append(prep.image.astype(np.float16))
                val_cls.append(prep.classes)
                val_truth.append(truth)
                val_kind.append(kind)
        log(f"dataset {f.name}")
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp, images=np.stack(images), classes=np.stack(classes), maps=np.array(maps),
        contrasts=np.array(contrasts), val_images=np.stack(val_img),
        val_classes=np.stack(val_cls), val_truth=np.stack(val_truth),
        val_kind=np.array(val_kind),
    )  # fmt: skip
    tmp.replace(path)
    return path


def load_dataset(path: Path) -> dict[str, np.ndarray]:
    """The cached dataset as arrays."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def batch(data: dict[str, np.ndarray], idx: np.ndarray, rng: np.random.Generator,
          augment: bool = True) -> torch.Tensor:  # fmt: skip
    """Network input of the cases ``idx`` with random shifts and intensity scaling."""
    xs = []
    for i in idx:
        off = rng.integers(0, 2 * MARGIN + 1, size=3) if augment else np.full(3, MARGIN)
        sl = tuple(slice(int(o), int(o) + n) for o, n in zip(off, CROP_SHAPE))
        img = data["images"][i][sl].astype(np.float32)
        if augment:
            img = np.clip(img * rng.uniform(0.9, 1.1), 0.0, 1.5)
        xs.append(to_tensor(img, data["classes"][i][sl]))
    return torch.stack(xs)


def atlas_template(data: dict[str, np.ndarray], idx: np.ndarray) -> torch.Tensor:
    """Initial output bias: logit of the mean image, log of the per-voxel class frequencies.

    Adam moves each weight by about the learning rate per step, so logits of a few units
    would take thousands of steps to learn from zero; starting at the training crops'
    probabilistic atlas leaves the decoder only the deviations of each case.
    """
    sl = tuple(slice(MARGIN, MARGIN + n) for n in CROP_SHAPE)
    counts = np.zeros((N_STRUCT + 1, *CROP_SHAPE), dtype=np.float64)
    mean = np.zeros(CROP_SHAPE, dtype=np.float64)
    for i in idx:
        cls = data["classes"][i][sl]
        for k in range(N_STRUCT + 1):
            counts[k] += cls == k
        mean += data["images"][i][sl]
    prob = (counts + 0.5) / (len(idx) + 0.5 * (N_STRUCT + 1))
    img = np.clip(mean / len(idx) / 1.5, 0.02, 0.98)
    out = np.concatenate([np.log(img / (1 - img))[None], np.log(prob)])
    return torch.from_numpy(out).float()


@torch.no_grad()
def latent_scale(net: ManifoldVAE, data: dict[str, np.ndarray], idx: np.ndarray) -> torch.Tensor:
    """Per-dimension SD of the encoder means over the training cases (the search's unit)."""
    net.eval()
    rng = np.random.default_rng(0)
    mus = [net.encode(batch(data, idx[s : s + 16], rng, augment=False))[0]
           for s in range(0, len(idx), 16)]  # fmt: skip
    return torch.cat(mus).std(0).clamp(min=1e-3)


def validate(net: ManifoldVAE, data: dict[str, np.ndarray], steps: int,
             n_pairs: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Latent search on the (first ``n_pairs``) validation pairs: Dice MAE, r, loss change."""
    n = len(data["val_truth"]) if n_pairs is None else n_pairs
    x = torch.stack([to_tensor(i.astype(np.float32), c)
                     for i, c in zip(data["val_images"][:n], data["val_classes"][:n])])
    preds, l0, l1 = [], [], []
    for s in range(0, len(x), 16):
        r = search(net, x[s : s + 16], steps=steps)
        preds.append(r.dice)
        l0.append(r.loss_start)
        l1.append(r.loss_end)
    pred, truth = np.concatenate(preds), data["val_truth"][:n].astype(np.float64)
    ok = np.isfinite(truth) & np.isfinite(pred)
    good = data["val_kind"][:n] == "good"
    return {
        "val_pairs": int(len(truth)),
        "mae": float(np.abs(pred - truth)[ok].mean()),
        "r": float(np.corrcoef(pred[ok], truth[ok])[0, 1]),
        "mae_good": float(np.abs(pred - truth)[ok & good[:, None]].mean()),
        "loss_start": float(np.concatenate(l0).mean()),
        "loss_end": float(np.concatenate(l1).mean()),
    }  # fmt: skip


def train_config(data: dict[str, np.ndarray], train_idx: np.ndarray, latent: int, beta: float,
                 steps: int, seed: int, lr: float, batch_size: int, out: Path,
                 init: tuple[dict[str, torch.Tensor], str] | None = None, start_step: int = 0,
                 threads: int = 1, checkpoint_minutes: float = 3.0,
                 pause_after_minutes: float | None = None,
                 log: Any = print) -> tuple[ManifoldVAE, dict | None]:  # fmt: skip
    """One sitting of one configuration in ``out`` from ``init`` (state, description) or from
    scratch (the training crops' atlas as the template); resumable. Returns the network (its
    ``z_scale`` set from the training crops) and the sitting's record (None: it paused)."""
    torch.manual_seed(seed)
    net = ManifoldVAE(latent=latent)
    if init is not None:
        net.load_state_dict(init[0])
    else:
        with torch.no_grad():
            net.template.copy_(atlas_template(data, train_idx))
    # The template's logits must move by several units: a larger step for it alone.
    rest = [p for n, p in net.named_parameters() if n != "template"]
    opt = torch.optim.Adam([{"params": rest},
                            {"params": [net.template], "lr_scale": TEMPLATE_LR_SCALE}], lr=lr)

    def step(gstep: int) -> dict[str, float]:
        rng = np.random.default_rng([seed, gstep])
        x = batch(data, rng.choice(train_idx, size=batch_size), rng)
        image, logits, mu, logvar = net(x)
        rec, kl = recon_loss(image, logits, x).mean(), kl_divergence(mu, logvar).mean()
        (rec + beta * kl).backward()
        return {"recon": float(rec.detach()), "kl": float(kl.detach()), "samples": batch_size}

    def export(path: Path) -> None:
        # On a copy: the search's unit is set for the file, the training network is untouched.
        shipped = copy.deepcopy(net)
        shipped.z_scale.copy_(latent_scale(shipped, data, train_idx))
        export_weights(shipped, path)

    config = SittingConfig(
        model="manifoldqc", out=Path(out), steps=steps, lr=lr, seed=seed, start_step=start_step,
        warm_start="scratch" if init is None else init[1], threads=threads,
        warmup=0.0 if init is None else 0.03,  # scratch: as the ablation always ran
        options={"latent": latent, "beta": beta, "batch": batch_size,
                 "train_cases": int(len(train_idx)), "recipe": RECIPE})  # fmt: skip
    record = run_sitting(config, net, opt, step, export, weights_name="manifoldqc.pt", log=log,
                         log_every=10, checkpoint_minutes=checkpoint_minutes,
                         pause_after_minutes=pause_after_minutes)  # fmt: skip
    net.z_scale.copy_(latent_scale(net, data, train_idx))
    return net, record


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Dataset, ablation (from scratch only) and final sitting, each resumable; returns the
    summary (``{"paused": True}`` when a sitting paused)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = train_logger(out)
    t_process = time.time()

    def pause_left() -> float | None:  # --pause-after-minutes counts from the process start
        if args.pause_after_minutes is None:
            return None
        return max(0.0, args.pause_after_minutes - (time.time() - t_process) / 60)

    torch.set_num_threads(args.threads)
    t_data = time.time()
    path = build_dataset(Path(args.cache), args.per_map, args.seed, log)
    data = load_dataset(path)
    log(f"dataset ready in {time.time() - t_data:.0f}s: {len(data['maps'])} cases, "
        f"{len(data['val_truth'])} validation pairs")  # fmt: skip
    maps = data["maps"]
    ablation_idx = np.flatnonzero(~np.isin(maps, VAL_MAPS))
    abl_dir = out / "ablation"
    abl_dir.mkdir(exist_ok=True)
    sitting = {"lr": args.lr, "threads": args.threads, "log": log,
               "checkpoint_minutes": args.checkpoint_minutes}  # fmt: skip
    for latent in args.latents if args.from_scratch else []:
        for beta in args.betas:
            key = f"{latent}_{beta:g}"
            if (abl_dir / f"{key}.json").is_file():
                continue
            t0 = time.time()
            net, rec = train_config(data, ablation_idx, latent, beta, args.ablation_steps,
                                    args.seed, batch_size=args.ablation_batch,
                                    out=abl_dir / key, pause_after_minutes=pause_left(),
                                    **sitting)  # fmt: skip
            if rec is None:
                return {"paused": True}
            t1 = time.time()
            val = validate(net, data, args.search_steps, args.val_pairs)
            res = {"latent": latent, "beta": beta, "steps": rec["steps"], "recipe": RECIPE,
                   "train_s": rec["wall_hours"] * 3600, "val_s": time.time() - t1,
                   "final_recon": rec["final_losses"].get("recon"), **val}
            log(f"ablation {key}: {json.dumps(res)} ({t1 - t0:.0f}s in this process)")
            (abl_dir / f"{key}.json").write_text(json.dumps(res, indent=1))
    if args.ablation_only:
        return {"ablation": "done"}
    # A warm start reports the ablation of the run it continues when OUT/ablation holds it.
    ablation = {f.stem: json.loads(f.read_text()) for f in sorted(abl_dir.glob("*.json"))}
    missing = [f"{m}_{b:g}" for m in LATENTS for b in BETAS if f"{m}_{b:g}" not in ablation]
    init = None
    if args.from_scratch:
        if missing:
            log(f"ablation configurations not run: {missing}")
        best_key = min(ablation, key=lambda k: ablation[k]["mae"])
        latent = ablation[best_key]["latent"] if args.final_latent is None else args.final_latent
        beta = ablation[best_key]["beta"]
        log(f"best configuration {best_key}")
    else:
        init = shipped_state("manifoldqc")
        latent, beta = int(init[0]["z_scale"].shape[0]), args.beta
        best_key = f"{latent}_{beta:g}" if f"{latent}_{beta:g}" in ablation else None
    net, rec = train_config(data, np.arange(len(maps)), latent, beta, args.steps, args.seed + 1,
                            batch_size=args.batch, out=out / "final", init=init,
                            start_step=args.start_step, pause_after_minutes=pause_left(),
                            **sitting)  # fmt: skip
    if rec is None:
        return {"paused": True}
    export_weights(net, out / "manifoldqc.pt")
    val = validate(net, data, args.search_steps)
    ablation_minutes = sum(v["train_s"] + v["val_s"] for v in ablation.values()) / 60
    summary = {
        "pool_cases": int(len(maps)), "per_map": args.per_map, "maps": list(TRAIN_MAPS),
        "val_maps": list(VAL_MAPS), "contrasts": list(CONTRASTS),
        "ablation_train_cases": int(len(ablation_idx)),
        "val_pairs": args.val_pairs, "ablation_batch": args.ablation_batch,
        "ablation": ablation, "best": best_key, "final_latent": latent, "final_beta": beta,
        "ablation_steps": args.ablation_steps, "final_steps": args.steps,
        "start_step": args.start_step, "warm_start": rec["warm_start"],
        "ablation_missing": missing, "batch": args.batch, "lr": args.lr, "seed": args.seed,
        "final_samples": rec["samples"], "ablation_minutes": ablation_minutes,
        "final_minutes": rec["wall_hours"] * 60, "final_val_on_seen_maps": val,
        "search_steps": args.search_steps, "threads": args.threads, "hardware": hardware(),
        "recipe": RECIPE, "total_training_minutes": ablation_minutes + rec["wall_hours"] * 60,
        "sitting": "final/sitting.json",
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    log(f"done: {json.dumps(summary)}")
    return summary


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder (log, sittings, weights)")
    add_sitting_arguments(p, lr=3e-3, seed=DEFAULT_SEED, steps_required=False)
    p.add_argument("--cache", default=DEFAULT_CACHE, help="dataset cache folder")
    p.add_argument("--per-map", type=int, default=5, help="pool cases per map and contrast")
    p.add_argument("--beta", type=float, default=SHIPPED_BETA,
                   help="KL weight of a warm-started sitting (from scratch: the ablation's)")
    p.add_argument("--latents", type=int, nargs="+", default=list(LATENTS))
    p.add_argument("--betas", type=float, nargs="+", default=list(BETAS))
    p.add_argument("--ablation-steps", type=int, default=50)
    p.add_argument("--final-latent", type=int, default=None,
                   help="latent size of a from-scratch final sitting (default: the best)")
    p.add_argument("--ablation-only", action="store_true",
                   help="run the ablation configurations given and stop (parallel workers; "
                        "with --from-scratch)")  # fmt: skip
    p.add_argument("--search-steps", type=int, default=6, help="latent search steps (val)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--ablation-batch", type=int, default=4)
    p.add_argument("--val-pairs", type=int, default=20,
                   help="validation pairs (the first: both maps and contrasts) per ablation")
    p.add_argument("--dataset-only", action="store_true", help="build the dataset and stop")
    args = p.parse_args(argv)
    if args.dataset_only or args.record_only:
        path = build_dataset(Path(args.cache), args.per_map, args.seed)
        if args.dataset_only:
            print(path)
            return
        data = load_dataset(path)

        def export(state: dict, path: Path) -> None:  # as train_config's, for the final sitting
            net = ManifoldVAE(latent=int(state["z_scale"].shape[0]))
            net.load_state_dict(state)
            net.z_scale.copy_(latent_scale(net, data, np.arange(len(data["maps"]))))
            export_weights(net, path)

        print(json.dumps(record_from_checkpoint(Path(args.out) / "final", "manifoldqc.pt",
                                                export)))  # fmt: skip
        return
    if not args.ablation_only:
        require_steps(p, args)
    if args.batch < 1 or args.ablation_steps < 1:
        raise ValueError("--batch and --ablation-steps must be positive")
    if args.ablation_only and not args.from_scratch:
        p.error("--ablation-only trains from scratch: add --from-scratch")
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
