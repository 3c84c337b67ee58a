"""Training recipe of ManifoldQC: ``python -m bids_qc.training.manifoldqc --out DIR``.

Good pairs only, from the synthetic engine (SynthSeg training label maps 1-16, contrast
families ``t1`` and ``t1_wide``, the engine's random deformation, resolution and skull
stripping):

1. ``dataset``: SegQC's pool of synthesized cases (:func:`bids_qc.training.segqc.build_pool`,
   same keys and seed, conformed to SegQC's 2 mm box), each cut once to the ManifoldQC crop
   plus a margin (for random shifts) and cached in one file; the validation pairs come from
   maps :data:`VAL_MAPS` (held out of the ablation's training): each good pair and one
   damaged copy (training damage families of the frozen protocol) with their exact Dice.
   Damage is used only to *score* validation, never to train.
2. ``ablation``: latent size {2, 4, 8, 16} x beta {0, 1e-3, 1e-2, 1e-1}, the same number of
   steps each, trained on maps 1-14; each scored by the Dice MAE of the latent search on
   the validation pairs. Resumable: a finished configuration is not retrained.
3. ``final``: the best configuration, longer, on maps 1-16, checkpointed and resumable.

Every batch is a pure function of ``(seed, step)``; ``--threads`` 1 by default. The
shipped weights (recipe 2) came from ``--ablation-only --ablation-steps 600 --val-pairs 40``
(all 16 configurations in one process), then the same call without ``--ablation-only``,
which trains the best configuration; the other values are the defaults.
"""

from __future__ import annotations

import argparse
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
from bids_qc.training.common import export_weights, hardware, learning_rate, train_logger
from bids_qc.training.eval_protocol import TRAINING_DAMAGE_FAMILIES
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
                 steps: int, seed: int, lr: float, batch_size: int, out: Path | None = None,
                 minutes: float = 0.0, minutes_checkpoint: float = 3.0,
                 log: Any = print) -> tuple[ManifoldVAE, dict]:  # fmt: skip
    """Train one configuration for ``steps`` or ``minutes``, whichever ends first.

    Resumable from ``out/checkpoint.pt``; the learning rate follows the larger of the step
    and time fractions.
    """
    torch.manual_seed(seed)
    net = ManifoldVAE(latent=latent)
    with torch.no_grad():
        net.template.copy_(atlas_template(data, train_idx))
    # The template's logits must move by several units: a larger step for it alone.
    rest = [p for n, p in net.named_parameters() if n != "template"]
    opt = torch.optim.Adam([{"params": rest, "scale": 1.0},
                            {"params": [net.template], "scale": TEMPLATE_LR_SCALE}], lr=lr)
    state: dict[str, Any] = {"step": 0, "elapsed": 0.0, "losses": []}
    ckpt = out / "checkpoint.pt" if out is not None else None
    if ckpt is not None and ckpt.is_file():
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        net.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optim"])
        state = saved["state"]
        log(f"resumed at step {state['step']}")
    net.train()
    t0, t_ckpt, run = time.time(), time.time(), [0.0, 0.0]
    while True:
        elapsed = state["elapsed"] + time.time() - t0
        progress = max(state["step"] / steps, elapsed / (minutes * 60) if minutes else 0.0)
        if progress >= 1.0:
            break
        rng = np.random.default_rng([seed, state["step"]])
        x = batch(data, rng.choice(train_idx, size=batch_size), rng)
        for g in opt.param_groups:
            g["lr"] = g["scale"] * learning_rate(progress, lr, warmup=0.0, floor=0.05)
        image, logits, mu, logvar = net(x)
        rec, kl = recon_loss(image, logits, x).mean(), kl_divergence(mu, logvar).mean()
        loss = rec + beta * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state["step"] += 1
        run[0] += float(rec.detach())
        run[1] += float(kl.detach())
        if state["step"] % 10 == 0:
            state["losses"].append([state["step"], run[0] / 10, run[1] / 10])
            log(f"latent={latent} beta={beta} step {state['step']}/{steps} "
                f"recon={run[0] / 10:.1f} kl={run[1] / 10:.1f}")  # fmt: skip
            run = [0.0, 0.0]
        if ckpt is not None and time.time() - t_ckpt > minutes_checkpoint * 60:
            state["elapsed"] += time.time() - t0
            t0 = t_ckpt = time.time()
            torch.save({"model": net.state_dict(), "optim": opt.state_dict(), "state": state},
                       ckpt)  # fmt: skip
    state["elapsed"] += time.time() - t0
    if ckpt is not None:
        torch.save({"model": net.state_dict(), "optim": opt.state_dict(), "state": state}, ckpt)
    net.z_scale.copy_(latent_scale(net, data, train_idx))
    return net, state


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Dataset, ablation and final run (each resumable); returns the summary."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = train_logger(out)

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
    for latent in args.latents:
        for beta in args.betas:
            key = f"{latent}_{beta:g}"
            if (abl_dir / f"{key}.json").is_file():
                continue
            t0 = time.time()
            net, state = train_config(data, ablation_idx, latent, beta, args.ablation_steps,
                                      args.seed, args.lr, args.ablation_batch,
                                      log=log)  # fmt: skip
            t1 = time.time()
            val = validate(net, data, args.search_steps, args.val_pairs)
            res = {"latent": latent, "beta": beta, "steps": state["step"], "recipe": RECIPE,
                   "train_s": t1 - t0, "val_s": time.time() - t1,
                   "final_recon": state["losses"][-1][1] if state["losses"] else None, **val}
            log(f"ablation {key}: {json.dumps(res)}")
            (abl_dir / f"{key}.json").write_text(json.dumps(res, indent=1))
    if args.ablation_only:
        return {"ablation": "done"}
    ablation = {f.stem: json.loads(f.read_text()) for f in sorted(abl_dir.glob("*.json"))}
    missing = [f"{m}_{b:g}" for m in LATENTS for b in BETAS if f"{m}_{b:g}" not in ablation]
    if missing:
        log(f"ablation configurations not run: {missing}")
    best_key = min(ablation, key=lambda k: ablation[k]["mae"])
    best = ablation[best_key]
    log(f"best configuration {best_key}")
    latent = best["latent"] if args.final_latent is None else args.final_latent
    final_dir = out / "final"
    final_dir.mkdir(exist_ok=True)
    final_idx = np.arange(len(maps))
    t0 = time.time()
    net, state = train_config(data, final_idx, latent, best["beta"], args.final_steps,
                              args.seed + 1, args.lr, args.batch, out=final_dir,
                              minutes=args.final_minutes, log=log)  # fmt: skip
    export_weights(net, out / "manifoldqc.pt")
    val = validate(net, data, args.search_steps)
    summary = {
        "pool_cases": int(len(maps)), "per_map": args.per_map, "maps": list(TRAIN_MAPS),
        "val_maps": list(VAL_MAPS), "contrasts": list(CONTRASTS),
        "ablation_train_cases": int(len(ablation_idx)),
        "val_pairs": args.val_pairs, "ablation_batch": args.ablation_batch,
        "ablation": ablation, "best": best_key, "final_latent": latent,
        "ablation_steps": args.ablation_steps, "final_steps": state["step"],
        "final_minutes_budget": args.final_minutes, "ablation_missing": missing,
        "batch": args.batch, "lr": args.lr, "seed": args.seed,
        "final_samples": state["step"] * args.batch,
        "ablation_minutes": sum(v["train_s"] + v["val_s"] for v in ablation.values()) / 60,
        "final_minutes": state["elapsed"] / 60, "final_wall_minutes": (time.time() - t0) / 60,
        "final_val_on_seen_maps": val, "search_steps": args.search_steps,
        "threads": args.threads, "hardware": hardware(),
        "recipe": RECIPE,
    }  # fmt: skip
    summary["total_training_minutes"] = summary["ablation_minutes"] + summary["final_minutes"]
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    log(f"done: {json.dumps(summary)}")
    return summary


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder (log, checkpoints, weights)")
    p.add_argument("--cache", default=DEFAULT_CACHE, help="dataset cache folder")
    p.add_argument("--per-map", type=int, default=5, help="pool cases per map and contrast")
    p.add_argument("--latents", type=int, nargs="+", default=list(LATENTS))
    p.add_argument("--betas", type=float, nargs="+", default=list(BETAS))
    p.add_argument("--ablation-steps", type=int, default=50)
    p.add_argument("--final-steps", type=int, default=20000)
    p.add_argument("--final-minutes", type=float, default=45.0,
                   help="time budget of the final run (0: steps only)")
    p.add_argument("--final-latent", type=int, default=None,
                   help="latent size of the final run (default: the ablation's best)")
    p.add_argument("--ablation-only", action="store_true",
                   help="run the ablation configurations given and stop (parallel workers)")
    p.add_argument("--search-steps", type=int, default=6, help="latent search steps (val)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--ablation-batch", type=int, default=4)
    p.add_argument("--val-pairs", type=int, default=20,
                   help="validation pairs scored per ablation configuration (the first ones: "
                   "both maps, both contrasts)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dataset-only", action="store_true", help="build the dataset and stop")
    args = p.parse_args(argv)
    if args.batch < 1 or args.ablation_steps < 1 or args.final_steps < 1:
        raise ValueError("--batch, --ablation-steps and --final-steps must be positive")
    if args.dataset_only:
        print(build_dataset(Path(args.cache), args.per_map, args.seed))
        return
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
